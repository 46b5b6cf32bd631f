"""Admission of a client WebSocket: accepting the upgrade, then admitting or refusing it
(draining, origin, credential, capacity), and the connect query's options (audio format, turn
detection). Every refusal comes after the upgrade, so browsers can read why. Each route is a
``Door``: its protocol's codec, the subprotocol it selects, where its clients put their
credential, and what its connect query may ask for.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from starlette.websockets import WebSocket

from proxy.audio_format import AudioFormat, UnsupportedAudioFormat, parse_query
from proxy.auth import (
    OPENAI_SUBPROTOCOL,
    SUBPROTOCOL,
    AmbiguousCredential,
    key_is_valid,
    presented_key,
)
from proxy.client_secrets import is_client_secret, verify_client_secret
from proxy.limits import auth_failure_details
from proxy.protocols.codec import Codec
from proxy.protocols.envelope import ID_MAX_CHARS, WRONG_API_KEY, EnvelopeCodec
from proxy.session.events import ErrorCode, SessionError
from proxy.state import ProxyState
from proxy.tokens import Claims, TokenError, looks_like_token
from proxy.turns import TurnOptions

log = structlog.get_logger("proxy.admission")


class CodecFactory(Protocol):
    """Makes a connection's codec: its session id in (``bound_session``: the id came with the
    client's token, and the connection keeps it)."""

    def __call__(self, session_id: str, *, bound_session: bool = False) -> Codec: ...


# A session's audio format and turn detection when it opens.
ConnectOptions = tuple[AudioFormat, TurnOptions | None]


@dataclass(frozen=True, slots=True)
class Door:
    """How one route admits its clients."""

    make_codec: CodecFactory
    # The subprotocol selected when the client offers it (never a credential offer).
    subprotocol: str
    # The credential the client presented (the request, and the subprotocols it offered).
    present: Callable[[WebSocket, Sequence[str]], str | None]
    # The session's options from the connect query; None when refused (the client was told).
    options: Callable[[WebSocket, ProxyState, Codec], Awaitable[ConnectOptions | None]]
    # A reusable credential of the route's own (Mistral's client session tokens): whether the
    # credential is one that admits this connection; raises ``Unauthorized`` for one of its
    # kind that does not. None: the route takes only keys, secrets and tokens.
    own_credential: Callable[[WebSocket, ProxyState, str], bool] | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    session_id: str
    # The session id came with the client's token: no message may name another.
    bound_session: bool


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
    label = reason or code.value
    state.metrics.refusals.labels(label).inc()
    log.info("connection_refused", reason=label)
    with contextlib.suppress(Exception):
        error = SessionError(code, None, message=message, details=details or {}, closes=True)
        for text in codec.render(error):
            await websocket.send_text(text)
        await websocket.close(codec.close_code(code))


async def refuse_model(
    websocket: WebSocket, state: ProxyState, codec: Codec, model: str | None, remedy: str
) -> None:
    """Refuses the connect query's model (None or empty: it named none); the client's name is
    quoted back cut short, then ``remedy`` says what to connect with."""
    shown = f"model={model[:80]!r} is not served here" if model else "model is required"
    await refuse(websocket, state, codec, ErrorCode.UNSUPPORTED_MODEL, message=f"{shown}: {remedy}")


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
    """Checks an API key (constant time), a client secret (reusable until it expires) or a
    client token; returns the token's claims (None for a key or a secret). Raises
    ``Unauthorized``."""
    if key_is_valid(credential, state.config.api_keys):
        return None
    if credential is None:
        raise Unauthorized  # the protocol's default message for unauthorized: where to send one
    if is_client_secret(credential):
        try:
            verify_client_secret(state.client_secrets, credential, time.time())
        except TokenError as exc:
            raise Unauthorized(str(exc)) from None
        return None
    if not looks_like_token(credential):
        raise Unauthorized(WRONG_API_KEY)
    try:
        return state.tokens.verify(credential, time.time())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None


def envelope_credential(websocket: WebSocket, offered: Sequence[str]) -> str | None:
    """Where an envelope client may put its key or token (see ``proxy.auth.presented_key``)."""
    return presented_key(websocket.query_params, websocket.headers, offered)


async def admit(websocket: WebSocket, state: ProxyState, door: Door) -> Admitted | None:
    """Accepts the upgrade, then refuses (an error in the door's protocol and a close) or
    admits: returns the session id, and whether the client's token bound it, when admitted."""
    config = state.config
    make_codec = door.make_codec
    offered = websocket.scope.get("subprotocols", [])
    # Only the plain name is echoed: the credential offer is never sent back.
    subprotocol = door.subprotocol if door.subprotocol in offered else None
    await websocket.accept(subprotocol=subprotocol)
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
    bound = False
    try:
        credential = door.present(websocket, offered)
        own = door.own_credential
        if own is not None and credential is not None and own(websocket, state, credential):
            claims = None
        else:
            claims = authenticate(state, credential)
        if claims is not None:
            if claims.session_id is not None and query_session not in (None, claims.session_id):
                raise Unauthorized(
                    "This token is bound to another session_id: connect with its session_id "
                    "or mint a token for this one."
                )
            state.tokens.use_once(claims, time.time())
            session_id = claims.session_id or session_id
            bound = claims.session_id is not None
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

    return Admitted(session_id, bound)


async def connect_options(
    websocket: WebSocket, state: ProxyState, codec: Codec
) -> ConnectOptions | None:
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


def realtime_door(
    make_codec: Callable[[str], Codec],
    present: Callable[[WebSocket, Sequence[str]], str | None],
    options: Callable[[WebSocket, ProxyState, Codec], Awaitable[ConnectOptions | None]],
    own_credential: Callable[[WebSocket, ProxyState, str], bool] | None = None,
) -> Door:
    """The door of a vendor's realtime route (OpenAI's, Mistral's): it selects the ``realtime``
    subprotocol, and its protocol's events name no session, so a token's bound session changes
    nothing in its codec."""

    def codec(session_id: str, *, bound_session: bool = False) -> Codec:
        return make_codec(session_id)

    return Door(
        make_codec=codec,
        subprotocol=OPENAI_SUBPROTOCOL,
        present=present,
        options=options,
        own_credential=own_credential,
    )


def envelope_door(max_message_bytes: int) -> Door:
    """``/api/asr-streaming``'s door: the envelope, its ``voxtral-stt`` subprotocol, a key or
    token wherever ``proxy.auth.presented_key`` looks, the format and turn detection in the
    connect query."""
    return Door(
        make_codec=functools.partial(EnvelopeCodec, max_message_bytes=max_message_bytes),
        subprotocol=SUBPROTOCOL,
        present=envelope_credential,
        options=connect_options,
    )
