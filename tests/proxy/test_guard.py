"""proxy.guard over real sockets: the request-head deadline (first request and keep-alive), and
the bound on sockets waiting for their head (the oldest is evicted, real clients go on)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx

from devtools.fake_vllm import FakeVllm
from tests.harness import TEST_KEY, RunningProxy, fake_and_proxy, proxy_subprocess

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


async def test_pipelined_requests_read_slowly_get_every_response_and_no_408_mid_stream() -> None:
    """The keep-alive head deadline runs only while nothing is queued or in flight, and an idle
    kept-alive socket is closed without a 408 that a slow reader would find after its
    responses (issue 24, L5)."""
    lines: list[str] = []
    count = 200
    async with (
        FakeVllm() as fake,
        proxy_subprocess(fake.url, (TEST_KEY,), lines, HTTP_HEAD_TIMEOUT_S="1") as proxy,
    ):
        port = int(proxy.http_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        writer.write(b"GET /demo/demo.js HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        await asyncio.sleep(3)  # a slow reader: nothing taken for three head deadlines
        answer = b""
        async with asyncio.timeout(60):
            while chunk := await reader.read(65536):
                answer += chunk
        writer.close()
    assert answer.count(b"HTTP/1.1 200 ") == count
    # Once idle it is closed without a 408: one would land behind responses still being read.
    assert b"HTTP/1.1 408 " not in answer
    for line in lines:
        assert "Traceback" not in line, line
        assert '"level": "error"' not in line, line


async def test_a_header_line_longer_than_the_websocket_layer_allows_gets_431() -> None:
    async with fake_and_proxy() as (_, proxy), raw_socket(proxy) as (reader, writer):
        writer.write(HEAD + b"X-Pad: " + b"p" * 8200 + b"\r\n\r\n")
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 431 ")
