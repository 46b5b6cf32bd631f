"""One utterance's client audio, in any supported format, to what vLLM takes: PCM16LE, 16 kHz,
mono.

`AudioConverter(fmt)` is made for an utterance's first audio. `feed(data)` takes client audio
(one or more whole pieces: binary frames, or appends' decoded base64) and returns what it
converts to at once, as one chunk; when to feed it is `proxy.audio_input`'s choice. `flush()` at
the final commit drains the resampler. Native audio (PCM16 16 kHz mono) passes as it is. Other
audio is decoded to float samples (G.711 by table), mixed down to mono, and resampled by one
stream for the whole utterance (`proxy.resample`), so piece boundaries leave no trace in the
output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16
from proxy.resample import Samples, make_resampler

UPSTREAM_RATE = NATIVE.sample_rate

# Samples travel as float32 in int16 units: no dither (equal inputs give equal outputs) and no
# scaling either side.
_ULAW = ULAW_TO_PCM16.astype(np.float32)
_ALAW = ALAW_TO_PCM16.astype(np.float32)


class InvalidAudio(ValueError):
    """An empty piece of audio, or one that ends inside a sample frame; `message` is the
    `invalid_audio` text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AudioConverter:
    """Converts one utterance's audio; make a new one for each utterance."""

    __slots__ = ("_decode", "_flushed", "_resampler", "format", "input_bytes")

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.input_bytes = 0  # client audio fed so far (`fmt.duration_ms` turns it into time)
        self._flushed = False
        self._decode = None if fmt.is_native else _decoder(fmt)
        self._resampler = (
            None if fmt.sample_rate == UPSTREAM_RATE else make_resampler(fmt.sample_rate)
        )

    def feed(self, data: bytes) -> list[bytes]:
        """Convert one piece of client audio; returns what it makes now, as one chunk (none
        when the resampler kept it all). Raises InvalidAudio for an empty piece or a partial
        sample frame (nothing is kept from it)."""
        if self._flushed:
            raise RuntimeError("feed() after flush(): make a new converter for each utterance")
        problem = self.format.audio_problem(len(data))
        if problem is not None:
            raise InvalidAudio(problem)
        self.input_bytes += len(data)
        if self._decode is None:
            return [data]
        samples = self._decode(data)
        if self._resampler is not None:
            samples = self._resampler.feed(samples)
            if not samples.size:  # a piece shorter than the filter's delay
                return []
        return [_to_pcm16(samples)]

    def flush(self) -> list[bytes]:
        """The end of the utterance's audio: the resampler's tail, as one chunk; empty when
        nothing is left."""
        if self._flushed:
            return []
        self._flushed = True
        if self._resampler is None:
            return []
        tail = self._resampler.flush()
        return [_to_pcm16(tail)] if tail.size else []


def _to_pcm16(samples: Samples) -> bytes:
    """Float samples in int16 units to PCM16LE, rounded, clipping the resampler's overshoot."""
    samples.clip(-32768.0, 32767.0, out=samples)
    np.rint(samples, out=samples)
    return samples.astype("<i2").tobytes()


def _decoder(fmt: AudioFormat) -> Callable[[bytes], Samples]:
    """The function that turns one piece of `fmt` audio into mono float samples."""
    if fmt.encoding is Encoding.PCM16:

        def decode(data: bytes) -> Samples:
            return np.frombuffer(data, dtype="<i2").astype(np.float32)

    else:
        table = _ULAW if fmt.encoding is Encoding.G711_ULAW else _ALAW

        def decode(data: bytes) -> Samples:
            return table.take(np.frombuffer(data, dtype=np.uint8))

    if fmt.channels == 1:
        return decode

    def mix_down(data: bytes) -> Samples:
        interleaved = decode(data)
        mono = interleaved[0::2] + interleaved[1::2]
        mono *= 0.5
        return mono

    return mix_down
