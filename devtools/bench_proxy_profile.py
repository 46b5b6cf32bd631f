"""Optional profiling of the proxy under the benchmark's load with py-spy (``--py-spy PATH``).

py-spy samples the running proxy from outside (no change to the proxy); its ``raw`` output is
one collapsed stack per line with a sample count. The summary ranks functions by self time
(where the CPU actually was) and by inclusive time (what a call costs with its callees).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 15
SCAFFOLDING_SHARE = 0.6


def start_py_spy(py_spy: str, pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes]:
    args = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s)))]
    args += ["--rate", "100", "--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish_py_spy(proc: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """Waits for py-spy; returns an error line if it failed, None on success."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "py-spy did not finish in time"
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return f"py-spy failed: {lines[-1] if lines else proc.returncode}"
    return None


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``: one entry per function, not line."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    short = "/".join(file.split("/")[-2:])
    return f"{name} ({short})" if file else name


def summarize(raw_path: Path, top: int = TOP) -> dict[str, Any]:
    """Top functions by self and by inclusive share of the samples in a py-spy raw file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def ranked(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "pct": round(100 * n / total, 1)}
            for name, n in counter.most_common()[:top]
        ]

    # The event loop's own frames sit under every sample: leaving them out of the inclusive
    # ranking makes room for the calls that differ.
    scaffolding = {name for name, n in inclusive.items() if n >= SCAFFOLDING_SHARE * total}
    for name in scaffolding:
        del inclusive[name]
    return {"samples": total, "self": ranked(own), "inclusive": ranked(inclusive)}
