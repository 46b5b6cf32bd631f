"""proxy.auth: where the key is read from, the constant-time comparison, and log redaction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, QueryParams

from proxy.auth import (
    AmbiguousCredential,
    key_is_valid,
    presented_key,
    presented_mistral_credential,
    presented_openai_credential,
    redact_keys,
)

KEYS = ("key-alpha-0001", "key-bravo-0002", "key-charlie-0003")


def test_query_wins_over_both_headers() -> None:
    query = QueryParams("api_key=from-query&session_id=s1")
    headers = Headers({"X-API-Key": "from-header", "Authorization": "Bearer from-bearer"})
    assert presented_key(query, headers) == "from-query"


def test_x_api_key_wins_over_bearer() -> None:
    headers = Headers({"X-API-Key": "from-header", "Authorization": "Bearer from-bearer"})
    assert presented_key(QueryParams(""), headers) == "from-header"


def test_bearer_is_used_last() -> None:
    headers = Headers({"Authorization": "Bearer from-bearer"})
    assert presented_key(QueryParams(""), headers) == "from-bearer"


@pytest.mark.parametrize(
    "authorization", ["bearer tok", "BEARER tok", "Bearer   tok  ", "  Bearer tok"]
)
def test_bearer_scheme_is_case_insensitive_and_trimmed(authorization: str) -> None:
    assert presented_key(QueryParams(""), {"authorization": authorization}) == "tok"


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "tok", "Bearer a b", "Token x"]
)
def test_malformed_authorization_presents_nothing(authorization: str) -> None:
    assert presented_key(QueryParams(""), {"authorization": authorization}) is None


def test_header_names_are_case_insensitive() -> None:
    headers = Headers({"X-Api-KEY": "k1"})
    assert presented_key(QueryParams(""), headers) == "k1"
    headers = Headers({"AUTHORIZATION": "Bearer k2"})
    assert presented_key(QueryParams(""), headers) == "k2"


def test_empty_query_key_falls_through_to_headers() -> None:
    query = QueryParams("api_key=")
    assert presented_key(query, Headers({"X-API-Key": "h"})) == "h"
    empty_header = Headers({"X-API-Key": "", "Authorization": "Bearer b"})
    assert presented_key(QueryParams(""), empty_header) == "b"


def test_x_api_key_is_trimmed() -> None:
    assert presented_key(QueryParams(""), {"x-api-key": "  k  "}) == "k"


def test_nothing_presented() -> None:
    assert presented_key(QueryParams(""), Headers({})) is None


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_valid(key: str) -> None:
    assert key_is_valid(key, KEYS)


@pytest.mark.parametrize(
    "guess",
    [
        None,
        "",
        "key",
        "key-alpha",
        "key-alpha-000",
        "key-alpha-00011",
        "KEY-ALPHA-0001",
        " key-alpha-0001",
        "key-alpha-0001 ",
        "key-alpha-0001,key-bravo-0002",
        "ey-alpha-0001",
    ],
)
def test_wrong_partial_and_empty_keys_are_rejected(guess: str | None) -> None:
    assert not key_is_valid(guess, KEYS)


def test_no_configured_keys_accepts_nothing() -> None:
    assert not key_is_valid("anything", ())
    assert not key_is_valid("", ())
    assert not key_is_valid(None, ())


def test_non_ascii_keys_compare() -> None:
    assert key_is_valid("clé-ü", ("clé-ü",))
    assert not key_is_valid("cle-u", ("clé-ü",))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1), min_size=1, max_size=4), st.text())
def test_valid_exactly_when_equal_to_a_configured_key(keys: list[str], guess: str) -> None:
    configured = tuple(keys)
    assert key_is_valid(guess, configured) == (guess in configured)
    assert key_is_valid(keys[-1], configured)


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/asr-streaming?api_key=s3cr3t-v4lue HTTP/1.1",
        '127.0.0.1:5000 - "GET /api/asr-streaming?api_key=s3cr3t-v4lue&session_id=x HTTP/1.1" 101',
        "/api/asr-streaming?session_id=x&api_key=s3cr3t-v4lue",
        "/api/asr-streaming?API_KEY=s3cr3t-v4lue",
        "/api/asr-streaming?Api_Key=s3cr3t-v4lue&x=1",
        "a?api_key=s3cr3t-v4lue b?api_key=s3cr3t-v4lue",
        "'/p?api_key=s3cr3t-v4lue'",
    ],
)
def test_redact_keys_removes_the_key(line: str) -> None:
    redacted = redact_keys(line)
    assert "s3cr3t-v4lue" not in redacted
    assert "[redacted]" in redacted


def test_redact_keys_keeps_the_rest() -> None:
    line = '"GET /api/asr-streaming?api_key=s3cr3t&session_id=abc HTTP/1.1" 101'
    assert redact_keys(line) == (
        '"GET /api/asr-streaming?api_key=[redacted]&session_id=abc HTTP/1.1" 101'
    )
    assert redact_keys("no key here") == "no key here"


def test_redact_keys_encoded_key() -> None:
    redacted = redact_keys("/x?api_key=ab%2Ccd%3D&y=1")
    assert "ab%2Ccd%3D" not in redacted
    assert redacted.endswith("&y=1")


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%+", min_size=6
    ),
    st.sampled_from(["", "&session_id=s", " HTTP/1.1", '"', "'"]),
)
def test_redact_keys_never_leaves_a_query_key(key: str, tail: str) -> None:
    line = f"GET /api/asr-streaming?api_key={key}{tail}"
    redacted = redact_keys(line)
    assert f"api_key={key}" not in redacted
    assert redacted == f"GET /api/asr-streaming?api_key=[redacted]{tail}"


def test_the_auth_subprotocol_wins_over_every_other_place() -> None:
    query = QueryParams("api_key=from-query")
    headers = Headers({"X-API-Key": "from-header"})
    offered = ["voxtral-stt", "voxtral-stt.auth.from-subprotocol"]
    assert presented_key(query, headers, offered) == "from-subprotocol"
    # The plain name alone carries nothing; an empty credential falls through.
    assert presented_key(query, headers, ["voxtral-stt"]) == "from-query"
    assert presented_key(query, headers, ["voxtral-stt.auth."]) == "from-query"


@pytest.mark.parametrize(
    ("query", "offered"),
    [
        ("api_key=a&api_key=b", []),
        ("api_key=a&api_key=a", []),
        ("", ["voxtral-stt.auth.a", "voxtral-stt.auth.b"]),
    ],
)
def test_two_credentials_in_one_place_are_ambiguous(query: str, offered: list[str]) -> None:
    with pytest.raises(AmbiguousCredential):
        presented_key(QueryParams(query), Headers({}), offered)


@pytest.mark.parametrize(
    "line",
    [
        "sec-websocket-protocol: voxtral-stt, voxtral-stt.auth.SECRET",
        "token=vxt1.eyJleHAiOjF9.SECRETsig_-x in a field",
        "session_id=vxt1.abc.SECRET",
    ],
)
def test_redact_keys_hides_subprotocol_credentials_and_tokens(line: str) -> None:
    assert "SECRET" not in redact_keys(line)


def test_openais_browser_subprotocol_wins_over_bearer_and_the_url_is_never_read() -> None:
    headers = Headers({"authorization": "Bearer from-header"})
    offered = ["realtime", "openai-insecure-api-key.from-subprotocol"]
    assert presented_openai_credential(headers, offered) == "from-subprotocol"
    assert presented_openai_credential(headers, ["realtime"]) == "from-header"
    assert presented_openai_credential(Headers({"x-api-key": "k"}), []) is None


def test_two_openai_credential_offers_are_ambiguous() -> None:
    offered = ["openai-insecure-api-key.a", "openai-insecure-api-key.b"]
    with pytest.raises(AmbiguousCredential):
        presented_openai_credential(Headers({}), offered)


def test_redact_keys_hides_openais_subprotocol_credential_and_client_secrets() -> None:
    line = "protocols realtime, openai-insecure-api-key.sk-live-123 secret ek_vxt1.abc.def"
    redacted = redact_keys(line)
    assert "sk-live-123" not in redacted
    assert "abc.def" not in redacted
    assert "realtime" in redacted


def test_mistrals_browser_subprotocol_wins_over_bearer_and_the_url_is_never_read() -> None:
    headers = Headers({"authorization": "Bearer from-header"})
    assert presented_mistral_credential(headers, ["realtime", "from-subprotocol"]) == (
        "from-subprotocol"
    )
    assert presented_mistral_credential(headers, ["realtime"]) == "from-header"
    assert presented_mistral_credential(headers, []) == "from-header"
    assert presented_mistral_credential(Headers({"x-api-key": "k"}), []) is None


def test_two_mistral_credential_offers_are_ambiguous() -> None:
    with pytest.raises(AmbiguousCredential):
        presented_mistral_credential(Headers({}), ["realtime", "a", "b"])


def test_redact_keys_hides_the_credential_offered_beside_realtime() -> None:
    redacted = redact_keys("sec-websocket-protocol: realtime, rt_mistyped-credential-42")
    assert "mistyped-credential-42" not in redacted
    assert "realtime" in redacted
