"""The WebSocket edge: uvicorn's sans-I/O WebSocket protocol (websockets' ``ServerProtocol``
under an ``asyncio.Protocol``) with bounds of its own, below the app, where frames are parsed:

- the upgrade keeps the guard's head deadline, and counts as a waiting socket, until the app
  has accepted or refused it; a head websockets refuses is answered (431) and closed;
- bytes are parsed a slice (``SLICE_BYTES``) at a time; once a turn has parsed
  ``FRAMES_PER_TURN`` frames the loop gets a turn; nothing is parsed while a message waits for
  the app, while our own writes are paused, or while the app has not answered the upgrade: one
  socket cannot hold the loop or fill memory;
- a message of more than ``max_fragments`` frames closes 1009; control frames beyond
  ``max_control_frames_per_s`` close 1008; only the latest ping is answered (RFC 6455 5.5.3),
  and only while the client takes what we write;
- once we close, a peer that does not read is aborted when the close timer fires.
Client misbehaviour is logged at INFO, without a traceback.

The app learns from the scope's ``MESSAGE_READY`` extension whether its next ``receive`` has a
message waiting (the relay then writes what the frames make for vLLM once, after the last).
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, cast

import structlog
from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request

from proxy.guard import CLOSE_TIMEOUT_S, GuardedConfig

log = structlog.get_logger("proxy.ws_protocol")

# Frames are fed to the parser in slices this large: a slice holds at most ~680 (empty, masked)
# frames, so a turn stays short whatever one read brought.
SLICE_BYTES = 4096
FRAMES_PER_TURN = 64
# The WebSocket layer admits frames up to this many times the app's message limit, so the app
# can answer a message slightly too large in-band (payload_too_large); beyond, close 1009.
FRAME_SIZE_FACTOR = 2
CONTROL_WINDOW_S = 1.0
# websockets queues a pong for every ping it parses; a frame's first byte says it is one (FIN,
# opcode 0xA, unmasked: the server never sends another pong).
_PONG = bytes((0x80 | Opcode.PONG.value,))
# The scope extension whose value is a callable: True when a parsed message waits for the app.
MESSAGE_READY = "yap.message_ready"


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guarded = cast(GuardedConfig, config)
        self._limits = guarded.ws_limits
        self._pending = guarded.pending
        self._head_timer: asyncio.TimerHandle | None = None
        self._unparsed = bytearray()
        self._turn_scheduled = False
        self._write_paused = False
        self._fragments = 0
        self._control_window_start = 0.0
        self._control_frames = 0
        self._pong_owed: bytes | None = None
        self.close_timeout = CLOSE_TIMEOUT_S

    # The guard's deadline, handed over at the upgrade.

    def await_app(self, deadline: float) -> None:
        if self.handshake_complete or self.transport.is_closing():
            return
        self._pending.add(self)
        self._head_timer = self.loop.call_at(deadline, self._app_overdue)

    def evict(self) -> None:
        self._app_answered()
        self.transport.abort()

    def _app_answered(self) -> None:
        self._pending.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _app_overdue(self) -> None:
        self._head_timer = None
        self._pending.discard(self)
        if self.handshake_complete or self.transport.is_closing():
            return
        self.handshake_complete = self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.conn.send_response(self.conn.reject(HTTPStatus.REQUEST_TIMEOUT, ""))
        self._write_and_close()

    # Transport callbacks.

    def connection_lost(self, exc: Exception | None) -> None:
        self._app_answered()
        self._unparsed.clear()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        self._flush()
        self._parse()

    def data_received(self, data: bytes) -> None:
        if self._unparsed or len(data) > SLICE_BYTES:
            self._unparsed += data
            self._parse()
        else:
            self._parse(data)  # the usual read: one message, parsed without a copy

    # Parsing, a bounded amount per turn.

    def _may_parse(self) -> bool:
        return not (
            self.read_paused  # a message waits for the app
            or self._write_paused
            or self._turn_scheduled
            or self.disconnected
            or self.transport.is_closing()
            or (self.handshake_initiated and not self.handshake_complete)  # app not answered
        )

    def _parse(self, data: bytes = b"") -> None:
        """Parses ``data`` (at most a slice), then what is left unparsed, while allowed."""
        frames = 0
        while self._may_parse():
            if data:
                chunk, data = data, b""
            elif self._unparsed:
                chunk = bytes(self._unparsed[:SLICE_BYTES])
                del self._unparsed[:SLICE_BYTES]
            else:
                break
            self.conn.receive_data(chunk)
            frames += self.handle_events()
            if self.transport.is_closing():
                break
            if self.conn.parser_exc is not None:
                self._parser_failed()
            elif self.conn.handshake_exc is not None:
                self._head_refused()
            else:
                self._flush()
            if frames >= FRAMES_PER_TURN and self._unparsed and self._may_parse():
                self._turn_scheduled = True
                self.loop.call_soon(self._next_turn)
        if data:
            self._unparsed += data
        self._update_reading()

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        self._parse()

    def _update_reading(self) -> None:
        if self.transport.is_closing():
            return
        wanted = not self._unparsed and self._may_parse()
        if wanted and not self.transport.is_reading():
            self.transport.resume_reading()
        elif not wanted and self.transport.is_reading():
            self.transport.pause_reading()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.handshake_complete:  # accepted: the scope is made
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[MESSAGE_READY] = self.message_ready

    def message_ready(self) -> bool:
        return not self.queue.empty()

    def handle_events(self) -> int:  # type: ignore[override]
        """Dispatches the parsed events; returns how many frames there were."""
        frames = 0
        for event in self.conn.events_received():
            if self.transport.is_closing():
                break
            if isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                frames += 1
                self._handle_frame(event)
        return frames

    def _handle_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode in (Opcode.PING, Opcode.PONG):
            now = self.loop.time()
            if now - self._control_window_start >= CONTROL_WINDOW_S:
                self._control_window_start, self._control_frames = now, 0
            self._control_frames += 1
            if self._control_frames > self._limits.max_control_frames_per_s:
                self._fail(CloseCode.POLICY_VIOLATION, "too many control frames")
            elif opcode is Opcode.PING:
                self._pong_owed = bytes(frame.data)
            else:
                self.handle_pong(frame)
            return
        if opcode is Opcode.CONT:
            self._fragments += 1
        elif opcode in (Opcode.TEXT, Opcode.BINARY):
            self._fragments = 1
        if self._fragments > self._limits.max_fragments:
            self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments in one message")
        elif opcode is Opcode.CONT:
            self.handle_cont(frame)
        elif opcode is Opcode.TEXT:
            self.handle_text(frame)
        elif opcode is Opcode.BINARY:
            self.handle_bytes(frame)
        else:
            self.handle_close(frame)

    def send_receive_event_to_app(self) -> None:
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past the app's close: discarded while the peer's close reply is awaited
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        self.read_paused = True  # parsing stops until the app has taken it

    # Writing and closing.

    def _flush(self) -> None:
        """Writes what websockets queued, minus the pongs it queued for every ping: only the
        latest ping is answered, once the client takes what we write."""
        if not self.conn.writes and self._pong_owed is None:
            return
        writes = self._outgoing()
        if (
            self._pong_owed is not None
            and not self._write_paused
            and not self.close_sent
            and self.handshake_complete
        ):
            self.conn.send_pong(self._pong_owed)
            self._pong_owed = None
            writes += self.conn.data_to_send()
        if writes and not self.transport.is_closing():
            self.transport.write(b"".join(writes))

    def _outgoing(self) -> list[bytes]:
        return [w for w in self.conn.data_to_send() if w[:1] != _PONG]

    def _write_and_close(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"".join(self._outgoing()))
        self._close_transport()

    def _close_transport(self) -> None:
        """Closes once what we wrote has been taken; a peer that does not read is aborted when
        the close timer fires."""
        self.transport.close()
        if self.close_timer is None and not self.disconnected:
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_overdue)

    def _close_overdue(self) -> None:
        self.close_timer = None
        self.transport.abort()

    def _fail(self, code: CloseCode, reason: str) -> None:
        log.info("websocket_closed_by_edge", code=int(code), reason=reason)
        self.conn.fail(code, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": int(code), "reason": reason})
        self.close_sent = True
        self._write_and_close()

    def _parser_failed(self) -> None:
        close = self.conn.close_sent
        code = close.code if close is not None else CloseCode.ABNORMAL_CLOSURE
        reason = close.reason if close is not None else ""
        log.info("websocket_closed_by_edge", code=int(code), reason=reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": int(code), "reason": reason})
        self.close_sent = True
        self._write_and_close()

    def _head_refused(self) -> None:
        """websockets refused the upgrade's head (too long, too many headers, not a valid
        request): its answer, if any, is written and the socket closed."""
        log.info("websocket_head_refused", reason=str(self.conn.handshake_exc))
        self._app_answered()
        self.handshake_complete = self.close_sent = True
        self._write_and_close()

    def handle_parser_exception(self) -> None:
        self._parser_failed()

    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        if self.transport.is_closing():
            self._close_transport()

    # The app's side.

    async def send(self, message: ASGISendEvent) -> None:
        if self.transport.is_closing() and message["type"] == "websocket.send":
            # Written to a socket we are closing: the client has left, as far as the app cares.
            raise ClientDisconnected
        answered = self.handshake_complete
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn's timer closes, which waits for a peer that may never read: ours aborts.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_overdue)
        elif self.transport.is_closing() and self.close_timer is None:
            self._close_transport()
        if self.handshake_complete and not answered:
            self._app_answered()
        if message["type"] != "websocket.send":
            self._parse()  # accepted or closed: reading may start, or resume for the close

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self._parse()
        return message

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if self.transport.is_closing() and not self.disconnected:
            self._close_transport()
