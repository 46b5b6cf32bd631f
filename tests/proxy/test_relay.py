"""proxy.relay against a fake transport: a fake ASGI ``receive``/``send`` for the client and a
fake upstream connection, around the real session. What is checked is the relay's own job:
carrying the session's actions out in order, back-pressure, and the timers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from proxy import vllm_wire
from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS, ProxyConfig
from proxy.limits import SessionLimits
from proxy.metrics import Metrics
from proxy.relay import Relay
from proxy.session import Session
from proxy.upstream import UpstreamConnection

SID = "s1"
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
# PCM bytes that complete vLLM's first step at the default delay: a chunk of at least this much
# goes up as soon as the session has it (a smaller one waits for the step it completes).
STEP = vllm_wire.step_audio_bytes(0, DEFAULT_TRANSCRIPTION_DELAY_MS)


class FakeUpstream:
    """Stands in for ``UpstreamConnection``: records what is sent, delivers what the test says."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        # What each write carried (several texts: sent while corked).
        self.writes: list[list[str]] = []
        self._corked_texts: list[str] = []
        self.writable = True
        self.corked = False
        self.closed = False
        self.paused = False
        self.on_writable: Callable[[], None] = lambda: None
        self._on_message: Callable[[str], None] | None = None
        self._on_lost: Callable[[], None] | None = None

    def attach(self, on_message: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        self._on_message, self._on_lost = on_message, on_lost

    def send(self, text: str) -> None:
        assert self.writable
        assert not self.closed
        if self.corked:
            self._corked_texts.append(text)
            return
        self.sent.append(text)
        self.writes.append([text])

    def uncork(self) -> None:
        if self.corked:
            self.corked = False
            if self._corked_texts:
                self.sent.extend(self._corked_texts)
                self.writes.append(self._corked_texts)
                self._corked_texts = []

    def close(self) -> None:
        self.closed = True

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def deliver(self, event: dict[str, Any] | str) -> None:
        assert self._on_message is not None
        self._on_message(event if isinstance(event, str) else json.dumps(event))

    def drain(self) -> None:
        self.writable = True
        self.on_writable()


class FakeClient:
    """The ASGI side: frames the test pushes, and every message the relay sends."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        # Cleared, the client reads nothing: the relay's writes wait.
        self.reading = asyncio.Event()
        self.reading.set()

    def text(self, kind: str, request_id: str | None = None, **payload: Any) -> None:
        message = {"type": kind, "session_id": SID, "request_id": request_id, "payload": payload}
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        await self.reading.wait()
        self.sent.append(message)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]


class Rig:
    def __init__(self, message_ready: Callable[[], bool] | None = None, **config: Any) -> None:
        self.config = ProxyConfig(api_keys=("k",), served_model_name=MODEL, **config)
        self.client = FakeClient()
        self.upstream = FakeUpstream()
        self.reopened: list[FakeUpstream] = []
        session = Session(
            session_id=SID,
            served_model=MODEL,
            limits=SessionLimits.from_config(self.config),
            transcription_delay_ms=self.config.transcription_delay_ms,
        )
        self.relay = Relay(
            self.client.receive,
            self.client.send,
            session,
            cast(UpstreamConnection, self.upstream),
            self.config,
            Metrics(),
            time.monotonic,
            self._open_upstream,
            message_ready=message_ready,
        )
        self.task: asyncio.Task[None] | None = None

    async def _open_upstream(self) -> UpstreamConnection:
        fake = FakeUpstream()
        self.reopened.append(fake)
        return cast(UpstreamConnection, fake)

    def start(self) -> None:
        self.task = asyncio.create_task(self.relay.run())

    async def stop(self) -> None:
        self.client.text("end")
        assert self.task is not None
        async with asyncio.timeout(5):
            await self.task


async def wait_until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the relay did not get there in 5 s")


def audio(size: int) -> str:
    return base64.b64encode(bytes(i % 251 for i in range(size))).decode()


async def test_audio_goes_up_verbatim_and_vllms_events_come_back_in_order() -> None:
    rig = Rig()
    rig.start()
    chunk = audio(3200)
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    rig.client.text("input_audio_buffer.append", "r1", audio=chunk)
    rig.client.text("input_audio_buffer.commit", "r1", final=True)
    upstream = rig.upstream
    await wait_until(lambda: len(upstream.sent) == 3)
    assert upstream.sent == [
        vllm_wire.COMMIT_OPEN,
        vllm_wire.append_text(chunk),
        vllm_wire.COMMIT_FINAL,
    ]
    upstream.deliver(vllm_wire.EMPTY_DELTA_TEXT)
    upstream.deliver({"type": "transcription.delta", "delta": " hi"})
    upstream.deliver({"type": "transcription.done", "text": " hi", "usage": {}})
    await wait_until(lambda: len(rig.client.events()) == 2)
    kinds = [(e["type"], e["request_id"]) for e in rig.client.events()]
    assert kinds == [("transcription.delta", "r1"), ("transcription.done", "r1")]
    assert rig.client.events()[1]["payload"]["text"] == " hi"
    await rig.stop()
    assert rig.client.sent[-1] == {"type": "websocket.close", "code": 1000}
    assert upstream.closed


async def test_frames_read_together_go_to_vllm_in_one_write_after_the_last() -> None:
    # The edge says whether the next client message is already waiting: the texts the
    # waiting ones make are held (corked) and written with the last one's, in order.
    rig: Rig
    rig = Rig(message_ready=lambda: not rig.client.inbox.empty())
    chunks = [audio(STEP + 2 * i) for i in range(3)]
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    for chunk in chunks:
        rig.client.text("input_audio_buffer.append", "r1", audio=chunk)
    rig.start()
    upstream = rig.upstream
    await wait_until(lambda: len(upstream.sent) == 4)
    expected = [vllm_wire.COMMIT_OPEN, *(vllm_wire.append_text(c) for c in chunks)]
    assert upstream.writes == [expected]
    # One at a time, each goes at once.
    rig.client.text("input_audio_buffer.append", "r1", audio=chunks[0])
    await wait_until(lambda: len(upstream.sent) == 5)
    assert upstream.writes[-1] == [vllm_wire.append_text(chunks[0])]
    assert not upstream.corked
    rig.client.text("input_audio_buffer.commit", "r1", final=True)
    await wait_until(lambda: upstream.sent[-1] == vllm_wire.COMMIT_FINAL)
    upstream.deliver({"type": "transcription.done", "text": "", "usage": {}})
    await rig.stop()


async def test_a_client_that_leaves_inside_a_burst_leaves_nothing_corked() -> None:
    rig: Rig
    rig = Rig(message_ready=lambda: not rig.client.inbox.empty())
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    rig.client.text("input_audio_buffer.append", "r1", audio=audio(STEP))
    rig.client.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    rig.start()
    assert rig.task is not None
    async with asyncio.timeout(5):
        await rig.task
    assert rig.upstream.sent[:2] == [vllm_wire.COMMIT_OPEN, vllm_wire.append_text(audio(STEP))]
    assert not rig.upstream.corked


async def test_text_waits_while_vllms_socket_is_full_and_goes_in_order_when_it_drains() -> None:
    rig = Rig()
    rig.start()
    upstream = rig.upstream
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    await wait_until(lambda: upstream.sent == [vllm_wire.COMMIT_OPEN])
    upstream.writable = False
    chunks = [audio(STEP + 2 * i) for i in range(3)]
    for chunk in chunks:
        rig.client.text("input_audio_buffer.append", "r1", audio=chunk)
    await wait_until(lambda: len(rig.relay.pending_upstream) == 3)
    assert upstream.sent == [vllm_wire.COMMIT_OPEN]
    upstream.drain()
    assert upstream.sent[1:] == [vllm_wire.append_text(c) for c in chunks]
    assert not rig.relay.pending_upstream
    rig.client.text("input_audio_buffer.commit", "r1", final=True)
    await wait_until(lambda: upstream.sent[-1] == vllm_wire.COMMIT_FINAL)
    upstream.deliver({"type": "transcription.done", "text": "", "usage": {}})
    await rig.stop()


async def test_text_waiting_for_vllms_socket_counts_toward_the_inbound_byte_budget() -> None:
    """What waits in pending_upstream is held audio too: its bytes, reported to the session,
    end the connection with inbound_queue_full before they pass the budget."""
    chunk = audio(STEP)  # 24000 characters of base64
    budget = 65_536
    rig = Rig(inbound_queue_max_bytes=budget)
    rig.start()
    upstream = rig.upstream
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    await wait_until(lambda: upstream.sent == [vllm_wire.COMMIT_OPEN])
    upstream.writable = False
    for _ in range(10):
        rig.client.text("input_audio_buffer.append", "r1", audio=chunk)
    assert rig.task is not None
    async with asyncio.timeout(5):
        await rig.task
    pending = rig.relay.pending_upstream
    assert rig.relay.pending_upstream_bytes == sum(len(text) for text in pending)
    assert 0 < rig.relay.pending_upstream_bytes <= budget
    assert len(pending) < 10
    codes = [e["payload"]["code"] for e in rig.client.events()]
    assert codes == ["inbound_queue_full", "inbound_queue_full"]
    assert rig.client.sent[-1] == {"type": "websocket.close", "code": 4004}


async def test_events_a_client_does_not_read_are_bounded_in_bytes() -> None:
    """Pongs pile up for a client that reads nothing: past WS_OUTBOUND_QUEUE_MAX_BYTES they
    are dropped and the client gets slow_consumer, long before the event bound."""
    budget = 65_536
    rig = Rig(outbound_queue_max_bytes=budget)
    rig.client.reading.clear()
    rig.start()
    pad = "x" * 4000
    for number in range(100):
        rig.client.text("ping", f"p{number}", pad=pad)
    await wait_until(lambda: rig.relay.session.closed)
    relay = rig.relay
    # What is left is the error and the close: the pongs were dropped, their bytes with them.
    assert relay.outbound.qsize() <= 3
    assert relay.outbound_bytes < 1000
    rig.client.reading.set()
    assert rig.task is not None
    async with asyncio.timeout(5):
        await rig.task
    events = rig.client.events()
    pongs = [e for e in events if e["type"] == "pong"]
    assert len(pongs) * len(pad) < budget
    assert events[-1]["payload"]["code"] == "slow_consumer"
    assert rig.client.sent[-1] == {"type": "websocket.close", "code": 1008}


async def test_vllm_silent_while_it_owes_an_event_ends_the_utterance_and_reopens() -> None:
    rig = Rig(upstream_timeout_s=0.2)
    rig.start()
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    rig.client.text("input_audio_buffer.commit", "r1", final=True)
    await wait_until(lambda: bool(rig.client.events()))
    [error] = rig.client.events()
    assert error["request_id"] == "r1"
    assert error["payload"]["code"] == "upstream_error"
    assert error["payload"]["details"]["upstream_code"] == "no_response"
    await wait_until(lambda: len(rig.reopened) == 1)
    assert rig.upstream.closed
    await rig.stop()


async def test_vllm_answering_in_time_is_not_a_stall() -> None:
    rig = Rig(upstream_timeout_s=0.3)
    rig.start()
    rig.client.text("input_audio_buffer.commit", "r1", final=False)
    rig.client.text("input_audio_buffer.commit", "r1", final=True)
    await wait_until(lambda: rig.relay.upstream_owed is not None)
    rig.upstream.deliver(vllm_wire.EMPTY_DELTA_TEXT)
    assert rig.relay.upstream_owed is None
    await asyncio.sleep(0.5)
    assert rig.client.events() == []
    rig.upstream.deliver({"type": "transcription.done", "text": "", "usage": {}})
    await wait_until(lambda: len(rig.client.events()) == 1)
    assert rig.client.events()[0]["type"] == "transcription.done"
    assert rig.reopened == []
    await rig.stop()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "websocket.receive", "bytes": b"\x00\x01"}, "no_active_request"),
        ({"type": "websocket.receive", "bytes": b"\x00" * 1025}, "payload_too_large"),
        ({"type": "websocket.receive", "text": "x" * 2048}, "payload_too_large"),
    ],
)
async def test_refused_frames_get_envelopes_error(frame: dict[str, Any], code: str) -> None:
    rig = Rig(max_message_bytes=1024)
    rig.start()
    rig.client.inbox.put_nowait(frame)
    await wait_until(lambda: bool(rig.client.events()))
    [error] = rig.client.events()
    assert error["payload"]["code"] == code
    assert error["payload"]["message"]
    await rig.stop()


async def test_client_gone_ends_the_relay_and_closes_vllms_socket() -> None:
    rig = Rig()
    rig.start()
    rig.client.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
    assert rig.task is not None
    async with asyncio.timeout(5):
        await rig.task
    assert rig.upstream.closed
    assert rig.relay.done.is_set()
