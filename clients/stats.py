"""Summary statistics for latency samples: p50, p95, p99 and mean."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

STAT_KEYS = ("p50", "p95", "p99", "mean")


def summarize(values: Iterable[float | None], ndigits: int = 2) -> dict[str, float | None]:
    """Percentiles (linear interpolation) and mean of the non-None values; all None when empty."""
    data = np.array([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return dict.fromkeys(STAT_KEYS)
    p50, p95, p99 = np.percentile(data, [50, 95, 99])
    figures = {"p50": p50, "p95": p95, "p99": p99, "mean": data.mean()}
    return {key: round(float(value), ndigits) for key, value in figures.items()}
