"""Per-utterance timings for one connection: latency histograms and one summary log line each.

Fed by the relay with what it already sees (parsed client messages, events sent to the client,
the session's in-flight set), so the pure session stays free of clocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.envelope import PCM_BYTES_PER_MS, Append, ClientMessage, Commit, EnvelopeError
from proxy.metrics import Metrics
from proxy.session import Session

log = structlog.get_logger("proxy.utterance")


@dataclass(slots=True)
class _Record:
    opened_at: float
    first_audio_at: float | None = None
    first_delta_at: float | None = None
    final_at: float | None = None
    ended_at: float | None = None
    outcome: str = "open"
    audio_ms: int = 0
    text_chars: int = 0
    text: str | None = None


class UtteranceTelemetry:
    def __init__(self, metrics: Metrics, *, log_transcripts: bool) -> None:
        self.metrics = metrics
        self.log_transcripts = log_transcripts
        self._records: dict[str, _Record] = {}

    def client_message(
        self, message: ClientMessage | EnvelopeError, now: float, session: Session
    ) -> None:
        if isinstance(message, Append):
            self.metrics.audio_seconds.inc(message.pcm_bytes / (PCM_BYTES_PER_MS * 1000))
            record = self._records.get(message.request_id)
            if record is not None and record.final_at is None:
                # Kept for utterances that end before their done (which carries the exact sum).
                record.audio_ms += message.pcm_bytes // PCM_BYTES_PER_MS
                if record.first_audio_at is None:
                    record.first_audio_at = now
        elif isinstance(message, Commit):
            record = self._records.get(message.request_id)
            if message.final:
                if record is not None and record.final_at is None:
                    record.final_at = now
            elif record is None and any(
                u.request_id == message.request_id for u in session.in_flight
            ):
                self._records[message.request_id] = _Record(opened_at=now)

    def client_event(self, event: dict[str, Any], now: float) -> None:
        request_id = event["request_id"]
        record = self._records.get(request_id) if request_id is not None else None
        if record is None:
            return
        kind, payload = event["type"], event["payload"]
        if kind == "transcription.delta":
            if record.first_delta_at is None:
                record.first_delta_at = now
        elif kind == "transcription.done":
            record.outcome, record.ended_at = "done", now
            record.audio_ms = payload["audio_ms"]
            record.text_chars = len(payload["text"])
            if self.log_transcripts:
                record.text = payload["text"]
        elif kind == "cancelled":
            record.outcome, record.ended_at = "cancelled", now
        elif kind == "error":
            # Only an error after which the utterance leaves the line ends it (see ``sweep``).
            record.outcome, record.ended_at = f"error:{payload['code']}", now

    def sweep(self, in_flight: Iterable[str]) -> None:
        """Reports every tracked utterance that is no longer in flight."""
        alive = set(in_flight)
        for request_id in [r for r in self._records if r not in alive]:
            self._report(request_id, self._records.pop(request_id))

    def _report(self, request_id: str, record: _Record) -> None:
        ttfw = _elapsed(record.first_audio_at, record.first_delta_at)
        finalization = _elapsed(record.final_at, record.ended_at)
        if ttfw is not None:
            self.metrics.time_to_first_word.observe(ttfw)
        if record.outcome == "done" and finalization is not None:
            self.metrics.finalization_latency.observe(finalization)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "outcome": record.outcome,
            "audio_ms": record.audio_ms,
            "text_chars": record.text_chars,
            "ttfw_ms": _ms(ttfw),
            "finalization_ms": _ms(finalization),
            "duration_ms": _ms(_elapsed(record.opened_at, record.ended_at)),
        }
        if record.text is not None:
            fields["text"] = record.text
        log.info("utterance", **fields)


def _elapsed(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None and end >= start else None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)
