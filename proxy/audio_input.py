"""One utterance's client audio on its way to vLLM: each piece (a JSON append's base64 or a
binary frame's bytes) becomes the appends vLLM takes (base64 PCM16 16 kHz mono).

vLLM's own format costs nothing: a JSON append's base64 goes up as it came and a binary frame is
only base64-encoded, each as one append. Any other format goes through the utterance's
`AudioConverter` (whatever kind of frame carried it, so mixed frames stay in order) and up as
soon as it is converted, one append per piece; `flush()` at the final commit drains it. The first
piece is checked for a file header (`proxy.containers`): a file is refused, a WAV header of the
session's format stripped. The converter is made on the first audio and dropped at the flush:
an utterance that waits in the line without audio, or after its last, keeps none of its state.
"""

from __future__ import annotations

import binascii

from proxy.audio_convert import AudioConverter, InvalidAudio
from proxy.audio_format import AudioFormat
from proxy.containers import FirstAudioCheck
from proxy.vllm_wire import encode_audio

# Audio for vLLM: (base64, PCM bytes).
Upstream = list[tuple[str, int]]


class UtteranceAudio:
    __slots__ = ("_converter", "_files", "client_bytes", "format")

    def __init__(self, fmt: AudioFormat, *, client: bool = True) -> None:
        """`client=False`: the audio is the server's own (a turn's, from the checked stream)."""
        self.format = fmt
        self.client_bytes = 0  # client audio taken so far, in its format
        self._converter: AudioConverter | None = None
        self._files = FirstAudioCheck(fmt) if client else None

    @property
    def client_ms(self) -> int:
        return self.format.duration_ms(self.client_bytes)

    def take(self, audio: str | bytes, nbytes: int) -> Upstream:
        """One piece of client audio of `nbytes` bytes (base64 already validated, or raw).
        Raises InvalidAudio (and keeps nothing) for an empty piece or a partial sample frame;
        the one check of each piece is here (the converter's, or the native format's), after
        the first piece's check for a file header."""
        if self._files is not None and self.client_bytes == 0:
            samples = self._first_piece(self._files, audio)
            if samples is not None:
                if not samples:
                    return []  # a piece that was only a WAV header
                audio, nbytes = samples, len(samples)
        if self.format.is_native:
            problem = self.format.audio_problem(nbytes)
            if problem is not None:
                raise InvalidAudio(problem)
            self.client_bytes += nbytes
            return [(audio if isinstance(audio, str) else encode_audio(audio), nbytes)]
        converter = self._converter
        if converter is None:
            converter = self._converter = AudioConverter(self.format)
        pcm = converter.feed(audio if isinstance(audio, bytes) else binascii.a2b_base64(audio))
        self.client_bytes += nbytes
        return [(encode_audio(chunk), len(chunk)) for chunk in pcm]

    @staticmethod
    def _first_piece(files: FirstAudioCheck, audio: str | bytes) -> bytes | None:
        """The samples after a WAV header of the session's format, None when the piece has no
        header; InvalidAudio for a file."""
        raw = audio if isinstance(audio, bytes) else binascii.a2b_base64(audio)
        samples = files.check(raw)
        return None if samples is raw else samples

    def flush(self) -> Upstream:
        """What the converter still holds, at the end of the utterance's audio."""
        converter, self._converter = self._converter, None
        if converter is None:
            return []
        return [(encode_audio(chunk), len(chunk)) for chunk in converter.flush()]
