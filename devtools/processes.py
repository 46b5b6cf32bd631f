"""Stopping a child process the tools and tests started: SIGTERM (so it can drain and clean
up), then SIGKILL if it has not exited in time."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(
    proc: subprocess.Popen[Any], term_timeout_s: float, kill_timeout_s: float = 10.0
) -> None:
    """Returns once ``proc`` has exited (at once if it already had)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(term_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_timeout_s)
