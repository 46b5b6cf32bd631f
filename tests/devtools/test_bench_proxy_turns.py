"""devtools.bench_proxy_turns: one tiny run against the real proxy and fake vLLM, both modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.bench_proxy_turns import onset_to_open_s
from tests.clients.conftest import run_tool


def test_onset_to_open_counts_from_when_the_stream_reached_the_onset_in_real_time() -> None:
    started = {"type": "input_audio_buffer.speech_started", "payload": {"audio_start_ms": 1200}}
    # The audio from 1.2 s on was sent at 101.2; the event came 0.25 s later.
    assert onset_to_open_s(started, 100.0, 101.45) == pytest.approx(0.25)


@pytest.mark.timeout(240)
async def test_tiny_run_measures_both_modes_with_no_errors(tmp_path: Path) -> None:
    run = await run_tool(
        "bench_proxy_turns",
        "--streams", "2",
        "--seconds", "9",
        "--workers", "1",
        "--out", str(tmp_path),
        package="devtools",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CPU ms/audio s/stream" in run.stdout
    off, on = json.loads((tmp_path / "bench-proxy-turns.json").read_text())
    assert (off["turn_detection"], on["turn_detection"]) == ("off", "on")
    for row in (off, on):
        assert row["streams"] == 2
        assert row["error_count"] == 0, row["errors"]
        assert row["ping_ms"]["count"] > 0
        assert row["cpu_ms_per_audio_s_per_stream"] > 0
    # Off: one utterance per stream. On: the 9 s hold at least one whole spoken clip per stream.
    assert (off["turns"], off["done"]) == (0, 2)
    assert on["turns"] >= 2
    assert on["done"] >= 2
    # Each turn's onset→turn-open, and none with turn detection off.
    assert on["onset_to_open_ms"]["count"] == on["turns"]
    assert on["onset_to_open_ms"]["p50"] > 0
    assert off["onset_to_open_ms"]["count"] == 0
