"""``POST /api/tokens``: an API key buys a short-lived client token (see ``proxy.tokens``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from proxy.limits import auth_failure_details
from proxy.minting import capped_body, refused_key
from proxy.protocols.envelope import ID_MAX_CHARS, WRONG_API_KEY
from proxy.session.events import ErrorCode
from proxy.state import ProxyState
from proxy.tokens import TokenError, looks_like_token

DEFAULT_TOKEN_TTL_S = 60
TOKEN_REQUEST_MAX_BYTES = 4096  # a token request is two small fields
# The HTTP-only error code of a method other than POST (the WebSocket protocol has no methods).
METHOD_NOT_ALLOWED = "method_not_allowed"
TOKEN_ROUTE_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _http_error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


async def mint_token(request: Request) -> Response:
    """``POST /api/tokens``: an API key (``X-API-Key`` or ``Authorization: Bearer``, never the
    URL) buys a short-lived client token; JSON body, optional: ``expires_in`` seconds (default
    60), ``session_id`` to bind the token to."""
    if request.method != "POST":
        response = _http_error(
            405,
            METHOD_NOT_ALLOWED,
            "Mint a token with POST /api/tokens, the API key in X-API-Key (or Authorization: "
            "Bearer), and an optional JSON body.",
        )
        response.headers["Allow"] = "POST"
        return response
    state: ProxyState = request.app.state.proxy
    refused = refused_key(request)
    if refused is not None:
        key = refused.key
        if refused.blocked is not None:
            return _http_error(
                429,
                ErrorCode.RATE_LIMITED.value,
                "Too many failed attempts from this address: wait, then retry with a valid key.",
                details=auth_failure_details(refused.blocked),
            )
        if key is None:
            why = "Send an API key in the X-API-Key header (or Authorization: Bearer)."
        elif looks_like_token(key):
            why = "A token cannot mint another: use an API key."
        else:
            why = WRONG_API_KEY
        return _http_error(401, ErrorCode.UNAUTHORIZED.value, why)
    try:
        # The body has the head's deadline: a key must not buy a socket held open for ever.
        async with asyncio.timeout(state.config.http_head_timeout_s):
            raw = await capped_body(request, TOKEN_REQUEST_MAX_BYTES)
    except TimeoutError:
        return _http_error(
            408,
            ErrorCode.INVALID_MESSAGE.value,
            "The request body did not arrive in time: send it with the request.",
        )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is left to read it
    try:
        if raw is None:
            raise ValueError
        body = orjson.loads(raw) if raw else {}
        expires_in = body.get("expires_in", DEFAULT_TOKEN_TTL_S)
        session_id = body.get("session_id")
        if type(expires_in) is not int or not (
            session_id is None
            or (isinstance(session_id, str) and 0 < len(session_id) <= ID_MAX_CHARS)
        ):
            raise ValueError
        token, claims = state.tokens.mint(expires_in, session_id, time.time())
    except (ValueError, AttributeError, TokenError):
        return _http_error(
            400,
            ErrorCode.INVALID_MESSAGE.value,
            f"Send a JSON object with optional expires_in (whole seconds, 1.."
            f"{state.config.token_max_ttl_s}) and session_id (1..{ID_MAX_CHARS} characters).",
        )
    return JSONResponse(
        {
            "token": token,
            "expires_in": expires_in,
            "expires_at": claims.expires_at,
            "session_id": claims.session_id,
        },
        headers={"Cache-Control": "no-store"},
    )
