"""devtools.bench_vad: one tiny run of each kind, and the tool end to end."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from clients.audio import CHUNK_BYTES, load_pcm
from devtools.bench_proxy_procs import ROOT
from devtools.bench_vad import measure
from proxy.vad import VadModel
from tests.clients.conftest import run_tool


async def test_measure_scores_what_it_feeds() -> None:
    pcm = load_pcm(ROOT / "samples" / "short.wav")
    on = await measure(3, 0.5, pcm, VadModel(), interval_s=0.05)
    assert on.streams == 3
    # 0.5 s of 80 ms frames for 3 streams; the last step may still be in flight at the end.
    assert on.windows_fed == 3 * round(0.5 / 0.08) * CHUNK_BYTES // 1024
    assert 0 < on.windows_scored <= on.windows_fed + 3 * 3
    assert on.cpu_ms_per_audio_s > 0
    off = await measure(3, 0.5, pcm, None, interval_s=0.05)
    assert off.windows_scored == 0
    assert off.cpu_ms_per_audio_s >= 0


async def test_the_tool_prints_a_row_per_mode() -> None:
    run = await run_tool("bench_vad", "--streams", "2", "--seconds", "0.3", package="devtools")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.split()[:2] == ["2", "on"] for line in lines)
    assert any(line.split()[:2] == ["2", "off"] for line in lines)
    assert any(line.split()[:2] == ["2", "adds"] for line in lines)


@pytest.mark.parametrize("args", [["--streams", "0"], ["--streams", "x"], ["--seconds", "0"]])
async def test_bad_arguments_are_refused(args: list[str]) -> None:
    run = await run_tool("bench_vad", *args, package="devtools")
    assert run.returncode == 2
    assert "bench_vad" in run.stderr


async def test_audio_shorter_than_a_frame_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(bytes(100))
    run = await run_tool("bench_vad", "--audio", str(short), package="devtools")
    assert run.returncode == 2
    assert "shorter than one 80 ms frame" in run.stderr
