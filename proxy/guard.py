"""Sockets that have not sent a request head yet (slowloris): a deadline for the head, caps on
its size and header count, a bound on how many such sockets wait at once and on how many
sockets are open in all.

uvicorn 0.54 has none of these for its httptools parser (``limit_concurrency`` answers 503 but
keeps every socket, ``timeout_keep_alive`` starts only after a first response), so they sit
in a subclass of its HTTP protocol. Everything here runs before the app sees a request; an
upgraded WebSocket leaves this protocol once its head is complete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# A refused head is answered and closed; the parser is stopped by raising from its callback.
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class SocketLimits:
    head_timeout_s: float
    max_pending: int
    max_open: int
    max_header_count: int
    max_header_bytes: int


class GuardedConfig(uvicorn.Config):
    """uvicorn's config plus the limits and the set of sockets still waiting for a head (one
    per server, shared by its protocol instances)."""

    def __init__(self, app: Any, limits: SocketLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.socket_limits = limits
        # Insertion order is arrival order: the oldest waiting socket is evicted first.
        self.pending: dict[GuardedHttpProtocol, None] = {}


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
        self._header_count = 0
        self._head_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_open and not self._evict_oldest():
            # Every open socket carries a request or a session: this one gets nothing.
            self._refused = True
            transport.abort()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _evict_oldest(self) -> bool:
        """Closes the socket that has waited longest for its head; a client that sends its
        head promptly is rarely the oldest, so a flood of silent sockets evicts itself."""
        for oldest in self._pending:
            oldest._head_arrived()
            oldest._refused = True
            oldest.transport.abort()
            return True
        return False

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._pending[self] = None
        if len(self._pending) > self._limits.max_pending:
            self._evict_oldest()
        self._head_timer = self.loop.call_later(self._limits.head_timeout_s, self._head_overdue)

    def _head_arrived(self) -> None:
        self._pending.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        self._pending.pop(self, None)
        self._refuse(_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

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
        if self._header_count > self._limits.max_header_count:
            self._refuse(_TOO_LARGE)
            raise _HeadRefused

    def on_headers_complete(self) -> None:
        self._head_arrived()
        # A head that arrived in one read was never counted on the wire: measure it whole.
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self._limits.max_header_bytes:
            self._refuse(_TOO_LARGE)
            raise _HeadRefused
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle on keep-alive: the next head gets the same deadline as the first.
        if self.timeout_keep_alive_task is not None and not self._refused:
            self._await_head()
