"""Sockets that have not sent a request head yet (slowloris): a deadline for the head, caps on
its size and header count, a bound on how many such sockets wait at once and on how many
sockets are open in all.

uvicorn 0.54 has none of these for its httptools parser (``limit_concurrency`` answers 503 but
keeps every socket, ``timeout_keep_alive`` starts only after a first response), so they sit
in a subclass of its HTTP protocol. Everything here runs before the app sees a request. An
upgraded WebSocket takes its head's deadline along (``proxy.ws_protocol``): it stays a waiting
socket until the app has accepted or refused it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

# A refused head is answered and closed; the parser is stopped by raising from its callback.
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)
# The WebSocket layer parses the head again, line by line: one line (CRLF included) longer than
# websockets' limit, or more headers than its count, would be refused there; the guard refuses
# them first, the same way for every route.
HEADER_LINE_MAX_BYTES = MAX_LINE_LENGTH
HEADER_COUNT_CEILING = MAX_NUM_HEADERS
# How long a closed socket may take to flush what we wrote before it is aborted (uvicorn's
# WebSocket close timeout has the same value).
CLOSE_TIMEOUT_S = 10.0
# " HTTP/1.1\r\n" and the space after the method, as uvicorn rebuilds the request line.
_REQUEST_LINE_EXTRA = len(b"  HTTP/1.1\r\n")


@dataclass(frozen=True, slots=True)
class SocketLimits:
    head_timeout_s: float
    max_pending: int
    max_open: int
    max_header_count: int
    max_header_bytes: int


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """Bounds of the WebSocket layer under the app (``proxy.ws_protocol``)."""

    max_fragments: int
    max_control_frames_per_s: int


class Evictable(Protocol):
    def evict(self) -> None:
        """Closes the socket at once: it waited longest while another one needs the room."""


class AwaitsApp(Protocol):
    def await_app(self, deadline: float) -> None:
        """Keeps the head's deadline (loop time) until the app has accepted or refused."""


class PendingSockets:
    """Sockets still waiting for their head (or for the app's answer to an upgrade), oldest
    first; one more than the bound evicts the oldest."""

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        # Insertion order is arrival order.
        self._sockets: dict[Evictable, None] = {}

    def __contains__(self, socket: object) -> bool:
        return socket in self._sockets

    def add(self, socket: Evictable) -> None:
        self._sockets[socket] = None
        if len(self._sockets) > self._max:
            self.evict_oldest()

    def discard(self, socket: Evictable) -> None:
        self._sockets.pop(socket, None)

    def evict_oldest(self) -> bool:
        """Closes the socket that has waited longest; a client that sends its head promptly is
        rarely the oldest, so a flood of silent sockets evicts itself."""
        for oldest in self._sockets:
            del self._sockets[oldest]
            oldest.evict()
            return True
        return False


class GuardedConfig(uvicorn.Config):
    """uvicorn's config plus the limits and the waiting sockets (one set per server, shared by
    its protocol instances)."""

    def __init__(
        self, app: Any, limits: SocketLimits, ws_limits: WebSocketLimits, **kwargs: Any
    ) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.socket_limits = limits
        self.ws_limits = ws_limits
        self.pending = PendingSockets(limits.max_pending)


class _HeadRefused(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guarded = cast(GuardedConfig, config)
        self._limits = guarded.socket_limits
        self._pending = guarded.pending
        self._head_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._kept_alive = False  # a response has been sent: the next head is awaited idle
        self._header_count = 0
        self._head_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_open and not self._pending.evict_oldest():
            # Every open socket carries a request or a session: this one gets nothing.
            self._refused = True
            transport.abort()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        super().connection_lost(exc)

    def evict(self) -> None:
        self._head_arrived()
        self._refused = True
        self.transport.abort()

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._pending.add(self)
        self._head_deadline = self.loop.time() + self._limits.head_timeout_s
        self._head_timer = self.loop.call_at(self._head_deadline, self._head_overdue)

    def _head_arrived(self) -> None:
        self._pending.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        self._pending.discard(self)
        if self._kept_alive and not self._head_bytes:
            # Idle after its responses: closed without a word, as keep-alive sockets are; a
            # 408 would land behind responses a slow reader is still taking.
            self._refused = True
            self._close()
        else:
            self._refuse(_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(response)
            self._close()

    def _close(self) -> None:
        """Closes once the client has taken what we wrote; a client that takes nothing is
        aborted when the close timer fires."""
        self.transport.close()
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.transport.abort)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refused head has been answered already
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        waiting = self in self._pending
        super().data_received(data)
        if waiting and self in self._pending and not self._refused:
            # Counted on the wire, since httptools holds a header in full before handing it on.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_count += 1
        if (
            self._header_count > self._limits.max_header_count
            or len(name) + len(value) + len(b": \r\n") > HEADER_LINE_MAX_BYTES
        ):
            self._refuse(_TOO_LARGE)
            raise _HeadRefused

    def on_headers_complete(self) -> None:
        # A head that arrived in one read was never counted on the wire: measure it whole.
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        request_line = len(self.parser.get_method()) + len(self.url) + _REQUEST_LINE_EXTRA
        if size > self._limits.max_header_bytes or request_line > HEADER_LINE_MAX_BYTES:
            self._head_arrived()
            self._refuse(_TOO_LARGE)
            raise _HeadRefused
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._head_arrived()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        deadline = self._head_deadline
        self._head_arrived()
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if protocol is not self and hasattr(protocol, "await_app"):
            cast(AwaitsApp, protocol).await_app(deadline)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle on keep-alive (nothing queued, nothing in flight): the next head gets the same
        # deadline as the first.
        if self.timeout_keep_alive_task is not None and not self.pipeline and not self._refused:
            self._kept_alive = True
            self._await_head()
