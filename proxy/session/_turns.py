"""Server-side turn detection, as lifecycle steps: the session's audio stream goes to the VAD,
and its scored windows open and finalize the turns, each an utterance named by the server.
Once a turn is open its audio goes upstream as it arrives, before the VAD has scored it; the
VAD, beside the stream, finds where the turn ends.

The stream's own state (its audio, its detector) is ``TurnStream``; the utterances are the
lifecycle's, changed only through its steps.
"""

from __future__ import annotations

import binascii

from proxy.audio_convert import InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat
from proxy.audio_input import UtteranceAudio
from proxy.session._lifecycle import Lifecycle
from proxy.session._turn_stream import TurnStream
from proxy.session._utterance import Utterance
from proxy.session.actions import FeedVad
from proxy.session.events import ErrorCode, SpeechStarted, SpeechStopped
from proxy.turns import SpeechStarted as TurnStarted
from proxy.turns import SpeechStopped as TurnStopped
from proxy.turns import TurnOptions
from proxy.vad import Window
from proxy.vllm_wire import PCM_BYTES_PER_MS


class TurnDetection:
    """One turn stream (its times start at its first audio) and the turns it opens."""

    def __init__(self, lifecycle: Lifecycle, options: TurnOptions, fmt: AudioFormat) -> None:
        self._lifecycle = lifecycle
        self.stream = TurnStream(options, fmt)

    @property
    def options(self) -> TurnOptions:
        return self.stream.options

    def stream_audio(self, audio: bytes | str) -> None:
        """Client audio for the stream (an append's base64, or a binary frame's bytes)."""
        lifecycle, stream = self._lifecycle, self.stream
        try:
            chunks = stream.take(audio if isinstance(audio, bytes) else binascii.a2b_base64(audio))
        except InvalidAudio as exc:
            lifecycle.refuse(ErrorCode.INVALID_AUDIO, None, message=exc.message)
            return
        utterance = lifecycle.open
        if utterance is not None:
            self._turn_audio(utterance, stream.audio(0, stream.turn_end))
        # The audio that may open a turn is scored at once, the rest at the engine's next round.
        opens_at = stream.detector.opens_at_ms
        urgent = opens_at is not None and stream.received >= opens_at * PCM_BYTES_PER_MS
        lifecycle.out.extend(FeedVad(chunk, urgent) for chunk in chunks)

    def scored(self, windows: list[Window]) -> None:
        """Scored windows of the stream, in order: the turns they start and stop."""
        stream = self.stream
        for end_ms, probability in windows:
            event = stream.detector.push(end_ms, probability)
            stream.scored_to(end_ms)
            if isinstance(event, TurnStarted):
                self._open_turn(event)
            elif isinstance(event, TurnStopped):
                self._close_turn(event)
        utterance = self._lifecycle.open
        if utterance is not None:
            self._turn_audio(utterance, stream.audio(0, stream.turn_end))
        else:
            stream.trim_idle()

    def end_open_turn(self) -> bool:
        """Finalizes the open turn now with all the audio received (push-to-talk, turning
        off); False when no turn is open."""
        utterance, stream = self._lifecycle.open, self.stream
        if utterance is None:
            return False
        self._turn_audio(utterance, stream.audio(0, stream.received))
        stream.detector.end_turn()
        self._lifecycle.finalize(utterance)
        return True

    def turn_cancelled(self) -> None:
        """The open turn was cancelled: the detector waits for the next one."""
        self.stream.detector.end_turn()

    def _open_turn(self, event: TurnStarted) -> None:
        lifecycle, stream = self._lifecycle, self.stream
        if lifecycle.winding_down is not None or lifecycle.open is not None:
            return
        request_id = stream.next_request_id()
        while lifecycle.find(request_id) is not None:
            request_id = stream.next_request_id()  # a client utterance from before has its name
        # The turn's audio comes from the stream, already at 16 kHz.
        utterance = lifecycle.open_utterance(
            request_id,
            UtteranceAudio(NATIVE, client=False),
            turn_format=stream.converter.format,
        )
        lifecycle.send(SpeechStarted(request_id, event.audio_start_ms))
        start = event.turn_start_ms * PCM_BYTES_PER_MS
        self._turn_audio(utterance, stream.audio(start, stream.turn_end))

    def _close_turn(self, event: TurnStopped) -> None:
        lifecycle, stream = self._lifecycle, self.stream
        utterance = lifecycle.open
        if utterance is None:
            return  # the client ended or cancelled it already
        self._turn_audio(utterance, stream.audio(0, stream.turn_end))
        lifecycle.send(SpeechStopped(utterance.request_id, event.audio_end_ms))
        lifecycle.finalize(utterance)

    def _turn_audio(self, utterance: Utterance, pcm: bytes) -> None:
        if pcm:
            self._lifecycle.take_audio(utterance, pcm, len(pcm))
