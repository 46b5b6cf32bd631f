"""One utterance's client audio on its way to vLLM: each piece (a JSON append's base64 or a
binary frame's bytes) becomes audio in vLLM's format (PCM16 16 kHz mono), as base64 text or raw
bytes (the upstream feed encodes what it sends).

vLLM's own format costs nothing: a JSON append's base64 and a binary frame's bytes go on as they
came. Any other format goes through the utterance's `AudioConverter` (whatever kind of frame
carried it, so mixed frames stay in order). `take` converts once the pieces waiting add up to
the audio the caller wants (what completes vLLM's next step; 0 converts each piece as it comes):
the upstream feed would only hold a smaller result, and one conversion of several pieces costs
far less than one of each (numpy's per-call overhead). `flush()` at the final commit drains it.

The first piece is checked for a file header (`proxy.containers`): a file is refused, a WAV
header of the session's format stripped. The converter is made on the first conversion and
dropped at the flush: an utterance that waits in the line without audio, or after its last,
keeps none of its state.
"""

from __future__ import annotations

import binascii

from proxy.audio_convert import AudioConverter, InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat
from proxy.containers import FirstAudioCheck

# Audio for vLLM: (base64 text or PCM, PCM bytes).
Upstream = list[tuple[str | bytes, int]]


class UtteranceAudio:
    __slots__ = ("_converter", "_files", "_waiting", "client_bytes", "format", "waiting_bytes")

    def __init__(self, fmt: AudioFormat, *, client: bool = True) -> None:
        """`client=False`: the audio is the server's own (a turn's, from the checked stream)."""
        self.format = fmt
        self.client_bytes = 0  # client audio taken so far, in its format
        self._converter: AudioConverter | None = None
        self._files = FirstAudioCheck(fmt) if client else None
        # Pieces taken and not converted yet, and their size.
        self._waiting: list[bytes] = []
        self.waiting_bytes = 0

    @property
    def client_ms(self) -> int:
        return self.format.duration_ms(self.client_bytes)

    def take(self, audio: str | bytes, nbytes: int, wanted: int = 0) -> Upstream:
        """One piece of client audio of `nbytes` bytes (base64 already validated, or raw), and
        what it and the pieces waiting convert to, once they last as long as `wanted` bytes of
        vLLM's audio. Raises InvalidAudio (and keeps nothing) for an empty piece or a partial
        sample frame; the one check of each piece is here, after the first piece's check for a
        file header."""
        if self._files is not None and self.client_bytes == 0:
            samples = self._first_piece(self._files, audio)
            if samples is not None:
                if not samples:
                    return []  # a piece that was only a WAV header
                audio, nbytes = samples, len(samples)
        problem = self.format.audio_problem(nbytes)
        if problem is not None:
            raise InvalidAudio(problem)
        self.client_bytes += nbytes
        if self.format.is_native:
            return [(audio, nbytes)]
        self._waiting.append(audio if isinstance(audio, bytes) else binascii.a2b_base64(audio))
        self.waiting_bytes += nbytes
        if self.waiting_bytes * NATIVE.bytes_per_second < wanted * self.format.bytes_per_second:
            return []
        return self._convert()

    def _convert(self) -> Upstream:
        waiting = self._waiting
        if not waiting:
            return []
        converter = self._converter
        if converter is None:
            converter = self._converter = AudioConverter(self.format)
        data = waiting[0] if len(waiting) == 1 else b"".join(waiting)
        waiting.clear()
        self.waiting_bytes = 0
        return [(chunk, len(chunk)) for chunk in converter.feed(data)]

    @staticmethod
    def _first_piece(files: FirstAudioCheck, audio: str | bytes) -> bytes | None:
        """The samples after a WAV header of the session's format, None when the piece has no
        header; InvalidAudio for a file."""
        raw = audio if isinstance(audio, bytes) else binascii.a2b_base64(audio)
        samples = files.check(raw)
        return None if samples is raw else samples

    def flush(self) -> Upstream:
        """What is still waiting and what the converter still holds, at the end of the
        utterance's audio."""
        upstream = self._convert()
        converter, self._converter = self._converter, None
        if converter is None:
            return upstream
        return upstream + [(chunk, len(chunk)) for chunk in converter.flush()]
