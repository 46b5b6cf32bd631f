"""OpenAI's Realtime API, transcription sessions (GA, with the beta names): the codec between
its JSON events and the session's typed inputs and events.

One ``OpenAICodec`` per connection. It keeps what OpenAI's wire needs and the session does not:
unique ``event_id``s, one ``item_id`` per utterance, the client's own names for what it asked
(its model alias, language, prompt, the turn-detection type), the ``event_id`` of a client event
an error answers, and the audio appended since the last commit (a commit of less than 100 ms is
refused as OpenAI refuses it). It never decides a lifecycle: a commit is ``FinishUtterance``, a
clear ``ClearAudio``, and every outcome comes back from the session as an event to render.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from proxy.audio_format import AudioFormat, Encoding
from proxy.config import ProxyConfig
from proxy.protocols.envelope import audio_bytes, frame_too_large
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
    UtteranceCommitted,
    UtteranceFailed,
    UtteranceOpened,
)
from proxy.session.inputs import (
    AppendAudio,
    ClearAudio,
    ClientInput,
    FinishUtterance,
    InvalidInput,
    SessionRules,
    UpdateSettings,
)
from proxy.turns import TurnOptions, TurnOptionsError

# The rate OpenAI's PCM takes (its SDK types `rate` as exactly this), and G.711's.
PCM_RATE: Final = 24_000
G711_RATE: Final = 8_000
# The longest client event_id echoed back.
MAX_EVENT_ID_CHARS: Final = 128
# OpenAI refuses a commit of less audio than this (`input_audio_buffer_commit_empty`).
MIN_COMMIT_MS: Final = 100

# OpenAI's transcription model names, accepted as aliases of the served model unless the
# deployment makes the list strict, so a client keeps its default and changes only its URL.
OPENAI_TRANSCRIPTION_MODELS: Final = (
    "gpt-realtime-whisper",
    "gpt-live-transcribe",
    "gpt-transcribe",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "whisper-1",
)

# `transcription.delay`'s names and the transcription delay each stands for.
DELAYS_MS: Final = {"minimal": 240, "low": 480, "medium": 960, "high": 1440, "xhigh": 2400}
# `semantic_vad`'s eagerness as the silence that ends a turn ("auto" is "medium").
EAGERNESS_SILENCE_MS: Final = {"low": 1200, "medium": 600, "auto": 600, "high": 300}

# Each GA format `type` (and the beta `input_audio_format` name) and what it is here.
_GA_FORMATS: Final = {
    "audio/pcm": AudioFormat(Encoding.PCM16, PCM_RATE),
    "audio/pcmu": AudioFormat(Encoding.G711_ULAW, G711_RATE),
    "audio/pcma": AudioFormat(Encoding.G711_ALAW, G711_RATE),
}
_BETA_FORMATS: Final = {
    "pcm16": _GA_FORMATS["audio/pcm"],
    "g711_ulaw": _GA_FORMATS["audio/pcmu"],
    "g711_alaw": _GA_FORMATS["audio/pcma"],
}
DEFAULT_FORMAT: Final = _GA_FORMATS["audio/pcm"]
_INCLUDES: Final = ("item.input_audio_transcription.logprobs",)
_NOISE_TYPES: Final = ("near_field", "far_field")

# Client event types.
SESSION_UPDATE = "session.update"
BETA_SESSION_UPDATE = "transcription_session.update"
APPEND = "input_audio_buffer.append"
COMMIT = "input_audio_buffer.commit"
CLEAR = "input_audio_buffer.clear"

# Error codes of OpenAI's own that clients match on.
COMMIT_EMPTY = "input_audio_buffer_commit_empty"
INVALID_VALUE = "invalid_value"
UNKNOWN_PARAMETER = "unknown_parameter"
MISSING_PARAMETER = "missing_required_parameter"
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# The close code after a session-ending error. Transient conditions get codes a client that
# reconnects retries on (the OpenAI SDK: 1011, 1013); the client's own doing gets 1008.
CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_CODES: Final[Mapping[ErrorCode, int]] = {
    ErrorCode.SERVER_AT_CAPACITY: CLOSE_TRY_AGAIN_LATER,
    ErrorCode.SHUTTING_DOWN: CLOSE_TRY_AGAIN_LATER,
    ErrorCode.UPSTREAM_UNAVAILABLE: CLOSE_INTERNAL,
    ErrorCode.UPSTREAM_ERROR: CLOSE_INTERNAL,
    ErrorCode.INTERNAL_ERROR: CLOSE_INTERNAL,
}
_SERVER_SIDE: Final = frozenset(CLOSE_CODES)

# What each of the session's codes tells an OpenAI client (the session's own wording is kept
# where it gave one: it is protocol-neutral).
MESSAGES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.UNAUTHORIZED: "Missing or wrong credential: send Authorization: Bearer <key or "
    "client secret>.",
    ErrorCode.SERVER_AT_CAPACITY: "The server is at its connection limit: retry shortly.",
    ErrorCode.IDLE_TIMEOUT: "No event arrived within the idle timeout: reconnect to continue.",
    ErrorCode.MAX_DURATION_REACHED: "The session reached its maximum duration: open a new one "
    "to continue.",
    ErrorCode.INBOUND_QUEUE_FULL: "Too much audio waited to be transcribed: send audio at "
    "real-time pace, not ahead of it.",
    ErrorCode.RATE_LIMITED: "Too many events: slow down.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The event is larger than this server's limit: split the audio "
    "into smaller appends.",
    ErrorCode.INVALID_JSON: "The event is not valid JSON: send one JSON object per text frame.",
    ErrorCode.INVALID_MESSAGE: "The event is malformed.",
    ErrorCode.UNKNOWN_TYPE: "Unknown event type: a transcription session takes session.update, "
    "input_audio_buffer.append, input_audio_buffer.commit and input_audio_buffer.clear.",
    ErrorCode.INVALID_AUDIO: "audio must be standard base64 of whole samples in the session's "
    "format.",
    ErrorCode.UPSTREAM_ERROR: "The transcription engine failed.",
    ErrorCode.UPSTREAM_UNAVAILABLE: "The transcription engine is unavailable: retry shortly.",
    ErrorCode.SHUTTING_DOWN: "The server is shutting down: reconnect to continue.",
    ErrorCode.INTERNAL_ERROR: "Internal server error.",
    ErrorCode.SLOW_CONSUMER: "Events were not read fast enough: read the socket continuously.",
}
_CASE_MESSAGES: Final[Mapping[ErrorCase, str]] = {
    ErrorCase.NOTHING_TO_FINISH: "Error committing input audio buffer: the buffer is empty.",
    ErrorCase.NO_OPEN_TURN: "Error committing input audio buffer: no speech is in progress "
    "(turn detection commits turns by itself).",
    ErrorCase.TURNS_NEED_NO_OPEN_UTTERANCE: "turn_detection cannot be turned on while audio "
    "waits uncommitted: commit or clear the input audio buffer first.",
    ErrorCase.FORMAT_CHANGE_IN_UTTERANCE: "The audio format cannot change while audio waits "
    "uncommitted or a transcription is running: change it after the item's completed event.",
    ErrorCase.TURN_DETECTION_FAILED: "Turn detection stopped working on this server and is off "
    "for this session (the audio so far was committed): commit the input audio buffer "
    "yourself, or reconnect and try again.",
    ErrorCase.TURN_DETECTION_OVERLOADED: "Turn detection is unavailable: this server is "
    "overloaded and fell behind the audio. It is off for this session (the audio so far was "
    "committed): commit the input audio buffer yourself, or reconnect later and try again.",
}
_CASE_CODES: Final[Mapping[ErrorCase, str]] = {
    ErrorCase.NOTHING_TO_FINISH: COMMIT_EMPTY,
    ErrorCase.NO_OPEN_TURN: COMMIT_EMPTY,
    ErrorCase.TURN_DETECTION_FAILED: ErrorCode.INTERNAL_ERROR.value,
    ErrorCase.TURN_DETECTION_OVERLOADED: ErrorCode.INTERNAL_ERROR.value,
}
_CASE_PARAMS: Final[Mapping[ErrorCase, str]] = {
    ErrorCase.TURNS_NEED_NO_OPEN_UTTERANCE: "session.audio.input.turn_detection",
    ErrorCase.FORMAT_CHANGE_IN_UTTERANCE: "session.audio.input.format",
}


def close_code(error: ErrorCode | None) -> int:
    """The close code of a session that ends with ``error`` (None: normally)."""
    if error is None:
        return CLOSE_NORMAL
    return CLOSE_CODES.get(error, CLOSE_POLICY)


def delay_name(delay_ms: int) -> str | None:
    """``transcription.delay``'s name for ``delay_ms``, if it has one."""
    return next((name for name, ms in DELAYS_MS.items() if ms == delay_ms), None)


class Refusal(Exception):
    """A client event refused with OpenAI's ``error`` wording."""

    def __init__(self, message: str, code: str = INVALID_VALUE, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(slots=True)
class _Echo:
    """The client's own words for the settings: shown back in every ``session.updated``."""

    model: str
    transcription: dict[str, Any] = field(default_factory=dict)
    # The turn_detection object as shown (type and the fields that do not map onto ours).
    turn_detection: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    include: list[str] | None = None


@dataclass(slots=True)
class _PendingUpdate:
    """An update sent to the session and not yet answered."""

    beta: bool
    echo: _Echo


def codec_for(config: ProxyConfig, session_id: str) -> OpenAICodec:
    """A connection's codec for this deployment: its model names, delay and frame bound."""
    return OpenAICodec(
        session_id=session_id,
        models=ModelNames.of(
            config.served_model_name,
            config.model_aliases,
            strict=config.strict_model_names,
            vendor=OPENAI_TRANSCRIPTION_MODELS,
        ),
        transcription_delay_ms=config.transcription_delay_ms,
        max_message_bytes=config.max_message_bytes,
    )


class OpenAICodec:
    """The codec of one OpenAI Realtime connection (``proxy.protocols.codec.Codec``)."""

    rules = SessionRules(open_on_audio=True, utterance_id_prefix="item-")
    protocol = "openai"

    def __init__(
        self,
        *,
        session_id: str,
        models: ModelNames,
        transcription_delay_ms: int,
        max_message_bytes: int,
    ) -> None:
        # OpenAI's events name no session: the connection's id is the one in the logs.
        self.session_id = session_id
        self._models = models
        self._delay_ms = transcription_delay_ms
        self._max_message_bytes = max_message_bytes
        self._echo = _Echo(model=models.served)
        self._audio = DEFAULT_FORMAT
        # Ids: a random part per connection and a count, unique and cheap.
        self._id_base = secrets.token_hex(6)
        self._count = 0
        self._items: dict[str, str] = {}
        self._last_committed: str | None = None
        self._pending: dict[str, _PendingUpdate] = {}
        # The event_id of the client event being answered: the session answers each frame
        # before the next one is parsed, so an error about a message is about the last one.
        self._answering: str | None = None
        # Bytes appended since the last commit or clear, in the session's format.
        self._uncommitted_bytes = 0

    def name_model(self, name: str) -> bool:
        """Takes ``name`` (given at connect time, ``?model=``) as the session's model name if
        it is one of the accepted names; whether it is."""
        if not self._models.accepts(name):
            return False
        self._echo.model = name
        return True

    def model_names(self) -> str:
        """The accepted model names, for a refusal."""
        return self._models.listed()

    # ------------------------------------------------------------------ ids

    def _next_id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._id_base}{self._count:x}"

    def _item_id(self, request_id: str) -> str:
        item = self._items.get(request_id)
        if item is None:
            item = self._items[request_id] = self._next_id("item")
        return item

    # ------------------------------------------------------------------ client frames

    def parse_binary(self, data: bytes) -> ClientInput:
        self._answering = None
        return InvalidInput(
            ErrorCode.INVALID_MESSAGE,
            "Binary frames are not part of this protocol: send input_audio_buffer.append with "
            "base64 audio.",
            details={"openai_code": "invalid_type"},
        )

    def parse_text(self, text: str) -> ClientInput:
        self._answering = None
        if frame_too_large(text, self._max_message_bytes):
            return _invalid(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The event is larger than this server's limit of {self._max_message_bytes} "
                "bytes (OpenAI's is 15 MiB): send the audio in smaller appends.",
                code="payload_too_large",
            )
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _invalid(ErrorCode.INVALID_JSON, MESSAGES[ErrorCode.INVALID_JSON])
        if not isinstance(data, dict):
            return _invalid(
                ErrorCode.INVALID_MESSAGE, "The event must be a JSON object with a type."
            )
        raw_event_id = data.get("event_id")
        # Echoed in an error about this event, so only an id of a sensible size.
        event_id = (
            raw_event_id
            if isinstance(raw_event_id, str) and 0 < len(raw_event_id) <= MAX_EVENT_ID_CHARS
            else None
        )
        self._answering = event_id
        kind = data.get("type")
        try:
            if kind == APPEND:
                return self._parse_append(data)
            if kind == COMMIT:
                return self._parse_commit()
            if kind == CLEAR:
                self._uncommitted_bytes = 0
                return ClearAudio()
            if kind == SESSION_UPDATE:
                return self._parse_update(data, beta=False)
            if kind == BETA_SESSION_UPDATE:
                return self._parse_update(data, beta=True)
        except Refusal as refusal:
            return _invalid(
                ErrorCode.INVALID_MESSAGE,
                refusal.message,
                code=refusal.code,
                param=refusal.param,
            )
        shown = kind[:64] if isinstance(kind, str) else None
        return _invalid(
            ErrorCode.UNKNOWN_TYPE,
            MESSAGES[ErrorCode.UNKNOWN_TYPE]
            if shown is None
            else f"{shown!r} is not an event of a transcription session: use session.update, "
            "input_audio_buffer.append, input_audio_buffer.commit or input_audio_buffer.clear.",
            code="invalid_type" if shown is None else "unknown_event",
            param="type",
        )

    def _parse_append(self, data: Mapping[str, Any]) -> ClientInput:
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise Refusal(
                "input_audio_buffer.append needs audio, a base64 string.",
                MISSING_PARAMETER,
                "audio",
            )
        nbytes = audio_bytes(audio)
        if nbytes is None:
            raise Refusal(MESSAGES[ErrorCode.INVALID_AUDIO], INVALID_VALUE, "audio")
        self._uncommitted_bytes += nbytes
        return AppendAudio(None, audio, nbytes)

    def _parse_commit(self) -> ClientInput:
        held_ms = self._audio.duration_ms(self._uncommitted_bytes)
        if held_ms < MIN_COMMIT_MS:
            raise Refusal(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {held_ms}.00ms of audio.",
                COMMIT_EMPTY,
            )
        self._uncommitted_bytes = 0
        return FinishUtterance(None)

    def _parse_update(self, data: Mapping[str, Any], *, beta: bool) -> ClientInput:
        session = data.get("session")
        if not isinstance(session, dict):
            raise Refusal(f"{data['type']} needs session, an object.", MISSING_PARAMETER, "session")
        echo = _Echo(
            model=self._echo.model,
            transcription=dict(self._echo.transcription),
            turn_detection=self._echo.turn_detection,
            noise_reduction=self._echo.noise_reduction,
            include=self._echo.include,
        )
        change = (
            _read_beta(session, echo, self._models, self._delay_ms)
            if beta
            else _read_ga(session, echo, self._models, self._delay_ms)
        )
        token = self._next_id("update")
        self._pending[token] = _PendingUpdate(beta, echo)
        return UpdateSettings(
            token,
            audio=change.audio,
            turn_detection_given=change.turns_given,
            turn_detection=change.turns,
        )

    def label(self, message: ClientInput) -> str:
        """The metrics label of a parsed frame: its OpenAI event type."""
        if isinstance(message, AppendAudio):
            return APPEND
        if isinstance(message, FinishUtterance):
            return COMMIT
        if isinstance(message, ClearAudio):
            return CLEAR
        if isinstance(message, UpdateSettings):
            pending = self._pending.get(message.request_id or "")
            return BETA_SESSION_UPDATE if pending is not None and pending.beta else SESSION_UPDATE
        return "invalid"

    # ------------------------------------------------------------------ server events

    def close_code(self, error: ErrorCode | None) -> int:
        return close_code(error)

    def render(self, event: ClientEvent) -> tuple[str, ...]:
        if isinstance(event, Delta):
            return (
                self._frame(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=self._item_id(event.request_id),
                    content_index=0,
                    delta=event.text,
                ),
            )
        if isinstance(event, Done):
            return (self._completed(event),)
        if isinstance(event, SpeechStarted):
            return (
                self._frame(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=event.audio_start_ms,
                    item_id=self._item_id(event.request_id),
                ),
            )
        if isinstance(event, SpeechStopped):
            return (
                self._frame(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=event.audio_end_ms,
                    item_id=self._item_id(event.request_id),
                ),
            )
        if isinstance(event, UtteranceCommitted):
            self._uncommitted_bytes = 0
            previous, self._last_committed = self._last_committed, self._item_id(event.request_id)
            return (
                self._frame(
                    "input_audio_buffer.committed",
                    previous_item_id=previous,
                    item_id=self._last_committed,
                ),
            )
        if isinstance(event, UtteranceOpened):
            self._item_id(event.request_id)
            return ()
        if isinstance(event, UtteranceFailed):
            return (self._failed(event),)
        if isinstance(event, Cancelled):
            # OpenAI has no word for a dropped item: a cleared buffer is answered by `cleared`.
            self._items.pop(event.request_id, None)
            return ()
        if isinstance(event, AudioCleared):
            self._uncommitted_bytes = 0
            return (self._frame("input_audio_buffer.cleared"),)
        if isinstance(event, SessionCreated):
            self._audio = event.settings.audio
            return (
                self._frame("session.created", session=self.describe(event.settings, event.id)),
            )
        if isinstance(event, SessionUpdated):
            return (self._updated(event),)
        if isinstance(event, SessionError):
            return (self._error(event),)
        if isinstance(event, SessionEnded | Pong | SegmentClosed):
            return ()
        raise AssertionError(f"unhandled event {event!r}")

    def _frame(self, kind: str, **fields: Any) -> str:
        return orjson.dumps({"type": kind, "event_id": self._next_id("event"), **fields}).decode()

    def _completed(self, event: Done) -> str:
        item_id = self._items.pop(event.request_id, None) or self._next_id("item")
        return self._frame(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=event.text,
            usage={"type": "duration", "seconds": event.audio_ms / 1000},
            # Ours, beside OpenAI's fields: the text split at pauses, times in seconds.
            segments=[
                {"text": s.text, "start": s.start_ms / 1000, "end": s.end_ms / 1000}
                for s in event.segments
            ],
        )

    def _failed(self, event: UtteranceFailed) -> str:
        item_id = self._items.pop(event.request_id, None) or self._next_id("item")
        return self._frame(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=0,
            error={
                "type": SERVER_ERROR if event.code in _SERVER_SIDE else INVALID_REQUEST,
                "code": event.code.value,
                "message": event.message or MESSAGES.get(event.code, event.code.value),
                "param": None,
            },
        )

    def accept_update(self, update: UpdateSettings) -> bool:
        """Takes the client's words of ``update`` (one this codec parsed) as the session's;
        whether it was a beta update."""
        pending = self._pending.pop(update.request_id or "", None)
        if pending is None:
            return False
        self._echo = pending.echo
        return pending.beta

    def _updated(self, event: SessionUpdated) -> str:
        beta = self.accept_update(UpdateSettings(event.request_id))
        self._audio = event.settings.audio
        if beta:
            return self._frame("transcription_session.updated", session=self._beta_session(event))
        return self._frame("session.updated", session=self.describe(event.settings))

    def _error(self, event: SessionError) -> str:
        # A refused update is forgotten; the error names the client event it answers.
        self._pending.pop(event.request_id or "", None)
        # A session-ending error is about the connection, not about one of its events.
        client_event_id = None if event.closes else self._answering
        details = event.details
        openai_code = details.get("openai_code")
        param = details.get("param")
        if event.case is not None and event.case in _CASE_MESSAGES:
            message = _CASE_MESSAGES[event.case]
            openai_code = _CASE_CODES.get(event.case, INVALID_VALUE)
            param = _CASE_PARAMS.get(event.case)
        else:
            message = event.message or MESSAGES.get(event.code, event.code.value)
        if event.code is ErrorCode.RATE_LIMITED and "retry_in" in details:
            message = f"{MESSAGES[ErrorCode.RATE_LIMITED]} Retry in {details['retry_in']} s."
        return self._frame(
            "error",
            error={
                "type": SERVER_ERROR if event.code in _SERVER_SIDE else INVALID_REQUEST,
                "code": openai_code or event.code.value,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            },
        )

    # ------------------------------------------------------------------ the session object

    def _format(self, audio: AudioFormat) -> dict[str, Any]:
        if audio.encoding is Encoding.G711_ULAW:
            return {"type": "audio/pcmu"}
        if audio.encoding is Encoding.G711_ALAW:
            return {"type": "audio/pcma"}
        return {"type": "audio/pcm", "rate": audio.sample_rate}

    def _transcription(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"model": self._echo.model}
        name = delay_name(self._delay_ms)
        if name is not None:
            shown["delay"] = name
        shown.update(self._echo.transcription)
        return shown

    def _turn_detection(self, turns: TurnOptions | None) -> dict[str, Any] | None:
        if turns is None:
            return None
        shown = dict(self._echo.turn_detection or {"type": "server_vad"})
        if shown["type"] == "server_vad":
            shown.update(
                threshold=turns.threshold,
                prefix_padding_ms=turns.prefix_padding_ms,
                silence_duration_ms=turns.silence_ms,
            )
        return shown

    def describe(self, settings: SessionSettings, session_id: str | None = None) -> dict[str, Any]:
        """The GA session object for ``settings``, in the client's own words where it gave
        them (``session_id``: shown as the session's ``id``)."""
        shown: dict[str, Any] = {}
        if session_id is not None:
            shown.update(id=session_id, object="realtime.transcription_session")
        shown.update(
            type="transcription",
            audio={
                "input": {
                    "format": self._format(settings.audio),
                    "transcription": self._transcription(),
                    "turn_detection": self._turn_detection(settings.turn_detection),
                    "noise_reduction": self._echo.noise_reduction,
                }
            },
        )
        if self._echo.include is not None:
            shown["include"] = self._echo.include
        return shown

    def _beta_session(self, event: SessionUpdated) -> dict[str, Any]:
        settings = event.settings
        beta_format = next(name for name, audio in _BETA_FORMATS.items() if audio == settings.audio)
        transcription = {"model": self._echo.model}
        for key in ("language", "prompt"):
            if key in self._echo.transcription:
                transcription[key] = self._echo.transcription[key]
        return {
            "input_audio_format": beta_format,
            "input_audio_transcription": transcription,
            "turn_detection": self._turn_detection(settings.turn_detection),
            "input_audio_noise_reduction": self._echo.noise_reduction,
            "modalities": ["text"],
        }


def _invalid(
    kind: ErrorCode,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> InvalidInput:
    details: dict[str, Any] = {}
    if code is not None:
        details["openai_code"] = code
    if param is not None:
        details["param"] = param
    return InvalidInput(kind, message, None, details)


# ---------------------------------------------------------------------- reading an update


@dataclass(frozen=True, slots=True)
class _Change:
    audio: AudioFormat | None = None
    turns_given: bool = False
    turns: TurnOptions | None = None


_GA_SESSION_FIELDS: Final = frozenset(
    {"type", "audio", "include", "id", "object", "expires_at", "client_secret"}
)
_GA_INPUT_FIELDS: Final = frozenset(
    {"format", "transcription", "turn_detection", "noise_reduction"}
)
_TRANSCRIPTION_FIELDS: Final = frozenset(
    {"model", "language", "prompt", "delay", "keywords", "languages"}
)
_BETA_SESSION_FIELDS: Final = frozenset(
    {
        "input_audio_format",
        "input_audio_transcription",
        "turn_detection",
        "input_audio_noise_reduction",
        "include",
        "modalities",
        "client_secret",
    }
)


def _unknown(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise Refusal(
                f"Unknown parameter: '{where}{str(key)[:64]}'.",
                UNKNOWN_PARAMETER,
                f"{where}{str(key)[:64]}",
            )


def _object(value: object, param: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Refusal(f"{param} must be an object.", INVALID_VALUE, param)
    return value


def _read_ga(session: Mapping[str, Any], echo: _Echo, models: ModelNames, delay_ms: int) -> _Change:
    kind = session.get("type")
    if kind == "realtime":
        raise Refusal(
            "This server serves transcription sessions only: send session.type "
            '"transcription" (a conversation session, type "realtime", is not available).',
            INVALID_VALUE,
            "session.type",
        )
    if kind != "transcription":
        raise Refusal(
            'session.type is required: send "transcription".', MISSING_PARAMETER, "session.type"
        )
    _unknown(session, _GA_SESSION_FIELDS, "session.")
    if "include" in session:
        echo.include = _include(session["include"], "session.include")
    audio = session.get("audio")
    if audio is None:
        return _Change()
    audio = _object(audio, "session.audio")
    _unknown(audio, frozenset({"input"}), "session.audio.")
    raw_input = audio.get("input")
    if raw_input is None:
        return _Change()
    audio_input = _object(raw_input, "session.audio.input")
    _unknown(audio_input, _GA_INPUT_FIELDS, "session.audio.input.")
    audio_format = None
    if audio_input.get("format") is not None:
        audio_format = _ga_format(_object(audio_input["format"], "session.audio.input.format"))
    if audio_input.get("transcription") is not None:
        _transcription(
            _object(audio_input["transcription"], "session.audio.input.transcription"),
            "session.audio.input.transcription.",
            echo,
            models,
            delay_ms,
        )
    if "noise_reduction" in audio_input:
        echo.noise_reduction = _noise(
            audio_input["noise_reduction"], "session.audio.input.noise_reduction"
        )
    if "turn_detection" not in audio_input:
        return _Change(audio=audio_format)
    turns = _turns(audio_input["turn_detection"], "session.audio.input.turn_detection", echo)
    return _Change(audio=audio_format, turns_given=True, turns=turns)


def _read_beta(
    session: Mapping[str, Any], echo: _Echo, models: ModelNames, delay_ms: int
) -> _Change:
    _unknown(session, _BETA_SESSION_FIELDS, "session.")
    if "include" in session:
        echo.include = _include(session["include"], "session.include")
    audio_format = None
    name = session.get("input_audio_format")
    if name is not None:
        if name not in _BETA_FORMATS:
            raise Refusal(
                f"Invalid value: {str(name)[:40]!r}. Supported values are: 'pcm16', 'g711_ulaw' "
                "and 'g711_alaw'.",
                INVALID_VALUE,
                "session.input_audio_format",
            )
        audio_format = _BETA_FORMATS[name]
    if session.get("input_audio_transcription") is not None:
        _transcription(
            _object(session["input_audio_transcription"], "session.input_audio_transcription"),
            "session.input_audio_transcription.",
            echo,
            models,
            delay_ms,
        )
    if "input_audio_noise_reduction" in session:
        echo.noise_reduction = _noise(
            session["input_audio_noise_reduction"], "session.input_audio_noise_reduction"
        )
    if "turn_detection" not in session:
        return _Change(audio=audio_format)
    turns = _turns(session["turn_detection"], "session.turn_detection", echo)
    return _Change(audio=audio_format, turns_given=True, turns=turns)


def _ga_format(raw: Mapping[str, Any]) -> AudioFormat:
    _unknown(raw, frozenset({"type", "rate"}), "session.audio.input.format.")
    kind = raw.get("type", "audio/pcm")
    if kind not in _GA_FORMATS:
        raise Refusal(
            f"Invalid value: {str(kind)[:40]!r}. Supported values are: 'audio/pcm', "
            "'audio/pcmu' and 'audio/pcma'.",
            INVALID_VALUE,
            "session.audio.input.format.type",
        )
    rate = raw.get("rate")
    if kind == "audio/pcm" and rate is not None and rate != PCM_RATE:
        raise Refusal(
            f"Invalid value: {str(rate)[:16]}. audio/pcm takes rate {PCM_RATE} only: resample "
            "to 24 kHz.",
            INVALID_VALUE,
            "session.audio.input.format.rate",
        )
    return _GA_FORMATS[kind]


def _transcription(
    raw: Mapping[str, Any], where: str, echo: _Echo, models: ModelNames, delay_ms: int
) -> None:
    _unknown(raw, _TRANSCRIPTION_FIELDS, where)
    model = raw.get("model")
    if model is not None:
        if not isinstance(model, str) or not models.accepts(model):
            shown = str(model)[:80]
            raise Refusal(
                f"Invalid value: {shown!r}. This server transcribes with {models.served!r}; "
                f"use one of: {models.listed()}.",
                INVALID_VALUE,
                f"{where}model",
            )
        echo.model = model
    delay = raw.get("delay")
    if delay is not None:
        served = delay_name(delay_ms)
        if delay not in DELAYS_MS or DELAYS_MS[delay] != delay_ms:
            wanted = f"use {served!r} or omit it" if served else "omit it"
            raise Refusal(
                f"Invalid value: {str(delay)[:16]!r}. This server transcribes with a delay of "
                f"{delay_ms} ms: {wanted}.",
                INVALID_VALUE,
                f"{where}delay",
            )
    for key in ("language", "prompt"):
        if key in raw:
            value = raw[key]
            if value is not None and not isinstance(value, str):
                raise Refusal(f"{where}{key} must be a string.", INVALID_VALUE, f"{where}{key}")
            if value is None:
                echo.transcription.pop(key, None)
            else:
                echo.transcription[key] = value
    for key in ("keywords", "languages"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Refusal(
                    f"{where}{key} must be a list of strings.", INVALID_VALUE, f"{where}{key}"
                )
            echo.transcription[key] = value


def _noise(raw: object, param: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = _object(raw, param)
    _unknown(value, frozenset({"type", "strength"}), f"{param}.")
    if value.get("type") is not None and value["type"] not in _NOISE_TYPES:
        raise Refusal(
            f"Invalid value: {str(value['type'])[:40]!r}. Supported values are: 'near_field' "
            "and 'far_field'.",
            INVALID_VALUE,
            f"{param}.type",
        )
    return dict(value)


def _include(raw: object, param: str) -> list[str]:
    if not isinstance(raw, list) or not all(item in _INCLUDES for item in raw):
        raise Refusal(f"{param} takes a list of: {', '.join(_INCLUDES)}.", INVALID_VALUE, param)
    return list(raw)


_SERVER_VAD_FIELDS: Final = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "idle_timeout_ms",
        "create_response",
        "interrupt_response",
    }
)
_SEMANTIC_VAD_FIELDS: Final = frozenset(
    {"type", "eagerness", "create_response", "interrupt_response"}
)
_EFFECTIVE_TURN_FIELDS: Final = frozenset({"threshold", "prefix_padding_ms", "silence_duration_ms"})
# OpenAI's turn_detection fields and ours where the names differ.
_OUR_TURN_NAMES: Final = {"silence_duration_ms": "silence_ms"}


def _turns(raw: object, param: str, echo: _Echo) -> TurnOptions | None:
    if raw is None:
        echo.turn_detection = None
        return None
    value = _object(raw, param)
    kind = value.get("type", "server_vad")
    if kind == "server_vad":
        _unknown(value, _SERVER_VAD_FIELDS, f"{param}.")
        ours = {
            _OUR_TURN_NAMES.get(key, key): value[key]
            for key in ("threshold", "prefix_padding_ms", "silence_duration_ms")
            if value.get(key) is not None
        }
    elif kind == "semantic_vad":
        _unknown(value, _SEMANTIC_VAD_FIELDS, f"{param}.")
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in EAGERNESS_SILENCE_MS:
            raise Refusal(
                f"Invalid value: {str(eagerness)[:16]!r}. Supported values are: 'low', "
                "'medium', 'high' and 'auto'.",
                INVALID_VALUE,
                f"{param}.eagerness",
            )
        ours = {"silence_ms": EAGERNESS_SILENCE_MS[eagerness]}
    else:
        raise Refusal(
            f"Invalid value: {str(kind)[:40]!r}. Supported values are: 'server_vad' and "
            "'semantic_vad' (or null for commit mode).",
            INVALID_VALUE,
            f"{param}.type",
        )
    try:
        turns = TurnOptions.from_json(ours)
    except TurnOptionsError as error:
        message = str(error)
        for theirs, our_name in _OUR_TURN_NAMES.items():
            message = message.replace(f"turn_detection.{our_name}", f"turn_detection.{theirs}")
        raise Refusal(message, INVALID_VALUE, param) from None
    # Shown back as given, except the three fields shown with their effective values.
    echo.turn_detection = {
        key: item for key, item in value.items() if key not in _EFFECTIVE_TURN_FIELDS
    } | {"type": kind}
    return turns
