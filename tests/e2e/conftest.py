"""End-to-end fixtures: ``python -m launcher`` as a subprocess, serving the tiny dummy model with
the REAL vLLM (CPU build) behind the real proxy.

The CPU vLLM env comes from ``VOXTRAL_VLLM_CPU_ENV`` (see tests/cpu_vllm.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cpu_vllm
from tests.e2e.stack import Stack, running_stack


@pytest.fixture(scope="session")
def cpu_vllm_env() -> Path:
    return cpu_vllm.cpu_vllm_env()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, cpu_vllm_env: Path) -> Iterator[Stack]:
    """The shared stack: VLLM_MAX_MODEL_LEN=2048, as vLLM's own realtime tests use, and the
    connection cap taken from vLLM's KV cache."""
    with running_stack(
        tmp_path_factory.mktemp("stack"), cpu_vllm_env, MAX_CONCURRENT_CONNECTIONS="auto"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory, cpu_vllm_env: Path) -> Iterator[Stack]:
    """A second stack with VLLM_MAX_MODEL_LEN=128 (about 6 s of audio per generation), for
    rollover, and for killing vLLM without disturbing the shared stack."""
    with running_stack(
        tmp_path_factory.mktemp("small"), cpu_vllm_env, VLLM_MAX_MODEL_LEN="128"
    ) as running:
        yield running
