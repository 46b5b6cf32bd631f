"""One client connection's I/O: moves bytes and timers around the pure ``Session``.

Tasks per connection:
- receive: reads client frames, parses them, feeds the session (answers and limits happen at
  once, without waiting on vLLM); what the session sends upstream is written straight to vLLM's
  socket, or waits in ``pending_upstream`` while that socket is opening or full;
- write: the only writer to the client socket, so events stay ordered;
- timers: idle timeout, maximum duration, and the vLLM-silence watchdog.
vLLM's events need no task: the upstream connection hands each one over as it is read.

The client socket is used through the raw ASGI ``receive``/``send`` of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from starlette.types import Receive, Send

from proxy.config import ProxyConfig
from proxy.envelope import (
    Append,
    Cancel,
    CloseCode,
    Commit,
    End,
    EnvelopeError,
    ErrorCode,
    Ping,
    SessionUpdate,
    encode_event,
    frame_too_large,
    parse_client_message,
)
from proxy.metrics import UTTERANCE_OUTCOMES, Metrics
from proxy.session import (
    APPEND_PREFIX,
    COMMIT_FINAL,
    FRAME_BYTES,
    Action,
    CloseClient,
    OpenUpstream,
    SendClient,
    SendUpstream,
    Session,
    WindDown,
)
from proxy.telemetry import UtteranceTelemetry
from proxy.upstream import UpstreamConnection, UpstreamUnavailable, open_upstream

log = structlog.get_logger("proxy.relay")

# A client whose socket accepts nothing for this long is treated as gone.
CLIENT_WRITE_TIMEOUT_S = 15.0
# Closing a client that stopped reading must not hold its slot for long.
CLIENT_CLOSE_TIMEOUT_S = 2.0

# vLLM's compact encoding of a step that produced no text.
EMPTY_DELTA = '{"type":"transcription.delta","delta":""}'

_BINARY_REFUSAL = EnvelopeError(
    ErrorCode.INVALID_MESSAGE,
    "Binary frames are not accepted: send each message as a JSON text frame.",
)


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
    ) -> None:
        self.receive = receive
        self.send = send
        self.session = session
        self.config = config
        self.metrics = metrics
        self.clock = clock
        # Accepted messages not yet written to vLLM: its socket is opening, or its buffer full.
        self.pending_upstream: deque[SendUpstream] = deque()
        self.outbound: asyncio.Queue[str | CloseClient] = asyncio.Queue()
        self.upstream: UpstreamConnection | None = upstream
        self.upstream_generation = 0
        self.last_activity = clock()
        # Since when vLLM owes us an event: a final commit, or more audio than its delay, went
        # up after its last event. Only then is its silence a stall rather than a pause.
        self.upstream_owes_since: float | None = None
        self._audio_since_event = 0
        self._owed_audio = (config.transcription_delay_ms // 80 + 2) * FRAME_BYTES
        # vLLM's events are held (the upstream connection is paused) while the client has this
        # many unsent events, so a burst after a stall cannot overflow a client that reads; the
        # hard bound is for clients that stop reading altogether.
        self._outbound_resume_at = config.outbound_queue_max // 2
        self._paused_upstream: UpstreamConnection | None = None
        self.done = asyncio.Event()
        self.client_gone = False
        # When the write in progress to the client started (None: not writing).
        self.writing_since: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes_seen = (0, 0, 0, 0, 0)
        self.telemetry = UtteranceTelemetry(metrics, log_transcripts=config.log_transcripts)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Runs until the session closes or the client goes away."""
        upstream = self.upstream
        assert upstream is not None
        upstream.on_writable = self._flush_upstream
        self.apply(self.session.on_upstream_ready(0))
        self._attach_upstream(0, upstream)
        for coroutine in (self._idle_timer(), self._duration_timer(), self._watchdog()):
            self._spawn(coroutine)
        receiver = asyncio.create_task(self._guarded(self._receive()))
        writer = self._writer = asyncio.create_task(self._write())
        try:
            await asyncio.wait({receiver, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not self.client_gone and not writer.done():
                # The receiver failed: let the writer deliver the error and the close.
                await asyncio.wait({writer}, timeout=CLIENT_WRITE_TIMEOUT_S)
        finally:
            for task in (receiver, writer, *self._tasks):
                task.cancel()
            await asyncio.gather(receiver, writer, *self._tasks, return_exceptions=True)
            # Closing the upstream socket makes vLLM abort any generation still running.
            if self.upstream is not None:
                self.upstream.close()
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
        self.apply(self.session.terminate(ErrorCode.INTERNAL_ERROR, CloseCode.INTERNAL_ERROR))

    # ------------------------------------------------------------------ actions

    def apply(self, actions: list[Action]) -> None:
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            if isinstance(action, SendUpstream):
                self._send_upstream(action)
            elif isinstance(action, SendClient):
                if self.outbound.qsize() >= self.config.outbound_queue_max:
                    # The client stopped reading: drop what it would never read, and end it.
                    pending.clear()
                    while not self.outbound.empty():
                        self.outbound.get_nowait()
                    pending.extend(
                        self.session.terminate(ErrorCode.SLOW_CONSUMER, CloseCode.POLICY_VIOLATION)
                    )
                    continue
                self.telemetry.client_event(action.event, self.clock())
                self.outbound.put_nowait(encode_event(action.event))
            elif isinstance(action, OpenUpstream):
                self.metrics.upstream_reconnects.inc()
                self._spawn(self._reopen_upstream(action.generation))
            else:
                self.metrics.closes.labels(str(action.code)).inc()
                self.outbound.put_nowait(action)
        self._sync_outcome_metrics()

    def _sync_outcome_metrics(self) -> None:
        """Adds what the session counted since the last call to the utterance counters, and
        reports the utterances that ended meanwhile."""
        session = self.session
        counts = (
            session.utterances_started,
            session.utterances_done,
            session.utterances_cancelled,
            session.utterances_errored,
            session.rollovers,
        )
        if counts == self._outcomes_seen:
            return
        for outcome, now, before in zip(
            UTTERANCE_OUTCOMES, counts, self._outcomes_seen, strict=True
        ):
            if now != before:
                self.metrics.utterance_counters[outcome].inc(now - before)
        self._outcomes_seen = counts
        self.telemetry.sweep(u.request_id for u in session.in_flight)

    # ------------------------------------------------------------------ client side

    async def _receive(self) -> None:
        session = self.session
        receive = self.receive
        max_bytes = self.config.max_message_bytes
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.client_gone = True
                return
            text = message.get("text")
            if text is None:
                self.metrics.client_message_counters["binary"].inc()
                self.apply(session.on_client(_BINARY_REFUSAL, self.clock()))
                continue
            now = self.clock()
            self.last_activity = now
            if frame_too_large(text, max_bytes):
                parsed: Any = EnvelopeError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"The message is larger than {max_bytes} bytes: split the audio into "
                    "smaller chunks.",
                    details={"max_message_bytes": max_bytes},
                )
            else:
                parsed = parse_client_message(text)
            self.metrics.client_message_counters[_MESSAGE_LABELS[type(parsed)]].inc()
            self.apply(session.on_client(parsed, now, len(self.pending_upstream)))
            self.metrics.note_inbound_depth(session.inbound_depth)
            self.telemetry.client_message(parsed, now, session)

    async def _write(self) -> None:
        send = self.send
        while True:
            item = await self.outbound.get()
            if isinstance(item, CloseClient):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLIENT_CLOSE_TIMEOUT_S):
                        await send({"type": "websocket.close", "code": item.code})
                return
            # Watched by the watchdog rather than a timeout per event (a timer each time).
            self.writing_since = self.clock()
            await send({"type": "websocket.send", "text": item})
            self.writing_since = None
            paused = self._paused_upstream
            if paused is not None and self.outbound.qsize() <= self._outbound_resume_at:
                self._paused_upstream = None
                paused.resume()

    def _send_upstream(self, item: SendUpstream) -> None:
        if item.generation != self.session.generation:
            return  # stale: that upstream connection was dropped (cancel, barge-in, error)
        self.pending_upstream.append(item)
        self._flush_upstream()

    def _flush_upstream(self) -> None:
        """Writes what waited for vLLM's socket, in order, while it takes more."""
        pending = self.pending_upstream
        upstream = self.upstream
        while pending and upstream is not None and upstream.writable:
            item = pending[0]
            if item.generation != self.session.generation:
                pending.popleft()
                continue
            if item.generation != self.upstream_generation:
                return  # its connection is still opening
            pending.popleft()
            upstream.send(item.text)
            self._note_sent(item.text)

    def _note_sent(self, text: str) -> None:
        if text.startswith(APPEND_PREFIX):
            self._audio_since_event += (len(text) - len(APPEND_PREFIX) - 2) * 3 // 4
            owed = self._audio_since_event >= self._owed_audio
        else:
            owed = text == COMMIT_FINAL
        if owed and self.upstream_owes_since is None:
            self.upstream_owes_since = self.clock()

    def _note_upstream_event(self) -> None:
        self.upstream_owes_since = None
        self._audio_since_event = 0

    def _attach_upstream(self, generation: int, connection: UpstreamConnection) -> None:
        """Feeds ``connection``'s events to the session as they are read."""
        session = self.session

        def on_message(raw: str) -> None:
            if raw == EMPTY_DELTA:
                # About half of vLLM's events: nothing to forward, no need to parse.
                self._note_upstream_event()
                return
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("upstream_sent_invalid_json", session_id=session.session_id)
                return
            if not isinstance(event, dict):
                return
            self._note_upstream_event()
            try:
                self.apply(session.on_upstream_event(generation, event))
            except Exception:
                self._fail()
            if self.outbound.qsize() > self._outbound_resume_at:
                connection.pause()
                self._paused_upstream = connection

        def on_lost() -> None:
            self.apply(session.on_upstream_lost(generation))

        connection.attach(on_message, on_lost)

    async def _reopen_upstream(self, generation: int) -> None:
        old, self.upstream = self.upstream, None
        if old is not None:
            old.close()
        try:
            connection = await open_upstream(
                self.config.upstream_url, self.config.served_model_name
            )
        except UpstreamUnavailable as exc:
            log.warning("upstream_reopen_failed", reason=str(exc))
            self.apply(self.session.on_upstream_lost(generation))
            return
        if generation != self.session.generation or self.session.closed:
            connection.close()
            return
        self.upstream, self.upstream_generation = connection, generation
        self._paused_upstream = None
        self._note_upstream_event()
        connection.on_writable = self._flush_upstream
        self._flush_upstream()
        self.apply(self.session.on_upstream_ready(generation))
        self._attach_upstream(generation, connection)

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
            self.apply(self.session.terminate(ErrorCode.IDLE_TIMEOUT, CloseCode.IDLE_TIMEOUT))
            return

    async def _duration_timer(self) -> None:
        if not self.config.max_duration_s:
            return
        await asyncio.sleep(self.config.max_duration_s)
        self.apply(self.session.wind_down(WindDown.MAX_DURATION))
        # Grace for the utterance in flight to be finalized and delivered.
        await asyncio.sleep(self.config.drain_timeout_s)
        self.apply(self.session.terminate(ErrorCode.MAX_DURATION_REACHED, CloseCode.MAX_DURATION))

    async def _watchdog(self) -> None:
        """Ends the connection when the client accepts nothing for CLIENT_WRITE_TIMEOUT_S, and
        the current utterance when vLLM owes an event for longer than its timeout."""
        upstream_timeout = self.config.upstream_timeout_s
        while True:
            write_timeout = CLIENT_WRITE_TIMEOUT_S
            shortest = min(write_timeout, upstream_timeout or write_timeout)
            await asyncio.sleep(min(shortest / 4, 1.0))
            now = self.clock()
            if self.writing_since is not None and now - self.writing_since > write_timeout:
                log.warning("client_write_stalled", session_id=self.session.session_id)
                if self._writer is not None:
                    self._writer.cancel()
                return
            since = self.upstream_owes_since
            if upstream_timeout and since is not None and now - since > upstream_timeout:
                log.warning("upstream_silent", seconds=round(now - since, 1))
                self._note_upstream_event()
                self.apply(self.session.on_upstream_stalled(self.upstream_generation))

    # ------------------------------------------------------------------ shutdown

    def wind_down(self) -> None:
        self.apply(self.session.wind_down(WindDown.SHUTDOWN))

    def shut(self) -> None:
        self.apply(self.session.terminate(ErrorCode.SHUTTING_DOWN, CloseCode.GOING_AWAY))


_MESSAGE_LABELS: dict[type, str] = {
    SessionUpdate: "session.update",
    Commit: "input_audio_buffer.commit",
    Append: "input_audio_buffer.append",
    Cancel: "cancel",
    Ping: "ping",
    End: "end",
    EnvelopeError: "invalid",
}
