"""The session's handling of vLLM's events for the current utterance: deltas forwarded with
their audio time, a ``transcription.done`` that completes the utterance or carries it over onto
a new generation (a *segment*), and vLLM's errors.

Part of the session, as functions of it: the utterance's lifecycle steps are still the
session's (``Session._complete``, ``_detach``...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy import session_end, vllm_wire
from proxy.actions import Outcome, UtteranceRolledOver
from proxy.envelope import ErrorCode
from proxy.utterance import Phase, Utterance

if TYPE_CHECKING:
    from proxy.session import Session

# What a stall ends the current utterance with (as if vLLM had sent it).
STALLED = {"code": "no_response", "error": "vLLM sent nothing for this utterance in time."}


def event(session: Session, event: dict[str, Any]) -> None:
    """One event from vLLM (``vllm_wire.decode_event``'s result; not modified)."""
    utterance = session.current
    kind = event.get("type")
    if utterance is None:
        # Nothing runs upstream: a stray event (or vLLM's answer to session.update).
        if kind == "error":
            error(session, None, event)
        return
    if kind == "transcription.delta":
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            if utterance.first_delta_at is None:
                utterance.first_delta_at = session._now
            audio_ms = utterance.clock.add_text(delta, utterance.segment_bytes)
            session._send(
                "transcription.delta",
                utterance.request_id,
                {"delta": delta, "audio_ms": audio_ms},
            )
        else:
            # vLLM sends an empty delta for every step that produced no text: not
            # forwarded, only counted (it is one step of the token clock).
            utterance.clock.steps += 1
    elif kind == "transcription.done":
        utterance.add_usage(event.get("usage"))
        if utterance.phase.rolling:
            _next_segment(session, utterance)
        elif utterance.phase is Phase.FINALIZING:
            session._complete(utterance)
        else:
            # vLLM reached --max-model-len by itself: carry on in a new generation. Audio it
            # received after stopping and before this event is gone (its queue was wiped).
            _next_segment(session, utterance)
    elif kind == "error":
        error(session, utterance, event)


def error(session: Session, utterance: Utterance | None, event: dict[str, Any]) -> None:
    details = vllm_wire.error_details(event)
    if utterance is None:
        session._error(ErrorCode.UPSTREAM_ERROR, None, details=details)
        return
    # The generation's state upstream is unknown after an error: start clean.
    session._error(ErrorCode.UPSTREAM_ERROR, utterance.request_id, details=details)
    session._ended(utterance, Outcome.ERRORED, ErrorCode.UPSTREAM_ERROR)
    session._detach(utterance)
    session._start_next()
    session_end.check_wound_down(session)


def _next_segment(session: Session, utterance: Utterance) -> None:
    utterance.clock.end_run(utterance.segment_bytes)
    utterance.segments += 1
    session._out.append(UtteranceRolledOver(utterance.request_id))
    if utterance.phase.client_final and not utterance.held:
        # The previous segment already covered every byte: no empty generation upstream.
        session._complete(utterance)
    else:
        session.feed.begin_segment(utterance, session._now)
