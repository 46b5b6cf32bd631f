"""One client connection's I/O: moves frames and timers around the pure ``Session``.

The lifecycle is the session's: the relay has the connection's codec parse each client frame,
feeds the session each input with the time, and carries out the actions it returns, the
session's events rendered by the codec. What stays here is sockets, queues, timers and
back-pressure, and two rules that are I/O policy, decided here because only the I/O layer sees
them: a client that stops reading (its unsent events pass ``SessionLimits``' outbound bound)
is ended with ``slow_consumer``, and idle time (no client frame for the idle timeout) does not
count while the session says an utterance is finalizing (the client is waiting on us then).

Tasks per connection:
- receive: reads client frames, parses them, feeds the session (answers and limits happen at
  once, without waiting on vLLM); what the session sends upstream is written straight to vLLM's
  socket, or waits in ``pending_upstream`` while that socket is full;
- write: the only writer to the client socket, so events stay ordered;
- timers: idle timeout, maximum duration, and the watchdog (a client that accepts nothing, and
  vLLM silent for too long while it owes an event, as the session said).
vLLM's events need no task: the upstream connection hands each one over as it is read.

The client socket is used through the raw ASGI ``receive``/``send`` of the connection, and
vLLM's through an ``UpstreamConnection``; both are given, so tests can pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.types import Receive, Send

from proxy.config import ProxyConfig
from proxy.metrics import Metrics
from proxy.protocols.codec import Codec
from proxy.protocols.envelope import EnvelopeCodec
from proxy.session import Session, WindDown
from proxy.session.actions import (
    Action,
    CloseClient,
    FeedVad,
    HoldClient,
    OpenUpstream,
    SendClient,
    SendUpstream,
    StartVad,
    StopVad,
    UpstreamOwes,
    UpstreamSettled,
    VadBehind,
)
from proxy.session.events import ErrorCode
from proxy.telemetry import UtteranceTelemetry
from proxy.upstream import UpstreamConnection, UpstreamUnavailable
from proxy.vad import VadFailure, VadStream, Window
from proxy.vad_service import VadService
from proxy.vllm_wire import decode_event

log = structlog.get_logger("proxy.relay")

# A client whose socket accepts nothing for this long is treated as gone.
CLIENT_WRITE_TIMEOUT_S = 15.0
# Closing a client that stopped reading must not hold its slot for long.
CLIENT_CLOSE_TIMEOUT_S = 2.0
# What a disconnect reports when the client sent no close frame (1006) or one without a code
# (1005): reserved codes, never on the wire.
NO_CLIENT_CODE = (1005, 1006)

OpenUpstreamFn = Callable[[], Awaitable[UpstreamConnection]]


class Relay:
    def __init__(
        self,
        receive: Receive,
        send: Send,
        session: Session,
        upstream: UpstreamConnection,
        config: ProxyConfig,
        metrics: Metrics,
        clock: Callable[[], float],
        open_upstream: OpenUpstreamFn,
        vad: VadService | None = None,
        codec: Codec | None = None,
        message_ready: Callable[[], bool] | None = None,
    ) -> None:
        self.receive = receive
        # Whether ``receive`` has the next client message waiting (the edge's MESSAGE_READY;
        # None: never known). Then what this one makes for vLLM waits to go in one write with
        # what the next ones make.
        self.message_ready = message_ready
        self.send = send
        self.session = session
        # The connection's protocol (the envelope unless the route says otherwise).
        self.codec = codec or EnvelopeCodec(session.session_id, config.max_message_bytes)
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.open_upstream = open_upstream
        # Accepted text not yet written to vLLM: its socket's buffer is full.
        self.pending_upstream: deque[str] = deque()
        # Sizes reported to the session: len() of the texts, which is their size in bytes for
        # ASCII (all of vLLM's side, and events but for non-ASCII transcript characters).
        self.pending_upstream_bytes = 0
        # Text frames for the client, then the close code.
        self.outbound: asyncio.Queue[str | int] = asyncio.Queue()
        self.outbound_bytes = 0
        self.upstream: UpstreamConnection | None = upstream
        self.last_activity = clock()
        # The session's word on vLLM's debt: (epoch, since) while it owes an event.
        self.upstream_owed: tuple[int, float] | None = None
        # vLLM's events are held (the upstream connection is paused) while the client has this
        # many unsent events, so a burst after a stall cannot overflow a client that reads; the
        # hard bound is for clients that stop reading altogether.
        self._outbound_resume_at = config.outbound_queue_max // 2
        self._paused_upstream: UpstreamConnection | None = None
        self.done = asyncio.Event()
        self.client_gone = False
        # Who closed the session ("server" or "client") and with which code (None: the client
        # sent none), once it closed.
        self.closed_by: str | None = None
        self.close_code: int | None = None
        # The client's disconnect code, once it is read.
        self._client_code: int | None = None
        # The session's back-pressure: nothing is read from the client before this time.
        self.hold_until = 0.0
        # When the write in progress to the client started (None: not writing).
        self.writing_since: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.telemetry = UtteranceTelemetry(metrics, log_transcripts=config.log_transcripts)
        self.vad = vad
        # The session's turn-detection audio goes here while it has turn detection on.
        self.vad_stream: VadStream | None = None

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Runs until the session closes or the client goes away."""
        upstream = self.upstream
        assert upstream is not None
        upstream.on_writable = self._flush_upstream
        epoch = self.session.upstream_epoch
        self.apply(self.session.on_upstream_ready(epoch, self.clock()))
        self._attach_upstream(epoch, upstream)
        for coroutine in (self._idle_timer(), self._duration_timer(), self._watchdog()):
            self._spawn(coroutine)
        receiver = asyncio.create_task(self._guarded(self._receive()))
        writer = self._writer = asyncio.create_task(self._write())
        try:
            await asyncio.wait({receiver, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not self.session.closed:
                # Neither side failed and the session did not close: the client left.
                self._client_left()
            elif not self.client_gone and not writer.done():
                # The receiver failed: let the writer deliver the error and the close.
                await asyncio.wait({writer}, timeout=CLIENT_WRITE_TIMEOUT_S)
        finally:
            for task in (receiver, writer, *self._tasks):
                task.cancel()
            await asyncio.gather(receiver, writer, *self._tasks, return_exceptions=True)
            # Closing the upstream socket makes vLLM abort any generation still running.
            if self.upstream is not None:
                self.upstream.close()
            self._stop_vad()
            self.done.set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(self._guarded(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coroutine: Any) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            self._fail()

    def _fail(self) -> None:
        log.exception("relay_task_failed", session_id=self.session.session_id)
        self._terminate(ErrorCode.INTERNAL_ERROR)

    def _terminate(self, code: ErrorCode) -> None:
        self.apply(self.session.terminate(code, self.clock()))

    def _client_left(self) -> None:
        """The client closed (its code) or its socket went (no code): recorded as such, its
        utterances abandoned, never as vLLM failing."""
        self.closed_by, self.close_code = "client", self._client_code
        self.metrics.count_close("client", self._client_code)
        self.apply(self.session.client_left(self.clock()))

    # ------------------------------------------------------------------ actions

    def apply(self, actions: list[Action]) -> None:
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            if isinstance(action, SendUpstream):
                self._send_upstream(action.text)
            elif isinstance(action, SendClient):
                for text in self.codec.render(action.event):
                    if self.session.limits.outbound_full(
                        self.outbound.qsize(), self.outbound_bytes, len(text)
                    ):
                        # The client stopped reading: drop what it would never read, end it.
                        pending.clear()
                        while not self.outbound.empty():
                            self.outbound.get_nowait()
                        self.outbound_bytes = 0
                        pending.extend(
                            self.session.terminate(ErrorCode.SLOW_CONSUMER, self.clock())
                        )
                        break
                    self.outbound_bytes += len(text)
                    self.outbound.put_nowait(text)
            elif isinstance(action, UpstreamOwes):
                self.upstream_owed = (action.epoch, action.since)
            elif isinstance(action, UpstreamSettled):
                self.upstream_owed = None
            elif isinstance(action, OpenUpstream):
                self.metrics.upstream_reconnects.inc()
                # What waited for the old connection is void (the session sends nothing for
                # the new one before it is ready).
                self.pending_upstream.clear()
                self.pending_upstream_bytes = 0
                self._spawn(self._reopen_upstream(action.epoch))
            elif isinstance(action, FeedVad):
                if self.vad_stream is not None:
                    self.vad_stream.feed(action.pcm, urgent=action.urgent)
            elif isinstance(action, StartVad):
                pending.extend(self._start_vad())
            elif isinstance(action, StopVad):
                self._stop_vad()
            elif isinstance(action, VadBehind):
                if self.vad is not None:
                    self.vad.fell_behind()
            elif isinstance(action, CloseClient):
                code = self.codec.close_code(action.error)
                self.closed_by, self.close_code = "server", code
                self.metrics.count_close("server", code)
                self.outbound.put_nowait(code)
            elif isinstance(action, HoldClient):
                self.hold_until = action.until
                # Held by the server, not idle: the idle time counts from the hold's end.
                self.last_activity = max(self.last_activity, action.until)
            else:
                self.telemetry.record(action, self.codec.session_id)

    # ------------------------------------------------------------------ turn detection

    def _start_vad(self) -> list[Action]:
        """Opens the session's VAD stream; the session's answer if there is no engine."""
        self._stop_vad()
        if self.vad is None:
            # No engine at all: as one that cannot run.
            return self.session.on_vad_failed(VadFailure.MODEL_ERROR, self.clock())
        self.vad_stream = self.vad.open(self._on_vad, self._on_vad_failed)
        return []

    def _stop_vad(self) -> None:
        stream, self.vad_stream = self.vad_stream, None
        if stream is not None and self.vad is not None:
            self.vad.close_stream(stream)

    def _on_vad(self, windows: list[Window]) -> None:
        try:
            self.apply(self.session.on_vad(windows, self.clock()))
        except Exception:
            self._fail()

    def _on_vad_failed(self, reason: VadFailure) -> None:
        self.vad_stream = None
        self.apply(self.session.on_vad_failed(reason, self.clock()))

    # ------------------------------------------------------------------ client side

    async def _receive(self) -> None:
        session, codec = self.session, self.codec
        receive = self.receive
        while True:
            held = self.hold_until - self.clock()
            if held > 0:
                self._uncork_upstream()
                # Unread frames wait in the socket: the client's sending slows to real time.
                self.metrics.client_held_seconds.inc(held)
                await asyncio.sleep(held)
            message = await receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                self._client_code = None if code in NO_CLIENT_CODE else code
                self.client_gone = True
                self._uncork_upstream()
                return
            now = self.clock()
            self.last_activity = now
            burst = self.message_ready is not None and self.message_ready()
            if burst and self.upstream is not None:
                self.upstream.corked = True
            text = message.get("text")
            if text is not None:
                parsed = codec.parse_text(text)
            else:
                parsed = codec.parse_binary(message.get("bytes") or b"")
            self.metrics.count_client_message(
                codec.protocol, codec.label(parsed), parsed, session.audio_format
            )
            self.apply(
                session.on_client(
                    parsed, now, len(self.pending_upstream), self.pending_upstream_bytes
                )
            )
            self.metrics.note_inbound_depth(session.inbound_depth, session.inbound_depth_bytes)
            if not burst:
                self._uncork_upstream()

    def _uncork_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.uncork()

    async def _write(self) -> None:
        send = self.send
        while True:
            item = await self.outbound.get()
            if isinstance(item, int):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLIENT_CLOSE_TIMEOUT_S):
                        await send({"type": "websocket.close", "code": item})
                return
            self.outbound_bytes -= len(item)
            # Watched by the watchdog rather than a timeout per event (a timer each time).
            self.writing_since = self.clock()
            await send({"type": "websocket.send", "text": item})
            self.writing_since = None
            paused = self._paused_upstream
            if paused is not None and self.outbound.qsize() <= self._outbound_resume_at:
                self._paused_upstream = None
                paused.resume()

    def _send_upstream(self, text: str) -> None:
        self.pending_upstream.append(text)
        self.pending_upstream_bytes += len(text)
        self._flush_upstream()

    def _flush_upstream(self) -> None:
        """Writes what waited for vLLM's socket, in order, while it takes more."""
        pending = self.pending_upstream
        upstream = self.upstream
        while pending and upstream is not None and upstream.writable:
            text = pending.popleft()
            self.pending_upstream_bytes -= len(text)
            upstream.send(text)

    def _attach_upstream(self, epoch: int, connection: UpstreamConnection) -> None:
        """Feeds ``connection``'s events to the session as they are read."""
        session = self.session

        def on_message(raw: str) -> None:
            event = decode_event(raw)
            if event is None:
                log.warning("upstream_sent_invalid_json", session_id=session.session_id)
                return
            try:
                actions = session.on_upstream_event(epoch, event, self.clock())
                if actions:
                    self.apply(actions)
            except Exception:
                self._fail()
            if self.outbound.qsize() > self._outbound_resume_at:
                connection.pause()
                self._paused_upstream = connection

        def on_lost() -> None:
            self.apply(session.on_upstream_lost(epoch, self.clock()))

        connection.attach(on_message, on_lost)

    async def _reopen_upstream(self, epoch: int) -> None:
        old, self.upstream = self.upstream, None
        if old is not None:
            old.close()
        try:
            connection = await self.open_upstream()
        except UpstreamUnavailable as exc:
            log.warning("upstream_reopen_failed", reason=str(exc))
            self.apply(self.session.on_upstream_lost(epoch, self.clock()))
            return
        if epoch != self.session.upstream_epoch or self.session.closed:
            connection.close()  # superseded by a later reopen, or the session ended
            return
        self.upstream = connection
        self._paused_upstream = None
        connection.on_writable = self._flush_upstream
        self.apply(self.session.on_upstream_ready(epoch, self.clock()))
        self._attach_upstream(epoch, connection)

    # ------------------------------------------------------------------ timers

    async def _idle_timer(self) -> None:
        timeout = self.config.idle_timeout_s
        if not timeout:
            return
        while True:
            remaining = self.last_activity + timeout - self.clock()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if self.session.finalizing:
                # The client is waiting on us: its idle time starts again afterwards.
                self.last_activity = self.clock()
                continue
            self._terminate(ErrorCode.IDLE_TIMEOUT)
            return

    async def _duration_timer(self) -> None:
        if not self.config.max_duration_s:
            return
        await asyncio.sleep(self.config.max_duration_s)
        self.apply(self.session.wind_down(WindDown.MAX_DURATION, self.clock()))
        # Grace for the utterance in flight to be finalized and delivered.
        await asyncio.sleep(self.config.drain_timeout_s)
        self._terminate(ErrorCode.MAX_DURATION_REACHED)

    async def _watchdog(self) -> None:
        """Ends the connection when the client accepts nothing for CLIENT_WRITE_TIMEOUT_S, and
        the session when vLLM owes an event for longer than its timeout."""
        upstream_timeout = self.config.upstream_timeout_s
        while True:
            write_timeout = CLIENT_WRITE_TIMEOUT_S
            shortest = min(write_timeout, upstream_timeout or write_timeout)
            await asyncio.sleep(min(shortest / 4, 1.0))
            now = self.clock()
            if self.writing_since is not None and now - self.writing_since > write_timeout:
                log.warning("client_write_stalled", session_id=self.session.session_id)
                # The server drops a client that takes nothing: a slow consumer, not one that
                # left (its close cannot be delivered, the writer is stuck).
                self._terminate(ErrorCode.SLOW_CONSUMER)
                if self._writer is not None:
                    self._writer.cancel()
                return
            owed = self.upstream_owed
            if upstream_timeout and owed is not None and now - owed[1] > upstream_timeout:
                log.warning("upstream_silent", seconds=round(now - owed[1], 1))
                self.upstream_owed = None
                self.apply(self.session.on_upstream_stalled(owed[0], now))

    # ------------------------------------------------------------------ shutdown

    def wind_down(self) -> None:
        self.apply(self.session.wind_down(WindDown.SHUTDOWN, self.clock()))

    def shut(self) -> None:
        self._terminate(ErrorCode.SHUTTING_DOWN)
