"""What a client asks of its session: the typed inputs a protocol codec parses frames into,
and the rules of the protocol that the session applies to them (``SessionRules``).

No wire format here: a codec maps each of its messages onto one of these. ``request_id`` is the
client's id of the utterance the message names, when its protocol names utterances; None
means "the open one".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.audio_format import AudioFormat
from proxy.session.events import ErrorCode
from proxy.turns import TurnOptions


@dataclass(frozen=True, slots=True)
class SessionRules:
    """How a protocol's session behaves where protocols differ; given by the route."""

    # Audio arriving while no utterance is open opens one (its id assigned by the session,
    # ``utterance_id_prefix`` and a count), so the client never opens utterances (OpenAI's
    # commit mode, Mistral). Off: the client opens each one (the envelope).
    open_on_audio: bool = False
    # Settings updates are refused once the first audio has arrived (Mistral).
    settings_frozen_at_audio: bool = False
    utterance_id_prefix: str = "utt-"


# The client names and opens every utterance (the envelope).
NAMED_UTTERANCES = SessionRules()


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """Change some settings (None: leave as it is); answered by ``SessionUpdated`` in full,
    or refused whole."""

    request_id: str | None
    model: str | None = None
    segment_pause_ms: int | None = None
    audio: AudioFormat | None = None
    # Whether turn detection was given, and its options (None turns it off).
    turn_detection_given: bool = False
    turn_detection: TurnOptions | None = None


@dataclass(frozen=True, slots=True)
class OpenUtterance:
    """Open utterance ``request_id``; an open one with another id is cancelled
    ("superseded"); the same id again changes nothing."""

    request_id: str


@dataclass(frozen=True, slots=True)
class AppendAudio:
    """Audio in the session's format: validated standard base64 text, or raw bytes.

    ``request_id`` None: for the open utterance (or the turn stream), opening one when the
    session's rules say so. Base64 without an id is refused when neither applies (a protocol
    that names utterances must name them); raw bytes go to the open one."""

    request_id: str | None
    audio: str | bytes
    # Bytes of client audio it holds (whole sample frames are checked by the session).
    nbytes: int

    @property
    def binary(self) -> bool:
        return isinstance(self.audio, bytes)


@dataclass(frozen=True, slots=True)
class FinishUtterance:
    """The utterance's audio is complete: its ``Done`` follows, and the session stays open.
    ``request_id`` None: the open one (OpenAI's commit, Mistral's flush). With nothing open,
    ``empty_done`` finishes an empty utterance (a ``Done`` with no text) rather than refusing.
    """

    request_id: str | None
    empty_done: bool = False


@dataclass(frozen=True, slots=True)
class CancelUtterance:
    """Drop utterance ``request_id`` (open, finalizing or queued): ``Cancelled`` follows, and
    none of its text."""

    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop the open utterance, if any (``Cancelled`` with reason "cleared"), then
    ``AudioCleared``; nothing open is not an error."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    request_id: str | None
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class End:
    """Finish the open utterance, deliver every one in flight, then ``SessionEnded`` and a
    normal close. With nothing open, ``empty_done`` finishes an empty utterance first, so the
    end is answered by a ``Done`` (Mistral's end)."""

    request_id: str | None = None
    empty_done: bool = False


@dataclass(frozen=True, slots=True)
class InvalidInput:
    """A frame the codec refused: the session answers with this error (subject to the rate
    limit when ``counts_toward_rate_limit``) and goes on."""

    code: ErrorCode
    message: str
    request_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    counts_toward_rate_limit: bool = True


ClientInput = (
    UpdateSettings
    | OpenUtterance
    | AppendAudio
    | FinishUtterance
    | CancelUtterance
    | ClearAudio
    | Ping
    | End
    | InvalidInput
)
