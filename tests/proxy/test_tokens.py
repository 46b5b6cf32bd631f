"""proxy.tokens: minting, verifying (signature, expiry) and the once-per-replica rule."""

from __future__ import annotations

import pytest

from proxy.tokens import (
    EXPIRY_LEEWAY_S,
    TOKEN_PATTERN,
    TokenError,
    TokenIssuer,
    looks_like_token,
    token_secret,
)

SECRET = "a-shared-secret-of-more-than-32-characters"
NOW = 1_800_000_000.0


def issuer(secret: str = SECRET, max_ttl_s: int = 900) -> TokenIssuer:
    return TokenIssuer(token_secret(secret), max_ttl_s)


def test_a_minted_token_verifies_with_its_claims() -> None:
    token, claims = issuer().mint(60, "s1", NOW)
    assert looks_like_token(token)
    assert TOKEN_PATTERN.fullmatch(token)
    verified = issuer().verify(token, NOW + 59)  # another replica, same secret
    assert verified == claims
    assert (verified.expires_at, verified.session_id) == (int(NOW) + 60, "s1")


def test_expiry_is_rounded_up_so_a_token_lives_its_whole_ttl() -> None:
    _, claims = issuer().mint(1, None, NOW + 0.99)
    assert claims.expires_at == int(NOW) + 2


def test_an_expired_token_is_refused_after_the_leeway() -> None:
    token, _ = issuer().mint(60, None, NOW)
    issuer().verify(token, NOW + 60 + EXPIRY_LEEWAY_S - 0.5)  # a replica whose clock is ahead
    with pytest.raises(TokenError, match="expired"):
        issuer().verify(token, NOW + 60 + EXPIRY_LEEWAY_S)


def test_without_a_configured_secret_each_process_has_its_own_random_one() -> None:
    token, _ = issuer("").mint(60, None, NOW)
    with pytest.raises(TokenError, match="not valid"):
        issuer("").verify(token, NOW)


@pytest.mark.parametrize(
    "other",
    [
        issuer(secret="another-secret-of-more-than-32-characters"),
        issuer(secret=""),  # a random one
    ],
)
def test_a_token_signed_with_another_secret_is_refused(other: TokenIssuer) -> None:
    token, _ = other.mint(60, None, NOW)
    with pytest.raises(TokenError, match="not valid"):
        issuer().verify(token, NOW)


def test_tampered_claims_or_signature_are_refused() -> None:
    token, _ = issuer().mint(60, "s1", NOW)
    _, claims_b64, signature = token.split(".")
    longer, _ = issuer().mint(900, "s1", NOW)
    forged_claims = f"vxt1.{longer.split('.')[1]}.{signature}"
    flipped = f"vxt1.{claims_b64}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    for bad in (forged_claims, flipped, f"vxt1.{claims_b64}.", "vxt1.x.y.z", "vxt1.", "abc"):
        with pytest.raises(TokenError, match="not valid"):
            issuer().verify(bad, NOW)


def test_a_token_is_used_once_per_replica() -> None:
    tokens = issuer()
    token, _ = tokens.mint(60, None, NOW)
    tokens.use_once(tokens.verify(token, NOW), NOW)
    with pytest.raises(TokenError, match="already used"):
        tokens.use_once(tokens.verify(token, NOW + 1), NOW + 1)
    # Another replica has its own memory (documented: once per replica).
    other = issuer()
    other.use_once(other.verify(token, NOW + 1), NOW + 1)


def test_used_tokens_are_forgotten_once_expired() -> None:
    tokens = issuer()
    for n in range(50):
        token, _ = tokens.mint(10, None, NOW + n)
        tokens.use_once(tokens.verify(token, NOW + n), NOW + n)
    # Only the tokens still unexpired (leeway included) are remembered: bounded by expiry.
    assert tokens.remembered <= 11 + EXPIRY_LEEWAY_S


@pytest.mark.parametrize("ttl", [0, -1, 901])
def test_expiry_is_bounded(ttl: int) -> None:
    with pytest.raises(TokenError, match=r"1\.\.900"):
        issuer().mint(ttl, None, NOW)
