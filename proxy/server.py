"""Serving the app with uvicorn, with our own graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import structlog
import uvicorn

from proxy.app import create_app
from proxy.auth import API_KEY_MIN_CHARS
from proxy.config import ProxyConfig
from proxy.guard import GuardedConfig, SocketLimits, WebSocketLimits
from proxy.state import ProxyState
from proxy.ws_protocol import FRAME_SIZE_FACTOR, EdgeWebSocketProtocol

log = structlog.get_logger("proxy.server")

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Runs ``main`` on uvloop (a faster event loop, shipped with uvicorn[standard]) when it is
    installed, on asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# File handles kept free of client sockets: the health monitor's and each new session's
# connection to vLLM, the listening sockets, log files.
FD_RESERVE = 64
# Room for sockets beyond the sessions (HTTP checks, clients being admitted), and the floor.
MIN_SPARE_SOCKETS = 16
UNLIMITED_SOCKETS = 1_000_000


def socket_limits(config: ProxyConfig, nofile: int) -> tuple[SocketLimits, str | None]:
    """The caps before a request head, with the open-socket bound fitted under the process's
    file-handle limit ``nofile``: each session also holds a socket to vLLM, and the reserve stays
    free so the health monitor can still reach vLLM while clients hold every other handle. The
    second value is advice when the limit leaves less room than wanted."""
    fits = (
        UNLIMITED_SOCKETS
        if nofile == resource.RLIM_INFINITY
        else nofile - FD_RESERVE - config.max_connections
    )
    wanted = config.max_open_sockets or config.max_connections + MIN_SPARE_SOCKETS
    max_open = max(min(config.max_open_sockets or fits, fits), MIN_SPARE_SOCKETS)
    advice = (
        "raise the file-handle limit (ulimit -n, LimitNOFILE=) to at least "
        f"{FD_RESERVE + config.max_connections + wanted}"
        if max_open < wanted
        else None
    )
    limits = SocketLimits(
        head_timeout_s=config.http_head_timeout_s,
        max_pending=config.max_pending_sockets,
        max_open=max_open,
        max_header_count=config.max_header_count,
        max_header_bytes=config.max_header_bytes,
    )
    return limits, advice


class _Server(uvicorn.Server):
    """uvicorn closes WebSockets with 1012 the moment it shuts down; signals therefore start
    our drain instead, and uvicorn is told to exit once the drain is over."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._on_signal is None:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


class ProxyServer:
    def __init__(self, config: ProxyConfig, *, handle_signals: bool = True) -> None:
        self.config = config
        weak_keys = sum(1 for key in config.api_keys if len(key) < API_KEY_MIN_CHARS)
        if weak_keys:
            log.warning(
                "api_key_weak",
                keys=weak_keys,
                advice=f"use API keys of at least {API_KEY_MIN_CHARS} random characters, "
                "e.g. from `openssl rand -hex 32`",
            )
        self.app = create_app(config)
        self.state: ProxyState = self.app.state.proxy
        nofile, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limits, advice = socket_limits(config, nofile)
        if advice is not None:
            log.warning(
                "file_handle_limit_low",
                nofile=nofile,
                max_open_sockets=limits.max_open,
                max_connections=config.max_connections,
                advice=advice,
                startup=True,
            )
        uvicorn_config = GuardedConfig(
            self.app,
            limits,
            WebSocketLimits(
                max_fragments=config.ws_max_fragments,
                max_control_frames_per_s=config.ws_max_control_frames_per_s,
            ),
            host=config.bind_host,
            port=config.port,
            log_config=None,
            # Up to this size the app answers payload_too_large in-band and keeps the
            # connection; larger frames are cut by the WebSocket layer (close 1009).
            ws_max_size=config.max_message_bytes * FRAME_SIZE_FACTOR,
            # Base64 PCM barely compresses; deflate would only cost CPU on every frame.
            ws_per_message_deflate=False,
            # uvicorn's sans-I/O implementation with our bounds (proxy.ws_protocol).
            ws=EdgeWebSocketProtocol,
            lifespan="on",
            # The client address (for the auth-failure limit) comes from X-Forwarded-For only
            # when the socket's peer is a configured front end; uvicorn's default would trust
            # 127.0.0.1, i.e. anything on this host.
            proxy_headers=True,
            forwarded_allow_ips=list(config.trusted_proxies),
        )
        self._server = _Server(uvicorn_config, self.begin_shutdown if handle_signals else None)
        self._drain_task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    async def serve(self) -> None:
        """Serves until a signal (or ``begin_shutdown``) has drained every connection."""
        await self._server.serve()

    def begin_shutdown(self) -> None:
        """First call: drain, then exit. A second call exits at once."""
        if self._drain_task is not None:
            log.warning("shutdown_forced")
            self._server.force_exit = self._server.should_exit = True
            return
        log.info("shutdown_requested", drain_timeout_s=self.config.drain_timeout_s)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.state.drain()
        finally:
            self._server.should_exit = True
