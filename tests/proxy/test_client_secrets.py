"""Client secrets alone: their prefix, their own signing key, and the wording of a refusal."""

from __future__ import annotations

import pytest

from proxy.client_secrets import CLIENT_SECRET_PREFIX, is_client_secret, verify_client_secret
from proxy.tokens import (
    CLIENT_SECRET_LABEL,
    EXPIRY_LEEWAY_S,
    TokenError,
    TokenIssuer,
    kind_secret,
    token_secret,
)

TOKEN_KEY = token_secret("a-token-secret-of-at-least-32-characters")


def issuer() -> TokenIssuer:
    return TokenIssuer(kind_secret(TOKEN_KEY, CLIENT_SECRET_LABEL), max_ttl_s=900)


def test_a_secret_verifies_any_number_of_times_until_it_expires() -> None:
    token, claims = issuer().mint(60, None, now=1000.0)
    secret = CLIENT_SECRET_PREFIX + token
    assert is_client_secret(secret)
    for _ in range(3):
        verify_client_secret(issuer(), secret, now=1030.0)
    with pytest.raises(TokenError, match=r"expired.*client_secrets"):
        verify_client_secret(issuer(), secret, now=claims.expires_at + EXPIRY_LEEWAY_S)


def test_a_client_token_signed_for_the_envelope_is_no_secret() -> None:
    envelope = TokenIssuer(TOKEN_KEY, max_ttl_s=900)
    token, _ = envelope.mint(60, None, now=1000.0)
    with pytest.raises(TokenError, match=r"not valid.*client_secrets"):
        verify_client_secret(issuer(), CLIENT_SECRET_PREFIX + token, now=1010.0)
