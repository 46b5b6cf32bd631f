"""Mistral's realtime transcription protocol (``/v1/audio/transcriptions/realtime``): the codec
between its JSON events and the session's typed inputs and events.

One ``MistralCodec`` per connection. It keeps what Mistral's wire needs and the session does
not: the model name the client connected with, the language it gave (shown back; this model
detects none), and the session's format in Mistral's encoding names. A flush is
``FinishUtterance`` and an end ``End``, both answered by a ``transcription.done`` even when no
audio came since the last one; every outcome comes back from the session as an event to render.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from proxy.audio_format import G711_RATE, PCM16_MAX_RATE, PCM16_MIN_RATE, AudioFormat, Encoding
from proxy.config import ProxyConfig
from proxy.protocols.envelope import CLOSE_CODES, CloseCode, audio_bytes, frame_too_large
from proxy.protocols.models import ModelNames
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
    TextSegment,
    UtteranceCommitted,
    UtteranceFailed,
    UtteranceOpened,
)
from proxy.session.inputs import (
    AppendAudio,
    ClientInput,
    End,
    FinishUtterance,
    InvalidInput,
    SessionRules,
    UpdateSettings,
)

# Mistral's names for this model, accepted as aliases of the served name unless the deployment
# makes the list strict, so a client keeps its model and changes only its server URL.
MISTRAL_MODELS: Final = (
    "voxtral-mini-transcribe-realtime-2602",
    "voxtral-mini-transcribe-realtime-latest",
)

# Mistral's encoding names and ours; the others it names (pcm_s32le, pcm_f16le, pcm_f32le)
# are refused with the list of these.
ENCODINGS: Final[Mapping[str, Encoding]] = {
    "pcm_s16le": Encoding.PCM16,
    "pcm_mulaw": Encoding.G711_ULAW,
    "pcm_alaw": Encoding.G711_ALAW,
}
_NAMES: Final = {encoding: name for name, encoding in ENCODINGS.items()}

# Client event types.
SESSION_UPDATE = "session.update"
APPEND = "input_audio.append"
FLUSH = "input_audio.flush"
END = "input_audio.end"
INVALID_LABEL = "invalid"

# The integer `code` of every `error` event. The session-ending conditions the envelope closes
# with 4000-4008 carry those same numbers; refusals of a client event are 4100-4199; the
# server's own failures 4500-4599.
ERROR_CODES: Final[Mapping[ErrorCode, int]] = {
    ErrorCode.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.SERVER_AT_CAPACITY: CloseCode.AT_CAPACITY,
    ErrorCode.MAX_DURATION_REACHED: CloseCode.MAX_DURATION,
    ErrorCode.INBOUND_QUEUE_FULL: CloseCode.INBOUND_QUEUE_FULL,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.INVALID_JSON: 4100,
    ErrorCode.INVALID_MESSAGE: 4101,
    ErrorCode.UNKNOWN_TYPE: 4102,
    ErrorCode.UNSUPPORTED_MODEL: 4103,
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT: 4104,
    ErrorCode.INVALID_AUDIO: 4105,
    ErrorCode.PAYLOAD_TOO_LARGE: 4106,
    ErrorCode.NO_ACTIVE_REQUEST: 4107,
    ErrorCode.REQUEST_ID_MISMATCH: 4108,
    ErrorCode.SLOW_CONSUMER: 4109,
    ErrorCode.INTERNAL_ERROR: 4500,
    ErrorCode.UPSTREAM_ERROR: 4501,
    ErrorCode.UPSTREAM_UNAVAILABLE: 4502,
    ErrorCode.SHUTTING_DOWN: 4503,
}
# A session.update after the first audio chunk (its own code: clients may match on it).
SETTINGS_FROZEN_CODE: Final = 4110

# What each of the session's codes tells a Mistral client (the session's own wording is kept
# where it gave one: it is protocol-neutral).
MESSAGES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.UNAUTHORIZED: "Missing or wrong credential: send Authorization: Bearer <API key>, "
    "or offer a client session token as the second WebSocket subprotocol.",
    ErrorCode.SERVER_AT_CAPACITY: "The server is at its connection limit: retry shortly.",
    ErrorCode.IDLE_TIMEOUT: "No event arrived within the idle timeout: reconnect to continue.",
    ErrorCode.MAX_DURATION_REACHED: "The session reached its maximum duration: open a new one "
    "to continue.",
    ErrorCode.INBOUND_QUEUE_FULL: "Too much audio waited to be transcribed: send audio at "
    "real-time pace, not ahead of it.",
    ErrorCode.RATE_LIMITED: "Too many events: slow down.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The event is larger than this server's limit: split the audio "
    "into smaller input_audio.append events.",
    ErrorCode.INVALID_JSON: "The event is not valid JSON: send one JSON object per text frame.",
    ErrorCode.INVALID_MESSAGE: "The event is malformed.",
    ErrorCode.UNKNOWN_TYPE: "Unknown event type: a transcription session takes session.update, "
    "input_audio.append, input_audio.flush and input_audio.end.",
    ErrorCode.INVALID_AUDIO: "audio must be standard base64 of whole samples in the session's "
    "audio_format.",
    ErrorCode.UPSTREAM_ERROR: "The transcription engine failed on this audio: send it again.",
    ErrorCode.UPSTREAM_UNAVAILABLE: "The transcription engine is unavailable: reconnect in a few "
    "seconds.",
    ErrorCode.SHUTTING_DOWN: "The server is shutting down: reconnect to continue.",
    ErrorCode.INTERNAL_ERROR: "Internal server error: reconnect and retry.",
    ErrorCode.SLOW_CONSUMER: "Events were not read fast enough: read the socket continuously.",
}
_CASE_MESSAGES: Final[Mapping[ErrorCase, str]] = {
    ErrorCase.SETTINGS_FROZEN: "The session's settings are fixed from the first audio chunk: "
    "send session.update before any input_audio.append, or open a new connection.",
    ErrorCase.ENDING_AFTER_END: "The session is ending after input_audio.end: open a new "
    "connection to transcribe more.",
    ErrorCase.FORMAT_CHANGE_IN_UTTERANCE: "The audio format cannot change while audio is being "
    "transcribed: change it before the first audio chunk.",
    ErrorCase.TOO_MANY_UTTERANCES: "Too many flushed utterances wait for their transcription.done "
    "on this connection (WS_MAX_UTTERANCES_IN_FLIGHT): wait for a done before flushing again.",
}


def close_code(error: ErrorCode | None) -> int:
    """The close code of a session that ends with ``error`` (None: normally); the envelope's."""
    return CLOSE_CODES.get(error, CloseCode.POLICY_VIOLATION)


def error_code(code: ErrorCode, case: ErrorCase | None = None) -> int:
    """The integer ``code`` of an ``error`` event."""
    if case is ErrorCase.SETTINGS_FROZEN:
        return SETTINGS_FROZEN_CODE
    return ERROR_CODES[code]


def model_names(config: ProxyConfig) -> ModelNames:
    """The names a Mistral client may give the model on this deployment."""
    return ModelNames.of(
        config.served_model_name,
        config.model_aliases,
        strict=config.strict_model_names,
        vendor=MISTRAL_MODELS,
    )


def codec_for(config: ProxyConfig, session_id: str) -> MistralCodec:
    """A connection's codec for this deployment: its model names, delay and frame bound."""
    return MistralCodec(
        session_id=session_id,
        models=model_names(config),
        transcription_delay_ms=config.transcription_delay_ms,
        max_message_bytes=config.max_message_bytes,
    )


class Refusal(Exception):
    """A client event refused: the session's code for it and what to do."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_MESSAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class _Echo:
    """The client's own words for its settings, shown back in ``session.updated``."""

    model: str
    language: str | None = None


class MistralCodec:
    """The codec of one Mistral realtime transcription connection
    (``proxy.protocols.codec.Codec``)."""

    # Audio opens an utterance; the settings are fixed from the first audio chunk.
    rules = SessionRules(open_on_audio=True, settings_frozen_at_audio=True)
    protocol = "mistral"

    def __init__(
        self,
        *,
        session_id: str,
        models: ModelNames,
        transcription_delay_ms: int,
        max_message_bytes: int,
    ) -> None:
        # Mistral's events name no session: the connection's id is the one in the logs.
        self.session_id = session_id
        self._models = models
        self._delay_ms = transcription_delay_ms
        self._max_message_bytes = max_message_bytes
        self._echo = _Echo(model=models.served)
        # Updates sent to the session and not answered yet: their echo, by the update's id.
        self._pending: dict[str, _Echo] = {}
        self._updates = 0
        # session.created's id, shown as request_id in every session object.
        self._request_id = ""
        # Segments already sent, by utterance: its done sends the rest.
        self._segments_sent: dict[str, int] = {}

    def name_model(self, name: str) -> bool:
        """Takes ``name`` (the connect query's ``model``) as the session's model name if it is
        one of the accepted names; whether it is."""
        if not self._models.accepts(name):
            return False
        self._echo = replace(self._echo, model=name)
        return True

    def model_names(self) -> str:
        """The accepted model names, for a refusal."""
        return self._models.listed()

    # ------------------------------------------------------------------ client frames

    def parse_binary(self, data: bytes) -> ClientInput:
        return InvalidInput(
            ErrorCode.INVALID_MESSAGE,
            "Binary frames are not part of this protocol: send input_audio.append with base64 "
            "audio.",
        )

    def parse_text(self, text: str) -> ClientInput:
        if frame_too_large(text, self._max_message_bytes):
            return InvalidInput(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The event is larger than this server's limit of {self._max_message_bytes} "
                "bytes: send the audio in smaller input_audio.append events.",
            )
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return InvalidInput(ErrorCode.INVALID_JSON, MESSAGES[ErrorCode.INVALID_JSON])
        if not isinstance(data, dict):
            return InvalidInput(
                ErrorCode.INVALID_MESSAGE, "The event must be a JSON object with a type."
            )
        kind = data.get("type")
        try:
            if kind == APPEND:
                return _append(data)
            if kind == FLUSH:
                return FinishUtterance(None, empty_done=True)
            if kind == END:
                return End(empty_done=True)
            if kind == SESSION_UPDATE:
                return self._update(data)
        except Refusal as refusal:
            return InvalidInput(refusal.code, refusal.message)
        if not isinstance(kind, str):
            return InvalidInput(ErrorCode.UNKNOWN_TYPE, MESSAGES[ErrorCode.UNKNOWN_TYPE])
        return InvalidInput(
            ErrorCode.UNKNOWN_TYPE,
            f"{kind[:64]!r} is not an event of a transcription session: use session.update, "
            "input_audio.append, input_audio.flush or input_audio.end.",
        )

    def _update(self, data: Mapping[str, Any]) -> UpdateSettings:
        session = data.get("session")
        if not isinstance(session, dict):
            raise Refusal("session.update needs session, an object.")
        _unknown(session, _SESSION_FIELDS, "session")
        echo = self._echo
        if "language" in session:
            language = session["language"]
            if language is not None and not isinstance(language, str):
                raise Refusal("session.language must be a string or null.")
            echo = replace(echo, language=language[:64] if language else None)
        delay = session.get("target_streaming_delay_ms")
        if delay is not None and delay != self._delay_ms:
            raise Refusal(
                f"target_streaming_delay_ms={str(delay)[:16]} is not served: this server "
                f"transcribes with a delay of {self._delay_ms} ms; send {self._delay_ms} or "
                "leave it out."
            )
        _unsupported(session)
        audio = None
        if session.get("audio_format") is not None:
            audio = _audio_format(session["audio_format"])
        self._updates += 1
        token = f"update-{self._updates}"
        self._pending[token] = echo
        return UpdateSettings(token, audio=audio)

    def label(self, message: ClientInput) -> str:
        """The metrics label of a parsed frame: its Mistral event type."""
        if isinstance(message, AppendAudio):
            return APPEND
        if isinstance(message, FinishUtterance):
            return FLUSH
        if isinstance(message, End):
            return END
        if isinstance(message, UpdateSettings):
            return SESSION_UPDATE
        return INVALID_LABEL

    # ------------------------------------------------------------------ server events

    def close_code(self, error: ErrorCode | None) -> int:
        return close_code(error)

    def render(self, event: ClientEvent) -> tuple[str, ...]:
        if isinstance(event, Delta):
            return (_frame("transcription.text.delta", text=event.text),)
        if isinstance(event, SegmentClosed):
            sent = self._segments_sent
            sent[event.request_id] = sent.get(event.request_id, 0) + 1
            return (_frame("transcription.segment", **_segment(event.segment)),)
        if isinstance(event, Done):
            return self._done(event)
        if isinstance(event, SessionCreated):
            return (_frame("session.created", session=self.describe(event.settings, event.id)),)
        if isinstance(event, SessionUpdated):
            self._echo = self._pending.pop(event.request_id or "", self._echo)
            return (_frame("session.updated", session=self.describe(event.settings, None)),)
        if isinstance(event, SessionError):
            if event.request_id is not None:
                self._pending.pop(event.request_id, None)
            return (self._error(event.code, event.case, event.message, event.details),)
        if isinstance(event, UtteranceFailed):
            self._segments_sent.pop(event.request_id, None)
            return (self._error(event.code, None, event.message, event.details),)
        if isinstance(event, Cancelled):
            # Nothing here cancels (no clear, no cancel in Mistral's protocol): no frame.
            self._segments_sent.pop(event.request_id, None)
            return ()
        if isinstance(
            event,
            UtteranceOpened
            | UtteranceCommitted
            | SpeechStarted
            | SpeechStopped
            | AudioCleared
            | Pong
            | SessionEnded,
        ):
            # No word for these in Mistral's protocol (nothing here clears or pings; an ended
            # session is closed normally).
            return ()
        raise AssertionError(f"unhandled event {event!r}")

    def _done(self, event: Done) -> tuple[str, ...]:
        segments = [_segment(segment) for segment in event.segments]
        sent = self._segments_sent.pop(event.request_id, 0)
        usage = event.usage
        done = _frame(
            "transcription.done",
            model=self._echo.model,
            text=event.text,
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                # A whole number: the SDK's model refuses a fraction (and so the whole event).
                "prompt_audio_seconds": round(event.audio_ms / 1000),
            },
            # The model detects no language.
            language=None,
            segments=[segment | {"type": "transcription_segment"} for segment in segments],
        )
        # The segments no pause closed before the end (the last one, at least) come first.
        return (*(_frame("transcription.segment", **s) for s in segments[sent:]), done)

    def _error(
        self,
        code: ErrorCode,
        case: ErrorCase | None,
        message: str | None,
        details: Mapping[str, Any],
    ) -> str:
        if case is not None and case in _CASE_MESSAGES:
            text = _CASE_MESSAGES[case]
        else:
            text = message or MESSAGES.get(code, code.value)
        if code is ErrorCode.RATE_LIMITED and "retry_in" in details:
            text = f"{MESSAGES[ErrorCode.RATE_LIMITED]} Retry in {details['retry_in']} s."
        return _frame("error", error={"message": text, "code": error_code(code, case)})

    # ------------------------------------------------------------------ the session object

    def describe(self, settings: SessionSettings, request_id: str | None) -> dict[str, Any]:
        """The session object for ``settings`` (``request_id``: session.created's id; on an
        update, the one shown at creation)."""
        if request_id is not None:
            self._request_id = request_id
        audio = settings.audio
        return {
            "request_id": self._request_id,
            "model": self._echo.model,
            "audio_format": {
                "encoding": _NAMES[audio.encoding],
                "sample_rate": audio.sample_rate,
            },
            "target_streaming_delay_ms": settings.transcription_delay_ms,
            "language": self._echo.language,
            "diarize": False,
            "turn_detection": None,
        }


def _frame(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


def _segment(segment: TextSegment) -> dict[str, Any]:
    return {"text": segment.text, "start": segment.start_ms / 1000, "end": segment.end_ms / 1000}


def _append(data: Mapping[str, Any]) -> AppendAudio:
    audio = data.get("audio")
    if not isinstance(audio, str):
        raise Refusal("input_audio.append needs audio, a base64 string.")
    nbytes = audio_bytes(audio)
    if nbytes is None:
        raise Refusal(MESSAGES[ErrorCode.INVALID_AUDIO], ErrorCode.INVALID_AUDIO)
    return AppendAudio(None, audio, nbytes)


_SESSION_FIELDS: Final = frozenset(
    {
        "audio_format",
        "target_streaming_delay_ms",
        "language",
        "diarize",
        "context_bias",
        "speaker_references",
        "turn_detection",
    }
)


def _unknown(
    raw: Mapping[str, Any],
    allowed: frozenset[str],
    where: str,
    code: ErrorCode = ErrorCode.INVALID_MESSAGE,
) -> None:
    for key in raw:
        if key not in allowed:
            raise Refusal(
                f"{where}.{str(key)[:64]} is not a setting of this server: use only "
                f"{', '.join(sorted(allowed))}.",
                code,
            )


def _unsupported(session: Mapping[str, Any]) -> None:
    """Refuses the settings that ask for what this model does not do (asking for nothing is
    fine: false, null, empty)."""
    if session.get("diarize"):
        raise Refusal(
            "diarize is not available on this server (the model does not tell speakers apart): "
            "leave it out or send false."
        )
    for key in ("context_bias", "speaker_references"):
        if session.get(key):
            raise Refusal(f"{key} is not available on this server: leave it out or send it empty.")
    if session.get("turn_detection") is not None:
        raise Refusal(
            "Server turn detection is not available on this route: detect the end of speech on "
            "the client and send input_audio.flush, or leave turn_detection out."
        )


def _audio_format(raw: object) -> AudioFormat:
    if not isinstance(raw, dict):
        raise Refusal(
            'audio_format must be an object such as {"encoding": "pcm_s16le", "sample_rate": '
            "16000}.",
            ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
        )
    _unknown(
        raw,
        frozenset({"encoding", "sample_rate"}),
        "session.audio_format",
        ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
    )
    name = raw.get("encoding")
    rate = raw.get("sample_rate")
    encoding = ENCODINGS.get(name) if isinstance(name, str) else None
    if encoding is None:
        raise Refusal(
            f"audio_format.encoding {str(name)[:32]!r} is not supported: use one of "
            f"{', '.join(ENCODINGS)}.",
            ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
        )
    if not isinstance(rate, int) or isinstance(rate, bool):
        rate = None
    if encoding is Encoding.PCM16:
        if rate is None or not PCM16_MIN_RATE <= rate <= PCM16_MAX_RATE:
            raise Refusal(
                f"pcm_s16le takes sample_rate {PCM16_MIN_RATE} to {PCM16_MAX_RATE} (whole Hz): "
                "resample to a rate in that range.",
                ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
            )
    elif rate != G711_RATE:
        raise Refusal(
            f"{name} takes sample_rate {G711_RATE} only: send it at {G711_RATE} Hz, or send "
            "pcm_s16le at its own rate.",
            ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
        )
    assert rate is not None
    return AudioFormat(encoding, rate)
