"""Bench output: the console table, the JSON and CSV files, and the PNG chart."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.stats import STAT_KEYS

# Per-level metrics that carry p50/p95/p99/mean.
STAT_METRICS = ("ttfw_ms", "finalize_ms", "rtf", "connect_ms")
CSV_COLUMNS = (
    "concurrency",
    "n",
    "ok",
    "capacity_refusals",
    "errors",
    "wall_s",
    "audio_s",
    "throughput_x",
    "utterances_per_s",
    *(f"{metric}_{key}" for metric in STAT_METRICS for key in STAT_KEYS),
    "wer_mean",
)


def csv_row(summary: dict[str, Any]) -> dict[str, Any]:
    """Flatten one level summary into the CSV columns (`ttfw_ms.p50` becomes `ttfw_ms_p50`)."""
    row: dict[str, Any] = {}
    for column in CSV_COLUMNS:
        metric, _, key = column.rpartition("_")
        if metric in STAT_METRICS and key in STAT_KEYS:
            row[column] = summary[metric][key]
        else:
            row[column] = summary[column]
    return {k: "" if v is None else v for k, v in row.items()}


def write_csv(path: Path, summaries: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(csv_row(summary) for summary in summaries)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per concurrency level: counts, then p50/p95/p99/mean of TTFW, finalize and RTF."""
    stats_head = "".join(f"{key:>8}" for key in STAT_KEYS)
    rtf_head = "".join(f"{key:>6}" for key in STAT_KEYS)
    groups = (
        f"{'':36}{'time to first word (ms)':^32}{'finalization (ms)':^32}{'real-time factor':^24}"
    )
    header = (
        f"{'conc':>5}{'n':>6}{'ok':>6}{'refused':>9}{'errors':>8}  "
        f"{stats_head}{stats_head}{rtf_head}{'audio x':>9}{'WER':>7}"
    )
    lines = [groups, header, "-" * len(header)]
    for s in summaries:
        ttfw = "".join(f"{_num(s['ttfw_ms'][k], 0):>8}" for k in STAT_KEYS)
        fin = "".join(f"{_num(s['finalize_ms'][k], 0):>8}" for k in STAT_KEYS)
        rtf = "".join(f"{_num(s['rtf'][k], 2):>6}" for k in STAT_KEYS)
        lines.append(
            f"{s['concurrency']:>5}{s['n']:>6}{s['ok']:>6}{s['capacity_refusals']:>9}"
            f"{s['errors']:>8}  {ttfw}{fin}{rtf}"
            f"{_num(s['throughput_x'], 2):>9}{_num(s['wer_mean'], 3):>7}"
        )
    return "\n".join(lines)


def draw_chart(path: Path, summaries: Sequence[dict[str, Any]], title: str) -> None:
    """Latency percentiles (top) and refusals/errors (bottom) against concurrency, as a PNG."""
    # Imported here: matplotlib takes seconds to load, and only this function needs it. Figure
    # renders through Agg by itself, so no display and no pyplot state are involved.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = [str(s["concurrency"]) for s in summaries]
    x = list(range(len(summaries)))
    figure = Figure(figsize=(9, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    styles = {"p50": "-", "p95": "--", "p99": ":"}
    for metric, label, color in (
        ("ttfw_ms", "time to first word", "tab:blue"),
        ("finalize_ms", "finalization", "tab:orange"),
    ):
        for key, style in styles.items():
            values = [s[metric][key] for s in summaries]
            points = [(xi, v) for xi, v in zip(x, values, strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                top.plot(xs, ys, style, marker="o", color=color, label=f"{label} {key}")
    top.set_ylabel("latency (ms)")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(fontsize="small", ncols=2)
    refused = [s["capacity_refusals"] for s in summaries]
    errors = [s["errors"] for s in summaries]
    bottom.bar(x, refused, color="tab:gray", label="capacity refusals")
    bottom.bar(x, errors, bottom=refused, color="tab:red", label="other errors")
    bottom.set_ylim(0, max([1, *(r + e for r, e in zip(refused, errors, strict=True))]) * 1.15)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("count")
    bottom.set_xlabel("concurrent sessions")
    bottom.set_xticks(x, labels)
    bottom.grid(axis="y", alpha=0.3)
    bottom.legend(fontsize="small")
    figure.savefig(path, dpi=110)
