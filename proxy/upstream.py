"""vLLM's side: the realtime WebSocket to vLLM, and watching vLLM's health.

The WebSocket is websockets' sans-I/O client protocol with the socket's I/O done here, on an
asyncio protocol: a message is written the moment it is sent and handed to the relay the
moment it is read, with no task, queue or lock per message in between (the proxy relays about
25 messages per second of audio per stream, so per-message overhead is most of its cost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import cast

import httpx
import orjson
import structlog
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import SEND_EOF, State
from websockets.uri import parse_uri

from proxy.vllm_wire import session_update_text

log = structlog.get_logger("proxy.upstream")

CONNECT_TIMEOUT_S = 5.0
# vLLM's events are small; this only guards against a broken peer.
UPSTREAM_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class UpstreamUnavailable(Exception):
    """vLLM's realtime endpoint could not be reached or did not greet us."""


def _do_nothing() -> None:
    return None


class UpstreamConnection(asyncio.Protocol):
    """One realtime WebSocket to vLLM.

    ``send`` writes a text message at once (``writable`` turns false while the socket's buffer
    is over its high-water mark, and ``on_writable`` fires when it drains), or, while
    ``corked``, at the next ``uncork``: messages sent together go in one write. Received text
    messages go to ``on_message`` one by one, synchronously; ``pause`` holds them (and stops
    reading the socket) until ``resume``. ``on_lost`` fires once, when the socket is gone.
    Messages that arrive before ``attach`` are kept and delivered by it.
    """

    def __init__(self, url: str) -> None:
        self._protocol = ClientProtocol(parse_uri(url), max_size=UPSTREAM_MAX_MESSAGE_BYTES)
        self._transport: asyncio.Transport | None = None
        self._on_message: Callable[[str], None] | None = None
        self._on_lost: Callable[[], None] = _do_nothing
        self.on_writable: Callable[[], None] = _do_nothing
        self._held: deque[str] = deque()
        self._fragments: list[bytes] = []
        self._paused = False
        self.writable = True
        self.corked = False
        self.closed = False
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrival: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- opening

    async def open(self) -> None:
        """Connects and completes the WebSocket handshake."""
        uri = self._protocol.uri
        loop = asyncio.get_running_loop()
        await loop.create_connection(
            lambda: self, uri.host, uri.port, ssl=True if uri.secure else None
        )
        await self._opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not an asyncio.Transport subclass, hence the cast).
        self._transport = cast(asyncio.Transport, transport)
        self._protocol.send_request(self._protocol.connect())
        self._flush()

    async def next_message(self) -> str:
        """The next message, while nothing is attached (vLLM's greeting)."""
        while not self._held:
            if self.closed:
                raise ConnectionError("vLLM closed the connection")
            self._arrival = asyncio.get_running_loop().create_future()
            await self._arrival
        return self._held.popleft()

    def attach(self, on_message: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        """Starts delivering messages (first those that arrived before) and the loss."""
        self._on_message, self._on_lost = on_message, on_lost
        self._deliver_held()
        if self.closed:
            self._on_lost, lost = _do_nothing, self._on_lost
            lost()

    # ---------------------------------------------------------------- sending

    def send(self, text: str) -> None:
        """Writes one text message; does nothing once the connection is closing."""
        if self.closed or self._protocol.state is not State.OPEN:
            return
        self._protocol.send_text(text.encode())
        if not self.corked:
            self._flush()

    def uncork(self) -> None:
        """Writes what was sent while corked."""
        if self.corked:
            self.corked = False
            self._flush()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.on_writable()

    # ---------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Response) and not self._opened.done():
                if protocol.handshake_exc is not None:
                    self._opened.set_exception(protocol.handshake_exc)
                else:
                    self._opened.set_result(None)
        # Pongs, the reply to vLLM's close, or a close after a protocol error.
        self._flush()
        if protocol.close_expected() and self._transport is not None:
            self._transport.close()

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or (frame.opcode is Opcode.CONT and self._fragments):
            if not frame.fin:
                self._fragments.append(bytes(frame.data))
                return
            data = b"".join((*self._fragments, frame.data)) if self._fragments else frame.data
            self._fragments.clear()
            # vLLM sends UTF-8; bytes that are not become U+FFFD rather than a failure.
            self._held.append(str(data, "utf-8", "replace"))
            self._deliver_held()

    def _deliver_held(self) -> None:
        on_message = self._on_message
        if on_message is None:
            self._wake()
            return
        held = self._held
        while held and not self._paused:
            on_message(held.popleft())

    def _wake(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def pause(self) -> None:
        """Holds received messages until ``resume`` (the reader of our events is behind)."""
        if not self._paused:
            self._paused = True
            if self._transport is not None and not self.closed:
                self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver_held()
            if not self._paused and self._transport is not None and not self.closed:
                self._transport.resume_reading()

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable = True
        if not self._opened.done():
            self._opened.set_exception(exc or ConnectionError("vLLM closed the connection"))
        self._wake()
        self._on_lost, lost = _do_nothing, self._on_lost
        lost()

    # ---------------------------------------------------------------- closing

    def close(self) -> None:
        """Starts the closing handshake and drops the socket without waiting for vLLM (a
        running generation stops when its socket goes)."""
        if self._transport is None or self.closed:
            self.closed = True
            return
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(1000)
            self._flush()
        self._transport.close()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        chunks = self._protocol.data_to_send()
        if len(chunks) > 1 and SEND_EOF not in chunks:
            transport.write(b"".join(chunks))  # one system call for all
            return
        for data in chunks:
            if data == SEND_EOF:
                if transport.can_write_eof():
                    transport.write_eof()
            else:
                transport.write(data)


async def open_upstream(url: str, model: str) -> UpstreamConnection:
    """Connects, waits for vLLM's ``session.created`` and validates the model with
    ``session.update`` (vLLM never answers a valid one; an invalid one comes back as an error
    event, which the session reports)."""
    try:
        connection = UpstreamConnection(url)
    except InvalidURI as exc:
        raise UpstreamUnavailable(f"invalid upstream URL: {exc}") from None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await connection.open()
            greeting = orjson.loads(await connection.next_message())
    except BaseException as exc:
        connection.close()
        if isinstance(exc, (OSError, TimeoutError, WebSocketException, orjson.JSONDecodeError)):
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
        raise
    if not isinstance(greeting, dict) or greeting.get("type") != "session.created":
        connection.close()
        raise UpstreamUnavailable("vLLM did not send session.created first")
    connection.send(session_update_text(model))
    return connection


class UpstreamMonitor:
    """Polls vLLM's ``/health`` and learns ``max_model_len`` from ``/v1/models``.

    ``state`` is ``starting`` until vLLM first answers, ``ready`` while ``/health`` returns 200,
    and ``down`` when it stops answering after having been ready.
    """

    def __init__(
        self,
        health_url: str,
        served_model: str,
        *,
        interval_s: float = 1.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.health_url = health_url
        self.models_url = health_url.rsplit("/", 1)[0] + "/v1/models"
        self.served_model = served_model
        self.interval_s = interval_s
        self.on_change = on_change
        self.state = "starting"
        self.max_model_len: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=2.0)
        await self.check()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()

    async def check(self) -> None:
        try:
            response = await self._client.get(self.health_url)
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            if self.state != "ready":
                await self._learn_max_model_len()
            new_state = "ready"
        else:
            new_state = "down" if self.state != "starting" else "starting"
        if new_state != self.state:
            log.info("upstream_state", state=new_state, previous=self.state)
            self.state = new_state
            if self.on_change is not None:
                self.on_change(new_state)

    async def _learn_max_model_len(self) -> None:
        try:
            response = await self._client.get(self.models_url)
            models = response.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        for model in models:
            if isinstance(model, dict) and model.get("id") == self.served_model:
                value = model.get("max_model_len")
                if isinstance(value, int) and value > 0:
                    self.max_model_len = value
