"""The environment of the third-party clients (tests/compat/env/requirements.txt), built
by scripts/compat_env.sh.

It comes from ``VOXTRAL_COMPAT_ENV`` (``make test`` always sets it, building the env first when
needed). Without it the compat tests fail, except outside CI, where they are skipped so a quick
``pytest`` on a laptop stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def compat_env() -> Path:
    raw = os.environ.get("VOXTRAL_COMPAT_ENV", "").strip()
    if not raw:
        message = (
            "VOXTRAL_COMPAT_ENV is not set: run the suite with `make test` (it builds the client "
            "env with scripts/compat_env.sh), or export VOXTRAL_COMPAT_ENV=$(scripts/compat_env.sh)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = Path(raw)
    if not (env / ".yap-complete").is_file():
        pytest.fail(
            f"VOXTRAL_COMPAT_ENV={env} is not a complete env: rebuild it with scripts/compat_env.sh"
        )
    return env
