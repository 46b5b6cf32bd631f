"""The session's side of server-side turn detection: the turn stream's audio, the VAD's scored
windows, and the turns they open and close.

Part of the session, as functions of it: the session calls these and they change it through the
same steps as the client's own utterances (``Session._finalize``, ``_start_next``...), so the
session stays the one place that decides the lifecycle. The stream's own state (its audio, its
detector) is ``proxy.turn_stream.TurnStream``.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

from proxy import session_end
from proxy.actions import FeedVad, StartVad, StopVad, UtteranceStarted
from proxy.audio_convert import InvalidAudio
from proxy.audio_format import NATIVE
from proxy.audio_input import UtteranceAudio
from proxy.envelope import CloseCode, ErrorCode
from proxy.turn_stream import MAX_UNSCORED_MS, TurnStream
from proxy.turns import SpeechStarted, SpeechStopped, TurnOptions
from proxy.utterance import Utterance
from proxy.vad import Window
from proxy.vllm_wire import PCM_BYTES_PER_MS

if TYPE_CHECKING:
    from proxy.session import Session


def set_turn_detection(session: Session, options: TurnOptions | None) -> None:
    """Turns detection on, off, or on with new options (a new stream: its times restart)."""
    if session.turns is not None:
        end_open_turn(session)
        session.turns = None
        session._out.append(StopVad())
    if options is not None:
        session.turns = TurnStream(options, session.audio_format)
        session._out.append(StartVad())


def stream_audio(session: Session, audio: bytes | str) -> None:
    """Client audio for the turn stream (an append's base64, or a binary frame's bytes)."""
    turns = session.turns
    assert turns is not None
    try:
        chunks = turns.take(audio if isinstance(audio, bytes) else binascii.a2b_base64(audio))
    except InvalidAudio as exc:
        session._error(ErrorCode.INVALID_AUDIO, None, exc.message)
        return
    session._out.extend(FeedVad(chunk) for chunk in chunks)
    if turns.unscored_ms > MAX_UNSCORED_MS:
        session_end.terminate(session, ErrorCode.INBOUND_QUEUE_FULL, CloseCode.INBOUND_QUEUE_FULL)


def scored(session: Session, turns: TurnStream, windows: list[Window]) -> None:
    """Scored windows of the turn stream, in order: the turns they start and stop."""
    for end_ms, probability in windows:
        event = turns.detector.push(end_ms, probability)
        turns.scored_to(end_ms)
        if isinstance(event, SpeechStarted):
            _open_turn(session, turns, event)
        elif isinstance(event, SpeechStopped):
            _close_turn(session, turns, event)
    if session.open is not None:
        _turn_audio(session, session.open, turns.audio(0, turns.scored))
    else:
        turns.trim_idle()


def end_open_turn(session: Session) -> bool:
    """Ends the open turn now with all the audio received (push-to-talk, turning off)."""
    turns, utterance = session.turns, session.open
    if turns is None or utterance is None:
        return False
    _turn_audio(session, utterance, turns.audio(0, turns.received))
    turns.detector.end_turn()
    utterance.final_at = session._now
    session._finalize(utterance)
    session_end.check_wound_down(session)
    return True


def _open_turn(session: Session, turns: TurnStream, event: SpeechStarted) -> None:
    if session.winding_down is not None or session.open is not None:
        return
    now = session._now
    request_id = turns.next_request_id()
    while any(u.request_id == request_id for u in session.in_flight):
        request_id = turns.next_request_id()  # a client utterance from before has its name
    # The turn's audio comes from the stream, already at 16 kHz.
    utterance = Utterance(
        request_id,
        opened_at=now,
        audio=UtteranceAudio(NATIVE, client=False),
        turn_format=turns.converter.format,
    )
    session._out.append(UtteranceStarted(request_id, now))
    session.line.append(utterance)
    session.open = utterance
    session._send(
        "input_audio_buffer.speech_started",
        request_id,
        {"audio_start_ms": event.audio_start_ms},
    )
    session._start_next()
    start = event.turn_start_ms * PCM_BYTES_PER_MS
    _turn_audio(session, utterance, turns.audio(start, turns.scored))


def _close_turn(session: Session, turns: TurnStream, event: SpeechStopped) -> None:
    utterance = session.open
    if utterance is None:
        return  # the client ended or cancelled it already
    _turn_audio(session, utterance, turns.audio(0, turns.scored))
    session._send(
        "input_audio_buffer.speech_stopped",
        utterance.request_id,
        {"audio_end_ms": event.audio_end_ms},
    )
    utterance.final_at = session._now
    session._finalize(utterance)


def _turn_audio(session: Session, utterance: Utterance, pcm: bytes) -> None:
    if pcm:
        if utterance.first_audio_at is None:
            utterance.first_audio_at = session._now
        for audio, pcm_bytes in utterance.audio.take(pcm, len(pcm)):
            session._deliver(utterance, audio, pcm_bytes)
