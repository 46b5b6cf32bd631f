"""Suite-wide pytest setup."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from devtools.fake_vllm import FakeVllm
from proxy.logs import configure_logging
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


@pytest.fixture
def log_buffer(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The proxy's real logging setup (JSON lines, key redaction) writing into a buffer, at
    INFO unless the test is parametrized indirectly with another level."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(getattr(request, "param", "INFO"), json_lines=True)
    buffer = io.StringIO()
    for handler in root.handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
    yield buffer
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    structlog.reset_defaults()
