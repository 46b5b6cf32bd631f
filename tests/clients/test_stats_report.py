"""Percentiles, WER, and the bench's table, CSV, JSON and PNG writers (no server needed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from clients.bench import SessionOutcome, summarize_level
from clients.cli import sample
from clients.report import CSV_COLUMNS, draw_chart, format_table, write_csv, write_json
from clients.stats import summarize
from clients.wer import reference_for, word_error_rate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_summarize_percentiles() -> None:
    figures = summarize(float(v) for v in range(1, 101))
    assert figures == {"p50": 50.5, "p95": 95.05, "p99": 99.01, "mean": 50.5}


def test_summarize_skips_missing_and_handles_empty() -> None:
    assert summarize([None, 4.0, None]) == {"p50": 4.0, "p95": 4.0, "p99": 4.0, "mean": 4.0}
    assert summarize([]) == {"p50": None, "p95": None, "p99": None, "mean": None}


def test_references_and_wer() -> None:
    reference = reference_for(sample("mid.wav"))
    assert reference is not None
    assert reference.startswith("And so, my fellow Americans")
    # Case and punctuation do not count as errors; a missing word does.
    assert word_error_rate(reference, reference.upper().replace(",", "")) == 0.0
    assert word_error_rate(reference, reference.replace("fellow ", "")) == pytest.approx(1 / 22)
    assert word_error_rate(reference, "") == 1.0
    assert reference_for(sample("does-not-exist.wav")) is None


def _ok(ttfw: float) -> SessionOutcome:
    timings: dict[str, float | None] = {
        "audio_s": 2.0,
        "ttfw_ms": ttfw,
        "finalize_ms": ttfw / 2,
        "total_ms": 0,
        "rtf": 1.1,
    }
    return SessionOutcome("ok", connect_ms=3.0, timings=timings, wer=0.25)


def _levels() -> list[dict[str, Any]]:
    first = [_ok(100.0), _ok(300.0)]
    second = [
        _ok(200.0),
        SessionOutcome("refused", "server_at_capacity", "server_at_capacity: full"),
        SessionOutcome("error", "upstream_unavailable", "upstream_unavailable: down"),
    ]
    return [summarize_level(2, 2, 4.0, first), summarize_level(3, 3, 2.0, second)]


def test_level_summary_counts_refusals_apart() -> None:
    first, second = _levels()
    assert (first["ok"], first["capacity_refusals"], first["errors"]) == (2, 0, 0)
    assert first["ttfw_ms"]["p50"] == 200.0
    assert first["throughput_x"] == 1.0  # 4 s of audio in 4 s
    assert (second["ok"], second["capacity_refusals"], second["errors"]) == (1, 1, 1)
    assert second["error_codes"] == {"upstream_unavailable": 1}
    assert second["wer_mean"] == 0.25
    assert len(second["utterances"]) == 3


def test_writers(tmp_path: Path) -> None:
    levels = _levels()
    write_json(tmp_path / "b.json", {"levels": levels})
    write_csv(tmp_path / "b.csv", levels)
    draw_chart(tmp_path / "b.png", levels, "test")

    assert json.loads((tmp_path / "b.json").read_text())["levels"][1]["capacity_refusals"] == 1
    with (tmp_path / "b.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["concurrency"] for r in rows] == ["2", "3"]
    assert rows[0]["ttfw_ms_p50"] == "200.0"
    assert rows[1]["capacity_refusals"] == "1"
    assert (tmp_path / "b.png").read_bytes().startswith(PNG_MAGIC)

    table = format_table(levels).splitlines()
    assert len(table) == 3 + len(levels)
    assert table[3].split()[:5] == ["2", "2", "2", "0", "0"]
