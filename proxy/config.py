"""Proxy configuration: read from the environment once, at start, into a typed object.

Every variable name here is part of the public interface (documented in ADVANCED.md and
.env.example). A bad value raises ``ConfigError`` whose message names the variable and what is
allowed, so ``python -m proxy`` can exit with one clear line. ``ProxyConfig`` is the settings table:
each field carries its variable, default and rule, and ``load_config`` reads them from it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proxy.audio_clock import DEFAULT_PAUSE_MS, MAX_PAUSE_MS, MIN_PAUSE_MS
from proxy.guard import HEADER_COUNT_CEILING
from proxy.tokens import TOKEN_SECRET_MIN_CHARS

DEFAULT_MODEL_ID = "mistralai/Voxtral-Mini-4B-Realtime-2602"
# vLLM's loopback port under the launcher (VLLM_PORT), and so the proxy's default upstream.
DEFAULT_UPSTREAM_PORT = 8001
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# One Voxtral step consumes 80 ms of audio; the delay must be a whole number of steps.
DELAY_STEP_MS = 80
DELAY_MIN_MS = 80
DELAY_MAX_MS = 2400
DEFAULT_TRANSCRIPTION_DELAY_MS = 480
DEFAULT_MAX_CONNECTIONS = 100
# MAX_CONCURRENT_CONNECTIONS=auto: the launcher sets the cap from vLLM's KV cache.
AUTO = "auto"
# The longest audio one vLLM generation takes before the utterance carries over onto the next
# (SEGMENT_MAX_S): the bound on what one stream holds in vLLM's KV cache.
DEFAULT_SEGMENT_MAX_S = 300.0
MIN_SEGMENT_MAX_S = 10.0


def realtime_url(port: int) -> str:
    """vLLM's realtime WebSocket on this host."""
    return f"ws://127.0.0.1:{port}/v1/realtime"


DEFAULT_UPSTREAM_URL = realtime_url(DEFAULT_UPSTREAM_PORT)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def validate_transcription_delay_ms(value: int) -> int:
    """The delay must be a multiple of 80 ms within 80..2400 (what Voxtral's tokenizer accepts
    and the model card covers)."""
    if value % DELAY_STEP_MS or not DELAY_MIN_MS <= value <= DELAY_MAX_MS:
        raise ConfigError(
            f"VOXTRAL_TRANSCRIPTION_DELAY_MS={value} is invalid: use a multiple of {DELAY_STEP_MS} "
            f"between {DELAY_MIN_MS} and {DELAY_MAX_MS} (default {DEFAULT_TRANSCRIPTION_DELAY_MS})"
        )
    return value


T = TypeVar("T", int, float)


def parse_number(
    environ: Mapping[str, str],
    name: str,
    kind: Callable[[str], T],
    minimum: T,
    maximum: T | None = None,
) -> T | None:
    """A number variable (the launcher's and the proxy's): None when unset or empty, otherwise a
    value of ``kind`` within ``minimum``..``maximum``, or a ``ConfigError`` naming the variable."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    what = "a whole number" if kind is int else "a number"
    upper = f" and <= {maximum}" if maximum is not None else ""
    refusal = f"{name}={raw!r} is invalid: use {what} >= {minimum}{upper}"
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(refusal) from None
    # value != value catches NaN
    if value != value or value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(refusal)
    return value


def parse_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable (1/true/yes/on or 0/false/no/off); empty means ``default``."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is invalid: use 1/true/yes/on or 0/false/no/off")


def parse_api_keys(raw: str) -> tuple[str, ...]:
    """Comma-separated keys (several allow rotation); blanks around and between are ignored."""
    return tuple(key for key in (part.strip() for part in raw.split(",")) if key)


def parse_trusted_proxies(raw: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (CIDR); each is checked here so a typo stops
    the start instead of silently trusting nobody (or everybody)."""
    entries = tuple(part.strip() for part in raw.split(",") if part.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"TRUSTED_PROXIES entry {entry!r} is invalid: use IP addresses or networks "
                "such as 127.0.0.1 or 10.0.0.0/8, separated by commas"
            ) from None
    return entries


@dataclass(frozen=True, slots=True)
class Setting:
    """How one ``ProxyConfig`` field is read: its variable and the rule its text must follow.
    The field's type comes from its default: a bool is a flag (1/true/yes/on, 0/false/no/off),
    an int or a float a number within ``minimum``..``maximum``, a str the text itself; ``parse``
    replaces that rule. An unset or blank variable means the default."""

    env: str
    # What it is, in a few words (the line a docs test suggests when the docs lack it).
    doc: str
    # Numbers only: no number setting takes a negative value unless it says so.
    minimum: float = 0
    maximum: float | None = None
    parse: Callable[[str], object] | None = None
    # Runs on the parsed value and raises ConfigError (a rule bounds cannot say).
    check: Callable[[Any], object] | None = None
    # Unset means the value of this earlier field instead of the default.
    default_from: str | None = None


V = TypeVar("V")
# The key of a field's row in its metadata.
_ROW = "setting"


def setting(
    env: str,
    default: V,
    doc: str,
    *,
    minimum: float = 0,
    maximum: float | None = None,
    parse: Callable[[str], object] | None = None,
    check: Callable[[Any], object] | None = None,
    default_from: str | None = None,
    secret: bool = False,
) -> V:
    """A ``ProxyConfig`` field read from ``env`` (a row of the settings table)."""
    row = Setting(env, doc, minimum, maximum, parse, check, default_from)
    made: V = field(default=default, repr=not secret, metadata={_ROW: row})
    return made


def setting_of(item: Field[Any]) -> Setting:
    """The row of a ``ProxyConfig`` field."""
    row: Setting = item.metadata[_ROW]
    return row


def _port(value: int) -> None:
    if value > 65535:
        raise ConfigError(f"SERVER_PORT={value} is invalid: use a port number 0..65535")


def _api_keys(raw: str) -> tuple[str, ...]:
    keys = parse_api_keys(raw)
    if not keys:
        raise ConfigError(
            "VOXTRAL_API_KEY is not set: set it to one key, or several separated by commas"
        )
    return keys


def _upstream_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"VOXTRAL_UPSTREAM_URL={raw!r} is invalid: use ws://HOST:PORT/v1/realtime"
        )
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={level!r} is invalid: use one of {', '.join(LOG_LEVELS)}")
    return level


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _token_secret(value: str) -> None:
    if value and len(value) < TOKEN_SECRET_MIN_CHARS:
        raise ConfigError(
            f"VOXTRAL_TOKEN_SECRET is too short ({len(value)} characters): use at least "
            f"{TOKEN_SECRET_MIN_CHARS} random characters, e.g. from `openssl rand -hex 32`"
        )


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


# The settings table: one row per variable, its default written here and nowhere else.
# To add a setting: add a row (name: type = setting(VARIABLE, default, doc, bounds...)) and a
# line in .env.example (#VARIABLE=default) and in ADVANCED.md §10 (tests/deploy/test_env_example.py
# compares the three). A session bound also gets a field of the same name in limits.SessionLimits.
@dataclass(frozen=True, slots=True)
class ProxyConfig:
    # Kept out of repr so a logged or printed config never shows a key.
    api_keys: tuple[str, ...] = field(
        repr=False,
        metadata={
            _ROW: Setting(
                "VOXTRAL_API_KEY",
                "one key, or several separated by commas",
                parse=_api_keys,
            )
        },
    )
    upstream_url: str = setting(
        "VOXTRAL_UPSTREAM_URL",
        DEFAULT_UPSTREAM_URL,
        "vLLM's realtime WebSocket",
        parse=_upstream_url,
    )
    bind_host: str = setting("SERVER_BIND_HOST", "0.0.0.0", "address the proxy listens on")
    port: int = setting("SERVER_PORT", 8000, "port the proxy listens on", minimum=0, check=_port)
    model_id: str = setting("VOXTRAL_MODEL_ID", DEFAULT_MODEL_ID, "the model")
    served_model_name: str = setting(
        "VOXTRAL_SERVED_MODEL_NAME",
        DEFAULT_MODEL_ID,
        "the name vLLM serves the model under",
        default_from="model_id",
    )
    transcription_delay_ms: int = setting(
        "VOXTRAL_TRANSCRIPTION_DELAY_MS",
        DEFAULT_TRANSCRIPTION_DELAY_MS,
        "the model's delay; a multiple of 80 within 80-2400",
        minimum=0,
        check=validate_transcription_delay_ms,
    )
    # The pause that splits a done's text into segments (a session may set its own).
    segment_pause_ms: int = setting(
        "SEGMENT_PAUSE_MS",
        DEFAULT_PAUSE_MS,
        "a silence at least this long splits done's segments",
        minimum=MIN_PAUSE_MS,
        maximum=MAX_PAUSE_MS,
    )
    # The launcher also sizes vLLM's max_model_len to one such generation (launcher.config).
    segment_max_s: float = setting(
        "SEGMENT_MAX_S",
        DEFAULT_SEGMENT_MAX_S,
        "most audio (s) one vLLM generation takes before the utterance carries over",
        minimum=MIN_SEGMENT_MAX_S,
    )
    max_connections: int = setting(
        "MAX_CONCURRENT_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, "connection cap", minimum=1
    )
    idle_timeout_s: float = setting(
        "WS_IDLE_TIMEOUT_S", 150.0, "idle timeout, 0 disables", minimum=0.0
    )
    max_duration_s: float = setting(
        "WS_MAX_CONNECTION_DURATION_S", 5400.0, "maximum connection age, 0 disables", minimum=0.0
    )
    inbound_queue_max: int = setting(
        "WS_INBOUND_QUEUE_MAX", 256, "messages waiting for vLLM per connection", minimum=1
    )
    # Audio held for vLLM. 8 MiB is over three minutes of real-time audio as base64 (42.7 KB/s),
    # far more than waits behind a finalizing utterance, and 100 connections hold 800 MiB at most.
    inbound_queue_max_bytes: int = setting(
        "WS_INBOUND_QUEUE_MAX_BYTES",
        8 * 1024 * 1024,
        "bytes of audio held for vLLM per connection",
        minimum=1024,
    )
    # Opened and not yet ended (open, finalizing or queued behind the one vLLM runs).
    max_utterances_in_flight: int = setting(
        "WS_MAX_UTTERANCES_IN_FLIGHT", 16, "utterances in flight per connection", minimum=1
    )
    # Audio a client may send ahead of real time before the proxy stops reading its socket
    # until real time catches up (so vLLM's queue of a connection stays this short).
    max_audio_ahead_s: float = setting(
        "WS_MAX_AUDIO_AHEAD_S", 30.0, "seconds of audio ahead of real time", minimum=1.0
    )
    max_messages_per_window: int = setting(
        "WS_MAX_MESSAGES_PER_WINDOW", 5000, "message rate limit", minimum=1
    )
    message_window_s: float = setting(
        "WS_MESSAGE_WINDOW_SECONDS", 60.0, "message rate window", minimum=0.001
    )
    max_cancels_per_window: int = setting(
        "WS_MAX_CANCELS_PER_WINDOW", 50, "cancel rate limit", minimum=1
    )
    cancel_window_s: float = setting(
        "WS_CANCEL_WINDOW_SECONDS", 60.0, "cancel rate window", minimum=0.001
    )
    max_auth_failures_per_window: int = setting(
        "WS_MAX_AUTH_FAILURES_PER_WINDOW", 20, "failed keys per client address", minimum=1
    )
    auth_failure_window_s: float = setting(
        "WS_AUTH_FAILURE_WINDOW_SECONDS", 60.0, "failed-key window", minimum=0.001
    )
    max_message_bytes: int = setting(
        "WS_MAX_MESSAGE_BYTES", 1_048_576, "largest frame", minimum=1024
    )
    drain_timeout_s: float = setting(
        "WS_DRAIN_TIMEOUT_S", 30.0, "drain deadline on SIGTERM", minimum=0.0
    )
    outbound_queue_max: int = setting(
        "WS_OUTBOUND_QUEUE_MAX", 1024, "events buffered for a client", minimum=16
    )
    # Events a reader has not taken yet; a reading client has a few KiB waiting.
    outbound_queue_max_bytes: int = setting(
        "WS_OUTBOUND_QUEUE_MAX_BYTES",
        2 * 1024 * 1024,
        "bytes of events buffered for a client",
        minimum=65_536,
    )
    upstream_timeout_s: float = setting(
        "WS_UPSTREAM_TIMEOUT_S", 30.0, "vLLM silence while it owes text, 0 disables", minimum=0.0
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "log level", parse=_log_level)
    demo_page: bool = setting("DEMO_PAGE", True, "serve the browser demo at /")
    log_transcripts: bool = setting("LOG_TRANSCRIPTS", False, "log each utterance's text")
    # Browser Origins allowed to connect; empty allows any (clients without Origin always pass).
    allowed_origins: tuple[str, ...] = setting(
        "ALLOWED_ORIGINS", (), "browser origins allowed to connect", parse=_origins
    )
    # Addresses or networks of the front ends (HAProxy, ingress) whose X-Forwarded-For names
    # the real client; empty trusts nobody, so a client cannot choose its own address.
    trusted_proxies: tuple[str, ...] = setting(
        "TRUSTED_PROXIES",
        (),
        "front ends whose X-Forwarded-For names the client",
        parse=parse_trusted_proxies,
    )
    # Signs client tokens; empty: a random secret per process (tokens survive neither a
    # restart nor another replica).
    token_secret: str = setting(
        "VOXTRAL_TOKEN_SECRET",
        "",
        "signs client tokens, at least 32 characters",
        check=_token_secret,
        secret=True,
    )
    token_max_ttl_s: int = setting("TOKEN_MAX_TTL_S", 900, "longest token lifetime", minimum=1)
    # Other names a client may give the model on the OpenAI and Mistral routes, besides the
    # served name; unless strict, each provider's own model names are accepted too.
    model_aliases: tuple[str, ...] = setting(
        "MODEL_ALIASES",
        (),
        "other names clients may give the model on the OpenAI and Mistral routes",
        parse=_names,
    )
    strict_model_names: bool = setting(
        "STRICT_MODEL_NAMES",
        False,
        "accept only the served name and MODEL_ALIASES, not the providers' model names",
    )
    # Before a request head has arrived a socket costs a file handle and nothing else proves
    # it is a client: a deadline, and a bound on how many may wait at once.
    http_head_timeout_s: float = setting(
        "HTTP_HEAD_TIMEOUT_S", 10.0, "deadline for a request head", minimum=0.1
    )
    max_pending_sockets: int = setting(
        "MAX_PENDING_SOCKETS", 256, "sockets waiting for their head", minimum=1
    )
    # 0: as many as the file-handle limit allows after vLLM's sockets and a reserve.
    max_open_sockets: int = setting(
        "MAX_OPEN_SOCKETS", 0, "client sockets open at once (0: automatic)", minimum=0
    )
    # The WebSocket layer counts an upgrade's headers again, up to its own ceiling.
    max_header_count: int = setting(
        "HTTP_MAX_HEADERS",
        64,
        "headers in one request",
        minimum=8,
        maximum=HEADER_COUNT_CEILING,
    )
    max_header_bytes: int = setting(
        "HTTP_MAX_HEADER_BYTES", 16_384, "bytes of a request head", minimum=1024
    )
    # Below the app, where WebSocket frames are parsed: frames per message (clients send one)
    # and ping/pong frames per second; beyond either the connection is closed.
    ws_max_fragments: int = setting(
        "WS_MAX_FRAGMENTS", 64, "frames in one WebSocket message", minimum=1
    )
    ws_max_control_frames_per_s: int = setting(
        "WS_MAX_CONTROL_FRAMES_PER_S", 20, "ping and pong frames per second", minimum=1
    )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for scrubbing log lines."""
        return (*self.api_keys, self.token_secret) if self.token_secret else self.api_keys

    @property
    def upstream_health_url(self) -> str:
        """vLLM's ``/health`` on the same host and port as the realtime WebSocket."""
        parts = urlsplit(self.upstream_url)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}/health"


SETTINGS: tuple[Field[Any], ...] = fields(ProxyConfig)


def _read(environ: Mapping[str, str], item: Field[Any], read: Mapping[str, Any]) -> Any:
    """One field's value from its variable (``read``: the fields before it)."""
    row = setting_of(item)
    raw = environ.get(row.env, "").strip()
    if not raw and item.default is not MISSING:
        return read[row.default_from] if row.default_from else item.default
    if row.parse is not None:
        value: Any = row.parse(raw)
    elif isinstance(item.default, bool):
        value = parse_flag(environ, row.env, item.default)
    elif isinstance(item.default, int | float):
        value = parse_number(environ, row.env, type(item.default), row.minimum, row.maximum)
    else:
        value = raw
    if row.check is not None:
        row.check(value)
    return value


def read_setting(environ: Mapping[str, str], name: str) -> Any:
    """One setting read alone, by its field's name (the launcher reads the few it needs before
    it builds the proxy's environment)."""
    item = next(item for item in SETTINGS if item.name == name)
    return _read(environ, item, {})


def load_config(environ: Mapping[str, str] | None = None) -> ProxyConfig:
    env = os.environ if environ is None else environ
    if env.get("MAX_CONCURRENT_CONNECTIONS", "").strip().lower() == AUTO:
        raise ConfigError(
            "MAX_CONCURRENT_CONNECTIONS=auto needs the launcher (python -m launcher, make up), "
            "which reads vLLM's KV cache; give python -m proxy a whole number"
        )
    values: dict[str, Any] = {}
    for item in SETTINGS:
        values[item.name] = _read(env, item, values)
    if values["inbound_queue_max_bytes"] < values["max_message_bytes"]:
        # One message of the largest size allowed must fit, or it could never be held.
        raise ConfigError(
            f"WS_INBOUND_QUEUE_MAX_BYTES={values['inbound_queue_max_bytes']} is invalid: use at "
            f"least WS_MAX_MESSAGE_BYTES ({values['max_message_bytes']})"
        )
    return ProxyConfig(**values)
