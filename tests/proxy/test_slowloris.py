"""Slowloris (finding 3 of issue 16): silent sockets and half-sent requests from 127.0.0.1 are
closed within the head deadline, while /healthz, /readyz (the proxy's own check of vLLM) and a
real client keep working, with the proxy's file-handle limit as low as the issue measured."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from devtools.fake_vllm import FakeVllm
from tests.harness import TEST_KEY, connected, proxy_subprocess

NOFILE = 256
SILENT = 300
HALF_SENT = 300
HEAD_TIMEOUT_S = 2.0
GUARD_S = 20.0  # hang guard for the whole attack; the deadline itself is HEAD_TIMEOUT_S


async def open_socket(
    port: int, first_bytes: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    if first_bytes:
        writer.write(first_bytes)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    """Returns once the server has closed (EOF or reset); a response before that is read."""
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass


async def test_idle_and_half_sent_sockets_are_closed_and_service_continues() -> None:
    lines: list[str] = []
    async with (
        FakeVllm() as fake,
        proxy_subprocess(
            fake.url,
            (TEST_KEY,),
            lines,
            nofile=NOFILE,
            HTTP_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S),
        ) as proxy,
    ):
        port = int(proxy.http_url.rsplit(":", 1)[1])
        half = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: "
        opened = await asyncio.gather(
            *[open_socket(port, b"") for _ in range(SILENT)],
            *[open_socket(port, half) for _ in range(HALF_SENT)],
        )
        attack = [pair for pair in opened if pair is not None]
        assert len(attack) > NOFILE  # more sockets than the proxy has file handles

        async def dribble() -> None:
            # Classic slowloris: a byte now and then, so idle timers never fire.
            while True:
                for _, writer in attack[SILENT:]:
                    with contextlib.suppress(OSError):
                        writer.write(b"b")
                await asyncio.sleep(0.5)

        dribbler = asyncio.create_task(dribble())
        try:
            async with httpx.AsyncClient(base_url=proxy.http_url, timeout=10) as http:
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 200
            async with connected(proxy) as client:
                await client.send("ping")
                assert (await client.recv())["type"] == "pong"
            async with asyncio.timeout(GUARD_S):
                await asyncio.gather(*[closed_by_server(reader) for reader, _ in attack])
        finally:
            dribbler.cancel()
            for _, writer in attack:
                writer.close()
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
    assert any("file_handle_limit_low" in line for line in lines)
