"""Whether a settings update may be applied: checked whole before anything changes (a refused
update changes nothing). A decision, not a step: the session applies it."""

from __future__ import annotations

from proxy.audio_format import AudioFormat
from proxy.session.events import ErrorCase, ErrorCode, SessionError
from proxy.session.inputs import UpdateSettings


def refusal(
    update: UpdateSettings,
    *,
    served_model: str,
    audio_format: AudioFormat,
    frozen: bool,
    in_flight: bool,
    utterance_open: bool,
    turns_on: bool,
) -> SessionError | None:
    """Why ``update`` is refused, or None. ``frozen``: the settings may not change any more;
    ``in_flight``: some utterance has not ended; ``utterance_open``: one takes audio;
    ``turns_on``: turn detection is on now."""
    request_id = update.request_id
    if frozen:
        return SessionError(ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.SETTINGS_FROZEN)
    if update.model is not None and update.model != served_model:
        return SessionError(
            ErrorCode.UNSUPPORTED_MODEL,
            request_id,
            ErrorCase.MODEL_NOT_SERVED,
            details={"model": served_model},
        )
    if update.audio is not None and update.audio != audio_format and in_flight:
        return SessionError(
            ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.FORMAT_CHANGE_IN_UTTERANCE
        )
    turning_on = update.turn_detection_given and update.turn_detection is not None
    if turning_on and not turns_on and utterance_open:
        return SessionError(
            ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.TURNS_NEED_NO_OPEN_UTTERANCE
        )
    return None
