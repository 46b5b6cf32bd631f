"""The Starlette app: the shared state, the client WebSocket route (admitted by
``proxy.admission``), the HTTP endpoints, and draining."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from proxy.actions import Outcome
from proxy.admission import admit, connect_options, refuse
from proxy.audio_format import AudioFormat
from proxy.config import ProxyConfig
from proxy.envelope import (
    CloseCode,
    ErrorCode,
    encode_event,
    server_event,
)
from proxy.limits import AuthFailureLimiter, Refusal, SessionLimits
from proxy.memory import MemoryReleaser
from proxy.metrics import STARTED, Metrics
from proxy.relay import Relay
from proxy.security_headers import SecurityHeaders
from proxy.session import Session
from proxy.token_endpoint import TOKEN_ROUTE_METHODS, mint_token
from proxy.tokens import TokenIssuer, token_secret
from proxy.turns import TurnOptions
from proxy.upstream import UpstreamMonitor, UpstreamUnavailable, open_upstream
from proxy.vad_service import VadService
from proxy.vllm_wire import segment_limit

log = structlog.get_logger("proxy.app")

# The browser demo: the page and its assets, and the JS client module it imports.
DEMO_DIR = Path(__file__).resolve().parent / "static"
JS_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class ProxyState:
    """Everything shared by the connections of one server."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.monitor = UpstreamMonitor(
            config.upstream_health_url,
            config.served_model_name,
            on_change=self.metrics.set_upstream_state,
        )
        self.auth_failures = AuthFailureLimiter(
            config.max_auth_failures_per_window, config.auth_failure_window_s
        )
        self.tokens = TokenIssuer(token_secret(config.token_secret), config.token_max_ttl_s)
        self.limits = SessionLimits.from_config(config)
        self.memory = MemoryReleaser()
        # Slots are taken before the upstream is dialled, so admission cannot overshoot.
        self.slots_taken = 0
        self.relays: set[Relay] = set()
        self.draining = False
        # Loads the VAD model when the first session turns turn detection on.
        self.vad = VadService()

    @property
    def ready(self) -> bool:
        return (
            self.monitor.ready
            and not self.draining
            and self.slots_taken < self.config.max_connections
        )

    def auth_failed(self, address: str) -> Refusal | None:
        """Counts a failed attempt from ``address``; the refusal when it had already used up
        its failures (then the answer is ``rate_limited`` rather than ``unauthorized``). Only
        failures meet this limit: a valid credential is never refused for others' failures."""
        now = time.monotonic()
        blocked = self.auth_failures.blocked(address, now)
        if blocked is None:
            self.auth_failures.record_failure(address, now)
        return blocked

    def session_created_payload(
        self, audio_format: AudioFormat, turns: TurnOptions | None, connection_id: str
    ) -> dict[str, Any]:
        config = self.config
        return {
            # The connection's own id: its log lines carry it as connection_id.
            "id": connection_id,
            "model": config.served_model_name,
            "transcription_delay_ms": config.transcription_delay_ms,
            "segment_pause_ms": config.segment_pause_ms,
            "audio": audio_format.as_payload(),
            "turn_detection": turns.as_payload() if turns is not None else None,
            "limits": {
                "idle_timeout_s": _number(config.idle_timeout_s),
                "max_duration_s": _number(config.max_duration_s),
                "inbound_queue_max": config.inbound_queue_max,
                "inbound_queue_max_bytes": config.inbound_queue_max_bytes,
                "max_message_bytes": config.max_message_bytes,
            },
        }

    async def drain(self) -> None:
        """Stops admitting, lets open utterances finish for up to the drain timeout, then
        closes every socket with ``shutting_down``."""
        self.draining = True
        self.metrics.draining.set(1)
        log.info("drain_started", connections=len(self.relays))
        for relay in list(self.relays):
            relay.wind_down()
        pending = [relay.done.wait() for relay in self.relays]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_timeout_s):
                    await asyncio.gather(*pending)
        for relay in list(self.relays):
            relay.shut()
        leftovers = [relay.done.wait() for relay in self.relays]
        if leftovers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*leftovers)
        log.info("drain_finished", connections=len(self.relays))


class AsrStreamingEndpoint:
    """``WS /api/asr-streaming`` as a raw ASGI app: Starlette routes to it, and after admission
    the relay uses ``receive``/``send`` without Starlette's ``WebSocket`` object in between."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, websocket = self.state, WebSocket(scope, receive, send)
        session_id = await admit(websocket, state)
        if session_id is None:
            return
        state.slots_taken += 1
        try:
            await _serve_session(websocket, state, session_id, receive, send)
        finally:
            state.slots_taken -= 1


async def _serve_session(
    websocket: WebSocket, state: ProxyState, session_id: str, receive: Receive, send: Send
) -> None:
    # Bound before vLLM's socket opens: its callbacks (and their log lines) run in the context
    # current at that moment.
    connection_id = uuid.uuid4().hex[:12]
    structlog.contextvars.bind_contextvars(session_id=session_id, connection_id=connection_id)
    try:
        await _relay_session(websocket, state, session_id, connection_id, receive, send)
    finally:
        structlog.contextvars.unbind_contextvars("session_id", "connection_id")


async def _relay_session(
    websocket: WebSocket,
    state: ProxyState,
    session_id: str,
    connection_id: str,
    receive: Receive,
    send: Send,
) -> None:
    config = state.config
    options = await connect_options(websocket, state, session_id)
    if options is None:
        return
    audio_format, turns = options
    try:
        upstream = await open_upstream(config.upstream_url, config.served_model_name)
    except UpstreamUnavailable as exc:
        log.warning("upstream_unavailable", reason=str(exc))
        await refuse(
            websocket,
            state,
            session_id,
            ErrorCode.UPSTREAM_UNAVAILABLE,
            CloseCode.TRY_AGAIN_LATER,
        )
        return
    max_model_len = state.monitor.max_model_len
    session = Session(
        session_id=session_id,
        served_model=config.served_model_name,
        limits=state.limits,
        transcription_delay_ms=config.transcription_delay_ms,
        segment_max_bytes=segment_limit(
            max_model_len, config.transcription_delay_ms, config.segment_max_s
        ),
        segment_pause_ms=config.segment_pause_ms,
        audio_format=audio_format,
        turn_options=turns,
    )
    relay = Relay(
        receive,
        send,
        session,
        upstream,
        config,
        state.metrics,
        time.monotonic,
        functools.partial(open_upstream, config.upstream_url, config.served_model_name),
        state.vad,
    )
    created = server_event(
        "session.created",
        session_id,
        None,
        state.session_created_payload(audio_format, turns, connection_id),
    )
    try:
        await websocket.send_text(encode_event(created))
    except Exception:
        upstream.close()
        return
    state.metrics.connections_total.inc()
    state.metrics.connections_open.inc()
    state.relays.add(relay)
    log.info("session_opened")
    try:
        await relay.run()
    finally:
        state.relays.discard(relay)
        state.memory.connection_ended()
        state.metrics.connections_open.dec()
        counts = relay.telemetry.counts
        log.info(
            "session_closed",
            # The app's own id, as its latest message gave it (the bound one is the connect's).
            session_id=relay.session.session_id,
            utterances=counts[STARTED],
            done=counts[Outcome.DONE],
            cancelled=counts[Outcome.CANCELLED],
            errored=counts[Outcome.ERRORED],
        )


async def healthz(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    return JSONResponse(
        {
            "status": "ok",
            "upstream": state.monitor.state,
            "connections": state.slots_taken,
            "capacity": state.config.max_connections,
        }
    )


async def readyz(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    ready = state.ready
    return JSONResponse(
        {
            "ready": ready,
            "upstream": state.monitor.state,
            "draining": state.draining,
            "connections": state.slots_taken,
            "capacity": state.config.max_connections,
        },
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


async def demo_page(request: Request) -> Response:
    return FileResponse(DEMO_DIR / "index.html")


def create_app(config: ProxyConfig) -> Starlette:
    state = ProxyState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.monitor.start()
        log.info(
            "proxy_started",
            upstream=config.upstream_url,
            model=config.served_model_name,
            upstream_state=state.monitor.state,
            capacity=config.max_connections,
        )
        try:
            yield
        finally:
            await state.monitor.stop()
            await state.vad.close()

    routes: list[BaseRoute] = [
        WebSocketRoute("/api/asr-streaming", AsrStreamingEndpoint(state)),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        # Every method reaches it, so that a wrong one gets a JSON error like every refusal.
        Route("/api/tokens", mint_token, methods=TOKEN_ROUTE_METHODS),
    ]
    if config.demo_page:
        routes += [
            Route("/", demo_page),
            Mount("/demo", StaticFiles(directory=DEMO_DIR, check_dir=False)),
            Mount("/js", StaticFiles(directory=JS_CLIENT_DIR, check_dir=False)),
        ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
    app.state.proxy = state
    return app
