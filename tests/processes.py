"""Running the project's own commands from tests: in the clone's root, output captured as text."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_in_repo(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    cwd: Path = ROOT,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``argv`` run to completion in ``cwd`` (the clone's root unless told otherwise), with
    ``env`` (this process's environment unless told otherwise); a hang fails the test."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )
