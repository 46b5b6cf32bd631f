"""Suite-wide pytest setup."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devtools.fake_vllm import FakeVllm
from tests.harness import RunningProxy, serve_proxy


@pytest.fixture
async def fake() -> AsyncIterator[FakeVllm]:
    """A fake vLLM with default settings, on a free loopback port."""
    async with FakeVllm() as server:
        yield server


@pytest.fixture
async def proxy(fake: FakeVllm) -> AsyncIterator[RunningProxy]:
    """The real proxy in front of ``fake``."""
    async with serve_proxy(fake.url) as running:
        yield running
