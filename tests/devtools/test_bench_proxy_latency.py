"""devtools.bench_proxy_latency: the per-shape summary against the direct path, and the frames
each shape sends."""

from __future__ import annotations

import pytest

from devtools.bench_proxy_latency import SHAPES, Run, Shape, format_table, frames, summarise
from devtools.bench_proxy_procs import ROOT


def test_summary_is_against_the_same_words_on_the_direct_path() -> None:
    direct = [Run([0.56, 0.64, 0.72], 0.002), Run([0.57, 0.65, 0.73], 0.004)]
    proxied = [Run([0.60, 0.70, 0.74], 0.003), Run([0.62, 0.66, 0.78], None)]
    summary = summarise(direct, proxied)
    # The direct reference per word is the median over its runs: 0.565, 0.645, 0.725.
    assert summary["first_word_ms"] == pytest.approx(610.0)
    assert summary["first_word_vs_direct_ms"] == pytest.approx(45.0)
    # Per run: mean of (0.035, 0.055, 0.015) = 35 ms and of (0.055, 0.015, 0.055) = 41.7 ms.
    assert summary["mean_word_delay_vs_direct_ms"] == pytest.approx(38.3)
    assert summary["done_after_commit_ms"] == pytest.approx(3.0)
    assert summary["onset_to_turn_open_ms"] is None  # no server VAD
    table = format_table({"shape a": summary})
    assert "shape a" in table
    assert "38.3" in table


def test_server_vad_runs_report_the_median_onset_to_turn_open() -> None:
    direct = [Run([0.56, 0.64], 0.002)]
    proxied = [Run([0.80, 0.88], 0.003, 0.25), Run([0.82, 0.90], 0.004, 0.31), Run([], None, 0.27)]
    summary = summarise(direct, proxied)
    assert summary["onset_to_turn_open_ms"] == pytest.approx(270.0)
    table = format_table({"vad shape": summary})
    assert "onset→turn open" in table
    assert "270.0" in table


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_each_shape_sends_whole_frames_of_its_format(shape: Shape) -> None:
    pieces = frames(shape, ROOT / "samples" / "short.wav")
    size = shape.fmt.chunk_bytes(shape.frame_ms)
    assert pieces
    assert {len(p) for p in pieces} == {size}
    assert size % shape.fmt.frame_bytes == 0
