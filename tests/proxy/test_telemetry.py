"""proxy.telemetry: lifecycle facts become counters, latency histograms and one log line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from proxy import telemetry as telemetry_module
from proxy.audio_format import AudioFormat, Encoding
from proxy.metrics import Metrics
from proxy.session.actions import Outcome, UtteranceEnded, UtteranceRolledOver, UtteranceStarted
from proxy.session.events import ErrorCode
from proxy.telemetry import UtteranceTelemetry


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The log lines telemetry writes (its module logger may be cached under the app's setup:
    a fresh one binds to the capture)."""
    with capture_logs() as captured:
        monkeypatch.setattr(telemetry_module, "log", structlog.get_logger("proxy.utterance"))
        yield captured


def ended(outcome: Outcome, code: ErrorCode | None = None, **times: Any) -> UtteranceEnded:
    fields: dict[str, Any] = {
        "opened_at": 10.0,
        "first_audio_at": 10.1,
        "first_delta_at": 10.4,
        "final_at": 11.0,
        "ended_at": 11.25,
    }
    fields.update(times)
    text = " hi" if outcome is Outcome.DONE else ""
    return UtteranceEnded("r1", outcome, code, 1000, text, **fields)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_facts_are_counted_by_outcome(logs: list[dict[str, Any]]) -> None:
    metrics = Metrics()
    telemetry = UtteranceTelemetry(metrics, log_transcripts=False)
    telemetry.record(UtteranceStarted("r1", 10.0), "app-s1")
    telemetry.record(UtteranceRolledOver("r1"), "app-s1")
    telemetry.record(ended(Outcome.DONE), "app-s1")
    telemetry.record(ended(Outcome.ERRORED, ErrorCode.IDLE_TIMEOUT), "app-s1")
    assert len(logs) == 2
    name = "voxtral_proxy_utterances_total"
    assert sample(metrics, name, outcome="started") == 1
    assert sample(metrics, name, outcome="rolled_over") == 1
    assert sample(metrics, name, outcome="done") == 1
    assert sample(metrics, name, outcome="errored") == 1
    assert sample(metrics, name, outcome="cancelled") == 0
    assert telemetry.counts == {"started": 1, "rolled_over": 1, "done": 1, "errored": 1}


@pytest.mark.parametrize("log_transcripts", [False, True])
def test_a_done_utterance_logs_its_summary(
    log_transcripts: bool, logs: list[dict[str, Any]]
) -> None:
    metrics = Metrics()
    telemetry = UtteranceTelemetry(metrics, log_transcripts=log_transcripts)
    telemetry.record(ended(Outcome.DONE), "app-s1")
    [line] = logs
    expected = {
        "event": "utterance",
        "log_level": "info",
        "session_id": "app-s1",
        "request_id": "r1",
        "outcome": "done",
        "audio_ms": 1000,
        "text_chars": 3,
        "ttfw_ms": 300,
        "finalization_ms": 250,
        "duration_ms": 1250,
    }
    if log_transcripts:
        expected["text"] = " hi"
    assert line == expected
    ttfw = "voxtral_proxy_time_to_first_word_seconds_count"
    assert sample(metrics, ttfw, audio_format="pcm16_16000", turn_detection="client") == 1
    assert sample(metrics, "voxtral_proxy_finalization_latency_seconds_count") == 1


def test_an_errored_utterance_names_its_code_and_has_no_finalization_latency(
    logs: list[dict[str, Any]],
) -> None:
    metrics = Metrics()
    telemetry = UtteranceTelemetry(metrics, log_transcripts=True)
    telemetry.record(
        ended(Outcome.ERRORED, ErrorCode.UPSTREAM_ERROR, first_delta_at=None), "app-s1"
    )
    [line] = logs
    assert line["outcome"] == "error:upstream_error"
    assert line["ttfw_ms"] is None
    assert "text" not in line
    assert sample(metrics, "voxtral_proxy_finalization_latency_seconds_count") == 0
    assert sample(metrics, "voxtral_proxy_time_to_first_word_seconds_count") is None


@pytest.mark.parametrize(
    ("fmt", "server_vad", "label"),
    [
        (AudioFormat(Encoding.G711_ULAW, 8000, 1), False, "g711_ulaw_8000"),
        (AudioFormat(Encoding.PCM16, 48000, 2), True, "pcm16_48000"),
        (AudioFormat(Encoding.PCM16, 12345, 1), False, "pcm16_other"),
    ],
)
def test_time_to_first_word_is_by_audio_format_and_turn_mode(
    fmt: AudioFormat, server_vad: bool, label: str, logs: list[dict[str, Any]]
) -> None:
    metrics = Metrics()
    telemetry = UtteranceTelemetry(metrics, log_transcripts=False)
    telemetry.record(ended(Outcome.DONE, audio_format=fmt, server_vad=server_vad), "app-s1")
    mode = "server_vad" if server_vad else "client"
    name = "voxtral_proxy_time_to_first_word_seconds_sum"
    assert sample(metrics, name, audio_format=label, turn_detection=mode) == pytest.approx(0.3)
