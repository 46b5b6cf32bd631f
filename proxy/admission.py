"""Admission of a client WebSocket: accepting the upgrade, then admitting or refusing it
(draining, origin, credential, capacity), and the connect query's options (audio format, turn
detection). Every refusal comes after the upgrade, so browsers can read why.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from proxy.audio_format import AudioFormat, UnsupportedAudioFormat, parse_query
from proxy.auth import SUBPROTOCOL, AmbiguousCredential, key_is_valid, presented_key
from proxy.limits import auth_failure_details
from proxy.protocols.codec import Codec
from proxy.protocols.envelope import ID_MAX_CHARS, WRONG_API_KEY
from proxy.session.events import ErrorCode, SessionError
from proxy.state import ProxyState
from proxy.tokens import Claims, TokenError, looks_like_token
from proxy.turns import TurnOptions

# A connection's codec, given the connection's session id.
CodecFactory = Callable[[str], Codec]

# The connect query parameter that turns turn detection on with its defaults, and its value.
TURN_DETECTION_QUERY = "turn_detection"
SERVER_VAD = "server_vad"


async def refuse(
    websocket: WebSocket,
    state: ProxyState,
    codec: Codec,
    code: ErrorCode,
    details: dict[str, Any] | None = None,
    *,
    message: str | None = None,
    reason: str | None = None,
) -> None:
    """Refusal after the upgrade, so browsers can read why: the error in the connection's
    protocol, then its close code."""
    state.metrics.refusals.labels(reason or code.value).inc()
    with contextlib.suppress(Exception):
        error = SessionError(code, None, message=message, details=details or {}, closes=True)
        for text in codec.render(error):
            await websocket.send_text(text)
        await websocket.close(codec.close_code(code))


async def _refuse_unauthorized(
    websocket: WebSocket,
    state: ProxyState,
    codec: Codec,
    message: str | None,
    reason: str | None = None,
) -> None:
    """``unauthorized`` (``message`` None: the protocol's default)."""
    await refuse(websocket, state, codec, ErrorCode.UNAUTHORIZED, message=message, reason=reason)


class Unauthorized(Exception):
    """The credential is missing or unusable; the message says what to do."""


def authenticate(state: ProxyState, credential: str | None) -> Claims | None:
    """Checks an API key (constant time) or a client token; returns the token's claims (None
    for a key). Raises ``Unauthorized``."""
    if key_is_valid(credential, state.config.api_keys):
        return None
    if credential is None:
        raise Unauthorized  # the protocol's default message for unauthorized: where to send one
    if not looks_like_token(credential):
        raise Unauthorized(WRONG_API_KEY)
    try:
        return state.tokens.verify(credential, time.time())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None


async def admit(websocket: WebSocket, state: ProxyState, make_codec: CodecFactory) -> str | None:
    """Accepts the upgrade, then refuses (an error in the protocol of ``make_codec`` and a
    close) or admits: returns the session id when admitted."""
    config = state.config
    offered = websocket.scope.get("subprotocols", [])
    # Only the plain name is echoed: the credential offer is never sent back.
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    query_session = websocket.query_params.get("session_id")
    session_id = (
        query_session
        if query_session and len(query_session) <= ID_MAX_CHARS
        else f"sess_{uuid.uuid4().hex[:16]}"
    )
    address = websocket.client.host if websocket.client else "unknown"

    if state.draining:
        await refuse(websocket, state, make_codec(session_id), ErrorCode.SHUTTING_DOWN)
        return None
    origin = websocket.headers.get("origin")
    if config.allowed_origins and origin and origin.rstrip("/") not in config.allowed_origins:
        await _refuse_unauthorized(
            websocket,
            state,
            make_codec(session_id),
            "This page's origin may not connect: ask the operator to add it to ALLOWED_ORIGINS.",
            reason="origin_not_allowed",
        )
        return None
    try:
        credential = presented_key(websocket.query_params, websocket.headers, offered)
        claims = authenticate(state, credential)
        if claims is not None:
            if claims.session_id is not None and query_session not in (None, claims.session_id):
                raise Unauthorized(
                    "This token is bound to another session_id: connect with its session_id "
                    "or mint a token for this one."
                )
            state.tokens.use_once(claims, time.time())
            session_id = claims.session_id or session_id
    except (AmbiguousCredential, Unauthorized, TokenError) as exc:
        blocked = state.auth_failed(address)
        if blocked is not None:
            await refuse(
                websocket,
                state,
                make_codec(session_id),
                ErrorCode.RATE_LIMITED,
                auth_failure_details(blocked),
            )
        else:
            await _refuse_unauthorized(websocket, state, make_codec(session_id), str(exc) or None)
        return None
    if state.slots_taken >= config.max_connections:
        await refuse(websocket, state, make_codec(session_id), ErrorCode.SERVER_AT_CAPACITY)
        return None

    return session_id


async def connect_options(
    websocket: WebSocket, state: ProxyState, codec: Codec
) -> tuple[AudioFormat, TurnOptions | None] | None:
    """The audio format and turn detection the connect query asks for; None when refused (the
    client was told why)."""
    turns_query = websocket.query_params.get(TURN_DETECTION_QUERY)
    if turns_query not in (None, SERVER_VAD):
        await refuse(
            websocket,
            state,
            codec,
            ErrorCode.INVALID_MESSAGE,
            message=f"turn_detection={turns_query[:40]!r} is not supported: connect with "
            f"turn_detection={SERVER_VAD}, or without it and send session.update.",
        )
        return None
    turns = TurnOptions() if turns_query == SERVER_VAD else None
    try:
        audio_format = parse_query(websocket.query_params)
    except UnsupportedAudioFormat as exc:
        # Refused before any audio is read: in another format it would be transcribed as noise.
        await refuse(
            websocket,
            state,
            codec,
            ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
            exc.details,
            message=exc.message,
        )
        return None
    return audio_format, turns
