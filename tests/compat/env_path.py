"""The environment of the third-party clients (tests/compat/env/requirements.txt), built
by scripts/compat_env.sh and named by ``VOXTRAL_COMPAT_ENV`` (see ``tests.built_env``).
"""

from __future__ import annotations

from pathlib import Path

from tests.built_env import named_env


def compat_env() -> Path:
    return named_env(
        "VOXTRAL_COMPAT_ENV",
        "scripts/compat_env.sh",
        "client env",
        ".yap-complete",
        "is not a complete env",
    )
