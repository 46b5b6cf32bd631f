"""``POST /v1/realtime/client_secrets``, in OpenAI's shape: an API key buys a short-lived client
secret (``ek_...``) for the OpenAI Realtime route, the credential a browser or an app holds
instead of the key.

Like OpenAI's, a secret opens any number of sessions until it expires (LiveKit pools sockets and
reconnects with the same one); the connection cap and the rate limits still apply to each. It is
a client token (``proxy.tokens``) signed with a key of its own, so it is verified by any replica
with the same keys or ``VOXTRAL_TOKEN_SECRET``, and an envelope token cannot pass for it.

The request's ``session`` is checked as a ``session.update`` would be (a bad one is refused
here, not at connect time) and shown back; the connecting client configures its session with its
own ``session.update``, as every OpenAI client does.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.auth import key_is_valid, presented_key
from proxy.limits import auth_failure_details
from proxy.protocols.openai import DEFAULT_FORMAT, codec_for
from proxy.session.events import SessionSettings
from proxy.session.inputs import InvalidInput, UpdateSettings
from proxy.tokens import TokenError, TokenIssuer

if TYPE_CHECKING:
    from proxy.state import ProxyState

CLIENT_SECRET_PREFIX = "ek_"  # noqa: S105 (a format marker, not a secret)
# OpenAI's bounds and default for expires_after.seconds (ours is also capped by TOKEN_MAX_TTL_S).
MIN_SECRET_TTL_S = 10
DEFAULT_SECRET_TTL_S = 600
REQUEST_MAX_BYTES = 16_384  # a session object and an expiry


def is_client_secret(credential: str) -> bool:
    return credential.startswith(CLIENT_SECRET_PREFIX)


def verify_client_secret(issuer: TokenIssuer, credential: str, now: float) -> None:
    """Raises ``TokenError`` (worded for this endpoint) unless ``credential`` is a valid,
    unexpired client secret."""
    try:
        issuer.verify(credential.removeprefix(CLIENT_SECRET_PREFIX), now)
    except TokenError as error:
        expired = "expired" in str(error)
        raise TokenError(
            ("The client secret has expired" if expired else "The client secret is not valid")
            + ": mint a new one with POST /v1/realtime/client_secrets."
        ) from None


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": param,
            }
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _ttl(body: dict[str, Any], max_ttl_s: int) -> int:
    expires_after = body.get("expires_after")
    if expires_after is None:
        return min(DEFAULT_SECRET_TTL_S, max_ttl_s)
    seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
    anchor = expires_after.get("anchor", "created_at") if isinstance(expires_after, dict) else None
    if anchor != "created_at" or type(seconds) is not int:
        raise ValueError(
            'expires_after must be {"anchor": "created_at", "seconds": N}.', "expires_after"
        )
    if not MIN_SECRET_TTL_S <= seconds <= max_ttl_s:
        raise ValueError(
            f"expires_after.seconds must be {MIN_SECRET_TTL_S}..{max_ttl_s} on this server "
            "(TOKEN_MAX_TTL_S).",
            "expires_after.seconds",
        )
    return seconds


async def mint_client_secret(request: Request) -> Response:
    """An API key (``Authorization: Bearer``) buys a client secret; the body, optional, is
    OpenAI's: ``expires_after{anchor, seconds}`` and ``session{...}``."""
    state: ProxyState = request.app.state.proxy
    address = request.client.host if request.client else "unknown"
    key = presented_key(QueryParams(""), request.headers)
    if not key_is_valid(key, state.config.api_keys):
        blocked = state.auth_failed(address)
        if blocked is not None:
            details = auth_failure_details(blocked)
            return _error(
                429,
                "Too many failed attempts from this address: wait "
                f"{details.get('retry_in', 'a while')} s, then retry with a valid key.",
                "rate_limited",
            )
        return _error(
            401,
            "Send an API key in Authorization: Bearer (a client secret cannot mint another).",
            "invalid_api_key",
        )
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > REQUEST_MAX_BYTES:
            return _error(400, f"The body is over {REQUEST_MAX_BYTES} bytes.", "invalid_value")
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return _error(400, "The body is not valid JSON.", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object.", "invalid_value")
    try:
        ttl_s = _ttl(body, state.config.token_max_ttl_s)
    except ValueError as error:
        message, param = error.args
        return _error(400, message, "invalid_value", param)

    codec = codec_for(state.config)
    session = body.get("session", {"type": "transcription"})
    parsed = codec.parse_text(orjson.dumps({"type": "session.update", "session": session}).decode())
    if isinstance(parsed, InvalidInput):
        return _error(
            400,
            parsed.message,
            str(parsed.details.get("openai_code", parsed.code.value)),
            parsed.details.get("param"),
        )
    assert isinstance(parsed, UpdateSettings)
    now = time.time()
    token, claims = state.client_secrets.mint(ttl_s, None, now)
    settings = SessionSettings(
        model=state.config.served_model_name,
        transcription_delay_ms=state.config.transcription_delay_ms,
        segment_pause_ms=state.config.segment_pause_ms,
        audio=parsed.audio or DEFAULT_FORMAT,
        turn_detection=parsed.turn_detection,
        limits=state.client_limits,
    )
    codec.accept_update(parsed)
    shown = codec.describe(settings, f"sess_{uuid.uuid4().hex}")
    shown["expires_at"] = claims.expires_at
    return JSONResponse(
        {"value": CLIENT_SECRET_PREFIX + token, "expires_at": claims.expires_at, "session": shown},
        headers={"Cache-Control": "no-store"},
    )
