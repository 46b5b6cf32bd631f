"""The envelope ``{type, session_id, request_id, payload}``, the protocol of
``/api/asr-streaming``, as a codec (``proxy.protocols.codec.Codec``).

Pure, no I/O. ``EnvelopeCodec`` parses one frame into the session's typed input (an
``InvalidInput`` saying which error to send when the frame is refused) and renders the session's
events as envelope frames. Its one piece of connection state is the ``session_id`` events echo:
the client's latest valid one, or the connection's before the client has spoken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from proxy.audio_clock import MAX_PAUSE_MS, MIN_PAUSE_MS
from proxy.audio_format import UnsupportedAudioFormat, parse_audio_object
from proxy.session.events import (
    AudioCleared,
    Cancelled,
    ClientEvent,
    Delta,
    Done,
    ErrorCase,
    ErrorCode,
    Pong,
    SegmentClosed,
    SessionCreated,
    SessionEnded,
    SessionError,
    SessionSettings,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    UtteranceCommitted,
    UtteranceFailed,
    UtteranceOpened,
)
from proxy.session.inputs import (
    NAMED_UTTERANCES,
    AppendAudio,
    CancelUtterance,
    ClearAudio,
    ClientInput,
    End,
    FinishUtterance,
    InvalidInput,
    OpenUtterance,
    Ping,
    UpdateSettings,
)
from proxy.turns import TurnOptions, TurnOptionsError

ID_MAX_CHARS = 128
CANCEL_REASON_MAX_CHARS = 256
# A ping's payload is echoed in the pong: room for timestamps and ids, not for a flood of
# large answers to a client that never reads them.
PING_PAYLOAD_MAX_BYTES = 4096


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


# The client's message types (the one list); those that name an utterance need a request_id.
SESSION_UPDATE = "session.update"
COMMIT = "input_audio_buffer.commit"
APPEND = "input_audio_buffer.append"
CANCEL = "cancel"
PING = "ping"
END = "end"
MESSAGE_TYPES = (SESSION_UPDATE, COMMIT, APPEND, CANCEL, PING, END)
# An append may omit it: with turn detection on, the server names the utterances.
ID_REQUIRED_TYPES = (COMMIT, CANCEL)
# Neither counts toward the message rate limit.
UNLIMITED_TYPES = (PING, END)
# Metrics labels of frames that are not a message type.
INVALID_LABEL, BINARY_LABEL = "invalid", "binary"

# The unauthorized refusal of a key that is none of the server's.
WRONG_API_KEY = "Wrong API key: the key sent is none of the server's keys; check it."

# A message naming another session_id than the one the connection's token is bound to.
BOUND_SESSION_MESSAGE = (
    "This connection's token is bound to its session_id (the one session.created carries): "
    "send that session_id on every message, or mint a token for the other one."
)

# What each situation behind an error asks of an envelope client, when the code's default
# sentence would not say enough.
CASE_MESSAGES: dict[ErrorCase, str] = {
    ErrorCase.REQUEST_ID_IN_USE: "This request_id is still being transcribed: give each new "
    "utterance a new request_id.",
    ErrorCase.NOTHING_TO_CANCEL: "No open, finalizing or queued utterance has this request_id: "
    "nothing to cancel.",
    ErrorCase.ENDING_AFTER_END: "The session is ending after `end`: open a new connection for "
    "new utterances.",
    ErrorCase.APPEND_NEEDS_REQUEST_ID: f"input_audio_buffer.append needs request_id, a string of "
    f"1 to {ID_MAX_CHARS} characters naming the open utterance (it may be omitted only while "
    "turn detection is on).",
    ErrorCase.NO_OPEN_UTTERANCE: "A binary frame is audio for the open utterance, and none is "
    "open: open one with input_audio_buffer.commit (final: false) first.",
    ErrorCase.TURNS_OPEN_UTTERANCES: "Turn detection is on: the server opens an utterance for "
    "each spoken turn. Stream audio with input_audio_buffer.append (or binary frames) and no "
    "commits, or turn it off with session.update turn_detection null.",
    ErrorCase.TURNS_NEED_NO_OPEN_UTTERANCE: "An utterance is open: finalize it (commit final: "
    "true) before turning turn detection on.",
    ErrorCase.NO_OPEN_TURN: "No turn is open (the server has not heard speech yet): a final "
    "commit ends the open turn while turn detection is on.",
    ErrorCase.TURN_DETECTION_FAILED: "Turn detection stopped working on this server: the open "
    "turn was finalized and turn detection is off for this session; open and finalize "
    "utterances with commits, or reconnect and try again.",
    ErrorCase.TURN_DETECTION_OVERLOADED: "Turn detection is unavailable: this server is "
    "overloaded and its voice-activity detection fell behind real time. The open turn was "
    "finalized and turn detection is off for this session; open and finalize utterances with "
    "commits, or reconnect later and try again.",
    ErrorCase.FORMAT_CHANGE_IN_UTTERANCE: "The audio format cannot change while an utterance is "
    "open or finalizing: send this session.update between utterances (after the last one's "
    "transcription.done).",
    ErrorCase.SETTINGS_FROZEN: "The settings cannot change after the first audio: send "
    "session.update before any audio.",
    ErrorCase.NOTHING_TO_FINISH: "No utterance is open: send audio before finishing it.",
    ErrorCase.TOO_MANY_UTTERANCES: "Too many utterances are in flight on this connection "
    "(limits.max_utterances_in_flight, see details): wait for a transcription.done, cancelled "
    "or error before opening another.",
}

# The close code of a session that ends with each error (None: the client's own end); codes
# not listed close as a policy violation (the connect query's refusals, a slow consumer).
CLOSE_CODES: dict[ErrorCode | None, int] = {
    None: CloseCode.NORMAL,
    ErrorCode.SHUTTING_DOWN: CloseCode.GOING_AWAY,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    ErrorCode.UPSTREAM_UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.SERVER_AT_CAPACITY: CloseCode.AT_CAPACITY,
    ErrorCode.MAX_DURATION_REACHED: CloseCode.MAX_DURATION,
    ErrorCode.INBOUND_QUEUE_FULL: CloseCode.INBOUND_QUEUE_FULL,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
}


def unsupported_model(served_model: str) -> str:
    return f"This server serves {served_model!r}: use that model name, or omit session.update."


def error_message(code: ErrorCode, case: ErrorCase | None, details: Mapping[str, Any]) -> str:
    """The one sentence an error carries when the session did not word it."""
    if case is ErrorCase.MODEL_NOT_SERVED:
        return unsupported_model(str(details.get("model")))
    if case is not None:
        return CASE_MESSAGES[case]
    return DEFAULT_MESSAGES[code]


def frame_too_large_refusal(max_bytes: int) -> InvalidInput:
    return InvalidInput(
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


def parse_text_frame(text: str, max_bytes: int) -> tuple[str | None, ClientInput]:
    """A client text frame: refused whole when over ``max_bytes`` of UTF-8, parsed otherwise."""
    if frame_too_large(text, max_bytes):
        return None, frame_too_large_refusal(max_bytes)
    return parse_client_message(text)


def parse_binary_frame(data: bytes, max_bytes: int) -> ClientInput:
    """A client binary frame: refused whole when over ``max_bytes``, raw audio otherwise (for
    the open utterance: it carries no ids)."""
    if len(data) > max_bytes:
        return frame_too_large_refusal(max_bytes)
    return AppendAudio(None, data, len(data))


def parse_client_message(text: str) -> tuple[str | None, ClientInput]:
    """One envelope message: its valid ``session_id`` (None if it has none) and its input."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, InvalidInput(ErrorCode.INVALID_JSON, DEFAULT_MESSAGES[ErrorCode.INVALID_JSON])
    if not isinstance(data, dict):
        return None, InvalidInput(
            ErrorCode.INVALID_MESSAGE, "The message must be a JSON object with a type."
        )
    raw_session = data.get("session_id")
    session_id = raw_session if _valid_id(raw_session) else None
    return session_id, _parse_message(data, session_id)


def _parse_message(data: dict[str, Any], session_id: str | None) -> ClientInput:
    raw_request = data.get("request_id")
    request_id = raw_request if _valid_id(raw_request) else None
    kind = data.get("type")

    def refuse(code: ErrorCode, message: str, **details: Any) -> InvalidInput:
        return InvalidInput(
            code,
            message,
            request_id,
            details,
            counts_toward_rate_limit=kind not in UNLIMITED_TYPES,
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

    if kind == APPEND:
        audio = payload.get("audio")
        if not isinstance(audio, str):
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                "input_audio_buffer.append needs payload.audio, a string.",
            )
        nbytes = audio_bytes(audio)
        if nbytes is None:
            return refuse(ErrorCode.INVALID_AUDIO, DEFAULT_MESSAGES[ErrorCode.INVALID_AUDIO])
        return AppendAudio(request_id, audio, nbytes)
    if kind == COMMIT:
        assert request_id is not None
        final = payload.get("final", False)
        if not isinstance(final, bool):
            return refuse(ErrorCode.INVALID_MESSAGE, "payload.final must be true or false.")
        return FinishUtterance(request_id) if final else OpenUtterance(request_id)
    if kind == CANCEL:
        assert request_id is not None
        reason = payload.get("reason", "client_request")
        if not isinstance(reason, str) or not 0 < len(reason) <= CANCEL_REASON_MAX_CHARS:
            return refuse(
                ErrorCode.INVALID_MESSAGE,
                f"payload.reason must be a string of 1 to {CANCEL_REASON_MAX_CHARS} characters.",
            )
        return CancelUtterance(request_id, reason)
    if kind == SESSION_UPDATE:
        return _parse_update(payload, request_id, refuse)
    if kind == PING:
        try:
            echoed = orjson.dumps(payload)
        except orjson.JSONEncodeError:
            # orjson reads deeper nesting than it writes: refuse what could not be echoed.
            return refuse(ErrorCode.INVALID_MESSAGE, "The ping payload is nested too deeply.")
        if len(echoed) > PING_PAYLOAD_MAX_BYTES:
            # Unlike a ping, a refused oversize one counts toward the rate limit.
            return InvalidInput(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The ping payload is larger than {PING_PAYLOAD_MAX_BYTES} bytes of JSON: send "
                "a small payload, such as a timestamp, or none.",
                request_id,
                {"max_ping_payload_bytes": PING_PAYLOAD_MAX_BYTES},
            )
        return Ping(request_id, payload)
    return End(request_id)


def _parse_update(
    payload: dict[str, Any], request_id: str | None, refuse: Callable[..., InvalidInput]
) -> ClientInput:
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
    return UpdateSettings(request_id, model, pause, audio_format, has_turns, turns)


# ---------------------------------------------------------------- events


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _turns(options: TurnOptions | None) -> dict[str, Any] | None:
    return options.as_payload() if options is not None else None


def _created(event: SessionCreated) -> tuple[str, str | None, dict[str, Any]]:
    settings, limits = event.settings, event.settings.limits
    return (
        "session.created",
        None,
        {
            "id": event.id,
            "model": settings.model,
            "transcription_delay_ms": settings.transcription_delay_ms,
            "segment_pause_ms": settings.segment_pause_ms,
            "audio": settings.audio.as_payload(),
            "turn_detection": _turns(settings.turn_detection),
            "limits": {
                "idle_timeout_s": _number(limits.idle_timeout_s),
                "max_duration_s": _number(limits.max_duration_s),
                "inbound_queue_max": limits.inbound_queue_max,
                "inbound_queue_max_bytes": limits.inbound_queue_max_bytes,
                "max_message_bytes": limits.max_message_bytes,
                "max_utterances_in_flight": limits.max_utterances_in_flight,
                "max_audio_ahead_s": _number(limits.max_audio_ahead_s),
            },
        },
    )


def _updated(event: SessionUpdated) -> tuple[str, str | None, dict[str, Any]]:
    settings: SessionSettings = event.settings
    return (
        "session.updated",
        event.request_id,
        {
            "model": settings.model,
            "segment_pause_ms": settings.segment_pause_ms,
            "audio": settings.audio.as_payload(),
            "turn_detection": _turns(settings.turn_detection),
        },
    )


def _error(
    code: ErrorCode,
    request_id: str | None,
    case: ErrorCase | None,
    message: str | None,
    details: Mapping[str, Any],
) -> tuple[str, str | None, dict[str, Any]]:
    return (
        "error",
        request_id,
        {
            "code": code.value,
            "message": message or error_message(code, case, details),
            "details": dict(details),
        },
    )


def _done(event: Done) -> tuple[str, str | None, dict[str, Any]]:
    usage = event.usage
    return (
        "transcription.done",
        event.request_id,
        {
            "text": event.text,
            "segments": [
                {"text": s.text, "start_ms": s.start_ms, "end_ms": s.end_ms} for s in event.segments
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "audio_seconds": event.audio_ms / 1000,
            },
            "audio_ms": event.audio_ms,
        },
    )


# Each event as (type, request_id, payload); events the envelope has no word for are absent.
_Rendered = tuple[str, str | None, dict[str, Any]]
_RENDERERS: dict[type, Callable[[Any], _Rendered]] = {
    Delta: lambda e: (
        "transcription.delta",
        e.request_id,
        {"delta": e.text, "audio_ms": e.audio_ms},
    ),
    Done: _done,
    Cancelled: lambda e: ("cancelled", e.request_id, {"reason": e.reason}),
    SpeechStarted: lambda e: (
        "input_audio_buffer.speech_started",
        e.request_id,
        {"audio_start_ms": e.audio_start_ms},
    ),
    SpeechStopped: lambda e: (
        "input_audio_buffer.speech_stopped",
        e.request_id,
        {"audio_end_ms": e.audio_end_ms},
    ),
    SessionError: lambda e: _error(e.code, e.request_id, e.case, e.message, e.details),
    UtteranceFailed: lambda e: _error(e.code, e.request_id, None, e.message, e.details),
    Pong: lambda e: ("pong", e.request_id, e.payload),
    SessionCreated: _created,
    SessionUpdated: _updated,
    SessionEnded: lambda e: ("session.ended", None, {}),
}
# The envelope has no word for these: its clients learn the same from what they sent (and
# every segment from its done).
_SILENT = (UtteranceOpened, UtteranceCommitted, AudioCleared, SegmentClosed)

_LABELS: dict[type, str] = {
    UpdateSettings: SESSION_UPDATE,
    OpenUtterance: COMMIT,
    FinishUtterance: COMMIT,
    AppendAudio: APPEND,
    CancelUtterance: CANCEL,
    Ping: PING,
    End: END,
    ClearAudio: INVALID_LABEL,  # the envelope never parses one
    InvalidInput: INVALID_LABEL,
}


class EnvelopeCodec:
    """One connection's envelope: its frames in, the session's events out."""

    # The envelope names every utterance: the client opens each one.
    rules = NAMED_UTTERANCES
    protocol = "envelope"

    def __init__(
        self, session_id: str, max_message_bytes: int, *, bound_session: bool = False
    ) -> None:
        # Echoed in every event: the client's latest valid session_id, the connection's
        # before the client has spoken (always the connection's when its token bound it).
        self.session_id = session_id
        self.max_message_bytes = max_message_bytes
        self.bound_session = bound_session

    def parse_text(self, text: str) -> ClientInput:
        session_id, message = parse_text_frame(text, self.max_message_bytes)
        if session_id is None or session_id == self.session_id:
            return message
        if self.bound_session:
            return InvalidInput(
                ErrorCode.INVALID_MESSAGE, BOUND_SESSION_MESSAGE, message.request_id
            )
        self.session_id = session_id
        return message

    def parse_binary(self, data: bytes) -> ClientInput:
        return parse_binary_frame(data, self.max_message_bytes)

    def render(self, event: ClientEvent) -> tuple[str, ...]:
        renderer = _RENDERERS.get(type(event))
        if renderer is None:
            assert isinstance(event, _SILENT), event
            return ()
        kind, request_id, payload = renderer(event)
        frame = {
            "type": kind,
            "session_id": self.session_id,
            "request_id": request_id,
            "payload": payload,
        }
        return (orjson.dumps(frame).decode(),)

    def close_code(self, error: ErrorCode | None) -> int:
        return CLOSE_CODES.get(error, CloseCode.POLICY_VIOLATION)

    def label(self, message: ClientInput) -> str:
        if isinstance(message, AppendAudio) and message.binary:
            return BINARY_LABEL
        return _LABELS[type(message)]
