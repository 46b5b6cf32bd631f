"""Proxy configuration: read from the environment once, at start, into a typed object.

Every variable name here is part of the public interface (documented in ADVANCED.md and
.env.example). A bad value raises ``ConfigError`` whose message names the variable and what is
allowed, so ``python -m proxy`` can exit with one clear line.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from proxy.audio_clock import DEFAULT_PAUSE_MS, MAX_PAUSE_MS, MIN_PAUSE_MS
from proxy.guard import HEADER_COUNT_CEILING
from proxy.limits import INBOUND_QUEUE_MAX_BYTES, OUTBOUND_QUEUE_MAX_BYTES
from proxy.tokens import TOKEN_SECRET_MIN_CHARS

DEFAULT_MODEL_ID = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_UPSTREAM_URL = "ws://127.0.0.1:8001/v1/realtime"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# One Voxtral step consumes 80 ms of audio; the delay must be a whole number of steps.
DELAY_STEP_MS = 80
DELAY_MIN_MS = 80
DELAY_MAX_MS = 2400
DEFAULT_TRANSCRIPTION_DELAY_MS = 480
# MAX_CONCURRENT_CONNECTIONS=auto: the launcher sets the cap from vLLM's KV cache.
AUTO = "auto"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    # Kept out of repr so a logged or printed config never shows a key.
    api_keys: tuple[str, ...] = field(repr=False)
    upstream_url: str = DEFAULT_UPSTREAM_URL
    bind_host: str = "0.0.0.0"
    port: int = 8000
    model_id: str = DEFAULT_MODEL_ID
    served_model_name: str = DEFAULT_MODEL_ID
    transcription_delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS
    # The pause that splits a done's text into segments (a session may set its own).
    segment_pause_ms: int = DEFAULT_PAUSE_MS
    max_connections: int = 100
    idle_timeout_s: float = 150.0
    max_duration_s: float = 5400.0
    inbound_queue_max: int = 256
    inbound_queue_max_bytes: int = INBOUND_QUEUE_MAX_BYTES
    max_messages_per_window: int = 5000
    message_window_s: float = 60.0
    max_cancels_per_window: int = 50
    cancel_window_s: float = 60.0
    max_auth_failures_per_window: int = 20
    auth_failure_window_s: float = 60.0
    max_message_bytes: int = 1_048_576
    drain_timeout_s: float = 30.0
    outbound_queue_max: int = 1024
    outbound_queue_max_bytes: int = OUTBOUND_QUEUE_MAX_BYTES
    upstream_timeout_s: float = 30.0
    log_level: str = "INFO"
    demo_page: bool = True
    log_transcripts: bool = False
    # Browser Origins allowed to connect; empty allows any (clients without Origin always pass).
    allowed_origins: tuple[str, ...] = ()
    # Addresses or networks of the front ends (HAProxy, ingress) whose X-Forwarded-For names
    # the real client; empty trusts nobody, so a client cannot choose its own address.
    trusted_proxies: tuple[str, ...] = ()
    # Signs client tokens; empty: a random secret per process (tokens survive neither a
    # restart nor another replica).
    token_secret: str = field(default="", repr=False)
    token_max_ttl_s: int = 900
    # Before a request head has arrived a socket costs a file handle and nothing else proves
    # it is a client: a deadline, and a bound on how many may wait at once.
    http_head_timeout_s: float = 10.0
    max_pending_sockets: int = 256
    # 0: as many as the file-handle limit allows after vLLM's sockets and a reserve.
    max_open_sockets: int = 0
    max_header_count: int = 64
    max_header_bytes: int = 16_384
    # Below the app, where WebSocket frames are parsed: frames per message (clients send one)
    # and ping/pong frames per second; beyond either the connection is closed.
    ws_max_fragments: int = 64
    ws_max_control_frames_per_s: int = 20

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


def _number(
    environ: Mapping[str, str], name: str, default: T, kind: Callable[[str], T], minimum: T
) -> T:
    value = parse_number(environ, name, kind, minimum)
    return default if value is None else value


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


def load_config(environ: Mapping[str, str] | None = None) -> ProxyConfig:
    env = os.environ if environ is None else environ
    keys = parse_api_keys(env.get("VOXTRAL_API_KEY", ""))
    if not keys:
        raise ConfigError(
            "VOXTRAL_API_KEY is not set: set it to one key, or several separated by commas"
        )

    upstream_url = env.get("VOXTRAL_UPSTREAM_URL", "").strip() or DEFAULT_UPSTREAM_URL
    parts = urlsplit(upstream_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"VOXTRAL_UPSTREAM_URL={upstream_url!r} is invalid: use ws://HOST:PORT/v1/realtime"
        )

    model_id = env.get("VOXTRAL_MODEL_ID", "").strip() or DEFAULT_MODEL_ID
    log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={log_level!r} is invalid: use one of {', '.join(LOG_LEVELS)}")

    if env.get("MAX_CONCURRENT_CONNECTIONS", "").strip().lower() == AUTO:
        raise ConfigError(
            "MAX_CONCURRENT_CONNECTIONS=auto needs the launcher (python -m launcher, make up), "
            "which reads vLLM's KV cache; give python -m proxy a whole number"
        )
    token_secret = env.get("VOXTRAL_TOKEN_SECRET", "").strip()
    if token_secret and len(token_secret) < TOKEN_SECRET_MIN_CHARS:
        raise ConfigError(
            f"VOXTRAL_TOKEN_SECRET is too short ({len(token_secret)} characters): use at least "
            f"{TOKEN_SECRET_MIN_CHARS} random characters, e.g. from `openssl rand -hex 32`"
        )
    port = _number(env, "SERVER_PORT", 8000, int, 0)
    max_message_bytes = _number(env, "WS_MAX_MESSAGE_BYTES", 1_048_576, int, 1024)
    inbound_queue_max_bytes = _number(
        env, "WS_INBOUND_QUEUE_MAX_BYTES", INBOUND_QUEUE_MAX_BYTES, int, 1024
    )
    if inbound_queue_max_bytes < max_message_bytes:
        # One message of the largest size allowed must fit, or it could never be held.
        raise ConfigError(
            f"WS_INBOUND_QUEUE_MAX_BYTES={inbound_queue_max_bytes} is invalid: use at least "
            f"WS_MAX_MESSAGE_BYTES ({max_message_bytes})"
        )
    segment_pause_ms = parse_number(env, "SEGMENT_PAUSE_MS", int, MIN_PAUSE_MS, MAX_PAUSE_MS)
    # The WebSocket layer counts headers again, up to its own ceiling.
    max_header_count = parse_number(env, "HTTP_MAX_HEADERS", int, 8, HEADER_COUNT_CEILING)
    if port > 65535:
        raise ConfigError(f"SERVER_PORT={port} is invalid: use a port number 0..65535")

    return ProxyConfig(
        api_keys=keys,
        upstream_url=upstream_url,
        bind_host=env.get("SERVER_BIND_HOST", "").strip() or "0.0.0.0",
        port=port,
        model_id=model_id,
        served_model_name=env.get("VOXTRAL_SERVED_MODEL_NAME", "").strip() or model_id,
        transcription_delay_ms=validate_transcription_delay_ms(
            _number(env, "VOXTRAL_TRANSCRIPTION_DELAY_MS", DEFAULT_TRANSCRIPTION_DELAY_MS, int, 0)
        ),
        segment_pause_ms=DEFAULT_PAUSE_MS if segment_pause_ms is None else segment_pause_ms,
        max_connections=_number(env, "MAX_CONCURRENT_CONNECTIONS", 100, int, 1),
        idle_timeout_s=_number(env, "WS_IDLE_TIMEOUT_S", 150.0, float, 0.0),
        max_duration_s=_number(env, "WS_MAX_CONNECTION_DURATION_S", 5400.0, float, 0.0),
        inbound_queue_max=_number(env, "WS_INBOUND_QUEUE_MAX", 256, int, 1),
        inbound_queue_max_bytes=inbound_queue_max_bytes,
        max_messages_per_window=_number(env, "WS_MAX_MESSAGES_PER_WINDOW", 5000, int, 1),
        message_window_s=_number(env, "WS_MESSAGE_WINDOW_SECONDS", 60.0, float, 0.001),
        max_cancels_per_window=_number(env, "WS_MAX_CANCELS_PER_WINDOW", 50, int, 1),
        cancel_window_s=_number(env, "WS_CANCEL_WINDOW_SECONDS", 60.0, float, 0.001),
        max_auth_failures_per_window=_number(env, "WS_MAX_AUTH_FAILURES_PER_WINDOW", 20, int, 1),
        auth_failure_window_s=_number(env, "WS_AUTH_FAILURE_WINDOW_SECONDS", 60.0, float, 0.001),
        max_message_bytes=max_message_bytes,
        drain_timeout_s=_number(env, "WS_DRAIN_TIMEOUT_S", 30.0, float, 0.0),
        outbound_queue_max=_number(env, "WS_OUTBOUND_QUEUE_MAX", 1024, int, 16),
        outbound_queue_max_bytes=_number(
            env, "WS_OUTBOUND_QUEUE_MAX_BYTES", OUTBOUND_QUEUE_MAX_BYTES, int, 65_536
        ),
        upstream_timeout_s=_number(env, "WS_UPSTREAM_TIMEOUT_S", 30.0, float, 0.0),
        log_level=log_level,
        demo_page=parse_flag(env, "DEMO_PAGE", True),
        log_transcripts=parse_flag(env, "LOG_TRANSCRIPTS", False),
        allowed_origins=tuple(
            origin.strip().rstrip("/")
            for origin in env.get("ALLOWED_ORIGINS", "").split(",")
            if origin.strip()
        ),
        trusted_proxies=parse_trusted_proxies(env.get("TRUSTED_PROXIES", "")),
        token_secret=token_secret,
        token_max_ttl_s=_number(env, "TOKEN_MAX_TTL_S", 900, int, 1),
        http_head_timeout_s=_number(env, "HTTP_HEAD_TIMEOUT_S", 10.0, float, 0.1),
        max_pending_sockets=_number(env, "MAX_PENDING_SOCKETS", 256, int, 1),
        max_open_sockets=_number(env, "MAX_OPEN_SOCKETS", 0, int, 0),
        max_header_count=64 if max_header_count is None else max_header_count,
        max_header_bytes=_number(env, "HTTP_MAX_HEADER_BYTES", 16_384, int, 1024),
        ws_max_fragments=_number(env, "WS_MAX_FRAGMENTS", 64, int, 1),
        ws_max_control_frames_per_s=_number(env, "WS_MAX_CONTROL_FRAMES_PER_S", 20, int, 1),
    )
