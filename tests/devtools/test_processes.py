"""devtools.processes: a child is stopped with SIGTERM, or SIGKILL when it ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys

from devtools.processes import stop_process

# Prints once its SIGTERM handler is in place, then sleeps.
_CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, {handler})
print("ready", flush=True)
time.sleep(60)
"""


def _child(handler: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(handler=handler)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    return proc


def test_a_child_that_honours_sigterm_ends_by_it() -> None:
    proc = _child("lambda *_: sys.exit(3)")
    stop_process(proc, 30)
    assert proc.returncode == 3


def test_a_child_that_ignores_sigterm_is_killed() -> None:
    proc = _child("signal.SIG_IGN")
    stop_process(proc, 0.5)
    assert proc.returncode == -signal.SIGKILL


def test_an_exited_child_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stop_process(proc, 30)
    assert proc.returncode == 0
