"""proxy.guard over real sockets: the request-head deadline (first request and keep-alive), and
the bound on sockets waiting for their head (the oldest is evicted, real clients go on)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from tests.harness import RunningProxy, fake_and_proxy

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


@contextlib.asynccontextmanager
async def raw_socket(
    proxy: RunningProxy,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(proxy.http_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (hang guard: 10 s)."""
    received = b""
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def test_a_head_not_finished_in_time_gets_408_and_is_closed() -> None:
    async with fake_and_proxy(http_head_timeout_s=0.5) as (_, proxy):
        async with raw_socket(proxy) as (reader, writer):
            writer.write(HEAD)  # no blank line: the head never ends
            answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_kept_alive_socket_gets_the_deadline_again() -> None:
    async with fake_and_proxy(http_head_timeout_s=0.5) as (_, proxy):
        async with raw_socket(proxy) as (reader, writer):
            writer.write(HEAD + b"\r\n")
            first = await reader.readuntil(b"}")  # the /healthz JSON body
            assert first.startswith(b"HTTP/1.1 200 ")
            writer.write(
                HEAD
            )  # a second head, left unfinished; bytes keep uvicorn's idle timer off
            for _ in range(3):
                await asyncio.sleep(0.2)
                with contextlib.suppress(ConnectionResetError):
                    writer.write(b"X-a: b\r\n")
            answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ")


async def test_waiting_sockets_beyond_the_bound_evict_the_oldest() -> None:
    async with (
        fake_and_proxy(max_pending_sockets=3, http_head_timeout_s=30) as (_, proxy),
        contextlib.AsyncExitStack() as stack,
    ):
        sockets = [await stack.enter_async_context(raw_socket(proxy)) for _ in range(3)]
        await asyncio.sleep(0.2)  # the server has seen all three
        fourth = await stack.enter_async_context(raw_socket(proxy))
        assert await until_closed(sockets[0][0]) == b""  # the oldest, closed silently
        for reader, _ in [*sockets[1:], fourth]:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await reader.read(1)
            assert not reader.at_eof()
        async with httpx.AsyncClient(base_url=proxy.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200
