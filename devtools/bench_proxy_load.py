"""The load generator of ``devtools.bench_proxy``: one OS process drives a share of the streams.

Each stream is one WebSocket carrying audio at real-time pace (one 80 ms frame per message),
either straight to vLLM's realtime protocol (``direct``) or in the envelope protocol through the
proxy, in one of the proxied modes: ``json`` (base64 appends of 16 kHz PCM16), ``binary`` (binary
frames of the same), ``ulaw`` (binary frames of 8 kHz G.711 μ-law, resampled by the proxy),
``pcm8k``, ``pcm24k`` and ``pcm48k`` (binary PCM16 at those rates, resampled too), ``json24k``
(base64 appends of 24 kHz PCM16) and
``agent`` (binary 16 kHz PCM16 cut into utterances of a few seconds, spoken back to back as a
voice agent's caller does: each final commit is followed at once by the next utterance's
opening commit); or in OpenAI's Realtime protocol, ``openai`` (``json24k``'s audio in base64
``input_audio_buffer.append`` events on ``/v1/realtime``, one commit at the end). A worker
connects all its streams first, tells the parent, waits for the common start time, streams, and
sends back every send and receive timestamp together with its own CPU time, so the parent can
tell whether the generator kept up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any, Literal

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from proxy.audio_format import AudioFormat, Encoding

Mode = Literal[
    "direct", "json", "binary", "ulaw", "pcm8k", "pcm24k", "pcm48k", "json24k", "agent", "openai"
]
PROXIED_MODES: tuple[Mode, ...] = (
    "json", "binary", "ulaw", "pcm8k", "pcm24k", "pcm48k", "json24k", "agent", "openai"
)  # fmt: skip
# The OpenAI protocol beside the envelope carrying the same 24 kHz audio the same way (base64
# in JSON text frames).
DEFAULT_MODES: tuple[Mode, ...] = ("json", "binary", "ulaw", "json24k", "agent", "openai")
# The modes whose audio the proxy converts, and the format each sends.
CONVERTED: dict[Mode, AudioFormat] = {
    "ulaw": AudioFormat(Encoding.G711_ULAW, 8000, 1),
    "pcm8k": AudioFormat(Encoding.PCM16, 8000, 1),
    "pcm24k": AudioFormat(Encoding.PCM16, 24000, 1),
    "pcm48k": AudioFormat(Encoding.PCM16, 48000, 1),
    "json24k": AudioFormat(Encoding.PCM16, 24000, 1),
    "openai": AudioFormat(Encoding.PCM16, 24000, 1),
}
# Modes whose audio goes as binary frames (the others send base64 text).
BINARY_MODES: frozenset[Mode] = frozenset({"binary", "agent", *CONVERTED} - {"json24k", "openai"})
OPENAI_PATH = "/v1/realtime?intent=transcription"
# The OpenAI session: commit mode, OpenAI's audio format.
OPENAI_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}
        },
    },
}
OPENAI_DELTA = "conversation.item.input_audio_transcription.delta"
OPENAI_COMPLETED = "conversation.item.input_audio_transcription.completed"
CHUNK_S = 0.080
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class StreamPlan:
    index: int
    first_chunk: int  # where this stream's audio starts in the clip (wrapping around)
    chunks: int
    start_offset_s: float  # after the common start time

    def utterances(self, utterance_chunks: int | None) -> list[tuple[int, int]]:
        """(first chunk, chunks) of each utterance: one for the whole stream, or pieces of
        ``utterance_chunks`` (the last one takes a remainder shorter than two chunks)."""
        if utterance_chunks is None or utterance_chunks >= self.chunks:
            return [(0, self.chunks)]
        starts = list(range(0, self.chunks, utterance_chunks))
        if self.chunks - starts[-1] < 2 and len(starts) > 1:
            starts.pop()
        ends = [*starts[1:], self.chunks]
        return [(start, end - start) for start, end in zip(starts, ends, strict=True)]


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    worker: int
    mode: Mode
    url: str
    api_key: str | None
    model: str
    # Each 80 ms frame of the clip as sent: base64 text, or bytes in the binary modes.
    clip: tuple[str, ...] | tuple[bytes, ...]
    streams: tuple[StreamPlan, ...]
    compression: str | None
    connect_timeout_s: float
    done_timeout_s: float
    go_timeout_s: float
    connect_parallelism: int = 32
    utterance_chunks: int | None = None  # the agent mode's utterance length
    # Binary modes: each 80 ms frame goes as this many equal frames, paced in real time (a
    # phone bridge's 20 ms frames: 4). The first one's send time is the frame's: it carries the
    # look-ahead that releases a token (``bench_proxy_check.trigger_index``).
    frame_parts: int = 1


@dataclass(slots=True)
class StreamResult:
    index: int
    connected: bool = False
    # Per message index (the appends, then the final commit): when it was due and when sent.
    scheduled: list[float] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)
    deltas: list[str] = field(default_factory=list)
    delta_times: list[float] = field(default_factory=list)
    done_text: str | None = None
    done_time: float | None = None
    errors: list[str] = field(default_factory=list)
    failure: str | None = None
    extensions: str = ""


@dataclass(slots=True)
class WorkerResult:
    worker: int
    streams: list[StreamResult]
    cpu_s: float = 0.0  # this process's CPU over the streaming window
    wall_s: float = 0.0
    connect_cpu_s: float = 0.0
    crashed: str | None = None


class _Stream:
    def __init__(self, plan: WorkerPlan, stream: StreamPlan) -> None:
        self.plan = plan
        self.stream = stream
        self.result = StreamResult(stream.index)
        self.ws: ClientConnection | None = None
        self.session_id = f"bench-{stream.index}"
        self.utterances = stream.utterances(plan.utterance_chunks)
        self.request_ids = [f"utt-{stream.index}-{u}" for u in range(len(self.utterances))]
        # After this chunk index: the final commit of one utterance and the opening of the next.
        self.turns = {start + length - 1: u for u, (start, length) in enumerate(self.utterances)}
        self.done_texts: list[str] = []
        if plan.mode == "openai":
            self.append_heads = ['{"type":"input_audio_buffer.append","audio":"']
            self.append_tail = '"}'
            self.opening = [json_text(OPENAI_UPDATE)]
            self.final = json_text({"type": "input_audio_buffer.commit"})
        elif plan.mode != "direct":
            self.append_heads = [
                f'{{"type":"input_audio_buffer.append","session_id":"{self.session_id}",'
                f'"request_id":"{rid}","payload":{{"audio":"'
                for rid in self.request_ids
            ]
            self.append_tail = '"}}'
            self.opening = [self._commit(0, final=False)]
            self.final = self._commit(len(self.utterances) - 1, final=True)
        else:
            self.append_heads = ['{"type":"input_audio_buffer.append","audio":"']
            self.append_tail = '"}'
            self.opening = [
                json_text({"type": "session.update", "model": plan.model}),
                json_text({"type": "input_audio_buffer.commit", "final": False}),
            ]
            self.final = json_text({"type": "input_audio_buffer.commit", "final": True})

    def _commit(self, utterance: int, *, final: bool) -> str:
        return json_text({
            "type": "input_audio_buffer.commit",
            "session_id": self.session_id,
            "request_id": self.request_ids[utterance],
            "payload": {"final": final},
        })  # fmt: skip

    def message(self, chunk: int, utterance: int) -> str | bytes:
        clip = self.plan.clip
        frame = clip[(self.stream.first_chunk + chunk) % len(clip)]
        if isinstance(frame, bytes):
            return frame
        return self.append_heads[utterance] + frame + self.append_tail

    async def connect(self, gate: asyncio.Semaphore) -> None:
        plan = self.plan
        url = plan.url
        headers: dict[str, str] = {}
        if plan.mode == "openai":
            url = url.replace("/api/asr-streaming", OPENAI_PATH)
            if plan.api_key:
                headers["Authorization"] = f"Bearer {plan.api_key}"
        elif plan.mode != "direct":
            url = f"{url}?session_id={self.session_id}"
            if plan.mode in CONVERTED:
                url += "".join(f"&{k}={v}" for k, v in CONVERTED[plan.mode].query_params().items())
            if plan.api_key:
                headers["X-API-Key"] = plan.api_key
        async with gate:
            try:
                async with asyncio.timeout(plan.connect_timeout_s):
                    ws = await connect(
                        url,
                        additional_headers=headers,
                        compression=plan.compression,
                        max_size=16 * 1024 * 1024,
                        open_timeout=None,
                        ping_interval=None,
                        close_timeout=CLOSE_TIMEOUT_S,
                        proxy=None,
                    )
                    greeting = orjson.loads(await ws.recv())
            except (OSError, TimeoutError, WebSocketException, orjson.JSONDecodeError) as exc:
                self.result.failure = f"connect: {type(exc).__name__}: {exc}"[:200]
                return
        if not isinstance(greeting, dict) or greeting.get("type") != "session.created":
            self.result.failure = f"connect: no session.created ({str(greeting)[:100]})"
            await ws.close()
            return
        self.ws = ws
        self.result.connected = True
        self.result.extensions = ",".join(str(ext.name) for ext in ws.protocol.extensions)

    async def run(self, start: float) -> None:
        ws, result = self.ws, self.result
        assert ws is not None
        receiver = asyncio.create_task(self._receive(ws))
        chunks = self.stream.chunks
        utterance = 0
        result.scheduled = [math.nan] * (chunks + 1)
        result.send_times = [math.nan] * (chunks + 1)
        try:
            await sleep_until(start)
            for text in self.opening:
                await ws.send(text)
            parts = self.plan.frame_parts
            part_s = CHUNK_S / parts
            for index in range(chunks + 1):
                # The final commit follows the last frame at once, as a live client's would.
                due = start + CHUNK_S * min(index, chunks - 1)
                if index == chunks:
                    due += part_s * (parts - 1)
                await sleep_until(due)
                result.scheduled[index] = due
                result.send_times[index] = time.monotonic()
                if index == chunks:
                    await ws.send(self.final)
                    break
                message = self.message(index, utterance)
                if isinstance(message, bytes) and parts > 1:
                    size = len(message) // parts
                    for part in range(parts):
                        await sleep_until(due + part_s * part)
                        await ws.send(message[part * size : (part + 1) * size])
                else:
                    await ws.send(message)
                if self.turns.get(index) == utterance and utterance + 1 < len(self.utterances):
                    # Back to back: the next utterance opens right after this one's final.
                    await ws.send(self._commit(utterance, final=True))
                    utterance += 1
                    await ws.send(self._commit(utterance, final=False))
        except ConnectionClosed as exc:
            result.failure = f"closed while sending: {exc.rcvd.code if exc.rcvd else 'none'}"
        try:
            async with asyncio.timeout(self.plan.done_timeout_s):
                await receiver
        except TimeoutError:
            result.failure = result.failure or (
                f"no transcription.done within {self.plan.done_timeout_s:g} s of the last send"
            )
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver

    async def _receive(self, ws: ClientConnection) -> None:
        result = self.result
        proxied = self.plan.mode != "direct"
        openai = self.plan.mode == "openai"
        try:
            async for raw in ws:
                now = time.monotonic()
                event: Any = orjson.loads(raw)
                kind = event.get("type")
                if openai:
                    kind, event = _as_envelope(kind, event)
                body = (event.get("payload") or {}) if proxied else event
                if kind == "transcription.delta":
                    delta = body.get("delta")
                    # A non-string delta is a protocol fault: kept visibly so it counts as wrong.
                    result.deltas.append(delta if isinstance(delta, str) else f"<{delta!r}>")
                    result.delta_times.append(now)
                elif kind == "transcription.done":
                    self.done_texts.append(str(body.get("text")))
                    if len(self.done_texts) == len(self.utterances):
                        result.done_text, result.done_time = "".join(self.done_texts), now
                        return
                elif kind == "error":
                    code = str(body.get("code"))
                    result.errors.append(code)
                    if not proxied or event.get("request_id") in (None, *self.request_ids):
                        result.failure = f"error event: {code}"
                        return
        except ConnectionClosed as exc:
            close = f"{exc.rcvd.code} {exc.rcvd.reason}".strip() if exc.rcvd else "no close frame"
            result.failure = f"closed: {close}"[:80]
            return
        result.failure = result.failure or "closed before transcription.done"

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


def _as_envelope(kind: object, event: dict[str, Any]) -> tuple[object, dict[str, Any]]:
    """An OpenAI server event as the envelope event the counting above reads."""
    if kind == OPENAI_DELTA:
        return "transcription.delta", {"payload": {"delta": event.get("delta")}}
    if kind == OPENAI_COMPLETED:
        return "transcription.done", {"payload": {"text": event.get("transcript")}}
    if kind == "error":
        error = event.get("error") or {}
        return "error", {"request_id": None, "payload": {"code": error.get("code")}}
    return kind, event


def json_text(value: dict[str, Any]) -> str:
    """A message as the JSON text frame the envelope travels in."""
    return orjson.dumps(value).decode()


async def sleep_until(deadline: float) -> None:
    """Sleeps until monotonic time ``deadline`` (at once if it has passed)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drive(
    plan: WorkerPlan, reports: Queue[tuple[Any, ...]], go: Queue[float]
) -> WorkerResult:
    streams = [_Stream(plan, stream) for stream in plan.streams]
    gate = asyncio.Semaphore(plan.connect_parallelism)
    cpu_start = time.process_time()
    await asyncio.gather(*(stream.connect(gate) for stream in streams))
    connected = sum(stream.ws is not None for stream in streams)
    reports.put(("ready", plan.worker, connected))
    result = WorkerResult(plan.worker, [stream.result for stream in streams])
    try:
        start = await asyncio.to_thread(go.get, True, plan.go_timeout_s)
    except queue.Empty:
        result.crashed = "no start signal from the parent"
        start = None
    cpu_go, wall_go = time.process_time(), time.monotonic()
    result.connect_cpu_s = cpu_go - cpu_start
    if start is not None:
        await asyncio.gather(
            *(stream.run(start + stream.stream.start_offset_s) for stream in streams if stream.ws)
        )
    result.cpu_s = time.process_time() - cpu_go
    result.wall_s = time.monotonic() - wall_go
    await asyncio.gather(*(stream.close() for stream in streams))
    return result


def worker_main(plan: WorkerPlan, reports: Queue[tuple[Any, ...]], go: Queue[float]) -> None:
    """Process entry point: drives the plan's streams and puts ("result", worker, result)."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_drive(plan, reports, go))
    except BaseException as exc:  # report instead of dying silently; the parent counts it
        result = WorkerResult(plan.worker, [StreamResult(s.index) for s in plan.streams])
        result.crashed = "".join(traceback.format_exception_only(exc)).strip()[:500]
    reports.put(("result", plan.worker, result))
