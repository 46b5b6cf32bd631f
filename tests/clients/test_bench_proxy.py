"""clients.bench_proxy: its bookkeeping, and one tiny run against the real proxy and fake vLLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clients.bench_proxy_check import compare, expected_for, percentile, trigger_index
from tests.clients.conftest import run_tool
from tests.fake_vllm import FRAME_BYTES, predict_deltas

DELAY_MS = 480


def _noise(frames: int) -> bytes:
    return os.urandom(frames * FRAME_BYTES)


def test_trigger_index_agrees_with_the_fake_token_model() -> None:
    frames = 30
    pcm = _noise(frames)
    final_tokens = len(predict_deltas(pcm, delay_ms=DELAY_MS))
    for sent in range(1, frames + 1):
        released = len(predict_deltas(pcm[: sent * FRAME_BYTES], delay_ms=DELAY_MS, final=False))
        # Tokens whose releasing append (message index sent - 1 or earlier) has gone out.
        by_trigger = sum(
            trigger_index(i, frames, DELAY_MS) <= sent - 1 for i in range(1, final_tokens + 1)
        )
        assert by_trigger == released
    assert all(
        trigger_index(i, frames, DELAY_MS) == frames
        for i in range(1, final_tokens + 1)
        if i > len(predict_deltas(pcm, delay_ms=DELAY_MS, final=False))
    )


def test_expected_keeps_nonempty_deltas_with_their_triggers() -> None:
    pcm = _noise(40)
    want = expected_for(pcm, DELAY_MS)
    assert want.text == "".join(want.deltas)
    assert list(want.nonempty) == [d for d in want.deltas if d]
    assert len(want.nonempty_triggers) == len(want.nonempty)
    assert list(want.nonempty_triggers) == sorted(want.nonempty_triggers)


def test_compare_counts_each_kind_of_fault() -> None:
    sent = ["a", "b", "c", "d"]
    assert compare(sent, sent, text_ok=True).clean
    assert compare(sent, ["a", "c", "d"], text_ok=True).lost == 1
    assert compare(sent, ["a", "b", "b", "c", "d"], text_ok=True).duplicated == 1
    swapped = compare(sent, ["a", "c", "b", "d"], text_ok=True)
    assert (swapped.lost, swapped.duplicated, swapped.reordered) == (0, 0, 1)
    assert not compare(sent, sent, text_ok=False).clean


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None


@pytest.mark.timeout(240)
async def test_tiny_run_writes_results_with_nothing_lost(tmp_path: Path) -> None:
    run = await run_tool(
        "bench_proxy",
        "--streams", "2",
        "--audio-seconds", "2",
        "--workers", "2",
        "--ramp-seconds", "0.2",
        "--quiet-wait", "0",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "added p50/p99 ms" in run.stdout
    document = json.loads((tmp_path / "bench-proxy.json").read_text())
    assert (tmp_path / "bench-proxy.png").stat().st_size > 0
    assert document["config"]["streams"] == [2]
    (level,) = document["levels"]
    assert level["n"] == 2
    for key in (
        "added_latency_ms",
        "proxy_cpu_ms_per_audio_s",
        "proxy_rss_per_stream_kib",
        "kept_up_with_real_time",
    ):
        assert key in level
    assert set(level["added_latency_ms"]) == {"p50", "p99"}
    assert isinstance(level["proxy_cpu_ms_per_audio_s"], float)
    for run_name in ("direct", "proxy"):
        phase = level[run_name]
        assert phase["completed"] == 2, phase["failures"]
        assert phase["lost_events"] == 0
        assert phase["duplicated_events"] == 0
        assert phase["reordered_events"] == 0
        assert phase["done_text_mismatches"] == 0
        assert phase["latency_ms"]["count"] > 0
        assert phase["loadgen"]["workers"] == 2
        assert all(w["cpu_s"] is not None for w in phase["loadgen"]["per_worker"])
    # Both runs measured the same deltas (the same streams, the same audio).
    assert level["direct"]["latency_ms"]["count"] == level["proxy"]["latency_ms"]["count"]
    assert "proxy" in level["proxy"]["processes"]
    assert (level["lost_events"], level["duplicated_events"], level["reordered_events"]) == (
        0,
        0,
        0,
    )
