"""The shipped HAProxy configuration in front of a real proxy instance (issue 16): a client's own
X-Forwarded-For is replaced, so it cannot dodge the auth-failure limit, and the access log
carries no query string."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect

from tests.deploy.conftest import DEPLOY, ensure_tool
from tests.harness import TEST_KEY, fake_and_proxy

HAPROXY_CFG = DEPLOY / "haproxy" / "voxtral-stt.cfg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def for_test(config: str, listen: int, instance: int) -> str:
    """The shipped file with its listen address and servers pointed at this test's sockets."""
    config = config.replace("bind :8000", f"bind 127.0.0.1:{listen}")
    config = re.sub(r"maxconn \d+", "maxconn 256", config)
    config = re.sub(r"^\s*server gpu[1-9].*\n", "", config, flags=re.M)
    return re.sub(r"server gpu0 \S+", f"server gpu0 127.0.0.1:{instance}", config)


@contextlib.asynccontextmanager
async def haproxy(config: Path, log: list[str]) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        ensure_tool("haproxy", "haproxy"),
        "-db",
        "-f",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )

    async def collect() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            log.append(line.decode("utf-8", "replace"))

    collector = asyncio.create_task(collect())
    try:
        yield
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            await process.wait()
            await collector


async def first_event(url: str, headers: dict[str, str]) -> str:
    async with connect(url, additional_headers=headers) as ws:
        event = orjson.loads(await ws.recv())
    return str(event["payload"]["code"] if event["type"] == "error" else event["type"])


async def test_haproxy_sets_the_client_address_and_logs_no_query(tmp_path: Path) -> None:
    listen = free_port()
    log: list[str] = []
    async with fake_and_proxy(trusted_proxies=("127.0.0.1",), max_auth_failures_per_window=2) as (
        _,
        proxy,
    ):
        instance = int(proxy.http_url.rsplit(":", 1)[1])
        config = tmp_path / "haproxy.cfg"
        config.write_text(for_test(HAPROXY_CFG.read_text(), listen, instance))
        async with haproxy(config, log), httpx.AsyncClient() as http:
            async with asyncio.timeout(20):  # until HAProxy listens and counts the server up
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{listen}/healthz")).is_success:
                            break
                    await asyncio.sleep(0.2)
            url = f"ws://127.0.0.1:{listen}/api/asr-streaming"
            codes = [
                await first_event(url, {"X-API-Key": "wrong", "X-Forwarded-For": f"10.0.0.{n}"})
                for n in range(4)
            ]
            # Every attempt is counted against the real client, whatever it claimed to be.
            assert codes == ["unauthorized", "unauthorized", "rate_limited", "rate_limited"]
            assert await first_event(f"{url}?api_key={TEST_KEY}&session_id=hp-1", {}) == (
                "session.created"
            )
            await asyncio.sleep(0.5)  # HAProxy logs a WebSocket when it ends
    requests = [line for line in log if "/api/asr-streaming" in line]
    assert len(requests) == 5, log
    for line in log:
        assert TEST_KEY not in line
        assert "api_key" not in line
        assert "session_id" not in line
