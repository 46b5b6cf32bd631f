"""Streaming resampling to 16 kHz with under 2 ms of delay: a polyphase FIR with carried state.

`make_resampler(rate)` gives the stream for one rate, of mono float32 samples. `feed(samples)`
returns every output sample whose input has arrived, so a 20 ms piece goes out whole apart from
the filter's half-length (1 ms from 22.05 to 48 kHz, 1.7 ms at 8 kHz: ADVANCED.md, audio
formats); `flush()` drains the rest at the end. Output n depends only on the input and its own
position, so feeding a signal in any pieces gives what feeding it at once gives, and the whole
stream lasts exactly as long as its input.

The filter is a Kaiser-windowed sinc designed once per rate (and cached): passband to 7 kHz
from higher rates, to 0.425 of the input rate from lower ones (3.4 kHz for 8 kHz telephony), and
everything that would fold or image into the passband attenuated by at least 65 dB. It runs as
`CycleResampler` where the rate's ratio to 16 kHz needs few phases (8, 12, 24, 32, 48 kHz: one
matrix product per piece), as `Resampler` where it needs up to `MAX_PHASES` (44.1 kHz and its
family: a gather of each output's window); soxr's stream takes the rest (8001 Hz ...), whose
block processing holds back tens of milliseconds.
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
# What folds or images into the passband is this far down: 90 dB keeps a 16-bit tone's SNR
# where soxr had it (ADVANCED.md), but at telephony rates (below TELEPHONY_TOP_HZ) its filter
# would hold back 2.4 ms, so there 65 dB (far below G.711's own noise; PCM16 still measures
# 92 dB).
ATTENUATION_DB = 90.0
TELEPHONY_ATTENUATION_DB = 65.0
TELEPHONY_TOP_HZ = 10_000
PASSBAND_TOP_HZ = 7_000.0
# Below 16 kHz the passband ends at this share of the input rate (3.4 kHz at 8 kHz).
PASSBAND_SHARE = 0.425
# Phases of the polyphase filter (16 kHz over the rates' greatest common divisor): 44.1 kHz
# needs 160, 11.025 kHz 640. Rates needing more (8001 Hz: 16000) would need a filter bank of
# megabytes, designed per rate; soxr takes those.
MAX_PHASES = 640
# Ratios with at most this many phases run as CycleResampler (one matrix product per piece).
CYCLE_PHASES = 4
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
    attenuation = ATTENUATION_DB if rate >= TELEPHONY_TOP_HZ else TELEPHONY_ATTENUATION_DB
    length = math.ceil((attenuation - 7.95) / (14.36 * (stopband - passband) / high)) + 1
    length += 1 - length % 2  # odd: the delay is a whole number of samples
    beta = 0.1102 * (attenuation - 8.7)
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


@lru_cache(maxsize=8)
def _cycle(rate: int) -> tuple[int, int, int, Samples]:
    """The filter as one matrix per cycle (M inputs in, L outputs out): (L, M, first input of
    cycle 0's window, matrix of window length x L)."""
    up, down, prototype = design_filter(rate)
    last = prototype.size - 1
    instants = np.arange(up) * down + last // 2  # each output of cycle 0, at up * rate
    first = int(((instants - last + up - 1) // up).min())
    span = int((instants // up).max()) - first + 1
    tap = instants[None, :] - (np.arange(span)[:, None] + first) * up
    matrix = np.where((tap >= 0) & (tap <= last), prototype[tap.clip(0, last)], 0.0)
    return up, down, first, np.ascontiguousarray(matrix, dtype=np.float32)


class CycleResampler:
    """One stream from `rate` to 16 kHz whose ratio needs at most CYCLE_PHASES phases (8, 12,
    24, 32, 48 kHz): each piece is one product of its overlapping windows, M samples apart,
    with the cycle's matrix. Outputs go in whole cycles, so up to L - 1 of them (0.2 ms) wait
    for the next piece."""

    __slots__ = ("_buffer", "_cycle", "_first", "_matrix", "_next", "_received", "_single")

    def __init__(self, rate: int) -> None:
        up, down, first, matrix = _cycle(rate)
        self._cycle = (up, down, first, matrix.shape[0])
        self._matrix = matrix
        self._single = np.ascontiguousarray(matrix[:, 0]) if up == 1 else None
        # Input from absolute index `_first` on; the stream starts with silence before 0.
        self._buffer: Samples = np.zeros(-first, dtype=np.float32)
        self._first = first
        self._next = 0  # the next cycle
        self._received = 0

    def feed(self, samples: Samples) -> Samples:
        self._received += samples.size
        self._buffer = np.concatenate((self._buffer, samples))
        return self._emit(None)

    def flush(self) -> Samples:
        up, down, _, span = self._cycle
        total = -(-self._received * up // down)
        self._buffer = np.concatenate((self._buffer, np.zeros(span + down, dtype=np.float32)))
        return self._emit(total)

    def _emit(self, limit: int | None) -> Samples:
        up, down, first, span = self._cycle
        buffer, start = self._buffer, self._next
        end = (self._first + buffer.size - first - span) // down + 1  # cycles with all input
        if limit is not None:
            end = min(end, -(-limit // up))
        if end <= start:
            return _EMPTY
        pieces = []
        # A block at a time: the product copies its overlapping windows (a 1 MB frame at
        # 48 kHz would take 70 MB at once).
        for block_start in range(start, end, _BLOCK):
            count = min(_BLOCK, end - block_start)
            windows: Samples = np.ndarray(
                (count, span),
                dtype=np.float32,
                buffer=buffer,
                offset=(block_start * down + first - self._first) * buffer.itemsize,
                strides=(down * buffer.itemsize, buffer.itemsize),
            )
            if self._single is not None:
                pieces.append(np.dot(windows, self._single))
            else:
                pieces.append(np.dot(windows, self._matrix).ravel())
        out: Samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        self._next = end
        keep = end * down + first
        self._buffer = buffer[keep - self._first :]
        self._first = keep
        if limit is not None:
            out = out[: limit - start * up]
        return out


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
    phases = phases_for(rate)
    if phases <= CYCLE_PHASES:
        return CycleResampler(rate)
    return Resampler(rate) if phases <= MAX_PHASES else _Soxr(rate)
