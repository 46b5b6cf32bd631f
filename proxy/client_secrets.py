"""``POST /v1/realtime/client_secrets``, in OpenAI's shape (and the beta
``POST /v1/realtime/transcription_sessions``): an API key buys a short-lived client secret
(``ek_...``) for the OpenAI Realtime route, the credential a browser or an app holds instead of
the key.

Like OpenAI's, a secret opens any number of sessions until it expires (LiveKit pools sockets and
reconnects with the same one); the connection cap and the rate limits still apply to each. It is
a client token (``proxy.tokens``) signed with a key of its own derived from the token secret, so
it is verified by any replica with the same ``VOXTRAL_TOKEN_SECRET``, and an envelope token cannot
pass for it.

The request's ``session`` is checked as a ``session.update`` would be (a bad one is refused
here, not at connect time) and shown back; the connecting client configures its session with its
own ``session.update``, as every OpenAI client does.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.minting import capped_body, refused_key, wait_then_retry
from proxy.protocols.openai import DEFAULT_FORMAT, codec_for
from proxy.session.events import SessionSettings, SessionUpdated
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


def _ttl(expires_after: object, max_ttl_s: int, param: str) -> int:
    """The lifetime asked for in ``{"anchor": "created_at", "seconds": N}`` (None: 600 s, or
    TOKEN_MAX_TTL_S if lower); raises ``ValueError(message, param)``."""
    if expires_after is None:
        return min(DEFAULT_SECRET_TTL_S, max_ttl_s)
    seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
    anchor = expires_after.get("anchor", "created_at") if isinstance(expires_after, dict) else None
    if anchor != "created_at" or type(seconds) is not int:
        raise ValueError(f'{param} must be {{"anchor": "created_at", "seconds": N}}.', param)
    if not MIN_SECRET_TTL_S <= seconds <= max_ttl_s:
        raise ValueError(
            f"{param}.seconds must be {MIN_SECRET_TTL_S}..{max_ttl_s} on this server "
            "(TOKEN_MAX_TTL_S).",
            f"{param}.seconds",
        )
    return seconds


async def mint_client_secret(request: Request) -> Response:
    """``POST /v1/realtime/client_secrets`` (GA): an API key (``Authorization: Bearer``) buys a
    client secret; the body, optional, is ``expires_after{anchor, seconds}`` and
    ``session{...}``; the answer ``{value, expires_at, session}``."""
    return await _mint(request, beta=False)


async def mint_transcription_session(request: Request) -> Response:
    """``POST /v1/realtime/transcription_sessions`` (OpenAI's beta, which NVIDIA's speech NIMs
    serve too): the body is the beta session with ``client_secret{expires_at{anchor,
    seconds}}``; the answer is the beta session with ``client_secret{value, expires_at}``."""
    return await _mint(request, beta=True)


async def _mint(request: Request, *, beta: bool) -> Response:
    state: ProxyState = request.app.state.proxy
    refused = refused_key(request)
    if refused is not None:
        if refused.blocked is not None:
            return _error(429, wait_then_retry(refused.blocked), "rate_limited")
        return _error(
            401,
            "Send an API key in Authorization: Bearer (a client secret cannot mint another).",
            "invalid_api_key",
        )
    raw = await capped_body(request, REQUEST_MAX_BYTES)
    if raw is None:
        return _error(400, f"The body is over {REQUEST_MAX_BYTES} bytes.", "invalid_value")
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return _error(400, "The body is not valid JSON.", "invalid_json")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object.", "invalid_value")
    max_ttl_s = state.config.token_max_ttl_s
    try:
        if beta:
            secret = body.pop("client_secret", None) or {}
            expires = secret.get("expires_at") if isinstance(secret, dict) else secret
            ttl_s = _ttl(expires, max_ttl_s, "client_secret.expires_at")
        else:
            ttl_s = _ttl(body.get("expires_after"), max_ttl_s, "expires_after")
    except ValueError as error:
        message, param = error.args
        return _error(400, message, "invalid_value", param)

    session_id = f"sess_{uuid.uuid4().hex}"
    codec = codec_for(state.config, session_id)
    if beta:
        update = {"type": "transcription_session.update", "session": body}
    else:
        update = {
            "type": "session.update",
            "session": body.get("session", {"type": "transcription"}),
        }
    parsed = codec.parse_text(orjson.dumps(update).decode())
    if isinstance(parsed, InvalidInput):
        param = parsed.details.get("param")
        if beta and param is not None:
            param = param.removeprefix("session.")  # the beta body is the session itself
        return _error(
            400, parsed.message, str(parsed.details.get("openai_code", parsed.code.value)), param
        )
    assert isinstance(parsed, UpdateSettings)
    token, claims = state.client_secrets.mint(ttl_s, None, time.time())
    value = CLIENT_SECRET_PREFIX + token
    settings = SessionSettings(
        model=state.config.served_model_name,
        transcription_delay_ms=state.config.transcription_delay_ms,
        segment_pause_ms=state.config.segment_pause_ms,
        audio=parsed.audio or DEFAULT_FORMAT,
        turn_detection=parsed.turn_detection,
        limits=state.client_limits,
    )
    if beta:
        # The session as its transcription_session.updated would show it, and the secret.
        (frame,) = codec.render(SessionUpdated(parsed.request_id, settings))
        shown = orjson.loads(frame)["session"]
        shown["client_secret"] = {"value": value, "expires_at": claims.expires_at}
        return JSONResponse(shown, headers={"Cache-Control": "no-store"})
    codec.accept_update(parsed)
    session = codec.describe(settings, session_id)
    session["expires_at"] = claims.expires_at
    return JSONResponse(
        {"value": value, "expires_at": claims.expires_at, "session": session},
        headers={"Cache-Control": "no-store"},
    )
