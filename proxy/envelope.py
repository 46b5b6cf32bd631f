"""The client envelope ``{type, session_id, request_id, payload}``: parsing and event building.

Pure functions, no I/O. ``parse_client_message`` turns one text frame into a typed message or an
``EnvelopeError`` that says which error event to send; ``server_event`` and ``error_event`` build
the events the server sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import orjson

from proxy.audio_clock import MAX_PAUSE_MS, MIN_PAUSE_MS
from proxy.audio_format import AudioFormat, UnsupportedAudioFormat, parse_audio_object
from proxy.turns import TurnOptions, TurnOptionsError

ID_MAX_CHARS = 128
CANCEL_REASON_MAX_CHARS = 256
# A ping's payload is echoed in the pong: room for timestamps and ids, not for a flood of
# large answers to a client that never reads them.
PING_PAYLOAD_MAX_BYTES = 4096


class ErrorCode(StrEnum):
    UNAUTHORIZED = "unauthorized"
    SERVER_AT_CAPACITY = "server_at_capacity"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION_REACHED = "max_duration_reached"
    INBOUND_QUEUE_FULL = "inbound_queue_full"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_MODEL = "unsupported_model"
    NO_ACTIVE_REQUEST = "no_active_request"
    REQUEST_ID_MISMATCH = "request_id_mismatch"
    INVALID_AUDIO = "invalid_audio"
    UNSUPPORTED_AUDIO_FORMAT = "unsupported_audio_format"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"
    SLOW_CONSUMER = "slow_consumer"


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    IDLE_TIMEOUT = 4000
    UNAUTHORIZED = 4001
    AT_CAPACITY = 4002
    MAX_DURATION = 4003
    INBOUND_QUEUE_FULL = 4004
    RATE_LIMITED = 4008


# The one sentence each refusal carries by default: what happened and what to do about it.
DEFAULT_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHORIZED: "No API key or client token was sent: send the key in the "
    "X-API-Key header (or Authorization: Bearer), or from a browser a client token as the "
    "subprotocol voxtral-stt.auth.<token>; ?api_key= works too, but puts the key in URLs and "
    "logs.",
    ErrorCode.SERVER_AT_CAPACITY: "The server is at its connection limit: retry shortly or use "
    "another instance.",
    ErrorCode.IDLE_TIMEOUT: "No message arrived within the idle timeout: reconnect, and send a "
    "ping to keep an idle session open.",
    ErrorCode.MAX_DURATION_REACHED: "The connection reached its maximum duration: open a new "
    "connection to continue.",
    ErrorCode.INBOUND_QUEUE_FULL: "Too many messages or too much audio waited to be forwarded "
    "(limits.inbound_queue_max, limits.inbound_queue_max_bytes): send audio at real-time pace, "
    "not ahead of it.",
    ErrorCode.RATE_LIMITED: "Too many messages: slow down and retry after the time in "
    "details.retry_in.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The message is larger than limits.max_message_bytes (see "
    "details.max_message_bytes): split the audio into smaller chunks.",
    ErrorCode.INVALID_JSON: "The message is not valid JSON: send one JSON object per text frame.",
    ErrorCode.INVALID_MESSAGE: "The message does not follow the envelope: send "
    '{"type", "session_id", "request_id", "payload"} as documented.',
    ErrorCode.UNKNOWN_TYPE: "Unknown message type: use session.update, input_audio_buffer.commit, "
    "input_audio_buffer.append, cancel, ping or end.",
    ErrorCode.UNSUPPORTED_MODEL: "This server serves another model: use the model named in "
    "session.created, or omit session.update.",
    ErrorCode.NO_ACTIVE_REQUEST: "No utterance with this request_id is open: open one with "
    "input_audio_buffer.commit (final: false) first.",
    ErrorCode.REQUEST_ID_MISMATCH: "Another utterance is open: send audio with the open "
    "utterance's request_id, or open a new one with a commit.",
    ErrorCode.INVALID_AUDIO: "Audio must be standard base64 of whole sample frames in the "
    "session's audio format (session.created's audio).",
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT: "This audio format is not supported: send one listed in "
    "details.supported.",
    ErrorCode.UPSTREAM_ERROR: "The speech engine reported an error for this utterance: retry it.",
    ErrorCode.UPSTREAM_UNAVAILABLE: "The speech engine is unavailable or restarting: reconnect "
    "in a few seconds.",
    ErrorCode.SHUTTING_DOWN: "The server is shutting down: reconnect to another instance or "
    "retry shortly.",
    ErrorCode.INTERNAL_ERROR: "The server hit an unexpected fault: reconnect and retry.",
    ErrorCode.SLOW_CONSUMER: "Events piled up because this client stopped reading them: read the "
    "socket continuously, then reconnect.",
}


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    TYPE: ClassVar[str] = "session.update"
    session_id: str
    request_id: str | None
    # None: left as it is (each field is optional, but one must be given).
    model: str | None
    segment_pause_ms: int | None = None
    audio: AudioFormat | None = None
    # Whether payload.turn_detection was given, and its options (None turns it off).
    turn_detection_given: bool = False
    turn_detection: TurnOptions | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    TYPE: ClassVar[str] = "input_audio_buffer.commit"
    session_id: str
    request_id: str
    final: bool


@dataclass(frozen=True, slots=True)
class Append:
    """A JSON append, or a binary frame (no ids: it is audio for the open utterance)."""

    TYPE: ClassVar[str] = "input_audio_buffer.append"
    session_id: str | None
    # May be omitted while turn detection is on (the audio goes to the session's stream).
    request_id: str | None
    # A JSON append's validated standard base64 (forwarded upstream as is when the session's
    # format is vLLM's), or a binary frame's raw bytes.
    audio: str | bytes
    # Bytes of client audio, in the session's format (whole sample frames are checked by the
    # session, which knows the format).
    nbytes: int

    @property
    def binary(self) -> bool:
        return isinstance(self.audio, bytes)


@dataclass(frozen=True, slots=True)
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    session_id: str
    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    session_id: str
    request_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class End:
    TYPE: ClassVar[str] = "end"
    session_id: str
    request_id: str | None


ClientMessage = SessionUpdate | Commit | Append | Cancel | Ping | End
# Every message type a client may send (the one list); those that name an utterance need a
# request_id.
AUDIO_TYPES = (Commit.TYPE, Append.TYPE, Cancel.TYPE)
# An append may omit it: with turn detection on, the server names the utterances.
ID_REQUIRED_TYPES = (Commit.TYPE, Cancel.TYPE)
MESSAGE_TYPES = (SessionUpdate.TYPE, *AUDIO_TYPES, Ping.TYPE, End.TYPE)


@dataclass(frozen=True, slots=True)
class EnvelopeError:
    """A message that cannot be accepted: answer with this error and drop the message."""

    code: ErrorCode
    message: str
    # Echoed when the client sent usable values, so the reply can be matched to the message.
    session_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Whether the message counts toward the rate limit (everything but ping and end does).
    counts_toward_rate_limit: bool = True


# Sentences for refusals whose default message would not say enough.
WRONG_API_KEY = "Wrong API key: the key sent is none of the server's keys; check it."
REQUEST_ID_IN_USE = (
    "This request_id is still being transcribed: give each new utterance a new request_id."
)
NOTHING_TO_CANCEL = (
    "No open, finalizing or queued utterance has this request_id: nothing to cancel."
)
ENDING_AFTER_END = "The session is ending after `end`: open a new connection for new utterances."
APPEND_NEEDS_REQUEST_ID = (
    f"input_audio_buffer.append needs request_id, a string of 1 to {ID_MAX_CHARS} characters "
    "naming the open utterance (it may be omitted only while turn detection is on)."
)
TURNS_OPEN_UTTERANCES = (
    "Turn detection is on: the server opens an utterance for each spoken turn. Stream audio "
    "with input_audio_buffer.append (or binary frames) and no commits, or turn it off with "
    "session.update turn_detection null."
)
TURNS_NEED_NO_OPEN_UTTERANCE = (
    "An utterance is open: finalize it (commit final: true) before turning turn detection on."
)
NO_OPEN_TURN = (
    "No turn is open (the server has not heard speech yet): a final commit ends the open "
    "turn while turn detection is on."
)
TURN_DETECTION_FAILED = (
    "Turn detection stopped working on this server: the open turn was finalized and turn "
    "detection is off for this session; open and finalize utterances with commits, or "
    "reconnect and try again."
)


NO_OPEN_UTTERANCE = (
    "A binary frame is audio for the open utterance, and none is open: open one with "
    "input_audio_buffer.commit (final: false) first."
)
FORMAT_CHANGE_IN_UTTERANCE = (
    "The audio format cannot change while an utterance is open or finalizing: send this "
    "session.update between utterances (after the last one's transcription.done)."
)


def unsupported_model(served_model: str) -> str:
    return f"This server serves {served_model!r}: use that model name, or omit session.update."


def binary_append(data: bytes) -> Append:
    """A binary frame: raw audio for the open utterance."""
    return Append(None, None, data, len(data))


def frame_too_large_refusal(max_bytes: int) -> EnvelopeError:
    return EnvelopeError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        DEFAULT_MESSAGES[ErrorCode.PAYLOAD_TOO_LARGE],
        details={"max_message_bytes": max_bytes},
    )


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= ID_MAX_CHARS


# Deleted from a base64 string, these leave only what is not base64 (and the padding).
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def audio_bytes(audio: str) -> int | None:
    """The number of bytes ``audio`` decodes to when it is strict standard base64; None when
    it is not. Checked without decoding (the proxy forwards native audio's base64 as it came,
    and this runs on every chunk)."""
    size = len(audio)
    if not size:
        return 0
    if size % 4 or not audio.isascii():
        return None
    raw = audio.encode("ascii")
    padding = 2 if raw.endswith(b"==") else 1 if raw.endswith(b"=") else 0
    # What is left must be exactly the trailing padding: no stray character, no inner "=".
    if raw.translate(None, _BASE64_ALPHABET) != b"=" * padding:
        return None
    return size // 4 * 3 - padding


def frame_too_large(text: str, max_bytes: int) -> bool:
    """Whether a text frame's UTF-8 size exceeds ``max_bytes``, encoding only when it may."""
    if len(text) > max_bytes:
        return True
    # A character takes at most 4 bytes in UTF-8: short frames need no encoding to decide.
    if len(text) * 4 <= max_bytes:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def parse_text_frame(text: str, max_bytes: int) -> ClientMessage | EnvelopeError:
    """A client text frame: refused whole when over ``max_bytes`` of UTF-8, parsed otherwise."""
    if frame_too_large(text, max_bytes):
        return frame_too_large_refusal(max_bytes)
    return parse_client_message(text)


def parse_binary_frame(data: bytes, max_bytes: int) -> Append | EnvelopeError:
    """A client binary frame: refused whole when over ``max_bytes``, raw audio otherwise."""
    if len(data) > max_bytes:
        return frame_too_large_refusal(max_bytes)
    return binary_append(data)


def parse_client_message(text: str) -> ClientMessage | EnvelopeError:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return EnvelopeError(ErrorCode.INVALID_JSON, DEFAULT_MESSAGES[ErrorCode.INVALID_JSON])
    if not isinstance(data, dict):
        return EnvelopeError(
            ErrorCode.INVALID_MESSAGE, "The message must be a JSON object with a type."
        )

    raw_session, raw_request = data.get("session_id"), data.get("request_id")
    session_id = raw_session if _valid_id(raw_session) else None
    request_id = raw_request if _valid_id(raw_request) else None
    kind = data.get("type")

    def refuse(code: ErrorCode, message: str, **details: Any) -> EnvelopeError:
        return EnvelopeError(
            code,
            message,
            session_id,
            request_id,
            details,
            counts_toward_rate_limit=kind not in (Ping.TYPE, End.TYPE),
        )

    if not isinstance(kind, str):
        return refuse(ErrorCode.INVALID_MESSAGE, "The message needs a string field type.")
    if kind not in MESSAGE_TYPES:
        return refuse(
            ErrorCode.UNKNOWN_TYPE, DEFAULT_MESSAGES[ErrorCode.UNKNOWN_TYPE], type=kind[:64]
        )
    if session_id is None:
        return refuse(
            ErrorCode.INVALID_MESSAGE,
            f"Every message needs session_id, a string of 1 to {ID_MAX_CHARS} characters.",
        )
    if raw_request is not None and request_id is None:
        return refuse(
            ErrorCode.INVALID_MESSAGE,
            f"request_id must be a string of 1 to {ID_MAX_CHARS} characters.",
        )
    if request_id is None and kind in ID_REQUIRED_TYPES:
        return refuse(
            ErrorCode.INVALID_MESSAGE,
            f"{kind} needs request_id, a string of 1 to {ID_MAX_CHARS} characters, naming the "
            "utterance.",
        )
    payload = data.get("payload")
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        return refuse(ErrorCode.INVALID_MESSAGE, "payload must be a JSON object when present.")

    if kind == Append.TYPE:
        audio = payload.get("audio")
        if not isinstance(audio, str):
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                "input_audio_buffer.append needs payload.audio, a string.",
            )
        nbytes = audio_bytes(audio)
        if nbytes is None:
            return refuse(ErrorCode.INVALID_AUDIO, DEFAULT_MESSAGES[ErrorCode.INVALID_AUDIO])
        return Append(session_id, request_id, audio, nbytes)
    if kind == Commit.TYPE:
        assert request_id is not None
        final = payload.get("final", False)
        if not isinstance(final, bool):
            return refuse(ErrorCode.INVALID_MESSAGE, "payload.final must be true or false.")
        return Commit(session_id, request_id, final)
    if kind == Cancel.TYPE:
        assert request_id is not None
        reason = payload.get("reason", "client_request")
        if not isinstance(reason, str) or not 0 < len(reason) <= CANCEL_REASON_MAX_CHARS:
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                f"payload.reason must be a string of 1 to {CANCEL_REASON_MAX_CHARS} characters.",
            )
        return Cancel(session_id, request_id, reason)
    if kind == SessionUpdate.TYPE:
        model = payload.get("model")
        pause = payload.get("segment_pause_ms")
        audio_object = payload.get("audio")
        has_turns = "turn_detection" in payload
        if model is None and pause is None and audio_object is None and not has_turns:
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                "session.update needs payload.model, payload.segment_pause_ms, payload.audio or "
                "payload.turn_detection.",
            )
        if model is not None and not isinstance(model, str):
            return refuse(ErrorCode.INVALID_MESSAGE, "payload.model must be a string.")
        if pause is not None and (
            not isinstance(pause, int)
            or isinstance(pause, bool)
            or not MIN_PAUSE_MS <= pause <= MAX_PAUSE_MS
        ):
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                f"payload.segment_pause_ms must be a whole number of milliseconds from "
                f"{MIN_PAUSE_MS} to {MAX_PAUSE_MS}.",
            )
        audio_format = None
        if audio_object is not None:
            try:
                audio_format = parse_audio_object(audio_object)
            except UnsupportedAudioFormat as exc:
                return refuse(ErrorCode.UNSUPPORTED_AUDIO_FORMAT, exc.message, **exc.details)
        raw_turns = payload.get("turn_detection")
        try:
            turns = None if raw_turns is None else TurnOptions.from_json(raw_turns)
        except TurnOptionsError as exc:
            return refuse(ErrorCode.INVALID_MESSAGE, str(exc))
        return SessionUpdate(session_id, request_id, model, pause, audio_format, has_turns, turns)
    if kind == Ping.TYPE:
        try:
            echoed = orjson.dumps(payload)
        except orjson.JSONEncodeError:
            # orjson reads deeper nesting than it writes: refuse what could not be echoed.
            return refuse(ErrorCode.INVALID_MESSAGE, "The ping payload is nested too deeply.")
        if len(echoed) > PING_PAYLOAD_MAX_BYTES:
            # Unlike a ping, a refused oversize one counts toward the rate limit.
            return EnvelopeError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The ping payload is larger than {PING_PAYLOAD_MAX_BYTES} bytes of JSON: send "
                "a small payload, such as a timestamp, or none.",
                session_id,
                request_id,
                {"max_ping_payload_bytes": PING_PAYLOAD_MAX_BYTES},
            )
        return Ping(session_id, request_id, payload)
    return End(session_id, request_id)


def server_event(
    kind: str, session_id: str | None, request_id: str | None, payload: dict[str, Any]
) -> dict[str, Any]:
    return {"type": kind, "session_id": session_id, "request_id": request_id, "payload": payload}


def error_event(
    code: ErrorCode,
    session_id: str | None,
    request_id: str | None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return server_event(
        "error",
        session_id,
        request_id,
        {
            "code": code.value,
            "message": message or DEFAULT_MESSAGES[code],
            "details": details or {},
        },
    )


def encode_event(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()
