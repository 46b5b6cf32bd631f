"""Client tokens: short-lived credentials minted with an API key, for browsers and mobile apps.

A token is ``vxt1.<claims>.<signature>``: the claims (expiry in Unix seconds, an optional
``session_id`` binding, a random nonce) as base64url JSON, signed with HMAC-SHA256. Any replica
with the same secret verifies it without shared state. "Once per connection" is enforced per
replica: a replica remembers the nonces it has admitted until they expire, so a token opens at
most one WebSocket on each replica (and never outlives its expiry anywhere).

The secret is never derived from the API keys (a token would be an offline oracle for a key):
it is ``VOXTRAL_TOKEN_SECRET``, or random per process. One ``TokenIssuer`` per server (the
app's ``state.tokens``) signs the tokens of every endpoint that mints them.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import math
import re
import secrets
from dataclasses import dataclass

import orjson
import structlog

log = structlog.get_logger("proxy.tokens")

TOKEN_PREFIX = "vxt1."  # noqa: S105 (a format marker, not a secret)
# What a token looks like, to scrub it from log lines whatever field it lands in.
TOKEN_PATTERN = re.compile(r"vxt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SECRET_LABEL = b"voxtral-stt client token v1"
# Shortest VOXTRAL_TOKEN_SECRET accepted, and the size of a random one.
TOKEN_SECRET_MIN_CHARS = 32
# A token is still accepted this long past its expires_at: replicas' clocks differ a little.
EXPIRY_LEEWAY_S = 2
# OpenAI-style client secrets (proxy.client_secrets) are signed with a key of their own, so a
# one-use client token can never pass for a reusable secret, nor the other way round.
CLIENT_SECRET_LABEL = b"voxtral-stt openai client secret v1"


class TokenError(ValueError):
    """The token cannot be used; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class Claims:
    expires_at: int
    session_id: str | None
    nonce: str


def token_secret(configured_secret: str) -> bytes:
    """The signing key: derived from ``VOXTRAL_TOKEN_SECRET`` when set (every replica sharing it
    verifies every other's tokens), else random for this process, with a warning: its tokens
    survive neither a restart nor another replica."""
    if not configured_secret:
        log.warning(
            "token_secret_random",
            advice="set VOXTRAL_TOKEN_SECRET (at least 32 random characters, the same on every "
            "replica) so tokens survive a restart and work on every replica",
        )
        return secrets.token_bytes(TOKEN_SECRET_MIN_CHARS)
    return hmac.new(configured_secret.encode(), _SECRET_LABEL, hashlib.sha256).digest()


def kind_secret(token_key: bytes, label: bytes) -> bytes:
    """The signing key of another kind of token (``label``), derived from the client tokens'
    key: one secret signs every kind, and no kind passes for another."""
    return hmac.new(token_key, label, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def looks_like_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


class TokenIssuer:
    """Mints and verifies tokens; remembers the admitted nonces until their expiry. Every
    endpoint that hands out tokens mints them here, so one secret signs them all."""

    def __init__(self, secret: bytes, max_ttl_s: int) -> None:
        self._secret = secret
        self.max_ttl_s = max_ttl_s
        self._used: set[str] = set()
        self._expiries: list[tuple[int, str]] = []

    @property
    def remembered(self) -> int:
        """How many used tokens this replica remembers (only the unexpired ones)."""
        return len(self._used)

    def _sign(self, claims_b64: str) -> str:
        return _b64(hmac.new(self._secret, claims_b64.encode(), hashlib.sha256).digest())

    def mint(self, ttl_s: int, session_id: str | None, now: float) -> tuple[str, Claims]:
        if not 1 <= ttl_s <= self.max_ttl_s:
            raise TokenError(f"expires_in must be 1..{self.max_ttl_s} seconds")
        # Rounded up: a token lives at least the seconds asked for.
        claims = Claims(math.ceil(now) + ttl_s, session_id, secrets.token_urlsafe(12))
        body = {"exp": claims.expires_at, "sid": claims.session_id, "n": claims.nonce}
        claims_b64 = _b64(orjson.dumps(body))
        return f"{TOKEN_PREFIX}{claims_b64}.{self._sign(claims_b64)}", claims

    def verify(self, token: str, now: float) -> Claims:
        """The token's claims when its signature holds and it has not expired."""
        invalid = TokenError("The token is not valid: mint a new one with POST /api/tokens.")
        if not looks_like_token(token) or token.count(".") != 2:
            raise invalid
        claims_b64, signature = token[len(TOKEN_PREFIX) :].split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(claims_b64).encode()):
            raise invalid
        try:
            body = orjson.loads(_unb64(claims_b64))
            claims = Claims(int(body["exp"]), body["sid"], str(body["n"]))
        except (ValueError, KeyError, TypeError):
            raise invalid from None
        if claims.expires_at + EXPIRY_LEEWAY_S <= now:
            raise TokenError(
                "The token has expired: mint a new one with POST /api/tokens just before "
                "connecting."
            )
        return claims

    def use_once(self, claims: Claims, now: float) -> None:
        """Marks the token used on this replica; a second use raises."""
        while self._expiries and self._expiries[0][0] <= now:
            self._used.discard(heapq.heappop(self._expiries)[1])
        if claims.nonce in self._used:
            raise TokenError(
                "The token was already used: tokens open one connection each; mint a new one "
                "with POST /api/tokens."
            )
        self._used.add(claims.nonce)
        heapq.heappush(self._expiries, (claims.expires_at + EXPIRY_LEEWAY_S, claims.nonce))
