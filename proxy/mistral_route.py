"""``WS /v1/audio/transcriptions/realtime``: Mistral's realtime transcription API, the door of
the route (``proxy.admission.Door``), and ``POST /v1/client/sessions``, which mints the client
session tokens a browser connects with. The protocol itself is the codec's
(``proxy.protocols.mistral``); the session underneath is every route's.

The connect query names the model (``?model=``, required: the served name, Mistral's names for
this model, or a configured alias). Clients put their credential in ``Authorization: Bearer``
(every SDK) or offer it as the subprotocol after ``realtime`` (browsers); the server selects
``realtime``. A session opens as 16 kHz ``pcm_s16le``.

A client session token (``rt_...``) is a client token (``proxy.tokens``) bound to the model it
was minted for, and, like Mistral's, opens any number of sessions until it expires (the
connection cap and the rate limits still apply to each).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from proxy.admission import ConnectOptions, Door, Unauthorized, realtime_door, refuse_model
from proxy.audio_format import NATIVE
from proxy.auth import presented_mistral_credential
from proxy.config import ProxyConfig
from proxy.minting import capped_body, refused_key, wait_then_retry
from proxy.protocols.codec import Codec
from proxy.protocols.mistral import MistralCodec, codec_for, model_names
from proxy.tokens import TokenError

if TYPE_CHECKING:
    from proxy.state import ProxyState

PATH = "/v1/audio/transcriptions/realtime"
SESSIONS_PATH = "/v1/client/sessions"
SESSION_TOKEN_PREFIX = "rt_"  # noqa: S105 (a format marker, not a secret)
# The binding a session token carries: the model it was minted for.
_BINDING_PREFIX = "mistral-realtime:"
PURPOSE = "realtime"
DEFAULT_SESSION_TTL_S = 900
REQUEST_MAX_BYTES = 4096  # a model name, a purpose and a lifetime


def credential(websocket: WebSocket, offered: Sequence[str]) -> str | None:
    return presented_mistral_credential(websocket.headers, offered)


def _binding(model: str) -> str:
    return _BINDING_PREFIX + model


def session_token(websocket: WebSocket, state: ProxyState, presented: str) -> bool:
    """Whether ``presented`` is a client session token that admits this connection (valid,
    unexpired, minted for the model in the connect query); raises ``Unauthorized`` for a
    session token that does not."""
    if not presented.startswith(SESSION_TOKEN_PREFIX):
        return False
    try:
        claims = state.tokens.verify(presented.removeprefix(SESSION_TOKEN_PREFIX), time.time())
    except TokenError as error:
        expired = "expired" in str(error)
        raise Unauthorized(
            (
                "The client session token has expired"
                if expired
                else "The client session token is not valid"
            )
            + f": mint a new one with POST {SESSIONS_PATH}."
        ) from None
    if claims.session_id != _binding(websocket.query_params.get("model", "")):
        raise Unauthorized(
            "This client session token was minted for another model: connect with the model it "
            f"was minted for, or mint one for this model with POST {SESSIONS_PATH}."
        )
    return True


async def connect_options(
    websocket: WebSocket, state: ProxyState, codec: Codec
) -> ConnectOptions | None:
    """The session's defaults once the query's model is checked; None when refused."""
    assert isinstance(codec, MistralCodec)
    model = websocket.query_params.get("model")
    if not model or not codec.name_model(model):
        await refuse_model(
            websocket, state, codec, model, f"connect with ?model= one of {codec.model_names()}."
        )
        return None
    return NATIVE, None


def door(config: ProxyConfig) -> Door:
    return realtime_door(
        functools.partial(codec_for, config),
        present=credential,
        options=connect_options,
        own_credential=session_token,
    )


# ---------------------------------------------------------------------- POST /v1/client/sessions


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        {"object": "error", "message": message, "type": kind, "param": None, "code": None},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _timestamp(seconds: int) -> str:
    """ISO 8601 in UTC, as the SDK's ``datetime`` fields read it."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _request(body: object, config: ProxyConfig) -> tuple[str, int]:
    """The model and lifetime asked for; raises ``ValueError`` saying what to send."""
    if not isinstance(body, dict):
        raise ValueError('Send a JSON object: {"model": ..., "purpose": "realtime"}.')
    if body.get("purpose") != PURPOSE:
        raise ValueError('purpose must be "realtime".')
    model = body.get("model")
    names = model_names(config)
    if not isinstance(model, str) or not names.accepts(model):
        raise ValueError(f"model must be one of {names.listed()}.")
    ttl = body.get("ttl_seconds")
    if ttl is None:
        return model, min(DEFAULT_SESSION_TTL_S, config.token_max_ttl_s)
    if type(ttl) is not int or not 1 <= ttl <= config.token_max_ttl_s:
        raise ValueError(
            f"ttl_seconds must be a whole number 1..{config.token_max_ttl_s} on this server "
            "(TOKEN_MAX_TTL_S)."
        )
    return model, ttl


async def mint_session(request: Request) -> Response:
    """An API key (``Authorization: Bearer``) buys a client session token for one model; the
    body is Mistral's: ``{"model", "purpose": "realtime", "ttl_seconds"?}``."""
    state: ProxyState = request.app.state.proxy
    refused = refused_key(request)
    if refused is not None:
        if refused.blocked is not None:
            return _error(429, wait_then_retry(refused.blocked), "rate_limited")
        return _error(
            401,
            "Send an API key in Authorization: Bearer (a client session token cannot mint "
            "another).",
            "authentication_error",
        )
    raw = await capped_body(request, REQUEST_MAX_BYTES)
    if raw is None:
        return _error(400, f"The body is over {REQUEST_MAX_BYTES} bytes.")
    try:
        body: Any = orjson.loads(raw)
        model, ttl_s = _request(body, state.config)
    except orjson.JSONDecodeError:
        return _error(400, "The body is not valid JSON.")
    except ValueError as error:
        return _error(400, str(error))
    token, claims = state.tokens.mint(ttl_s, _binding(model), time.time())
    expires_at = _timestamp(claims.expires_at)
    return JSONResponse(
        {
            "object": "client.session",
            "purpose": PURPOSE,
            "expires_at": expires_at,
            "client_secret": {"value": SESSION_TOKEN_PREFIX + token, "expires_at": expires_at},
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )
