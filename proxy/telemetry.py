"""Per-utterance records for one connection: counters, latency histograms and one summary log
line each, all from the lifecycle facts the session emits (``proxy.session.actions``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from proxy.metrics import ROLLED_OVER, STARTED, TURN_MODES, Metrics, format_label
from proxy.session.actions import LifecycleFact, Outcome, UtteranceEnded, UtteranceStarted

log = structlog.get_logger("proxy.utterance")


class UtteranceTelemetry:
    def __init__(self, metrics: Metrics, *, log_transcripts: bool) -> None:
        self.metrics = metrics
        self.log_transcripts = log_transcripts
        # This connection's utterances by outcome (for the connection's closing log line).
        self.counts: Counter[str] = Counter()

    def record(self, fact: LifecycleFact, session_id: str) -> None:
        """`session_id`: the app's id on the connection's latest message, for the log line (the
        one bound to the connection is the connect's)."""
        if isinstance(fact, UtteranceEnded):
            self._ended(fact, session_id)
            label: str = fact.outcome
        else:
            label = STARTED if isinstance(fact, UtteranceStarted) else ROLLED_OVER
        self.counts[label] += 1
        self.metrics.utterance_counters[label].inc()

    def _ended(self, fact: UtteranceEnded, session_id: str) -> None:
        ttfw = _elapsed(fact.first_audio_at, fact.first_delta_at)
        finalization = _elapsed(fact.final_at, fact.ended_at)
        if ttfw is not None:
            self.metrics.time_to_first_word.labels(
                format_label(fact.audio_format), TURN_MODES[fact.server_vad]
            ).observe(ttfw)
        done = fact.outcome is Outcome.DONE
        if done and finalization is not None:
            self.metrics.finalization_latency.observe(finalization)
        outcome = f"error:{fact.error_code}" if fact.error_code is not None else fact.outcome
        fields: dict[str, Any] = {
            "session_id": session_id,
            "request_id": fact.request_id,
            "outcome": str(outcome),
            "audio_ms": fact.audio_ms,
            "text_chars": len(fact.text),
            "ttfw_ms": _ms(ttfw),
            "finalization_ms": _ms(finalization),
            "duration_ms": _ms(fact.ended_at - fact.opened_at),
        }
        if done and self.log_transcripts:
            fields["text"] = fact.text
        log.info("utterance", **fields)


def _elapsed(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None and end >= start else None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
