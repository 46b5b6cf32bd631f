"""vLLM's events for the current utterance, as lifecycle steps: a model step's text, a
generation's end (the utterance completes or goes on in a new segment), and vLLM's errors (the
utterance fails and a fresh upstream connection follows)."""

from __future__ import annotations

from proxy.session._lifecycle import Lifecycle
from proxy.session.events import ErrorCode
from proxy.vllm_wire import TranscriptionDelta, TranscriptionDone, UpstreamError, UpstreamEvent


def on_event(lifecycle: Lifecycle, event: UpstreamEvent) -> None:
    utterance = lifecycle.current
    if utterance is None:
        # Nothing runs upstream: a stray event (or vLLM's answer to session.update).
        if isinstance(event, UpstreamError):
            lifecycle.refuse(ErrorCode.UPSTREAM_ERROR, None, details=event.details())
    elif isinstance(event, TranscriptionDelta):
        lifecycle.model_step(utterance, event.text)
    elif isinstance(event, TranscriptionDone):
        lifecycle.segment_ended(utterance, event.usage)
    elif isinstance(event, UpstreamError):
        # The generation's state upstream is unknown after an error: start clean.
        lifecycle.fail(utterance, ErrorCode.UPSTREAM_ERROR, event.details())
