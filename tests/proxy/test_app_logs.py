"""API keys never reach the logs: the real `python -m proxy` process, its stderr captured."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_vllm import FakeVllm
from proxy.config import ProxyConfig
from tests.harness import RunningProxy, connected, load_pcm

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("logkey-first-9b1f4e", "logkey-second-27c0d3")
WRONG = {
    "query": "wrongkey-query-5a5a",
    "header": "wrongkey-header-6b6b",
    "bearer": "wrongkey-bearer-7c7c",
}
_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@contextlib.asynccontextmanager
async def proxy_process(
    upstream_url: str, log_level: str, lines: list[str]
) -> AsyncIterator[RunningProxy]:
    """Runs ``python -m proxy`` on a free port, collecting its output lines into ``lines``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("VOXTRAL_")}
    env.update(
        VOXTRAL_API_KEY=",".join(KEYS),
        VOXTRAL_UPSTREAM_URL=upstream_url,
        SERVER_BIND_HOST="127.0.0.1",
        SERVER_PORT="0",
        LOG_LEVEL=log_level,
        WS_DRAIN_TIMEOUT_S="2",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def collect() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            found = _RUNNING.search(line)
            if found and not port.done():
                port.set_result(int(found.group(1)))

    collector = asyncio.create_task(collect())
    try:
        async with asyncio.timeout(30):
            waiters: list[asyncio.Future[Any]] = [port, collector]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        assert port.done(), "".join(lines)  # the process ended before serving
        number = port.result()
        config = ProxyConfig(api_keys=KEYS, upstream_url=upstream_url, port=number)
        yield RunningProxy(
            ws_url=f"ws://127.0.0.1:{number}/api/asr-streaming",
            http_url=f"http://127.0.0.1:{number}",
            api_key=KEYS[0],
            config=config,
            server=None,  # type: ignore[arg-type]  # it runs in its own process
        )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
            await collector


async def exercise(proxy: RunningProxy) -> None:
    """Sessions that present keys every way, and failed attempts every way."""
    pcm = load_pcm()[:32000]
    ways: list[dict[str, Any]] = [
        {"query": f"api_key={KEYS[0]}&session_id=log-s1"},
        {"headers": {"X-API-Key": KEYS[1]}},
        {"headers": {"Authorization": f"Bearer {KEYS[0]}"}},
    ]
    for number, how in enumerate(ways):
        async with connected(proxy, **how) as client:
            await client.utterance(f"r{number}", pcm)
            await client.recv_until("transcription.done", f"r{number}")
    failures: list[dict[str, Any]] = [
        {"query": f"api_key={WRONG['query']}"},
        {"headers": {"X-API-Key": WRONG["header"]}},
        {"headers": {"Authorization": f"Bearer {WRONG['bearer']}"}},
        {"query": f"api_key={KEYS[0][:-3]}"},  # most of a real key
    ]
    for how in failures:
        async with connected(proxy, expect_created=False, **how) as client:
            events, code = await client.recv_all_until_closed()
        assert (events[0]["payload"]["code"], code) == ("unauthorized", 4001)


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_no_key_in_any_log_line(log_level: str) -> None:
    lines: list[str] = []
    async with FakeVllm() as fake, proxy_process(fake.url, log_level, lines) as proxy:
        await exercise(proxy)
    assert lines, "the process logged nothing"
    secrets = [*KEYS, KEYS[0][:-3], *WRONG.values()]
    for line in lines:
        for secret in secrets:
            assert secret not in line, line
    # uvicorn's line for each WebSocket handshake shows the query string, key redacted.
    handshakes = [line for line in lines if "WebSocket /api/asr-streaming" in line]
    assert handshakes
    redacted = [line for line in handshakes if "api_key=[redacted]" in line]
    assert len(redacted) == 3  # one accepted and two refused connections had a query key
    assert any("session_id=log-s1" in line for line in redacted)
