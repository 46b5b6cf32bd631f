"""The Starlette app: the client WebSocket route (admitted by ``proxy.admission``, spoken in
the envelope protocol), the HTTP endpoints, and the lifespan; the shared state is
``proxy.state``."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from proxy import mistral_route, openai_route
from proxy.admission import Door, admit, envelope_door, refuse
from proxy.client_secrets import mint_client_secret, mint_transcription_session
from proxy.config import ProxyConfig
from proxy.metrics import STARTED
from proxy.protocols.codec import Codec
from proxy.relay import Relay
from proxy.security_headers import SecurityHeaders
from proxy.session import Session
from proxy.session.actions import Outcome
from proxy.session.events import ErrorCode
from proxy.state import ProxyState
from proxy.token_endpoint import TOKEN_ROUTE_METHODS, mint_token
from proxy.upstream import UpstreamUnavailable, open_upstream
from proxy.vllm_wire import segment_limit
from proxy.ws_protocol import MESSAGE_READY

log = structlog.get_logger("proxy.app")

# The browser demo: the page and its assets, and the JS client module it imports.
DEMO_DIR = Path(__file__).resolve().parent / "static"
JS_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"


class ClientEndpoint:
    """A client WebSocket route (``WS /api/asr-streaming``, ``WS /v1/realtime``,
    ``WS /v1/audio/transcriptions/realtime``) as a raw ASGI app: Starlette routes to it, and
    after admission through the route's ``door`` the relay uses ``receive``/``send`` without
    Starlette's ``WebSocket`` object in between."""

    def __init__(self, state: ProxyState, door: Door) -> None:
        self.state = state
        self.door = door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, websocket = self.state, WebSocket(scope, receive, send)
        admitted = await admit(websocket, state, self.door)
        if admitted is None:
            return
        session_id = admitted.session_id
        state.slots_taken += 1
        try:
            codec = self.door.make_codec(session_id, bound_session=admitted.bound_session)
            await _serve_session(websocket, state, session_id, codec, self.door, receive, send)
        finally:
            state.slots_taken -= 1


async def _serve_session(
    websocket: WebSocket,
    state: ProxyState,
    session_id: str,
    codec: Codec,
    door: Door,
    receive: Receive,
    send: Send,
) -> None:
    # Bound before vLLM's socket opens: its callbacks (and their log lines) run in the context
    # current at that moment.
    connection_id = uuid.uuid4().hex[:12]
    structlog.contextvars.bind_contextvars(session_id=session_id, connection_id=connection_id)
    try:
        await _relay_session(
            websocket, state, session_id, connection_id, codec, door, receive, send
        )
    finally:
        structlog.contextvars.unbind_contextvars("session_id", "connection_id")


async def _relay_session(
    websocket: WebSocket,
    state: ProxyState,
    session_id: str,
    connection_id: str,
    codec: Codec,
    door: Door,
    receive: Receive,
    send: Send,
) -> None:
    config = state.config
    options = await door.options(websocket, state, codec)
    if options is None:
        return
    audio_format, turns = options
    try:
        upstream = await open_upstream(config.upstream_url, config.served_model_name)
    except UpstreamUnavailable as exc:
        log.warning("upstream_unavailable", reason=str(exc))
        await refuse(websocket, state, codec, ErrorCode.UPSTREAM_UNAVAILABLE)
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
        rules=codec.rules,
        client_limits=state.client_limits,
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
        codec,
        (websocket.scope.get("extensions") or {}).get(MESSAGE_READY),
    )
    try:
        for text in codec.render(session.created(connection_id)):
            await websocket.send_text(text)
    except Exception:
        upstream.close()
        return
    protocol = codec.protocol
    state.metrics.connections_total.labels(protocol).inc()
    state.metrics.connections_open.labels(protocol).inc()
    state.relays.add(relay)
    log.info("session_opened", protocol=protocol)
    try:
        await relay.run()
    finally:
        state.relays.discard(relay)
        state.memory.connection_ended()
        state.metrics.connections_open.labels(protocol).dec()
        counts = relay.telemetry.counts
        log.info(
            "session_closed",
            # The app's own id, as its latest message gave it (the bound one is the connect's).
            session_id=relay.codec.session_id,
            utterances=counts[STARTED],
            done=counts[Outcome.DONE],
            cancelled=counts[Outcome.CANCELLED],
            errored=counts[Outcome.ERRORED],
            abandoned=counts[Outcome.ABANDONED],
            closed_by=relay.closed_by,
            close_code=relay.close_code,
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
        WebSocketRoute(
            "/api/asr-streaming", ClientEndpoint(state, envelope_door(config.max_message_bytes))
        ),
        WebSocketRoute(openai_route.PATH, ClientEndpoint(state, openai_route.door(config))),
        Route(f"{openai_route.PATH}/client_secrets", mint_client_secret, methods=["POST"]),
        Route(
            f"{openai_route.PATH}/transcription_sessions",
            mint_transcription_session,
            methods=["POST"],
        ),
        WebSocketRoute(mistral_route.PATH, ClientEndpoint(state, mistral_route.door(config))),
        Route(mistral_route.SESSIONS_PATH, mistral_route.mint_session, methods=["POST"]),
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
