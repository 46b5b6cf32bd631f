"""Client secrets alone: their prefix, their own signing key, and the wording of a refusal."""

from __future__ import annotations

import pytest

from proxy.client_secrets import CLIENT_SECRET_PREFIX, is_client_secret, verify_client_secret
from proxy.tokens import CLIENT_SECRET_LABEL, TokenError, TokenIssuer, token_secret

KEYS = ("key-one",)


def issuer(label: bytes = CLIENT_SECRET_LABEL) -> TokenIssuer:
    return TokenIssuer(token_secret("", KEYS, label), max_ttl_s=900)


def test_a_secret_verifies_any_number_of_times_until_it_expires() -> None:
    token, claims = issuer().mint(60, None, now=1000.0)
    secret = CLIENT_SECRET_PREFIX + token
    assert is_client_secret(secret)
    for _ in range(3):
        verify_client_secret(issuer(), secret, now=1030.0)
    with pytest.raises(TokenError, match=r"expired.*client_secrets"):
        verify_client_secret(issuer(), secret, now=claims.expires_at + 1.0)


def test_a_client_token_signed_for_the_envelope_is_no_secret() -> None:
    envelope = TokenIssuer(token_secret("", KEYS), max_ttl_s=900)
    token, _ = envelope.mint(60, None, now=1000.0)
    with pytest.raises(TokenError, match=r"not valid.*client_secrets"):
        verify_client_secret(issuer(), CLIENT_SECRET_PREFIX + token, now=1010.0)
