"""Shared helpers of the deploy tests: the repository root and system tools installed on demand."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.processes import ROOT

DEPLOY = ROOT / "deploy"


def ensure_tool(binary: str, package: str) -> str:
    """The path of a Debian tool, installed with apt-get when missing (needs root); otherwise the
    test fails with the command that would install it."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{binary} is missing: install it with `apt-get install -y {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"{binary} is still missing after `apt-get install {package}`")
    return found
