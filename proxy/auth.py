"""API keys: where a client may put one, and a constant-time check against the configured keys."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)
# Where a key can show up in a log line: a query string (uvicorn's access log prints it) and
# the auth headers (the WebSocket layer's debug log prints request headers).
_KEY_IN_TEXT = re.compile(
    r"(?i)(api_key=|x-api-key:\s*|authorization:\s*(?:bearer\s+)?)[^&\s\"',]*"
)


def presented_key(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The key the client presented; first match wins: query ``api_key``, ``X-API-Key``,
    ``Authorization: Bearer``."""
    key = query.get("api_key")
    if key:
        return key
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    match = _BEARER.match(headers.get("authorization", ""))
    return match.group(1) if match else None


def key_is_valid(presented: str | None, configured: tuple[str, ...]) -> bool:
    """Compares against every configured key in constant time, so neither timing nor which key
    matched leaks how close a guess was."""
    candidate = (presented or "").encode()
    matched = False
    for key in configured:
        matched |= hmac.compare_digest(candidate, key.encode())
    return matched and presented is not None


def redact_keys(text: str, keys: tuple[str, ...] = ()) -> str:
    """Hides keys in query strings and auth headers, and any of ``keys`` wherever it appears."""
    text = _KEY_IN_TEXT.sub(r"\1[redacted]", text)
    for key in keys:
        if key in text:
            text = text.replace(key, "[redacted]")
    return text
