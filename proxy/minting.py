"""What the HTTP endpoints that sell a credential for an API key share (``POST /api/tokens``,
OpenAI's client secrets, Mistral's client sessions): the key check, where every failure counts
toward its address's block, and the body read within a byte bound. Each endpoint words its
answers in its own protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.datastructures import QueryParams
from starlette.requests import Request

from proxy.auth import key_is_valid, presented_key
from proxy.limits import Refusal, auth_failure_details

if TYPE_CHECKING:
    from proxy.state import ProxyState


@dataclass(frozen=True, slots=True)
class KeyRefused:
    # What the request presented (None: nothing).
    key: str | None
    # The address had already used up its failures: the answer is rate_limited.
    blocked: Refusal | None


def refused_key(request: Request) -> KeyRefused | None:
    """None when the request carries a configured API key (``X-API-Key`` or ``Authorization:
    Bearer``, never the URL); else what it carried, the failure counted against its address."""
    state: ProxyState = request.app.state.proxy
    key = presented_key(QueryParams(""), request.headers)
    if key_is_valid(key, state.config.api_keys):
        return None
    address = request.client.host if request.client else "unknown"
    return KeyRefused(key, state.auth_failed(address))


def wait_then_retry(blocked: Refusal) -> str:
    """What a client blocked for its failed attempts is told."""
    retry_in = auth_failure_details(blocked).get("retry_in", "a while")
    return (
        f"Too many failed attempts from this address: wait {retry_in} s, then retry with a "
        "valid key."
    )


async def capped_body(request: Request, max_bytes: int) -> bytes | None:
    """The request body; None as soon as it is over ``max_bytes``."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            return None
    return raw
