"""The session as an envelope client sees it, for session tests: client messages as tests write
them, each turned into the frame a client sends, and the session's actions with each client
event rendered by the envelope codec at once, as the relay does (events the envelope has no
frame for disappear, like on the wire)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from proxy.audio_format import AudioFormat
from proxy.protocols.envelope import EnvelopeCodec
from proxy.session.actions import Action, SendClient
from proxy.turns import TurnOptions


def _frame(kind: str, session_id: str | None, request_id: str | None, payload: Any) -> str:
    message = {"type": kind, "session_id": session_id, "request_id": request_id}
    return json.dumps({**message, "payload": payload})


@dataclass(frozen=True)
class SessionUpdate:
    session_id: str
    request_id: str | None
    model: str | None
    segment_pause_ms: int | None = None
    audio: AudioFormat | None = None
    turn_detection_given: bool = False
    turn_detection: TurnOptions | None = None

    def frame(self) -> str:
        payload: dict[str, Any] = {}
        if self.model is not None:
            payload["model"] = self.model
        if self.segment_pause_ms is not None:
            payload["segment_pause_ms"] = self.segment_pause_ms
        if self.audio is not None:
            payload["audio"] = self.audio.as_payload()
        if self.turn_detection_given:
            options = self.turn_detection
            payload["turn_detection"] = options.as_payload() if options is not None else None
        return _frame("session.update", self.session_id, self.request_id, payload)


@dataclass(frozen=True)
class Commit:
    session_id: str
    request_id: str
    final: bool

    def frame(self) -> str:
        return _frame(
            "input_audio_buffer.commit", self.session_id, self.request_id, {"final": self.final}
        )


@dataclass(frozen=True)
class Append:
    """A JSON append (``audio`` base64 text) or, with bytes and no ids, a binary frame."""

    session_id: str | None
    request_id: str | None
    audio: str | bytes
    nbytes: int

    def frame(self) -> str | bytes:
        if isinstance(self.audio, bytes):
            assert self.session_id is None
            assert self.request_id is None
            return self.audio
        payload = {"audio": self.audio}
        return _frame("input_audio_buffer.append", self.session_id, self.request_id, payload)


@dataclass(frozen=True)
class Cancel:
    session_id: str
    request_id: str
    reason: str

    def frame(self) -> str:
        return _frame("cancel", self.session_id, self.request_id, {"reason": self.reason})


@dataclass(frozen=True)
class Ping:
    session_id: str
    request_id: str | None
    payload: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> str:
        return _frame("ping", self.session_id, self.request_id, self.payload)


@dataclass(frozen=True)
class End:
    session_id: str
    request_id: str | None = None

    def frame(self) -> str:
        return _frame("end", self.session_id, self.request_id, {})


ClientMessage = SessionUpdate | Commit | Append | Cancel | Ping | End


def binary_append(data: bytes) -> Append:
    """A binary frame: raw audio for the open utterance."""
    return Append(None, None, data, len(data))


@dataclass(frozen=True)
class ClientFrame:
    """A ``SendClient`` as the client receives it: one envelope event."""

    event: dict[str, Any]


def as_client_sees(actions: list[Action], codec: EnvelopeCodec) -> list[Any]:
    """``actions`` with each client event replaced by its envelope frames (parsed back)."""
    seen: list[Any] = []
    for action in actions:
        if isinstance(action, SendClient):
            seen.extend(ClientFrame(json.loads(text)) for text in codec.render(action.event))
        else:
            seen.append(action)
    return seen
