"""What a session tells its client: a closed set of typed events that name no wire format.

A protocol codec (``proxy.protocols``) renders each event as zero or more frames of its own
protocol; the session never builds a frame. Ids here are the session's: an utterance's
``request_id`` is the client's own id when the client named the utterance, else one the session
assigned (turn detection, audio that opens an utterance by itself). Per-connection wire state
(event ids, item ids, the envelope's echoed ``session_id``) is the codec's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy.audio_format import AudioFormat
from proxy.turns import TurnOptions


class ErrorCode(StrEnum):
    """Every kind of failure the server reports, at connect time or in a session; a codec maps
    each one onto its protocol's error codes and close codes."""

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


class ErrorCase(StrEnum):
    """The particular situation behind an error, when its code alone does not say what to do:
    the codec words it in its protocol's terms (which message to send instead, and how)."""

    # An utterance was opened with the id of one still in flight.
    REQUEST_ID_IN_USE = "request_id_in_use"
    # A cancel named no open, finalizing or queued utterance.
    NOTHING_TO_CANCEL = "nothing_to_cancel"
    # An utterance was opened after the client asked to finish and close.
    ENDING_AFTER_END = "ending_after_end"
    # Encoded audio named no utterance while the session opens none by itself.
    APPEND_NEEDS_REQUEST_ID = "append_needs_request_id"
    # Raw audio arrived while no utterance is open.
    NO_OPEN_UTTERANCE = "no_open_utterance"
    # The client opened an utterance while turn detection opens them.
    TURNS_OPEN_UTTERANCES = "turns_open_utterances"
    # Turn detection was turned on while an utterance is open.
    TURNS_NEED_NO_OPEN_UTTERANCE = "turns_need_no_open_utterance"
    # The client finished the open turn while none is open.
    NO_OPEN_TURN = "no_open_turn"
    # The voice-activity engine failed: turn detection went off.
    TURN_DETECTION_FAILED = "turn_detection_failed"
    # The voice-activity engine fell behind real time (the server is overloaded): turn
    # detection went off.
    TURN_DETECTION_OVERLOADED = "turn_detection_overloaded"
    # The audio format was changed while an utterance is open or finalizing.
    FORMAT_CHANGE_IN_UTTERANCE = "format_change_in_utterance"
    # A settings update named another model than the one served (details: the served one).
    MODEL_NOT_SERVED = "model_not_served"
    # The settings were changed after the first audio, in a session that freezes them then.
    SETTINGS_FROZEN = "settings_frozen"
    # The client asked to finish the open utterance while none is open (and empty ones are
    # not finished for this protocol).
    NOTHING_TO_FINISH = "nothing_to_finish"
    # An utterance was opened while ``limits.max_utterances_in_flight`` were in flight
    # (details: the bound).
    TOO_MANY_UTTERANCES = "too_many_utterances"


# ---------------------------------------------------------------- the session's settings


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """The bounds a client is told about when the session opens."""

    idle_timeout_s: float
    max_duration_s: float
    inbound_queue_max: int
    inbound_queue_max_bytes: int
    max_message_bytes: int
    # 0: not told (a session built without them).
    max_utterances_in_flight: int = 0
    max_audio_ahead_s: float = 0


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The full effective settings, as they stand when the event is emitted."""

    model: str
    transcription_delay_ms: int
    segment_pause_ms: int
    audio: AudioFormat
    # None: turn detection is off (the client opens and finishes utterances).
    turn_detection: TurnOptions | None
    limits: ClientLimits


# ---------------------------------------------------------------- session events


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """The first event of every session. ``id`` is unique to this session (``sess_...``)."""

    id: str
    settings: SessionSettings


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The answer to every accepted settings update, with the settings in full."""

    request_id: str | None  # the update's, echoed
    settings: SessionSettings


@dataclass(frozen=True, slots=True)
class Pong:
    request_id: str | None
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AudioCleared:
    """The answer to ``ClearAudio`` (whether or not an utterance was open)."""


@dataclass(frozen=True, slots=True)
class SessionError:
    """A session-level error: a refused client message (the session goes on), or the reason
    the session ends (``closes``; the connection closes right after, see ``CloseClient``)."""

    code: ErrorCode
    # The id the refused message carried (for a mismatch: the id the client sent); None for
    # errors about the connection.
    request_id: str | None
    case: ErrorCase | None = None
    # Already worded (a protocol refusal, an audio problem); None: the codec words it from
    # ``code`` and ``case``.
    message: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    closes: bool = False


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The client asked to finish and close, and every utterance has ended: the connection
    closes normally right after."""


# ---------------------------------------------------------------- utterance events


@dataclass(frozen=True, slots=True)
class UtteranceOpened:
    """An utterance began taking audio: opened by the client, by turn detection, or by audio
    arriving when none was open."""

    request_id: str
    # The utterance opened before this one in the session (None for the first).
    previous_request_id: str | None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Turn detection heard speech start; times count from the session's first audio."""

    request_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    request_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class UtteranceCommitted:
    """The utterance's audio is complete (the client finished it, or its turn ended): its
    ``Done`` follows."""

    request_id: str
    previous_request_id: str | None


@dataclass(frozen=True, slots=True)
class Delta:
    """New text (never empty) of an utterance; ``audio_ms`` is where in the utterance's audio
    the model step that produced it sits."""

    request_id: str
    text: str
    audio_ms: int


@dataclass(frozen=True, slots=True)
class TextSegment:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class SegmentClosed:
    """A pause of at least the session's segment pause closed a segment of the utterance's
    text; its ``Done`` lists it again, among all of them."""

    request_id: str
    segment: TextSegment


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """vLLM's token counts, summed over the utterance's generations."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Done:
    """The utterance ended with its full text, split into segments at pauses."""

    request_id: str
    text: str
    segments: tuple[TextSegment, ...]
    usage: TokenUsage
    # The client's audio, in milliseconds.
    audio_ms: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    request_id: str
    # The client's reason, or why the session cancelled it ("superseded").
    reason: str


@dataclass(frozen=True, slots=True)
class UtteranceFailed:
    """The utterance ended in error (vLLM's error, or the session ending under it); a
    session-level ``SessionError`` is separate."""

    request_id: str
    code: ErrorCode
    message: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


ClientEvent = (
    SessionCreated
    | SessionUpdated
    | Pong
    | AudioCleared
    | SessionError
    | SessionEnded
    | UtteranceOpened
    | SpeechStarted
    | SpeechStopped
    | UtteranceCommitted
    | Delta
    | SegmentClosed
    | Done
    | Cancelled
    | UtteranceFailed
)
# Every utterance that opens ends in exactly one of these.
UtteranceEnd = Done | Cancelled | UtteranceFailed
