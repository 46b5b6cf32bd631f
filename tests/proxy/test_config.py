"""proxy.config: environment parsing, validation errors that name the variable, key hygiene."""

from __future__ import annotations

import pytest

from proxy.config import (
    DEFAULT_MODEL_ID,
    DEFAULT_UPSTREAM_URL,
    ConfigError,
    ProxyConfig,
    load_config,
    parse_api_keys,
    validate_transcription_delay_ms,
)

KEY = "k-3f9a7c21d0e44b6b"


def env(**values: str) -> dict[str, str]:
    return {"VOXTRAL_API_KEY": KEY, **values}


def test_defaults_with_only_a_key() -> None:
    config = load_config(env())
    assert config == ProxyConfig(api_keys=(KEY,))
    assert config.upstream_url == DEFAULT_UPSTREAM_URL
    assert config.bind_host == "0.0.0.0"
    assert config.port == 8000
    assert config.model_id == DEFAULT_MODEL_ID
    assert config.served_model_name == DEFAULT_MODEL_ID
    assert config.transcription_delay_ms == 480
    assert config.max_connections == 100
    assert config.idle_timeout_s == 150.0
    assert config.max_duration_s == 5400.0
    assert config.inbound_queue_max == 256
    assert config.inbound_queue_max_bytes == 8 * 1024 * 1024
    assert config.outbound_queue_max_bytes == 2 * 1024 * 1024
    assert config.max_messages_per_window == 5000
    assert config.message_window_s == 60.0
    assert config.max_cancels_per_window == 50
    assert config.cancel_window_s == 60.0
    assert config.max_auth_failures_per_window == 20
    assert config.auth_failure_window_s == 60.0
    assert config.max_message_bytes == 1_048_576
    assert config.drain_timeout_s == 30.0
    assert config.log_level == "INFO"


def test_reads_os_environ_when_no_mapping_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXTRAL_API_KEY", KEY)
    monkeypatch.setenv("SERVER_PORT", "8123")
    config = load_config()
    assert config.api_keys == (KEY,)
    assert config.port == 8123


@pytest.mark.parametrize("raw", [None, "", "   ", ",", " , ,, "])
def test_missing_api_key_is_refused(raw: str | None) -> None:
    environ = {} if raw is None else {"VOXTRAL_API_KEY": raw}
    with pytest.raises(ConfigError, match="VOXTRAL_API_KEY"):
        load_config(environ)


def test_several_keys_separated_by_commas() -> None:
    config = load_config({"VOXTRAL_API_KEY": " alpha , beta,,gamma ,"})
    assert config.api_keys == ("alpha", "beta", "gamma")


@pytest.mark.parametrize(
    ("raw", "keys"),
    [("a", ("a",)), ("a,b", ("a", "b")), (" a ,\tb ", ("a", "b")), ("", ()), (",,", ())],
)
def test_parse_api_keys(raw: str, keys: tuple[str, ...]) -> None:
    assert parse_api_keys(raw) == keys


def test_repr_and_str_never_show_a_key() -> None:
    keys = "first-secret-key-111,second-secret-key-222"
    config = load_config({"VOXTRAL_API_KEY": keys})
    for text in (repr(config), str(config), f"{config}", f"{config!r}"):
        assert "first-secret-key-111" not in text
        assert "second-secret-key-222" not in text
    # The rest of the configuration is still visible for debugging.
    assert "upstream_url" in repr(config)


def test_every_value_is_read() -> None:
    config = load_config(
        env(
            VOXTRAL_UPSTREAM_URL="wss://vllm.internal:9443/v1/realtime",
            SERVER_BIND_HOST="127.0.0.1",
            SERVER_PORT=" 9000 ",
            VOXTRAL_MODEL_ID="org/model",
            VOXTRAL_SERVED_MODEL_NAME="served-name",
            VOXTRAL_TRANSCRIPTION_DELAY_MS="960",
            SEGMENT_PAUSE_MS="720",
            MAX_CONCURRENT_CONNECTIONS="7",
            WS_IDLE_TIMEOUT_S="0",
            WS_MAX_CONNECTION_DURATION_S="12.5",
            WS_INBOUND_QUEUE_MAX="3",
            WS_INBOUND_QUEUE_MAX_BYTES="4096",
            WS_OUTBOUND_QUEUE_MAX_BYTES="70000",
            WS_MAX_MESSAGES_PER_WINDOW="11",
            WS_MESSAGE_WINDOW_SECONDS="1.5",
            WS_MAX_CANCELS_PER_WINDOW="2",
            WS_CANCEL_WINDOW_SECONDS="2.5",
            WS_MAX_AUTH_FAILURES_PER_WINDOW="4",
            WS_AUTH_FAILURE_WINDOW_SECONDS="3.5",
            WS_MAX_MESSAGE_BYTES="2048",
            WS_DRAIN_TIMEOUT_S="0",
            LOG_LEVEL="debug",
        )
    )
    assert config.upstream_url == "wss://vllm.internal:9443/v1/realtime"
    assert config.upstream_health_url == "https://vllm.internal:9443/health"
    assert config.bind_host == "127.0.0.1"
    assert config.port == 9000
    assert config.model_id == "org/model"
    assert config.served_model_name == "served-name"
    assert config.transcription_delay_ms == 960
    assert config.segment_pause_ms == 720
    assert config.max_connections == 7
    assert config.idle_timeout_s == 0.0
    assert config.max_duration_s == 12.5
    assert config.inbound_queue_max == 3
    assert config.inbound_queue_max_bytes == 4096
    assert config.outbound_queue_max_bytes == 70_000
    assert config.max_messages_per_window == 11
    assert config.message_window_s == 1.5
    assert config.max_cancels_per_window == 2
    assert config.cancel_window_s == 2.5
    assert config.max_auth_failures_per_window == 4
    assert config.auth_failure_window_s == 3.5
    assert config.max_message_bytes == 2048
    assert config.drain_timeout_s == 0.0
    assert config.log_level == "DEBUG"


def test_served_model_name_defaults_to_model_id() -> None:
    config = load_config(env(VOXTRAL_MODEL_ID="org/other"))
    assert config.served_model_name == "org/other"


def test_blank_values_mean_default() -> None:
    config = load_config(env(SERVER_PORT="  ", WS_IDLE_TIMEOUT_S="", LOG_LEVEL=" "))
    assert config.port == 8000
    assert config.idle_timeout_s == 150.0
    assert config.log_level == "INFO"


def test_upstream_health_url_plain() -> None:
    config = load_config(env(VOXTRAL_UPSTREAM_URL="ws://127.0.0.1:8001/v1/realtime"))
    assert config.upstream_health_url == "http://127.0.0.1:8001/health"


INT_VARIABLES = {
    "SERVER_PORT": ["-1", "65536", "80.5", "abc", "1e3"],
    "VOXTRAL_TRANSCRIPTION_DELAY_MS": ["abc", "480.0", "-80"],
    "SEGMENT_PAUSE_MS": ["79", "60001", "0", "480.0", "long"],
    "MAX_CONCURRENT_CONNECTIONS": ["0", "-3", "2.5", "many"],
    "WS_INBOUND_QUEUE_MAX": ["0", "-1", "x", "1.5"],
    "WS_MAX_MESSAGES_PER_WINDOW": ["0", "-5", "ten"],
    "WS_MAX_CANCELS_PER_WINDOW": ["0", "nope", "3.3"],
    "WS_MAX_AUTH_FAILURES_PER_WINDOW": ["0", "-1", "?"],
    "WS_MAX_MESSAGE_BYTES": ["1023", "0", "-1", "1MiB"],
    "WS_OUTBOUND_QUEUE_MAX": ["15", "0", "-1", "lots"],
    # Below the default WS_MAX_MESSAGE_BYTES (1 MiB) one message could never be held.
    "WS_INBOUND_QUEUE_MAX_BYTES": ["1023", "0", "x", "1048575"],
    "WS_OUTBOUND_QUEUE_MAX_BYTES": ["65535", "0", "-1", "2MiB"],
    # The WebSocket layer parses at most 128 headers; the guard's cap stays within it.
    "HTTP_MAX_HEADERS": ["7", "129", "x"],
    "WS_MAX_FRAGMENTS": ["0", "-1", "many"],
    "WS_MAX_CONTROL_FRAMES_PER_S": ["0", "2.5", "x"],
}
FLOAT_VARIABLES = {
    "WS_IDLE_TIMEOUT_S": ["-1", "abc", "nan"],
    "WS_MAX_CONNECTION_DURATION_S": ["-0.5", "forever", "NaN"],
    "WS_MESSAGE_WINDOW_SECONDS": ["0", "-1", "x", "nan"],
    "WS_CANCEL_WINDOW_SECONDS": ["0", "-2", "y", "nan"],
    "WS_AUTH_FAILURE_WINDOW_SECONDS": ["0", "-2", "z", "nan"],
    "WS_DRAIN_TIMEOUT_S": ["-1", "soon", "nan"],
    "WS_UPSTREAM_TIMEOUT_S": ["-1", "later", "nan"],
}
BAD_VALUES = [
    (name, value)
    for table in (INT_VARIABLES, FLOAT_VARIABLES)
    for name, values in table.items()
    for value in values
] + [
    ("DEMO_PAGE", "maybe"),
    ("DEMO_PAGE", "2"),
    ("LOG_TRANSCRIPTS", "sometimes"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "trace"),
    ("VOXTRAL_UPSTREAM_URL", "http://127.0.0.1:8001/v1/realtime"),
    ("VOXTRAL_UPSTREAM_URL", "127.0.0.1:8001"),
    ("VOXTRAL_UPSTREAM_URL", "ws:///v1/realtime"),
    ("VOXTRAL_UPSTREAM_URL", "ftp://host/v1/realtime"),
    ("VOXTRAL_TOKEN_SECRET", "31-characters-are-one-too-short"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env(**{name: value}))
    assert name in str(caught.value)
    # The error is about that variable, never about the key, and never shows it.
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("SERVER_PORT", "0", "port", 0),
        ("SERVER_PORT", "65535", "port", 65535),
        ("SEGMENT_PAUSE_MS", "80", "segment_pause_ms", 80),
        ("SEGMENT_PAUSE_MS", "60000", "segment_pause_ms", 60000),
        ("MAX_CONCURRENT_CONNECTIONS", "1", "max_connections", 1),
        ("WS_INBOUND_QUEUE_MAX", "1", "inbound_queue_max", 1),
        ("WS_MAX_MESSAGE_BYTES", "1024", "max_message_bytes", 1024),
        ("WS_INBOUND_QUEUE_MAX_BYTES", "1048576", "inbound_queue_max_bytes", 1_048_576),
        ("WS_OUTBOUND_QUEUE_MAX_BYTES", "65536", "outbound_queue_max_bytes", 65_536),
        ("WS_IDLE_TIMEOUT_S", "0", "idle_timeout_s", 0.0),
        ("WS_MAX_CONNECTION_DURATION_S", "0", "max_duration_s", 0.0),
        ("WS_DRAIN_TIMEOUT_S", "0.25", "drain_timeout_s", 0.25),
    ],
)
def test_boundary_values_are_accepted(
    name: str, value: str, attribute: str, expected: float
) -> None:
    assert getattr(load_config(env(**{name: value})), attribute) == expected


@pytest.mark.parametrize("value", [80, 160, 480, 960, 2320, 2400])
def test_delay_accepts_multiples_of_80_in_range(value: int) -> None:
    assert validate_transcription_delay_ms(value) == value
    assert load_config(env(VOXTRAL_TRANSCRIPTION_DELAY_MS=str(value))).transcription_delay_ms == (
        value
    )


@pytest.mark.parametrize("value", [0, -80, 79, 81, 100, 479, 481, 2399, 2401, 2480, 4800])
def test_delay_rejects_others(value: int) -> None:
    with pytest.raises(ConfigError, match="VOXTRAL_TRANSCRIPTION_DELAY_MS"):
        validate_transcription_delay_ms(value)
    with pytest.raises(ConfigError, match="VOXTRAL_TRANSCRIPTION_DELAY_MS"):
        load_config(env(VOXTRAL_TRANSCRIPTION_DELAY_MS=str(value)))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_config_is_immutable() -> None:
    config = load_config(env())
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_flags(raw: str, expected: bool) -> None:
    assert load_config(env(DEMO_PAGE=raw)).demo_page is expected
    assert load_config(env(LOG_TRANSCRIPTS=raw)).log_transcripts is expected


def test_flag_defaults() -> None:
    config = load_config(env())
    assert config.demo_page is True
    assert config.log_transcripts is False


def test_allowed_origins() -> None:
    config = load_config(env(ALLOWED_ORIGINS=" https://a.example/ ,,http://b.example:8080"))
    assert config.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert load_config(env()).allowed_origins == ()


def test_inbound_byte_budget_must_hold_the_largest_message() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env(WS_MAX_MESSAGE_BYTES="9000000"))
    assert "WS_INBOUND_QUEUE_MAX_BYTES" in str(caught.value)
    assert "WS_MAX_MESSAGE_BYTES (9000000)" in str(caught.value)
    config = load_config(env(WS_MAX_MESSAGE_BYTES="4096", WS_INBOUND_QUEUE_MAX_BYTES="4096"))
    assert config.inbound_queue_max_bytes == config.max_message_bytes == 4096


def test_outbound_and_upstream_timeout_values() -> None:
    config = load_config(env(WS_OUTBOUND_QUEUE_MAX="16", WS_UPSTREAM_TIMEOUT_S="0"))
    assert config.outbound_queue_max == 16
    assert config.upstream_timeout_s == 0.0


def test_security_defaults() -> None:
    config = load_config(env())
    assert config.trusted_proxies == ()  # nobody's X-Forwarded-For is believed
    assert config.token_secret == ""
    assert config.secrets == (config.api_keys[0],)
    assert (config.http_head_timeout_s, config.max_pending_sockets, config.max_open_sockets) == (
        10.0,
        256,
        0,
    )
    assert (config.max_header_count, config.max_header_bytes) == (64, 16_384)
    assert (config.ws_max_fragments, config.ws_max_control_frames_per_s) == (64, 20)


def test_security_values_are_read() -> None:
    config = load_config(
        env(
            TRUSTED_PROXIES=" 127.0.0.1 , 10.0.0.0/8,::1",
            VOXTRAL_TOKEN_SECRET="sign-with-this-secret-of-32-chars",
            TOKEN_MAX_TTL_S="120",
            HTTP_HEAD_TIMEOUT_S="2.5",
            MAX_PENDING_SOCKETS="10",
            MAX_OPEN_SOCKETS="500",
            HTTP_MAX_HEADERS="20",
            HTTP_MAX_HEADER_BYTES="4096",
            WS_MAX_FRAGMENTS="8",
            WS_MAX_CONTROL_FRAMES_PER_S="5",
        )
    )
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert config.secrets == (config.api_keys[0], "sign-with-this-secret-of-32-chars")
    assert "sign-with-this" not in repr(config)
    assert config.token_max_ttl_s == 120
    assert config.http_head_timeout_s == 2.5
    assert (config.max_pending_sockets, config.max_open_sockets) == (10, 500)
    assert (config.max_header_count, config.max_header_bytes) == (20, 4096)
    assert (config.ws_max_fragments, config.ws_max_control_frames_per_s) == (8, 5)


@pytest.mark.parametrize("raw", ["*", "localhost", "10.0.0.0/33", "127.0.0.1,nope"])
def test_bad_trusted_proxies_name_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_config(env(TRUSTED_PROXIES=raw))
