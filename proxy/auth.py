"""Credentials (API keys and client tokens): where a client may put one, a constant-time check
against the configured keys, and their removal from log text."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence

from starlette.datastructures import QueryParams

from proxy.tokens import TOKEN_PATTERN

# A browser cannot set headers on a WebSocket: it offers ``voxtral-stt`` plus
# ``voxtral-stt.auth.<credential>`` as subprotocols, and the server echoes only the first.
SUBPROTOCOL = "voxtral-stt"
AUTH_SUBPROTOCOL_PREFIX = f"{SUBPROTOCOL}.auth."
# OpenAI's browser client offers ``realtime`` plus ``openai-insecure-api-key.<credential>``;
# Mistral's offers ``realtime`` plus the credential itself.
OPENAI_SUBPROTOCOL = "realtime"
OPENAI_AUTH_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
# Keys shorter than this get a warning at start: a short key can be guessed.
API_KEY_MIN_CHARS = 32

_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)
# Where a credential can show up in a log line: a query string (uvicorn's access log prints
# it), the auth headers and the subprotocol offer (the WebSocket layer's debug log prints
# request headers; Mistral's browsers offer the bare credential right after ``realtime``).
_KEY_IN_TEXT = re.compile(
    r"(?i)(api_key=|x-api-key:\s*|authorization:\s*(?:bearer\s+)?|voxtral-stt\.auth\.|"
    r"openai-insecure-api-key\.|realtime,\s*)"
    r"[^&\s\"',]*"
)


class AmbiguousCredential(ValueError):
    """The client sent one kind of credential twice; the message says what to send instead."""


def _offered_after(prefix: str, subprotocols: Sequence[str]) -> str | None:
    """The credential offered as the ``prefix<credential>`` subprotocol (None when none is, or
    it is empty); raises ``AmbiguousCredential`` when several are."""
    offered = [p[len(prefix) :] for p in subprotocols if p.startswith(prefix)]
    if len(offered) > 1:
        raise AmbiguousCredential(f"Offer one {prefix}<credential> subprotocol, not several.")
    return offered[0] if offered and offered[0] else None


def _bearer(headers: Mapping[str, str]) -> str | None:
    """The credential in ``Authorization: Bearer``."""
    match = _BEARER.match(headers.get("authorization", ""))
    return match.group(1) if match else None


def presented_key(
    query: QueryParams, headers: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> str | None:
    """The key or token the client presented; first match wins: the ``voxtral-stt.auth.``
    subprotocol, query ``api_key``, ``X-API-Key``, ``Authorization: Bearer``. Two values in
    one place are refused rather than one picked."""
    offered = _offered_after(AUTH_SUBPROTOCOL_PREFIX, subprotocols)
    if offered:
        return offered
    keys = query.getlist("api_key")
    if len(keys) > 1:
        raise AmbiguousCredential("Send the api_key query parameter once, not several times.")
    key = keys[0] if keys else None
    if key:
        return key
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    return _bearer(headers)


def presented_openai_credential(
    headers: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> str | None:
    """The credential on OpenAI's Realtime route: the ``openai-insecure-api-key.`` subprotocol
    (browsers), else ``Authorization: Bearer`` (every SDK). Never the URL."""
    return _offered_after(OPENAI_AUTH_SUBPROTOCOL_PREFIX, subprotocols) or _bearer(headers)


def presented_mistral_credential(
    headers: Mapping[str, str], subprotocols: Sequence[str] = ()
) -> str | None:
    """The credential on Mistral's realtime route: offered beside the ``realtime`` subprotocol
    (browsers: ``new WebSocket(url, ["realtime", token])``), else ``Authorization: Bearer``.
    Never the URL."""
    offered = [p for p in subprotocols if p != OPENAI_SUBPROTOCOL]
    if len(offered) > 1:
        raise AmbiguousCredential(
            f"Offer {OPENAI_SUBPROTOCOL!r} and one credential as subprotocols, not several."
        )
    if offered:
        return offered[0]
    return _bearer(headers)


def key_is_valid(presented: str | None, configured: tuple[str, ...]) -> bool:
    """Compares against every configured key in constant time, so neither timing nor which key
    matched leaks how close a guess was."""
    candidate = (presented or "").encode()
    matched = False
    for key in configured:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched and presented is not None


def redact_keys(text: str, keys: tuple[str, ...] = ()) -> str:
    """Hides credentials in query strings, auth headers and subprotocols, anything shaped like
    a client token, and any of ``keys`` wherever it appears."""
    text = _KEY_IN_TEXT.sub(r"\1[redacted]", text)
    text = TOKEN_PATTERN.sub("[redacted]", text)
    for key in keys:
        if key in text:
            text = text.replace(key, "[redacted]")
    return text
