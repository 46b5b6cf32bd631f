"""proxy.upstream.UpstreamConnection and open_upstream, against the fake vLLM and small
WebSocket servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from devtools.fake_vllm import DEFAULT_MODEL, FakeVllm, predict_deltas
from proxy.upstream import UpstreamConnection, UpstreamUnavailable, open_upstream
from tests.harness import wait_for

PCM = bytes(range(256)) * 40  # 10,240 bytes: four 80 ms frames


class Recorder:
    """What an attached connection delivered."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self.messages: list[dict[str, Any]] = []
        self.losses = 0
        connection.attach(self.on_message, self.on_lost)

    def on_message(self, raw: str) -> None:
        self.messages.append(json.loads(raw))

    def on_lost(self) -> None:
        self.losses += 1

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


def send_utterance(connection: UpstreamConnection, pcm: bytes) -> None:
    connection.send(json.dumps({"type": "input_audio_buffer.commit"}))
    audio = base64.b64encode(pcm).decode()
    connection.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    connection.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))


@contextlib.asynccontextmanager
async def server(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as running:
        port = running.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


async def greet(ws: ServerConnection) -> None:
    await ws.send(json.dumps({"type": "session.created", "id": "sess_test"}))


async def test_greeting_then_session_update_then_events_in_order(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    recorder = Recorder(connection)
    send_utterance(connection, PCM)
    await wait_for(lambda: "transcription.done" in recorder.types())
    received = [event["type"] for _, event in fake.received]
    assert received[0] == "session.update"
    assert fake.received[0][1]["model"] == DEFAULT_MODEL
    deltas = [m["delta"] for m in recorder.messages if m["type"] == "transcription.delta"]
    assert deltas == predict_deltas(PCM)
    assert recorder.types()[-1] == "transcription.done"
    connection.close()
    await wait_for(lambda: recorder.losses == 1)
    await wait_for(lambda: fake.open_connections == 0)


async def test_sends_while_corked_go_out_at_uncork_whole_and_in_order(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    recorder = Recorder(connection)
    await wait_for(lambda: len(fake.received) == 1)  # the session.update
    connection.corked = True
    send_utterance(connection, PCM)
    await asyncio.sleep(0.1)
    assert len(fake.received) == 1  # nothing written while corked
    connection.uncork()
    await wait_for(lambda: "transcription.done" in recorder.types())
    assert [event["type"] for _, event in fake.received][1:] == [
        "input_audio_buffer.commit",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]
    deltas = [m["delta"] for m in recorder.messages if m["type"] == "transcription.delta"]
    assert deltas == predict_deltas(PCM)
    connection.close()


async def test_messages_before_attach_are_delivered_by_attach(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, "no-such-model")
    # vLLM answers an unknown model with an error event, before anyone listens.
    await wait_for(lambda: fake.errors_sent == 1)
    await asyncio.sleep(0.05)
    recorder = Recorder(connection)
    assert recorder.types() == ["error"]
    connection.close()


async def test_pause_holds_messages_and_resume_delivers_them_in_order(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    recorder = Recorder(connection)
    connection.pause()
    send_utterance(connection, PCM)
    await wait_for(lambda: fake.generations_completed == 1)
    await asyncio.sleep(0.1)
    assert recorder.messages == []
    connection.resume()  # what was read is handed over now, the rest as the socket is read
    await wait_for(lambda: "transcription.done" in recorder.types())
    assert recorder.types()[-1] == "transcription.done"
    deltas = [m["delta"] for m in recorder.messages if m["type"] == "transcription.delta"]
    assert deltas == predict_deltas(PCM)
    connection.close()


async def test_pausing_inside_a_burst_holds_the_rest_of_it(fake: FakeVllm) -> None:
    """Events read together are still handed over one by one: a pause taken while handling
    one holds those after it."""
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    fake.hang()
    send_utterance(connection, PCM)
    delivered: list[str] = []

    def on_message(raw: str) -> None:
        delivered.append(json.loads(raw)["type"])
        if len(delivered) == 2:
            connection.pause()

    connection.attach(on_message, lambda: None)
    fake.resume()  # every event of the utterance arrives at once
    await wait_for(lambda: fake.generations_completed == 1)
    await asyncio.sleep(0.1)
    assert len(delivered) == 2
    connection.resume()
    await wait_for(lambda: "transcription.done" in delivered)
    assert delivered[-1] == "transcription.done"
    assert len(delivered) == len(predict_deltas(PCM)) + 1
    connection.close()


async def test_vllm_going_away_is_reported_once_and_sends_are_dropped(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    recorder = Recorder(connection)
    await fake.kill_connections(1012)
    await wait_for(lambda: recorder.losses == 1)
    assert connection.closed
    connection.send(json.dumps({"type": "input_audio_buffer.commit"}))  # no error, no effect
    connection.close()
    await asyncio.sleep(0.05)
    assert recorder.losses == 1


async def test_attaching_after_the_loss_reports_it_at_once(fake: FakeVllm) -> None:
    connection = await open_upstream(fake.url, DEFAULT_MODEL)
    await fake.kill_connections()
    await wait_for(lambda: connection.closed)
    recorder = Recorder(connection)
    assert recorder.losses == 1


async def test_pings_are_answered() -> None:
    answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        await greet(ws)
        pong = await ws.ping()
        answered.set_result(await asyncio.wait_for(pong, 5))
        await ws.wait_closed()

    async with server(handler) as url:
        connection = await open_upstream(url, DEFAULT_MODEL)
        Recorder(connection)
        latency = await asyncio.wait_for(answered, 5)
        assert latency >= 0
        connection.close()


async def test_a_fragmented_message_is_delivered_whole() -> None:
    async def handler(ws: ServerConnection) -> None:
        await greet(ws)
        await ws.recv()  # session.update
        await ws.send(iter(['{"type":"transcription.delta",', '"delta":"héllo"}']))
        await ws.wait_closed()

    async with server(handler) as url:
        connection = await open_upstream(url, DEFAULT_MODEL)
        recorder = Recorder(connection)
        await wait_for(lambda: bool(recorder.messages))
        assert recorder.messages == [{"type": "transcription.delta", "delta": "héllo"}]
        connection.close()


async def test_backpressure_from_a_peer_that_does_not_read() -> None:
    """While vLLM does not read, writes pile up until the socket's buffer is full: writable
    turns false, and on_writable fires once it drains."""
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await greet(ws)
        await release.wait()
        async for _ in ws:
            pass

    async with server(handler) as url:
        connection = await open_upstream(url, DEFAULT_MODEL)
        Recorder(connection)
        drained = asyncio.Event()
        connection.on_writable = drained.set
        chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 65536})
        sent = 0
        while connection.writable and sent < 2000:
            connection.send(chunk)
            sent += 1
        assert not connection.writable, "128 MiB went out without any backpressure"
        release.set()
        await asyncio.wait_for(drained.wait(), 10)
        assert connection.writable
        connection.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_nothing_listening_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable, match=r"OSError|ConnectionRefused"):
        await open_upstream(f"ws://127.0.0.1:{_free_port()}/v1/realtime", DEFAULT_MODEL)


async def test_an_http_server_that_refuses_the_upgrade_is_unavailable(fake: FakeVllm) -> None:
    with pytest.raises(UpstreamUnavailable, match=r"InvalidStatus|404"):
        await open_upstream(fake.http_url.replace("http", "ws") + "/nope", DEFAULT_MODEL)


async def test_a_peer_that_does_not_greet_first_is_unavailable() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "transcription.delta", "delta": "x"}))
        await ws.wait_closed()

    async with server(handler) as url:
        with pytest.raises(UpstreamUnavailable, match=r"session\.created"):
            await open_upstream(url, DEFAULT_MODEL)


async def test_a_silent_peer_is_unavailable_after_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("proxy.upstream.CONNECT_TIMEOUT_S", 0.3)

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with server(handler) as url:
        with pytest.raises(UpstreamUnavailable, match="TimeoutError"):
            await open_upstream(url, DEFAULT_MODEL)


async def test_a_peer_that_closes_before_greeting_is_unavailable() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1011)

    async with server(handler) as url:
        with pytest.raises(UpstreamUnavailable):
            await open_upstream(url, DEFAULT_MODEL)


async def test_an_invalid_url_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable, match="invalid upstream URL"):
        await open_upstream("http://127.0.0.1:1/v1/realtime", DEFAULT_MODEL)
