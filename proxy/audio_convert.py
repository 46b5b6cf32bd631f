"""One utterance's client audio, in any supported format, to what vLLM takes: PCM16LE, 16 kHz,
mono, in 80 ms chunks.

`AudioConverter(fmt)` is made when an utterance opens. `feed(data)` takes each piece of the
client's audio (a binary frame, or an append's decoded base64) and returns the complete 80 ms
chunks it makes; the remainder waits for the next piece. `flush()` at the final commit drains the
resampler and returns what is left, the last chunk possibly shorter. Native audio (PCM16 16 kHz
mono) is only re-cut, never decoded. Other audio is decoded to float samples (G.711 by table),
mixed down to mono, and resampled by one soxr stream for the whole utterance, so piece boundaries
leave no trace in the output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import soxr

from proxy.audio_format import CHUNK_MS, NATIVE, AudioFormat, Encoding
from proxy.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16

UPSTREAM_RATE = NATIVE.sample_rate
CHUNK_BYTES = NATIVE.chunk_bytes(CHUNK_MS)  # 2560
# soxr's "HQ" costs what its faster settings cost at these ratios, and unlike "LQ" it keeps the
# passband flat up to the telephone band's edge (ADVANCED.md: audio formats).
RESAMPLER_QUALITY = "HQ"

# Samples travel as float32 in int16 units: soxr's float path does not dither (its int16 path
# does, so equal inputs would not give equal outputs), and no scaling is needed either side.
Samples = npt.NDArray[np.float32]
_ULAW = ULAW_TO_PCM16.astype(np.float32)
_ALAW = ALAW_TO_PCM16.astype(np.float32)
_EMPTY: Samples = np.zeros(0, dtype=np.float32)


class InvalidAudio(ValueError):
    """An empty piece of audio, or one that ends inside a sample frame; `message` is the
    `invalid_audio` text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AudioConverter:
    """Converts one utterance's audio; make a new one for each utterance."""

    __slots__ = ("_decode", "_flushed", "_pending", "_resampler", "format", "input_bytes")

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.input_bytes = 0  # client audio fed so far (`fmt.duration_ms` turns it into time)
        self._pending = bytearray()  # converted audio short of a whole chunk
        self._flushed = False
        self._decode = None if fmt.is_native else _decoder(fmt)
        self._resampler = (
            None
            if fmt.sample_rate == UPSTREAM_RATE
            else soxr.ResampleStream(
                fmt.sample_rate, UPSTREAM_RATE, 1, dtype="float32", quality=RESAMPLER_QUALITY
            )
        )

    def feed(self, data: bytes) -> list[bytes]:
        """Convert one piece of client audio; returns the whole 80 ms chunks now ready (maybe
        none). Raises InvalidAudio for an empty piece or a partial sample frame (nothing is
        kept from it)."""
        if self._flushed:
            raise RuntimeError("feed() after flush(): make a new converter for each utterance")
        problem = self.format.audio_problem(len(data))
        if problem is not None:
            raise InvalidAudio(problem)
        self.input_bytes += len(data)
        if self._decode is None:
            return self._cut(data)
        samples = self._decode(data)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
            if not samples.size:  # soxr works in blocks: often nothing comes out of a piece
                return []
        return self._cut(_to_pcm16(samples))

    def flush(self) -> list[bytes]:
        """The end of the utterance's audio: the resampler's tail and every byte still held, as
        whole chunks and then one shorter chunk if needed. Empty when nothing is left."""
        if self._flushed:
            return []
        self._flushed = True
        pending = self._pending
        if self._resampler is not None:
            pending += _to_pcm16(self._resampler.resample_chunk(_EMPTY, last=True))
        chunks = _split(pending, len(pending))
        pending.clear()
        return chunks

    def _cut(self, pcm: bytes) -> list[bytes]:
        pending = self._pending
        if not pending and len(pcm) == CHUNK_BYTES:
            return [pcm]  # the common case of 80 ms pieces: no copy
        pending += pcm
        whole = len(pending) - len(pending) % CHUNK_BYTES
        if not whole:
            return []
        chunks = _split(pending, whole)
        del pending[:whole]
        return chunks


def _split(buffer: bytearray, end: int) -> list[bytes]:
    """`buffer[:end]` in chunks of CHUNK_BYTES (the last one shorter if `end` is not a multiple)."""
    return [bytes(buffer[i : i + CHUNK_BYTES]) for i in range(0, end, CHUNK_BYTES)]


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
