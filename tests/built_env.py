"""An environment a script builds outside the clone, named by a variable (``make test`` always
sets it, building the env first when needed). Without the variable the tests that need the env
fail, except outside CI, where they are skipped so a quick ``pytest`` on a laptop stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def named_env(variable: str, script: str, what: str, proof: str, lacking: str) -> Path:
    """The env ``variable`` names (built by ``script``, described as ``what``), once the file
    ``proof`` inside it shows it is usable (``lacking``: what the failure says it is not)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        message = (
            f"{variable} is not set: run the suite with `make test` (it builds the {what} with "
            f"{script}), or export {variable}=$({script})"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = Path(raw)
    if not (env / proof).is_file():
        pytest.fail(f"{variable}={env} {lacking}: rebuild it with {script}")
    return env
