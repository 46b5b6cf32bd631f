"""Compat tier fixtures: the client env and the proxy (subprocess) with the fake vLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.compat import env_path
from tests.compat.harness import CompatStack, compat_stack


@pytest.fixture(scope="session")
def client_env() -> Path:
    return env_path.compat_env()


@pytest.fixture
async def stack() -> AsyncIterator[CompatStack]:
    """``python -m proxy`` with its defaults in front of a default fake vLLM."""
    async with compat_stack() as running:
        yield running
