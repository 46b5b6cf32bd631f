"""What the session returns: actions for the I/O layer to carry out (among them the client
events, typed, for the connection's codec to render), and lifecycle facts for telemetry and
metrics to record. Plain frozen data, so any consumer reads them without knowing the session."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.audio_format import NATIVE, AudioFormat
from proxy.session.events import ClientEvent, ErrorCode


class Outcome(StrEnum):
    """How an utterance ended: every opened utterance ends in exactly one of these."""

    DONE = "done"
    CANCELLED = "cancelled"
    ERRORED = "errored"
    # The client left (closed its connection, or its socket went) before the utterance ended.
    ABANDONED = "abandoned"


# ---------------------------------------------------------------- to carry out


@dataclass(frozen=True, slots=True)
class SendClient:
    """An event for the client, in the codec's protocol."""

    event: ClientEvent


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Text for the upstream connection of ``epoch`` (the session emits none for an epoch
    before that connection is ready, and none for an older one after it)."""

    epoch: int
    text: str


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Close the current upstream connection (if any) and open the one of ``epoch``; what
    waited for the old one is dropped."""

    epoch: int


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client connection after what was sent: normally (``error`` None) or because of
    ``error`` (the codec gives the close code)."""

    error: ErrorCode | None


@dataclass(frozen=True, slots=True)
class HoldClient:
    """Read nothing more from the client until monotonic time ``until``: its audio ran too far
    ahead of real time (back-pressure: the client is slowed to real time, not cut)."""

    until: float


@dataclass(frozen=True, slots=True)
class UpstreamOwes:
    """vLLM owes an event since ``since``: a final commit, or more audio than its delay, went
    up after its last one. Its silence from then on counts toward the stall timeout."""

    epoch: int
    since: float


@dataclass(frozen=True, slots=True)
class UpstreamSettled:
    """vLLM owes nothing any more (it answered, or its connection was replaced)."""


@dataclass(frozen=True, slots=True)
class StartVad:
    """Open a voice-activity stream for this session (turn detection went on); its results
    come back through ``Session.on_vad``, a failure of the engine through
    ``Session.on_vad_failed``."""


@dataclass(frozen=True, slots=True)
class FeedVad:
    """16 kHz mono PCM16 for the session's voice-activity stream, in stream order. ``urgent``:
    speech is being confirmed and this audio reaches the window that would open a turn: score
    the stream's windows as soon as they are complete rather than at the engine's next round of
    every stream."""

    pcm: bytes
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class StopVad:
    """Close the session's voice-activity stream (turn detection went off)."""


@dataclass(frozen=True, slots=True)
class VadBehind:
    """The voice-activity engine fell far behind this session's real-time audio (the session
    turned its turn detection off, after a ``StopVad``): it is given up for every session, as
    a failed one is."""


# ---------------------------------------------------------------- lifecycle facts


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class UtteranceRolledOver:
    """The utterance went on in a new vLLM generation (a new segment)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    request_id: str
    outcome: Outcome
    # Set when the outcome is ERRORED: the code of the error event that ended it.
    error_code: ErrorCode | None
    # The client's audio, in milliseconds.
    audio_ms: int
    # The transcript delivered in ``transcription.done`` ("" for other outcomes).
    text: str
    opened_at: float
    first_audio_at: float | None
    first_delta_at: float | None
    final_at: float | None
    ended_at: float
    # The format the client sent its audio in, and whether server VAD opened the utterance.
    audio_format: AudioFormat = NATIVE
    server_vad: bool = False


Action = (
    SendClient
    | SendUpstream
    | OpenUpstream
    | CloseClient
    | HoldClient
    | UpstreamOwes
    | UpstreamSettled
    | StartVad
    | FeedVad
    | StopVad
    | VadBehind
    | UtteranceStarted
    | UtteranceRolledOver
    | UtteranceEnded
)
# The actions only telemetry and metrics read.
LifecycleFact = UtteranceStarted | UtteranceRolledOver | UtteranceEnded
