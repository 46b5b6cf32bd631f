"""One client connection's utterance lifecycle: pure, synchronous, no sockets and no clocks.

The WebSocket tasks feed this object what happened (a client message, an upstream event, the
upstream connection opening or dropping, a timer firing) and carry out the actions it returns,
in order: events to send the client, text to send upstream, an upstream connection to (re)open,
a close code. Everything the protocol promises is decided here, so it is tested without I/O.

vLLM's realtime socket runs one generation at a time and wipes queued audio when a generation
ends, so utterances wait in a line: the head is *current* (its commit went upstream) and the
others keep their audio here until the current one's ``transcription.done`` arrives. When vLLM's
``--max-model-len`` would end a generation mid-utterance, the utterance is carried over onto a
fresh generation (a *segment*): proactively, before the cap, when the cap is known; reactively
when vLLM ends a generation by itself.
"""

from __future__ import annotations

import binascii
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from proxy.envelope import (
    PCM_BYTES_PER_MS,
    Append,
    Cancel,
    ClientMessage,
    CloseCode,
    Commit,
    End,
    EnvelopeError,
    ErrorCode,
    Ping,
    SessionUpdate,
    error_event,
    server_event,
)
from proxy.limits import RollingWindow

# One Voxtral step consumes one 80 ms frame of 16 kHz PCM16.
FRAME_BYTES = 80 * PCM_BYTES_PER_MS
# vLLM's prompt is BOS + 32 left-pad tokens + one pad token per 80 ms of delay.
PROMPT_BASE_TOKENS = 33
# Tokens a final commit adds after the last audio frame (the flush silence, minus the delay).
FLUSH_EXTRA_TOKENS = 11
# After this many refused messages within the message window the connection is closed.
RATE_REFUSALS_BEFORE_CLOSE = 32

APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
COMMIT_OPEN = '{"type":"input_audio_buffer.commit","final":false}'
COMMIT_FINAL = '{"type":"input_audio_buffer.commit","final":true}'


def segment_audio_limit(max_model_len: int, transcription_delay_ms: int) -> int | None:
    """Bytes of audio one generation can take and still flush before vLLM's length cap.

    A generation of A frames with a final commit produces A + 11 tokens after a prompt of
    33 + delay/80 tokens; keeping that within ``max_model_len`` means vLLM never cuts it off.
    """
    frames = (
        max_model_len - PROMPT_BASE_TOKENS - transcription_delay_ms // 80 - FLUSH_EXTRA_TOKENS - 1
    )
    return frames * FRAME_BYTES if frames > 0 else None


@dataclass(frozen=True, slots=True)
class SendClient:
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Text for the upstream connection of ``generation``; dropped if that one is gone."""

    generation: int
    text: str


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Close the current upstream connection (if any) and open ``generation``."""

    generation: int


@dataclass(frozen=True, slots=True)
class CloseClient:
    code: int


Action = SendClient | SendUpstream | OpenUpstream | CloseClient


class WindDown(Enum):
    """Why a connection stops taking new utterances and closes once the last one is done."""

    END = (CloseCode.NORMAL, None)
    MAX_DURATION = (CloseCode.MAX_DURATION, ErrorCode.MAX_DURATION_REACHED)
    SHUTDOWN = (CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN)


@dataclass(slots=True)
class Utterance:
    request_id: str
    audio_bytes: int = 0
    # The client's final commit arrived: no more audio will come.
    final: bool = False
    # Audio not yet sent upstream: (base64, PCM bytes), oldest first.
    held: deque[tuple[str, int]] = field(default_factory=deque)
    # A final commit went upstream for the running segment ...
    final_sent: bool = False
    # ... and it only ends a segment: the utterance goes on in the next one.
    rolling: bool = False
    segment_bytes: int = 0
    segments: int = 0
    texts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    inbound_queue_max: int = 256
    max_messages_per_window: int = 5000
    message_window_s: float = 60.0
    max_cancels_per_window: int = 50
    cancel_window_s: float = 60.0


class Session:
    def __init__(
        self,
        *,
        session_id: str,
        served_model: str,
        limits: SessionLimits,
        segment_max_bytes: int | None = None,
    ) -> None:
        self.session_id = session_id
        self.served_model = served_model
        self.limits = limits
        self.segment_max_bytes = segment_max_bytes
        # The upstream connection the session talks to; older ones' events are ignored.
        self.generation = 0
        self.upstream_ready = False
        self.open: Utterance | None = None
        self.current: Utterance | None = None
        # Utterances waiting for the upstream, in order (the open one may be last).
        self.line: deque[Utterance] = deque()
        self.winding_down: WindDown | None = None
        self.closed = False
        # Messages waiting for vLLM when the last audio message came in (for the metric).
        self.inbound_depth = 0
        self._messages = RollingWindow(limits.max_messages_per_window, limits.message_window_s)
        self._cancels = RollingWindow(limits.max_cancels_per_window, limits.cancel_window_s)
        self._refusals = RollingWindow(RATE_REFUSALS_BEFORE_CLOSE, limits.message_window_s)
        self._out: list[Action] = []
        # Outcome counts for this connection (read by metrics and the connection summary).
        self.utterances_started = 0
        self.utterances_done = 0
        self.utterances_cancelled = 0
        self.utterances_errored = 0
        self.rollovers = 0

    # ------------------------------------------------------------------ queries

    @property
    def in_flight(self) -> list[Utterance]:
        """Every utterance opened and not yet ended, current first."""
        return ([self.current] if self.current else []) + list(self.line)

    @property
    def finalizing(self) -> bool:
        """Whether some utterance waits for its ``transcription.done`` (idle time is not
        counted then: the client is waiting on us)."""
        return any(u.final for u in self.in_flight)

    @property
    def held_messages(self) -> int:
        # On every message: no list built here, unlike in_flight.
        held = sum(len(u.held) for u in self.line)
        return held + len(self.current.held) if self.current is not None else held

    # ------------------------------------------------------------------ inputs

    def on_client(
        self, message: ClientMessage | EnvelopeError, now: float, backlog: int = 0
    ) -> list[Action]:
        """A client text message (parsed), at monotonic time ``now``, with ``backlog`` messages
        accepted earlier and not yet written to vLLM."""
        if self.closed:
            return []
        if isinstance(message, EnvelopeError):
            if message.session_id:
                self.session_id = message.session_id
            if not message.counts_toward_rate_limit or self._admit(now, message.request_id):
                self._error(
                    message.code, message.request_id, message.message, message.details or None
                )
            return self._flush()

        self.session_id = message.session_id
        if isinstance(message, Ping):
            self._send("pong", message.request_id, message.payload)
        elif isinstance(message, End):
            self._wind_down(WindDown.END)
        elif not self._admit(now, message.request_id):
            pass
        elif isinstance(message, SessionUpdate):
            self._on_session_update(message)
        elif isinstance(message, Cancel):
            self._on_cancel(message, now)
        elif self._backlog_full(backlog):
            pass
        elif isinstance(message, Append):
            self._on_append(message)
        elif isinstance(message, Commit):
            if message.final:
                self._on_final(message)
            else:
                self._on_open(message, now)
        return self._flush()

    def on_upstream_ready(self, generation: int) -> list[Action]:
        if generation == self.generation and not self.closed:
            self.upstream_ready = True
            self._start_next()
        return self._flush()

    def on_upstream_lost(self, generation: int) -> list[Action]:
        """The upstream connection closed or could not be opened."""
        if generation == self.generation and not self.closed:
            self._terminate(ErrorCode.UPSTREAM_UNAVAILABLE, CloseCode.TRY_AGAIN_LATER)
        return self._flush()

    def on_upstream_event(self, generation: int, event: dict[str, Any]) -> list[Action]:
        utterance = self.current
        if generation != self.generation or self.closed or utterance is None:
            # Nothing runs upstream: a stray event (or vLLM's answer to session.update).
            if event.get("type") == "error" and generation == self.generation and not self.closed:
                self._upstream_error(None, event)
            return self._flush()
        kind = event.get("type")
        if kind == "transcription.delta":
            delta = event.get("delta")
            # vLLM sends an empty delta for every step that produced no text: not forwarded.
            if isinstance(delta, str) and delta:
                utterance.texts.append(delta)
                self._send("transcription.delta", utterance.request_id, {"delta": delta})
        elif kind == "transcription.done":
            utterance.add_usage(event.get("usage"))
            if utterance.rolling:
                self._next_segment(utterance)
            elif utterance.final_sent:
                self._complete(utterance)
            else:
                # vLLM reached --max-model-len by itself: carry on in a new generation. Audio it
                # received after stopping and before this event is gone (its queue was wiped).
                self._next_segment(utterance)
        elif kind == "error":
            self._upstream_error(utterance, event)
        return self._flush()

    def on_upstream_stalled(self, generation: int) -> list[Action]:
        """vLLM went silent while the current utterance needed it (audio sent, or a final
        waiting for its done): that utterance ends in error and the socket is replaced."""
        if generation == self.generation and not self.closed and self.current is not None:
            self._upstream_error(
                self.current,
                {"code": "no_response", "error": "vLLM sent nothing for this utterance in time."},
            )
        return self._flush()

    def wind_down(self, reason: WindDown) -> list[Action]:
        """Take no new utterance, finalize the open one, close once every one has ended."""
        self._wind_down(reason)
        return self._flush()

    def terminate(self, code: ErrorCode, close_code: int) -> list[Action]:
        """Close now (idle timeout, a deadline, a fault): every utterance in flight ends in
        ``error`` first."""
        if not self.closed:
            self._terminate(code, close_code)
        return self._flush()

    # ------------------------------------------------------------------ client messages

    def _on_session_update(self, message: SessionUpdate) -> None:
        if message.model == self.served_model:
            self._send("session.updated", message.request_id, {"model": self.served_model})
        else:
            self._error(
                ErrorCode.UNSUPPORTED_MODEL,
                message.request_id,
                f"This server serves {self.served_model!r}: use that model name, or omit "
                "session.update.",
                {"model": self.served_model},
            )

    def _on_open(self, message: Commit, now: float) -> None:
        request_id = message.request_id
        if self.winding_down is not None:
            self._refuse_while_winding_down(request_id)
            return
        if self.open is not None and self.open.request_id == request_id:
            return
        if any(u.request_id == request_id for u in self.in_flight):
            self._error(
                ErrorCode.INVALID_MESSAGE,
                request_id,
                "This request_id is still being transcribed: give each new utterance a new "
                "request_id.",
            )
            return
        if self.open is not None:
            if not self._admit_cancel(now, request_id):
                return
            self._cancel(self.open, "superseded")
        utterance = Utterance(request_id)
        self.utterances_started += 1
        self.line.append(utterance)
        self.open = utterance
        self._start_next()

    def _on_append(self, message: Append) -> None:
        utterance = self._open_utterance(message.request_id)
        if utterance is None:
            return
        utterance.audio_bytes += message.pcm_bytes
        if utterance is self.current and not utterance.final_sent:
            self._forward_audio(utterance, message.audio, message.pcm_bytes)
        else:
            utterance.held.append((message.audio, message.pcm_bytes))

    def _on_final(self, message: Commit) -> None:
        utterance = self._open_utterance(message.request_id)
        if utterance is not None:
            self._finalize(utterance)
            self._check_wound_down()

    def _on_cancel(self, message: Cancel, now: float) -> None:
        utterance = next((u for u in self.in_flight if u.request_id == message.request_id), None)
        if utterance is None:
            self._error(
                ErrorCode.NO_ACTIVE_REQUEST,
                message.request_id,
                "No open, finalizing or queued utterance has this request_id: nothing to cancel.",
            )
            return
        if self._admit_cancel(now, message.request_id):
            self._cancel(utterance, message.reason)
            self._start_next()
            self._check_wound_down()

    # ------------------------------------------------------------------ lifecycle

    def _wind_down(self, reason: WindDown) -> None:
        if not self.closed and self.winding_down is None:
            self.winding_down = reason
            if self.open is not None:
                self._finalize(self.open)
            self._check_wound_down()

    def _open_utterance(self, request_id: str) -> Utterance | None:
        """The open utterance if it is ``request_id``; otherwise tells the client why not.

        An id whose final commit was already sent is "no longer open" (no_active_request) even
        while another utterance is open; any other id is a mismatch with the open one."""
        finished_audio = any(u.request_id == request_id for u in self.in_flight if u.final)
        if self.open is None or finished_audio:
            self._error(ErrorCode.NO_ACTIVE_REQUEST, request_id)
            return None
        if self.open.request_id != request_id:
            self._error(
                ErrorCode.REQUEST_ID_MISMATCH,
                request_id,
                details={"open_request_id": self.open.request_id},
            )
            return None
        return self.open

    def _finalize(self, utterance: Utterance) -> None:
        utterance.final = True
        self.open = None
        if utterance is self.current and not utterance.final_sent:
            self._send_final(utterance, rolling=False)

    def _start_next(self) -> None:
        if self.current is None and self.upstream_ready and self.line:
            self.current = self.line.popleft()
            self._begin_segment(self.current)

    def _begin_segment(self, utterance: Utterance) -> None:
        utterance.segment_bytes = 0
        utterance.final_sent = utterance.rolling = False
        self._upstream(COMMIT_OPEN)
        while utterance.held and not utterance.final_sent:
            audio, pcm_bytes = utterance.held.popleft()
            self._forward_audio(utterance, audio, pcm_bytes)
        if utterance.final and not utterance.final_sent:
            self._send_final(utterance, rolling=False)

    def _forward_audio(self, utterance: Utterance, audio: str, pcm_bytes: int) -> None:
        limit = self.segment_max_bytes
        if limit is None or utterance.segment_bytes + pcm_bytes <= limit:
            self._upstream(APPEND_PREFIX + audio + '"}')
            utterance.segment_bytes += pcm_bytes
            return
        # This chunk crosses the segment's limit: send what fits, end the segment with a final
        # commit (its text is flushed, nothing lost) and keep the rest for the next segment.
        pcm = binascii.a2b_base64(audio)
        room = max(limit - utterance.segment_bytes, 0)
        if room:
            self._upstream(APPEND_PREFIX + _b64(pcm[:room]) + '"}')
            utterance.segment_bytes += room
        utterance.held.appendleft((_b64(pcm[room:]), pcm_bytes - room))
        self._send_final(utterance, rolling=True)

    def _send_final(self, utterance: Utterance, *, rolling: bool) -> None:
        utterance.final_sent = True
        utterance.rolling = rolling
        self._upstream(COMMIT_FINAL)

    def _next_segment(self, utterance: Utterance) -> None:
        utterance.segments += 1
        self.rollovers += 1
        if utterance.final and not utterance.held:
            # The previous segment already covered every byte: no empty generation upstream.
            self._complete(utterance)
        else:
            self._begin_segment(utterance)

    def _complete(self, utterance: Utterance) -> None:
        self.current = None
        self.utterances_done += 1
        self._send(
            "transcription.done",
            utterance.request_id,
            {
                "text": "".join(utterance.texts),
                "usage": {
                    "prompt_tokens": utterance.prompt_tokens,
                    "completion_tokens": utterance.completion_tokens,
                    "total_tokens": utterance.total_tokens,
                },
                "audio_ms": utterance.audio_bytes // PCM_BYTES_PER_MS,
            },
        )
        self._start_next()
        self._check_wound_down()

    def _cancel(self, utterance: Utterance, reason: str) -> None:
        self.utterances_cancelled += 1
        self._send("cancelled", utterance.request_id, {"reason": reason})
        self._detach(utterance)

    def _detach(self, utterance: Utterance) -> None:
        """Forget an utterance that ended early; a running generation is stopped by closing its
        upstream connection (vLLM has no cancel event; it aborts the request on close)."""
        if self.open is utterance:
            self.open = None
        if utterance is self.current:
            self.current = None
            self._reopen_upstream()
        else:
            self.line.remove(utterance)

    def _upstream_error(self, utterance: Utterance | None, event: dict[str, Any]) -> None:
        details = {"upstream_code": str(event.get("code"))}
        upstream_text = event.get("error")
        if isinstance(upstream_text, str):
            details["upstream_message"] = upstream_text[:300]
        if utterance is None:
            self._error(ErrorCode.UPSTREAM_ERROR, None, details=details)
            return
        # The generation's state upstream is unknown after an error: start clean.
        self.utterances_errored += 1
        self._error(ErrorCode.UPSTREAM_ERROR, utterance.request_id, details=details)
        self._detach(utterance)
        self._start_next()
        self._check_wound_down()

    def _reopen_upstream(self) -> None:
        self.generation += 1
        self.upstream_ready = False
        self._out.append(OpenUpstream(self.generation))

    def _check_wound_down(self) -> None:
        reason = self.winding_down
        if reason is None or self.closed or self.in_flight:
            return
        close_code, error_code = reason.value
        if error_code is None:
            self._send("session.ended", None, {})
        else:
            self._error(error_code, None)
        self._close(close_code)

    def _refuse_while_winding_down(self, request_id: str) -> None:
        reason = self.winding_down
        assert reason is not None
        error_code = reason.value[1]
        if error_code is None:
            self._error(
                ErrorCode.INVALID_MESSAGE,
                request_id,
                "The session is ending after `end`: open a new connection for new utterances.",
            )
        else:
            self._error(error_code, request_id)

    def _terminate(self, code: ErrorCode, close_code: int) -> None:
        for utterance in self.in_flight:
            self.utterances_errored += 1
            self._error(code, utterance.request_id)
        self._error(code, None)
        self._close(close_code)

    def _close(self, code: int) -> None:
        self.closed = True
        self.open = self.current = None
        self.line.clear()
        self._out.append(CloseClient(code))

    # ------------------------------------------------------------------ limits

    def _admit(self, now: float, request_id: str | None) -> bool:
        return self._admit_to(self._messages, "messages", now, request_id)

    def _admit_cancel(self, now: float, request_id: str) -> bool:
        return self._admit_to(self._cancels, "cancels", now, request_id)

    def _admit_to(
        self, window: RollingWindow, kind: str, now: float, request_id: str | None
    ) -> bool:
        refusal = window.try_acquire(now)
        if refusal is None:
            return True
        if self._refusals.try_acquire(now) is not None:
            # Told often enough: the client keeps going, so the connection ends.
            self._terminate(ErrorCode.RATE_LIMITED, CloseCode.RATE_LIMITED)
            return False
        details = {
            "kind": kind,
            "limit": refusal.limit,
            "window_seconds": refusal.window_seconds,
            "retry_in": refusal.retry_in,
        }
        self._error(ErrorCode.RATE_LIMITED, request_id, details=details)
        return False

    def _backlog_full(self, backlog: int) -> bool:
        self.inbound_depth = backlog + self.held_messages
        if self.inbound_depth < self.limits.inbound_queue_max:
            return False
        self._terminate(ErrorCode.INBOUND_QUEUE_FULL, CloseCode.INBOUND_QUEUE_FULL)
        return True

    # ------------------------------------------------------------------ output

    def _send(self, kind: str, request_id: str | None, payload: dict[str, Any]) -> None:
        self._out.append(SendClient(server_event(kind, self.session_id, request_id, payload)))

    def _error(
        self,
        code: ErrorCode,
        request_id: str | None,
        message: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._out.append(
            SendClient(error_event(code, self.session_id, request_id, message, details))
        )

    def _upstream(self, text: str) -> None:
        self._out.append(SendUpstream(self.generation, text))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out


def _b64(pcm: bytes) -> str:
    return binascii.b2a_base64(pcm, newline=False).decode()
