"""proxy.ws_protocol (and the guard's side of the upgrade), against ``python -m proxy`` in a
subprocess in front of the fake vLLM: the faults of issue 24 live below the app, where the
WebSocket layer parses heads and frames. Each test attacks with raw bytes and checks what the
server does (answers, closes, close codes, log lines), never how fast."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from websockets.frames import Frame, Opcode

from devtools.fake_vllm import FakeVllm, predict_deltas
from tests.harness import RunningProxy, connected, load_pcm, proxy_subprocess

KEY = "edge-test-key-0123456789abcdef-0123456789"
GUARD_S = 20.0  # hang guard; nothing here waits on a deadline shorter than the defaults'
UPGRADE = (
    "GET /api/asr-streaming{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n{extra}\r\n"
)


@contextlib.asynccontextmanager
async def edge_proxy(lines: list[str], **env: str) -> AsyncIterator[RunningProxy]:
    async with FakeVllm() as fake, proxy_subprocess(fake.url, (KEY,), lines, **env) as proxy:
        yield proxy


def port_of(proxy: RunningProxy) -> int:
    return int(proxy.http_url.rsplit(":", 1)[1])


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the socket."""
    received = b""
    async with asyncio.timeout(GUARD_S):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


async def open_session(
    proxy: RunningProxy,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    """An upgraded, authenticated socket and its session.created event."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    writer.write(UPGRADE.format(query="", extra=f"X-API-Key: {KEY}\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    _, payload = await read_frame(reader)
    created: dict[str, Any] = orjson.loads(payload)
    assert created["type"] == "session.created"
    return reader, writer, created


@contextlib.asynccontextmanager
async def raw_websocket(
    proxy: RunningProxy, *, rcvbuf: int | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """An upgraded, authenticated socket past session.created, spoken to in raw frames."""
    reader, writer, _ = await open_session(proxy)
    try:
        if rcvbuf is not None:
            import socket

            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        yield reader, writer
    finally:
        writer.close()


def frame(opcode: Opcode, payload: bytes = b"", *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=True)


async def read_frame(reader: asyncio.StreamReader) -> tuple[Opcode, bytes]:
    """One (unmasked) server frame."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return Opcode(first & 0x0F), await reader.readexactly(length)


async def frames_until_closed(reader: asyncio.StreamReader) -> list[tuple[Opcode, bytes]]:
    frames: list[tuple[Opcode, bytes]] = []
    async with asyncio.timeout(GUARD_S):
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
            while True:
                frames.append(await read_frame(reader))
                if frames[-1][0] is Opcode.CLOSE:
                    break
    return frames


def close_code(frames: list[tuple[Opcode, bytes]]) -> int:
    assert frames, "the server sent nothing"
    assert frames[-1][0] is Opcode.CLOSE, frames[-3:]
    code: int = struct.unpack("!H", frames[-1][1][:2])[0]
    return code


def no_tracebacks(lines: list[str]) -> None:
    """Client misbehaviour is logged, never as an ERROR with a traceback."""
    for line in lines:
        assert "Traceback" not in line, line
        assert '"level": "error"' not in line, line


async def service_still_works(proxy: RunningProxy) -> None:
    async with httpx.AsyncClient(base_url=proxy.http_url, timeout=GUARD_S) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with connected(proxy, key=KEY) as client:
        await client.utterance("after", load_pcm()[:32_000])
        events = await client.recv_until("transcription.done", "after", timeout=GUARD_S)
        assert events[-1]["type"] == "transcription.done"


# H1: heads websockets would refuse are refused by the guard, answered and closed.


async def test_an_upgrade_with_a_header_line_over_8_kib_gets_431_and_is_closed() -> None:
    lines: list[str] = []
    async with edge_proxy(lines) as proxy:
        for query, extra in (
            ("", f"X-API-Key: {KEY}\r\nSec-WebSocket-Protocol: {'a' * 8300}\r\n"),
            (f"?pad={'b' * 8300}", f"X-API-Key: {KEY}\r\n"),  # the request line
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
            writer.write(UPGRADE.format(query=query, extra=extra).encode())
            answer = await until_closed(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
        await service_still_works(proxy)
    no_tracebacks(lines)


async def test_many_such_upgrades_do_not_hold_sockets() -> None:
    """45 refused upgrades against MAX_OPEN_SOCKETS=40 (the issue's attack): each is answered
    and closed, and valid clients and /readyz go on."""
    lines: list[str] = []
    async with edge_proxy(lines, MAX_OPEN_SOCKETS="40") as proxy:
        extra = f"X-API-Key: {KEY}\r\nX-Pad: {'c' * 9000}\r\n"
        held = []  # the attacker keeps its ends open
        for _ in range(45):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
            held.append(writer)
            writer.write(UPGRADE.format(query="", extra=extra).encode())
            assert (await until_closed(reader)).startswith(b"HTTP/1.1 431 ")
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=GUARD_S) as http:
            assert (await http.get("/readyz")).status_code == 200
        await service_still_works(proxy)
        for writer in held:
            writer.close()


# H2: pings from a peer: only the latest is answered, and a flood is closed 1008.


async def test_only_the_latest_of_many_pings_is_answered() -> None:
    lines: list[str] = []
    async with (
        edge_proxy(lines, WS_MAX_CONTROL_FRAMES_PER_S="1000000") as proxy,
        raw_websocket(proxy) as (reader, writer),
    ):
        count = 3000
        writer.write(b"".join(frame(Opcode.PING, b"%06d" % n) for n in range(count)))
        last = b"%06d" % (count - 1)
        pongs = 0
        async with asyncio.timeout(GUARD_S):
            while True:
                opcode, payload = await read_frame(reader)
                pongs += opcode is Opcode.PONG
                if payload == last:
                    break
        # One pong per batch of parsed pings at most (RFC 6455 5.5.3), not one per ping.
        assert pongs <= count // 10, pongs
        writer.write(frame(Opcode.CLOSE, struct.pack("!H", 1000)))
        await service_still_works(proxy)
    no_tracebacks(lines)


def rss_mib(pid: int | None) -> float:
    assert pid is not None
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_pings_from_a_peer_that_never_reads_do_not_grow_memory() -> None:
    """64 MiB of pings, nothing read back (the issue measured RSS 93 -> 1,088 MiB): pongs are
    written only while the client takes them, so the proxy's memory stays put."""
    lines: list[str] = []
    async with (
        edge_proxy(lines, WS_MAX_CONTROL_FRAMES_PER_S="1000000") as proxy,
        raw_websocket(proxy, rcvbuf=4096) as (_, writer),
    ):
        before = rss_mib(proxy.pid)
        blob = frame(Opcode.PING, b"x" * 125) * 8000  # 1 MiB
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GUARD_S):
                for _ in range(64):
                    writer.write(blob)
                    await writer.drain()
        assert rss_mib(proxy.pid) - before < 32
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=GUARD_S) as http:
            assert (await http.get("/healthz")).status_code == 200
    no_tracebacks(lines)


async def test_a_ping_flood_is_closed_1008() -> None:
    lines: list[str] = []
    async with edge_proxy(lines) as proxy, raw_websocket(proxy) as (reader, writer):
        writer.write(b"".join(frame(Opcode.PING, b"x" * 125) for _ in range(2000)))
        frames = await frames_until_closed(reader)
        assert close_code(frames) == 1008
        assert sum(opcode is Opcode.PONG for opcode, _ in frames) <= 20
        await service_still_works(proxy)
    no_tracebacks(lines)


# H3: fragments per message are capped; a flood of them neither holds the loop nor the socket.


async def test_a_message_in_more_than_64_fragments_is_closed_1009() -> None:
    lines: list[str] = []
    async with edge_proxy(lines) as proxy, raw_websocket(proxy) as (reader, writer):
        flood = frame(Opcode.TEXT, b"", fin=False) + frame(Opcode.CONT, fin=False) * 100_000
        writer.write(flood)
        frames = await frames_until_closed(reader)
        assert close_code(frames) == 1009
        assert await until_closed(reader) == b""  # and the socket is closed
        await service_still_works(proxy)
    no_tracebacks(lines)


async def test_the_loop_answers_while_a_socket_floods_tiny_messages() -> None:
    """Empty binary messages, megabytes of them in one go: parsed a bounded batch at a time,
    one message waiting for the app at most, so /healthz and a real session go on."""
    lines: list[str] = []
    async with edge_proxy(lines) as proxy, raw_websocket(proxy) as (reader, writer):
        writer.write(frame(Opcode.BINARY, b"\x00\x00") * 400_000)
        await service_still_works(proxy)
        frames = await frames_until_closed(reader)  # the app refuses them, then closes
        assert frames[-1][0] is Opcode.CLOSE
    no_tracebacks(lines)


# L3: frames up to twice the app's limit get the in-band error; larger ones close 1009.


async def test_frames_past_twice_the_message_limit_close_1009() -> None:
    lines: list[str] = []
    async with (
        edge_proxy(lines, WS_MAX_MESSAGE_BYTES="65536") as proxy,
        raw_websocket(proxy) as (reader, writer),
    ):
        writer.write(frame(Opcode.TEXT, b"x" * (2 * 65536)))
        _, payload = await read_frame(reader)
        assert orjson.loads(payload)["payload"]["code"] == "payload_too_large"
        writer.write(frame(Opcode.TEXT, b"x" * (2 * 65536 + 1)))
        assert close_code(await frames_until_closed(reader)) == 1009
    no_tracebacks(lines)


# L7: invalid UTF-8 closes 1007 without a traceback.


async def test_invalid_utf8_text_closes_1007_without_a_traceback() -> None:
    lines: list[str] = []
    async with edge_proxy(lines) as proxy, raw_websocket(proxy) as (reader, writer):
        writer.write(frame(Opcode.TEXT, b"\xff\xfe{}"))
        assert close_code(await frames_until_closed(reader)) == 1007
    no_tracebacks(lines)


# Frames read together: what they make for vLLM is written in one go after the last of them.


async def test_frames_sent_in_one_write_all_reach_vllm_in_order() -> None:
    """A client's commit, 50 binary frames of 20 ms and its final commit, in one TCP write: the
    edge has each next message waiting, the relay corks vLLM's socket until the last, and the
    transcript is exactly the fake's for that audio (nothing lost, reordered or left held)."""
    lines: list[str] = []
    pcm = load_pcm()[:32_000]  # 1 s
    step = 640  # 20 ms of 16 kHz PCM16
    async with edge_proxy(lines) as proxy:
        reader, writer, created = await open_session(proxy)
        try:
            envelope = {"type": "input_audio_buffer.commit", "session_id": created["session_id"]}
            opening = {**envelope, "request_id": "b1", "payload": {"final": False}}
            final = {**envelope, "request_id": "b1", "payload": {"final": True}}
            audio = (frame(Opcode.BINARY, pcm[i : i + step]) for i in range(0, len(pcm), step))
            writer.write(
                frame(Opcode.TEXT, orjson.dumps(opening))
                + b"".join(audio)
                + frame(Opcode.TEXT, orjson.dumps(final))
            )
            events = []
            async with asyncio.timeout(GUARD_S):
                while not events or events[-1]["type"] != "transcription.done":
                    opcode, payload = await read_frame(reader)
                    if opcode is Opcode.TEXT:
                        events.append(orjson.loads(payload))
        finally:
            writer.close()
    deltas = [e["payload"]["delta"] for e in events if e["type"] == "transcription.delta"]
    assert [e["type"] for e in events if e["type"] == "error"] == []
    assert "".join(deltas) == "".join(predict_deltas(pcm))
    assert events[-1]["request_id"] == "b1"
    no_tracebacks(lines)
