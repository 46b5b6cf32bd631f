"""Launcher test fixtures: the CPU build of vLLM, for the tests that ask vLLM itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import cpu_vllm


@pytest.fixture(scope="session")
def cpu_vllm_env() -> Path:
    return cpu_vllm.cpu_vllm_env()
