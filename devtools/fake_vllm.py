"""A fake of vLLM's realtime WebSocket server (`/v1/realtime`): the upstream of the integration
tests and of the proxy benchmark.

It speaks the wire protocol of `vllm serve` 0.32.0 with Voxtral Mini 4B Realtime: the same event
names, JSON shapes (compact encoding), error codes, queue quirks and token arithmetic. Transcripts
are a deterministic function of the audio, so tests can predict them with `predict_deltas` and
`predict_text`.

Run by hand (prints the WebSocket URL, stops on Ctrl+C or SIGTERM):

    python -m devtools.fake_vllm --port 8001 [--delay-ms 480] [--max-model-len 131072] \
        [--step-delay 0] [--word-every-step]

HTTP on the same port: `GET /health` (200 empty body, 503 when `healthy` is off), `GET /v1/models`,
`GET /version`; any other path is a 404. The WebSocket lives at `/v1/realtime`.

Token model: vLLM's clock as `proxy.vllm_wire.steps_sent` and `max_steps` state it (one token
per 80 ms frame of 2560 bytes, after the left padding and the delay; the right padding of a final
commit adds 11 more than the audio would make), which tests/e2e/test_vllm_clock.py pins against
the real vLLM:
- before the end-of-audio marker, tokens are sent as soon as their audio has arrived;
- on the end-of-audio marker the generation runs on through its right padding (0 tokens for no
  audio);
- token k (counting from 0) is the output for audio frame k and its text depends only on that
  frame: about half are "", the others " <word>"; silent frames give "". Past the end of the
  audio (right padding) tokens are "", except the first one, which finishes the last word about
  half the time (as the real model often does), as a function of the last frame;
- a generation stops at `max_model_len - (33 + delay / 80)` tokens, sends `done` by itself and
  drops the audio it holds.

Runtime switches (plain attributes, flip them at any time):
- `healthy`: /health answers 200 or 503.
- `advertised_max_model_len`: the `max_model_len` that /v1/models reports (None = the one the
  fake enforces, the default). Setting it apart from the enforced value lets a test meet a
  generation cut by the length cap that its client did not see coming.
- `step_delay_s`: sleep this long before each delta (the flush after `final` included).
- `word_every_step`: every step's delta for audio is a word (none empty, silence included), so
  the first word comes at the first step whatever the audio (`--word-every-step`; the latency
  benchmark uses it). `predict_deltas(..., every_step=True)` predicts it.
- `fail_after_deltas`: after this many deltas of a generation (0 = at its start), send a
  `processing_error` and end that generation without `done`; the audio queue is left as it is.
  Stays armed until set back to None.
- `die_after_deltas`: after this many deltas of a generation (0 = at its start), abort every open
  socket without a close frame (clients see 1006). One-shot: it resets itself to None when it
  fires, so reconnects work (the listening socket stays up). `deaths` counts the firings.
- `hang()` / `resume()`: while hung the fake keeps reading client frames and queueing audio, but
  sends nothing and generates nothing (an engine stall); `resume()` sends what was held back, in
  order.
- `max_num_seqs`: at most this many generations run at once (None = no limit, the default); a
  generation beyond it waits silently for a free slot, as under vLLM's `--max-num-seqs`.
- `kill_connections(code)`: None aborts every socket (1006 at the client); an int closes them with
  that code (1012 is what a SIGTERM'd vLLM sends). `stop()` closes open sockets with 1012 and
  stops listening; `start()` again listens on the same port (a vLLM restart).
- `kill_connection(number, code)`: the same for one socket, by its connection number (1-based,
  in accept order, as in `received`); a number that is not open is ignored.

Observation: `connections_total`, `open_connections`, `received` ((connection number, event) for
every parsed JSON object, in arrival order), `generations_started`, `generations_completed` (ended
with `done`), `generations_failed` (by `fail_after_deltas`), `generations_aborted` (the socket
ended while the generation ran, whatever the reason), `errors_sent`, `deaths`.

Deviations worth knowing: `final` is parsed like pydantic's lax bool ("true", 1, "no" ... are
accepted); a non-string `model` gives `processing_error`; error texts other than the matched-on
`code` values are approximations of vLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import secrets
import signal
import time
from collections import deque
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS
from proxy.vllm_wire import FRAME_BYTES, FRAME_MS, max_steps, prompt_tokens, steps_sent

__all__ = ["FRAME_BYTES", "FakeVllm", "predict_deltas", "predict_text"]

log = logging.getLogger("devtools.fake_vllm")

DEFAULT_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # uvicorn's WebSocket message limit in front of vLLM

# Short common words; a non-empty token is " " + one of these.
_WORDS = (
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "art", "print",
    "book", "word", "page", "type", "letter", "press", "early", "work", "hand", "form", "made",
    "line",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Deterministic token model (shared by the server and the prediction helpers)


def _word(frame: bytes, every_step: bool = False) -> str:
    """A frame's text: "" about half the time, otherwise " <word>"; "" for a silent frame.
    With `every_step`, always a word (so the first word's time is the first step's)."""
    digest = hashlib.blake2b(frame, digest_size=4).digest()
    word = " " + _WORDS[int.from_bytes(digest[1:3], "big") % len(_WORDS)]
    if every_step:
        return word
    if frame.count(0) == len(frame) or digest[0] < 128:
        return ""  # padding / word-boundary token, as the real model emits about half the time
    return word


def _token_text(pcm: bytes | bytearray, index: int, every_step: bool = False) -> str:
    """Text of token `index` (1-based): a pure function of audio frame `index`, or in the right
    padding past the audio, of the audio's last frame (only for the first padding step)."""
    frame = bytes(pcm[(index - 1) * FRAME_BYTES : index * FRAME_BYTES])
    if frame:
        return _word(frame, every_step)
    frames = -(-len(pcm) // FRAME_BYTES)
    if not frames or index != frames + 1:
        return ""
    last = bytes(pcm[(frames - 1) * FRAME_BYTES :])
    # A different function of the last frame than its own text: the word it finishes.
    return _word(last[::-1])


def predict_deltas(
    pcm: bytes,
    *,
    delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS,
    final: bool = True,
    max_model_len: int = 131072,
    every_step: bool = False,
) -> list[str]:
    """The deltas the fake sends for one generation that consumed exactly `pcm`.

    With `final=False`: the deltas sent before the end marker (all the audio has arrived).
    """
    count = min(steps_sent(len(pcm), delay_ms, final=final), max_steps(max_model_len, delay_ms))
    return [_token_text(pcm, i, every_step) for i in range(1, count + 1)]


def predict_text(pcm: bytes, *, delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS) -> str:
    """The `transcription.done` text a complete utterance of `pcm` gets."""
    return "".join(predict_deltas(pcm, delay_ms=delay_ms))


# ---------------------------------------------------------------------------------------------
# Wire helpers


def _encode(event: object) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _error(message: str, code: str) -> dict[str, Any]:
    return {"type": "error", "error": message, "code": code}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


_TRUE_STRINGS = {"1", "on", "t", "true", "y", "yes"}
_FALSE_STRINGS = {"0", "off", "f", "false", "n", "no"}


def _lax_bool(value: object) -> bool | None:
    """pydantic's lax bool parsing; None when the value is not a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE_STRINGS:
            return True
        if lowered in _FALSE_STRINGS:
            return False
    return None


class _Died(Exception):
    """The fake server 'died' mid-generation (die_after_deltas)."""


class _Failed(Exception):
    """The generation raised a processing error (fail_after_deltas)."""


class _Conn:
    """One client socket: its outbound queue, audio queue and generation state."""

    def __init__(self, number: int, ws: ServerConnection) -> None:
        self.number = number
        self.ws = ws
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.audio: deque[bytes | None] = deque()  # None is the end-of-audio marker
        self.audio_ready = asyncio.Event()
        self.validated = False
        self.generating = False
        self.generation: asyncio.Task[None] | None = None

    def send(self, event: dict[str, Any]) -> None:
        self.outbox.put_nowait(_encode(event))

    def enqueue(self, item: bytes | None) -> None:
        self.audio.append(item)
        self.audio_ready.set()

    async def next_item(self) -> bytes | None:
        while not self.audio:
            self.audio_ready.clear()
            await self.audio_ready.wait()
        return self.audio.popleft()

    def abort(self) -> None:
        self.ws.transport.abort()


class FakeVllm:
    """The fake server; use as `async with FakeVllm() as fake:` and connect to `fake.url`."""

    def __init__(
        self,
        *,
        served_model_name: str = DEFAULT_MODEL,
        transcription_delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS,
        max_model_len: int = 131072,
        step_delay_s: float = 0.0,
        word_every_step: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if transcription_delay_ms <= 0 or transcription_delay_ms % FRAME_MS:
            raise ValueError("transcription_delay_ms must be a positive multiple of 80")
        if max_model_len <= prompt_tokens(transcription_delay_ms):
            raise ValueError("max_model_len must exceed the prompt length")
        self.served_model_name = served_model_name
        self.transcription_delay_ms = transcription_delay_ms
        self.max_model_len = max_model_len
        self.host = host
        self.port = port
        self.url = ""
        self.http_url = ""
        # Runtime switches.
        self.healthy = True
        self.advertised_max_model_len: int | None = None
        self.step_delay_s = step_delay_s
        self.word_every_step = word_every_step
        self.fail_after_deltas: int | None = None
        self.die_after_deltas: int | None = None
        self._max_num_seqs: int | None = None
        # Observation.
        self.connections_total = 0
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.generations_started = 0
        self.generations_completed = 0
        self.generations_failed = 0
        self.generations_aborted = 0
        self.errors_sent = 0
        self.deaths = 0

        self._server: Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._running = asyncio.Event()
        self._running.set()
        self._active_generations = 0
        self._slot_freed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeVllm:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=MAX_MESSAGE_BYTES,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.http_url = f"http://{self.host}:{self.port}"
        self.url = f"ws://{self.host}:{self.port}/v1/realtime"

    async def stop(self) -> None:
        if self._server is None:
            return
        await self.kill_connections(1012)
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    # -- switches --------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def max_num_seqs(self) -> int | None:
        """Concurrent generations allowed; the excess waits silently (None = no limit)."""
        return self._max_num_seqs

    @max_num_seqs.setter
    def max_num_seqs(self, value: int | None) -> None:
        self._max_num_seqs = value
        self._slot_freed.set()  # waiters re-check against the new limit

    def hang(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def kill_connections(self, code: int | None = None) -> None:
        conns = list(self._conns.values())
        if code is None:
            for conn in conns:
                conn.abort()
            return
        await asyncio.gather(*(conn.ws.close(code) for conn in conns), return_exceptions=True)

    async def kill_connection(self, number: int, code: int | None = None) -> None:
        conn = self._conns.get(number)
        if conn is None:
            return
        if code is None:
            conn.abort()
        else:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.close(code)

    # -- HTTP --------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/v1/realtime":
            return None  # go on with the WebSocket handshake
        if path == "/health":
            return connection.respond(200 if self.healthy else 503, "")
        if path == "/v1/models":
            model = {
                "id": self.served_model_name,
                "object": "model",
                "root": "/models/fake",
                "max_model_len": (
                    self.max_model_len
                    if self.advertised_max_model_len is None
                    else self.advertised_max_model_len
                ),
            }
            return self._json(connection, {"object": "list", "data": [model]})
        if path == "/version":
            return self._json(connection, {"version": "0.32.0"})
        return self._json(connection, {"detail": "Not Found"}, status=404)

    @staticmethod
    def _json(connection: ServerConnection, body: object, status: int = 200) -> Response:
        response = connection.respond(status, _encode(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # -- WebSocket -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections_total += 1
        conn = _Conn(self.connections_total, ws)
        self._conns[conn.number] = conn
        writer = asyncio.create_task(self._write(conn))
        conn.send(
            {
                "type": "session.created",
                "id": f"sess-{secrets.token_hex(8)}",
                "created": int(time.time()),
            }
        )
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    # vLLM's receive loop only reads text; a binary frame kills the socket.
                    conn.abort()
                    break
                self._dispatch(conn, message)
        except ConnectionClosed:
            pass
        finally:
            del self._conns[conn.number]
            if conn.generation is not None and not conn.generation.done():
                conn.generation.cancel()
            if conn.generating:
                self.generations_aborted += 1
                conn.generating = False
            writer.cancel()

    async def _write(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await conn.outbox.get()
                await self._running.wait()
                await conn.ws.send(text)
                conn.outbox.task_done()

    def _reply_error(self, conn: _Conn, message: str, code: str) -> None:
        self.errors_sent += 1
        conn.send(_error(message, code))

    def _dispatch(self, conn: _Conn, message: str) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            self._reply_error(conn, "Invalid JSON", "invalid_json")
            return
        if not isinstance(event, dict):
            name = "NoneType" if event is None else type(event).__name__
            self._reply_error(conn, f"'{name}' object has no attribute 'get'", "processing_error")
            return
        self.received.append((conn.number, event))
        kind = event.get("type")
        if kind == "session.update":
            self._on_session_update(conn, event)
        elif kind == "input_audio_buffer.append":
            self._on_append(conn, event)
        elif kind == "input_audio_buffer.commit":
            self._on_commit(conn, event)
        else:
            self._reply_error(conn, f"Unknown event type: {kind}", "unknown_event")

    def _on_session_update(self, conn: _Conn, event: dict[str, Any]) -> None:
        model = event.get("model")
        if model is None:
            self._reply_error(conn, "Missing required field: model", "invalid_event")
        elif not isinstance(model, str):
            detail = "1 validation error for SessionUpdate\nmodel\n  Input should be a valid string"
            self._reply_error(conn, detail, "processing_error")
        elif model and model != self.served_model_name:
            self._reply_error(conn, f"The model `{model}` does not exist.", "model_not_found")
        else:
            conn.validated = True  # sticky: a later failing update does not undo it
        # A successful update is never answered.

    def _on_append(self, conn: _Conn, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            detail = "Field required" if audio is None else "Input should be a valid string"
            message = f"1 validation error for InputAudioBufferAppend\naudio\n  {detail}"
            self._reply_error(conn, message, "processing_error")
            return
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            pcm = b""
        if not pcm or len(pcm) % 2:
            self._reply_error(conn, "Invalid audio data", "invalid_audio")
            return
        conn.enqueue(pcm)

    def _on_commit(self, conn: _Conn, event: dict[str, Any]) -> None:
        final = _lax_bool(event.get("final", False))
        if final is None:
            message = (
                "1 validation error for InputAudioBufferCommit\nfinal\n"
                "  Input should be a valid boolean"
            )
            self._reply_error(conn, message, "processing_error")
            return
        if not conn.validated:
            message = "Model not validated. Send session.update with a valid model first."
            self._reply_error(conn, message, "model_not_validated")
            return
        if final:
            conn.enqueue(None)
        elif conn.generating:
            log.warning(
                "connection %d: generation already in progress, commit ignored", conn.number
            )
        else:
            conn.generating = True
            self.generations_started += 1
            conn.generation = asyncio.create_task(self._generate(conn))

    # -- generation ------------------------------------------------------------------------

    async def _generate(self, conn: _Conn) -> None:
        # Like the engine's scheduler: past max_num_seqs a generation just waits, with no error.
        while self._max_num_seqs is not None and self._active_generations >= self._max_num_seqs:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._active_generations += 1
        try:
            await self._run_generation(conn)
        finally:
            self._active_generations -= 1
            self._slot_freed.set()

    async def _run_generation(self, conn: _Conn) -> None:
        delay = self.transcription_delay_ms
        prompt = prompt_tokens(delay)
        cap = max_steps(self.max_model_len, delay)
        pcm = bytearray()
        sent = 0
        try:
            await self._check_faults(conn, sent)
            while True:
                item = await conn.next_item()
                if item is None:  # end of audio: flush the rest quickly
                    total = min(steps_sent(len(pcm), delay, final=True), cap)
                    while sent < total:
                        sent = await self._emit(conn, pcm, sent)
                    if sent == 0:
                        prompt = 0  # an empty utterance reports all-zero usage
                    break
                pcm += item
                target = min(steps_sent(len(pcm), delay, final=False), cap)
                while sent < target:
                    sent = await self._emit(conn, pcm, sent)
                if sent >= cap:
                    log.warning("connection %d: reached max_model_len", conn.number)
                    break
        except _Failed:
            self.generations_failed += 1
            conn.generating = False
            return
        except _Died:
            return  # the socket is gone; the handler counts the abort
        text = "".join(_token_text(pcm, i, self.word_every_step) for i in range(1, sent + 1))
        await self._running.wait()
        conn.send({"type": "transcription.done", "text": text, "usage": _usage(prompt, sent)})
        conn.audio.clear()  # vLLM wipes the connection's audio queue right after done
        conn.generating = False
        self.generations_completed += 1

    async def _emit(self, conn: _Conn, pcm: bytearray, sent: int) -> int:
        if self.step_delay_s > 0:
            await asyncio.sleep(self.step_delay_s)
        await self._running.wait()
        sent += 1
        delta = _token_text(pcm, sent, self.word_every_step)
        conn.send({"type": "transcription.delta", "delta": delta})
        await self._check_faults(conn, sent)
        return sent

    async def _check_faults(self, conn: _Conn, sent: int) -> None:
        if self.fail_after_deltas is not None and sent >= self.fail_after_deltas:
            self._reply_error(conn, "Simulated engine failure", "processing_error")
            raise _Failed
        if self.die_after_deltas is not None and sent >= self.die_after_deltas:
            self.die_after_deltas = None
            self.deaths += 1
            # Let this socket's queued events go out first, so the client sees exactly N deltas.
            if self._running.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await conn.outbox.join()
            await self.kill_connections(None)
            raise _Died


# ---------------------------------------------------------------------------------------------
# Command line


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeVllm(
        served_model_name=args.served_model_name,
        transcription_delay_ms=args.delay_ms,
        max_model_len=args.max_model_len,
        step_delay_s=args.step_delay,
        word_every_step=args.word_every_step,
        host=args.host,
        port=args.port,
    ) as fake:
        print(fake.url, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake vLLM realtime server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--served-model-name", default=DEFAULT_MODEL)
    parser.add_argument("--delay-ms", type=int, default=DEFAULT_TRANSCRIPTION_DELAY_MS)
    parser.add_argument("--max-model-len", type=int, default=131072)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--word-every-step", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
