"""devtools.bench_proxy: its bookkeeping, and one tiny run against the real proxy and fake vLLM."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from clients.stats import summarize
from devtools.bench_proxy import CHUNK_S, PhaseRun, parse_args, steady_state_cpu
from devtools.bench_proxy_check import (
    compare,
    expected_for,
    expected_for_utterances,
    summary_ms,
    trigger_index,
)
from devtools.bench_proxy_load import StreamPlan, StreamResult
from devtools.bench_proxy_procs import Sample, Sampler
from devtools.fake_vllm import FRAME_BYTES, predict_deltas
from tests.clients.conftest import run_tool

DELAY_MS = 480


def _noise(frames: int) -> bytes:
    return os.urandom(frames * FRAME_BYTES)


def test_modes_run_in_the_order_given_each_once() -> None:
    # Swapping the order between runs is how a comparison checks for the later run's handicap.
    assert parse_args(["--modes", "openai,json24k,openai"]).modes == ["openai", "json24k"]
    assert parse_args(["--modes", "json24k,openai"]).modes == ["json24k", "openai"]


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


def test_back_to_back_utterances_expect_each_transcript_in_turn() -> None:
    pcm = _noise(25)
    plan = StreamPlan(index=0, first_chunk=0, chunks=25, start_offset_s=0.0)
    pieces = plan.utterances(10)
    assert pieces == [(0, 10), (10, 10), (20, 5)]
    # A remainder under two chunks joins the previous utterance.
    assert StreamPlan(0, 0, 21, 0.0).utterances(10) == [(0, 10), (10, 11)]
    cut = [(first, pcm[first * FRAME_BYTES : (first + n) * FRAME_BYTES]) for first, n in pieces]
    want = expected_for_utterances(cut, 25, DELAY_MS)
    each = [expected_for(audio, DELAY_MS) for _, audio in cut]
    assert want.deltas == tuple(d for e in each for d in e.deltas)
    assert want.text == "".join(e.text for e in each)
    # Tokens of an utterance's flush are released by its last append (its final follows it).
    assert max(want.nonempty_triggers[: len(each[0].nonempty)]) <= 9
    assert list(want.nonempty_triggers) == sorted(want.nonempty_triggers)


def test_compare_counts_each_kind_of_fault() -> None:
    sent = ["a", "b", "c", "d"]
    assert compare(sent, sent, text_ok=True).clean
    assert compare(sent, ["a", "c", "d"], text_ok=True).lost == 1
    assert compare(sent, ["a", "b", "b", "c", "d"], text_ok=True).duplicated == 1
    swapped = compare(sent, ["a", "c", "b", "d"], text_ok=True)
    assert (swapped.lost, swapped.duplicated, swapped.reordered) == (0, 0, 1)
    assert not compare(sent, sent, text_ok=False).clean


def test_latency_summary_uses_the_bench_percentiles_in_milliseconds() -> None:
    values = [v / 1000 for v in range(1, 101)]
    summary = summary_ms(values)
    # Linear interpolation, as clients.stats (make bench) computes them.
    assert summary == {"count": 100, **summarize(range(1, 101), ndigits=3), "max": 100.0}
    assert summary["p50"] == 50.5
    assert summary_ms([]) == {"count": 0, "p50": None, "p95": None, "p99": None,
                              "mean": None, "max": None}  # fmt: skip


def _phase(send_times: list[list[float]], cpu_at: dict[float, float]) -> PhaseRun:
    pid = 4242
    sampler = Sampler([pid])
    sampler.samples = [Sample(at, {pid: cpu}, {pid: 0}, (0, 0)) for at, cpu in cpu_at.items()]
    results = {
        i: StreamResult(i, connected=True, send_times=[*times, math.nan])
        for i, times in enumerate(send_times)
    }
    start, end = sampler.samples[0], sampler.samples[-1]
    return PhaseRun("json", results, [], start, end, start, {"proxy": pid}, sampler, [])


def test_steady_state_cpu_counts_only_while_every_stream_streams() -> None:
    # Two streams of 80 ms chunks: one from t=0 to 10 s, one from t=2 s to 12 s. Only 2..10 s
    # has both; the samples at 3 s and 9 s bound the measured part (6 s, 150 chunks).
    chunks_a = [i * CHUNK_S for i in range(126)]
    chunks_b = [2.0 + i * CHUNK_S for i in range(126)]
    cpu = {0.0: 0.0, 1.0: 5.0, 3.0: 5.5, 9.0: 5.8, 11.0: 9.0, 12.5: 9.5}
    steady = steady_state_cpu(_phase([chunks_a, chunks_b], cpu), chunks=126)
    assert steady is not None
    name, rate = steady
    assert name == "proxy"
    in_window = sum(3.0 <= t < 9.0 for t in chunks_a + chunks_b)
    assert rate == pytest.approx(1000 * 0.3 / (in_window * CHUNK_S))


def test_steady_state_cpu_needs_two_samples_inside_the_overlap() -> None:
    chunks_a = [i * CHUNK_S for i in range(26)]
    chunks_b = [1.0 + i * CHUNK_S for i in range(26)]
    cpu = {0.0: 0.0, 1.5: 1.0, 5.0: 2.0}  # only one sample between 1.0 s and 2.0 s
    assert steady_state_cpu(_phase([chunks_a, chunks_b], cpu), chunks=26) is None


@pytest.mark.timeout(300)
async def test_tiny_run_writes_results_with_nothing_lost(tmp_path: Path) -> None:
    run = await run_tool(
        "bench_proxy",
        "--streams", "2",
        "--audio-seconds", "2",
        "--utterance-seconds", "0.8",
        "--workers", "2",
        "--ramp-seconds", "0.2",
        "--quiet-wait", "0",
        "--out", str(tmp_path),
        package="devtools",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "added p50/p99 ms" in run.stdout
    document = json.loads((tmp_path / "bench-proxy.json").read_text())
    assert (tmp_path / "bench-proxy.png").stat().st_size > 0
    assert document["config"]["streams"] == [2]
    assert document["config"]["modes"] == ["json", "binary", "ulaw", "json24k", "agent", "openai"]
    (level,) = document["levels"]
    assert level["n"] == 2
    direct = level["direct"]
    assert direct["completed"] == 2, direct["failures"]
    assert set(level["modes"]) == {"json", "binary", "ulaw", "json24k", "agent", "openai"}
    for mode, m in level["modes"].items():
        assert set(m["added_latency_ms"]) == {"p50", "p99"}
        assert isinstance(m["proxy_cpu_ms_per_audio_s"], float)
        assert m["proxy_streaming_cpu_ms_per_audio_s"] >= 0
        assert isinstance(m["proxy_setup_cpu_ms_per_stream"], float)
        assert isinstance(m["proxy_cpu_ms_per_utterance"], float)
        # 25 chunks in utterances of 10: three per stream in the agent mix.
        assert m["utterances"] == (6 if mode == "agent" else 2)
        phase = m["proxy"]
        assert phase["completed"] == 2, (mode, phase["failures"])
        assert (m["lost_events"], m["duplicated_events"], m["reordered_events"]) == (0, 0, 0)
        assert m["done_text_mismatches"] == 0
        assert phase["error_events"] == {}
        assert phase["latency_ms"]["count"] > 0
        assert phase["loadgen"]["workers"] == 2
        # Deflate is offered to the proxy (which declines it).
        assert phase["websocket_extensions"] == {"none": 2}
        assert "proxy" in phase["processes"]
    # The same streams and audio: as many deltas measured as straight to vLLM.
    assert level["modes"]["json"]["proxy"]["latency_ms"]["count"] == direct["latency_ms"]["count"]
    assert level["modes"]["binary"]["proxy"]["latency_ms"]["count"] == direct["latency_ms"]["count"]
    # The same 24 kHz audio costs the same deltas in either protocol.
    assert (
        level["modes"]["openai"]["proxy"]["latency_ms"]["count"]
        == level["modes"]["json24k"]["proxy"]["latency_ms"]["count"]
    )
