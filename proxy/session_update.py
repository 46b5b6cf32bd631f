"""The session's handling of ``session.update``: the model check, ``segment_pause_ms``, the
audio format and turn detection, checked whole before anything changes (a refused update
changes nothing), then answered with ``session.updated``.

Part of the session, as a function of it (see ``proxy.session_turns`` for turning detection on
and off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy import session_turns
from proxy.envelope import (
    FORMAT_CHANGE_IN_UTTERANCE,
    TURNS_NEED_NO_OPEN_UTTERANCE,
    ErrorCode,
    SessionUpdate,
    unsupported_model,
)

if TYPE_CHECKING:
    from proxy.session import Session


def update(session: Session, message: SessionUpdate) -> None:
    request_id = message.request_id
    served_model = session.served_model
    if message.model is not None and message.model != served_model:
        session._error(
            ErrorCode.UNSUPPORTED_MODEL,
            request_id,
            unsupported_model(served_model),
            {"model": served_model},
        )
        return
    audio_format = message.audio
    format_changed = audio_format is not None and audio_format != session.audio_format
    if format_changed and session.in_flight:
        session._error(ErrorCode.INVALID_MESSAGE, request_id, FORMAT_CHANGE_IN_UTTERANCE)
        return
    turns_on = message.turn_detection_given and message.turn_detection is not None
    if turns_on and session.turns is None and session.open is not None:
        session._error(ErrorCode.INVALID_MESSAGE, request_id, TURNS_NEED_NO_OPEN_UTTERANCE)
        return
    if audio_format is not None:
        session.audio_format = audio_format
    if message.segment_pause_ms is not None:
        session.segment_pause_ms = message.segment_pause_ms
    if message.turn_detection_given:
        session_turns.set_turn_detection(session, message.turn_detection)
    elif format_changed and session.turns is not None:
        # A new stream in the new format.
        session_turns.set_turn_detection(session, session.turns.options)
    turns = session.turns.options.as_payload() if session.turns is not None else None
    session._send(
        "session.updated",
        request_id,
        {
            "model": served_model,
            "segment_pause_ms": session.segment_pause_ms,
            "audio": session.audio_format.as_payload(),
            "turn_detection": turns,
        },
    )
