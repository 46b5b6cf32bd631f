"""Streaming resampling to 16 kHz with under 2 ms of delay: a polyphase FIR with carried state.

`Resampler(rate)` converts one stream of mono float32 samples. `feed(samples)` returns every
output sample whose input has arrived, so a 20 ms piece goes out whole apart from the filter's
half-length (1 ms from 22.05 to 48 kHz, 1.7 ms at 8 kHz: ADVANCED.md, audio formats); `flush()`
drains the rest at the end. Output n depends only on the input and its own position, so feeding
a signal in any pieces gives what feeding it at once gives, and the whole stream lasts exactly
as long as its input.

The filter is a Kaiser-windowed sinc designed once per rate (and cached): passband to 7 kHz
from higher rates, to 0.425 of the input rate from lower ones (3.4 kHz for 8 kHz telephony), and
everything that would fold or image into the passband attenuated by at least 65 dB. It runs only
where the rate's ratio to 16 kHz needs few phases (`MAX_PHASES`; every common rate from 8 to
48 kHz does); `make_resampler` gives soxr's stream for the rest, whose block processing holds
back tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from proxy.audio_format import NATIVE

Samples = npt.NDArray[np.float32]

OUTPUT_RATE = NATIVE.sample_rate
ATTENUATION_DB = 65.0
PASSBAND_TOP_HZ = 7_000.0
# Below 16 kHz the passband ends at this share of the input rate (3.4 kHz at 8 kHz).
PASSBAND_SHARE = 0.425
# Phases of the polyphase filter (16 kHz over the rates' greatest common divisor): 44.1 kHz
# needs 160, 11.025 kHz 640. Rates needing more (8001 Hz: 16000) would need a filter bank of
# megabytes, designed per rate; soxr takes those.
MAX_PHASES = 640
# Outputs computed in one step (the coefficient table holds this many rows, rounded up to whole
# periods of the phase pattern).
_BLOCK = 512
_EMPTY: Samples = np.zeros(0, dtype=np.float32)


class StreamResampler(Protocol):
    def feed(self, samples: Samples) -> Samples: ...

    def flush(self) -> Samples: ...


@dataclass(frozen=True, slots=True)
class _Design:
    up: int  # L: output rate over the common divisor
    down: int  # M: input rate over it
    taps: int  # K: taps per phase
    delay: int  # the filter's half-length, in samples at up * input rate
    # Row i: the reversed phase filter of the i-th output of a period-aligned block, and the
    # input index its last tap reads (relative to the block).
    coefficients: Samples
    last_input: npt.NDArray[np.int64]

    @property
    def block(self) -> int:
        return int(self.coefficients.shape[0]) - self.up


def design_filter(rate: int) -> tuple[int, int, npt.NDArray[np.float64]]:
    """The filter for `rate` to 16 kHz: (L, M, prototype), where the input is upsampled by L
    (zeros between samples), filtered by the prototype (odd length, gain L) and every M-th
    sample kept, counted from the prototype's centre."""
    common = math.gcd(rate, OUTPUT_RATE)
    up, down = OUTPUT_RATE // common, rate // common
    low = min(rate, OUTPUT_RATE)
    passband = PASSBAND_TOP_HZ if rate > OUTPUT_RATE else PASSBAND_SHARE * rate
    # Whatever lies above `low - passband` folds (or images) to above the passband.
    stopband = low - passband
    high = rate * up
    length = math.ceil((ATTENUATION_DB - 7.95) / (14.36 * (stopband - passband) / high)) + 1
    length += 1 - length % 2  # odd: the delay is a whole number of samples
    beta = 0.1102 * (ATTENUATION_DB - 8.7)
    cutoff = (passband + stopband) / 2 / high
    n = np.arange(length) - (length - 1) / 2
    return up, down, 2 * cutoff * up * np.sinc(2 * cutoff * n) * np.kaiser(length, beta)


@lru_cache(maxsize=8)
def _design(rate: int) -> _Design:
    up, down, prototype = design_filter(rate)
    length = prototype.size
    taps = -(-length // up)
    prototype = np.concatenate([prototype, np.zeros(taps * up - length)])
    phases = prototype.reshape(taps, up).T[:, ::-1]
    delay = (length - 1) // 2
    rows = up * -(-_BLOCK // up) + up
    position = np.arange(rows, dtype=np.int64) * down + delay
    return _Design(
        up=up,
        down=down,
        taps=taps,
        delay=delay,
        coefficients=np.ascontiguousarray(phases[position % up], dtype=np.float32),
        last_input=position // up,
    )


def phases_for(rate: int) -> int:
    """How many phases the polyphase filter needs for `rate` (see MAX_PHASES)."""
    return OUTPUT_RATE // math.gcd(rate, OUTPUT_RATE)


class Resampler:
    """One stream from `rate` to 16 kHz (make one per stream; see the module's doc)."""

    __slots__ = ("_buffer", "_design", "_first", "_next", "_received")

    def __init__(self, rate: int) -> None:
        self._design = design = _design(rate)
        # Input from absolute index `_first` on; the stream starts with silence before 0.
        self._buffer: Samples = np.zeros(design.taps - 1, dtype=np.float32)
        self._first = 1 - design.taps
        self._next = 0  # the next output's index
        self._received = 0

    def feed(self, samples: Samples) -> Samples:
        self._received += samples.size
        self._buffer = np.concatenate((self._buffer, samples))
        return self._emit(None)

    def flush(self) -> Samples:
        """The outputs still owed: the stream then lasts as long as its input."""
        design = self._design
        total = -(-self._received * design.up // design.down)
        padding = design.taps + design.delay // design.up + 1
        self._buffer = np.concatenate((self._buffer, np.zeros(padding, dtype=np.float32)))
        return self._emit(total)

    def _emit(self, limit: int | None) -> Samples:
        d = self._design
        buffer, first, start = self._buffer, self._first, self._next
        held = first + buffer.size  # inputs before this index are here
        end = (held * d.up - 1 - d.delay) // d.down + 1
        if limit is not None:
            end = min(end, limit)
        if end <= start:
            return _EMPTY
        windows: Samples = np.ndarray(
            (buffer.size - d.taps + 1, d.taps),
            dtype=np.float32,
            buffer=buffer,
            strides=(buffer.itemsize, buffer.itemsize),
        )
        pieces = []
        for block_start in range(start, end, d.block):
            count = min(d.block, end - block_start)
            phase = block_start % d.up
            shift = (block_start - phase) // d.up * d.down - d.taps + 1 - first
            rows = windows[d.last_input[phase : phase + count] + shift]
            pieces.append(np.einsum("ij,ij->i", rows, d.coefficients[phase : phase + count]))
        self._next = end
        keep = (end * d.down + d.delay) // d.up - d.taps + 1  # the next output's first input
        self._buffer = buffer[keep - first :]
        self._first = keep
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


class _Soxr:
    """soxr's stream behind the same two calls, for rates the FIR does not take."""

    __slots__ = ("_stream",)

    def __init__(self, rate: int) -> None:
        self._stream = soxr.ResampleStream(rate, OUTPUT_RATE, 1, dtype="float32", quality="HQ")

    def feed(self, samples: Samples) -> Samples:
        out: Samples = self._stream.resample_chunk(samples)
        return out

    def flush(self) -> Samples:
        out: Samples = self._stream.resample_chunk(_EMPTY, last=True)
        return out


def make_resampler(rate: int) -> StreamResampler:
    """The resampler for a stream at `rate` (not 16 kHz): the FIR where its phases are few."""
    if rate == OUTPUT_RATE:
        raise ValueError("16 kHz needs no resampling")
    return Resampler(rate) if phases_for(rate) <= MAX_PHASES else _Soxr(rate)
