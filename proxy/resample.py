"""Streaming resampling to 16 kHz with under 2 ms of delay: a polyphase FIR with carried state.

`make_resampler(rate)` gives the stream for one rate, of mono float32 samples. `feed(samples)`
returns every output sample whose input has arrived, so a 20 ms piece goes out whole apart from
the filter's half-length (1 ms from 22.05 to 48 kHz, 1.7 ms at 8 kHz: ADVANCED.md, audio
formats); `flush()` drains the rest at the end. Output n depends only on the input and its own
position, so feeding a signal in any pieces gives what feeding it at once gives, and the whole
stream lasts exactly as long as its input.

The filter is a Kaiser-windowed sinc designed once per rate (and cached): passband to 7 kHz
from higher rates, to 0.425 of the input rate from lower ones (3.4 kHz for 8 kHz telephony), and
everything that would fold or image into the passband attenuated by at least 65 dB. It runs in
blocks of up to BLOCK_OUTPUTS consecutive outputs, each one matrix-vector product (its window of
input times the block's matrix, zero outside each output's taps): one product for a whole piece
where the rate's ratio to 16 kHz repeats within a block (8, 12, 24, 32, 48 kHz), a batch of them
where it needs more phases (44.1 kHz and its family: half the cost of gathering each output's
own window, the form this replaced). soxr's stream takes the rates needing more than
MAX_PHASES (8001 Hz ...), whose block processing holds back tens of milliseconds.
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
# Outputs per block: the largest divisor of the phase count up to this. Larger blocks mean
# fewer products but wider windows, whose extra taps are zeros (16 at 44.1 kHz: 173 taps read
# for 127 used).
BLOCK_OUTPUTS = 16
# Outputs per product: bounds the temporaries a large piece makes (a 1 MiB frame at 48 kHz in
# one product would copy 70 MB).
CHUNK_OUTPUTS = 1024
_EMPTY: Samples = np.zeros(0, dtype=np.float32)
_ITEM = _EMPTY.itemsize


class StreamResampler(Protocol):
    def feed(self, samples: Samples) -> Samples: ...

    def flush(self) -> Samples: ...


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


def phases_for(rate: int) -> int:
    """How many phases the polyphase filter needs for `rate` (see MAX_PHASES)."""
    return OUTPUT_RATE // math.gcd(rate, OUTPUT_RATE)


@dataclass(frozen=True, slots=True)
class _Blocks:
    """The filter cut into blocks of `size` consecutive outputs, of `kinds` kinds that repeat
    every period (L outputs from M inputs). Block j of a run starting at a period's first block
    reads `span` inputs from `starts[j]` (relative to that period's first input) through
    `matrices[j]` (span x size); both run on for `chunk` blocks (CHUNK_OUTPUTS) past any kind,
    so a run's matrices are a slice, not a copy."""

    up: int  # L
    down: int  # M
    centre: int  # the prototype's half-length, at L times the input rate
    size: int
    kinds: int
    span: int
    chunk: int
    starts: npt.NDArray[np.int64]
    matrices: Samples
    matrix: Samples  # matrices[0]: every block's, where there is one kind
    first_inputs: tuple[int, ...]  # `starts` of the first period, for one block at a time


@lru_cache(maxsize=8)
def _blocks(rate: int) -> _Blocks:
    up, down, prototype = design_filter(rate)
    last = prototype.size - 1
    size = max(d for d in range(1, min(up, BLOCK_OUTPUTS) + 1) if up % d == 0)
    kinds = up // size
    chunk = CHUNK_OUTPUTS // size
    periods = 1 if kinds == 1 else -(-chunk // kinds) + 1
    # Output n sits at instant n * M + centre (at L times the input rate), input i at i * L;
    # a block's window starts at its first output's first tap.
    instants = (np.arange(periods * up) * down + last // 2).reshape(periods * kinds, size)
    starts = -((last - instants[:, 0]) // up)
    span = int((instants[:, -1] // up - starts).max()) + 1
    tap = instants[:, None, :] - (starts[:, None, None] + np.arange(span)[None, :, None]) * up
    matrices = np.where((tap >= 0) & (tap <= last), prototype[tap.clip(0, last)], 0.0)
    matrices = np.ascontiguousarray(matrices, dtype=np.float32)
    return _Blocks(
        up=up,
        down=down,
        centre=last // 2,
        size=size,
        kinds=kinds,
        span=span,
        chunk=chunk,
        starts=starts.astype(np.int64),
        matrices=matrices,
        matrix=matrices[0],
        first_inputs=tuple(int(start) for start in starts[:kinds]),
    )


class Resampler:
    """One stream from `rate` to 16 kHz (make one per stream; see the module's doc).

    Each feed computes the blocks holding its new outputs, the last one with zeros for the
    input still to come (no output it keeps reads them), so nothing waits for a block to
    fill."""

    __slots__ = ("_blocks", "_buffer", "_first", "_next", "_padding", "_received")

    def __init__(self, rate: int) -> None:
        self._blocks = blocks = _blocks(rate)
        # Input from absolute index `_first` on; the stream starts with silence before 0.
        self._first = blocks.first_inputs[0]
        self._buffer: Samples = np.zeros(-self._first, dtype=np.float32)
        # Past the input: enough zeros for the last block's window, at the end too.
        self._padding = np.zeros(blocks.span + blocks.down, dtype=np.float32)
        self._next = 0  # the next output's index
        self._received = 0

    def feed(self, samples: Samples) -> Samples:
        self._received += samples.size
        b = self._blocks
        ready = (self._received * b.up - 1 - b.centre) // b.down + 1  # outputs with all input
        return self._emit(samples, ready)

    def flush(self) -> Samples:
        """The outputs still owed: the stream then lasts as long as its input."""
        b = self._blocks
        return self._emit(_EMPTY, -(-self._received * b.up // b.down))

    def _emit(self, samples: Samples, end: int) -> Samples:
        start, first = self._next, self._first
        if end <= start:
            self._buffer = np.concatenate((self._buffer, samples))
            return _EMPTY
        b, padding = self._blocks, self._padding
        buffer = np.concatenate((self._buffer, samples, padding))
        size, chunk = b.size, b.chunk
        first_block, end_block = start // size, (end - 1) // size + 1
        if end_block - first_block <= chunk:
            out = self._product(buffer, first_block, end_block - first_block)
        else:
            out = np.concatenate(
                [
                    self._product(buffer, block, min(chunk, end_block - block))
                    for block in range(first_block, end_block, chunk)
                ]
            )
        self._next = end
        period, kind = divmod(end // size, b.kinds)
        keep = period * b.down + b.first_inputs[kind]  # the next block's first input
        self._buffer = buffer[keep - first : buffer.size - padding.size]
        self._first = keep
        return out[start - first_block * size : end - first_block * size]

    def _product(self, buffer: Samples, block: int, count: int) -> Samples:
        """The outputs of `count` blocks from `block` on, in order."""
        b = self._blocks
        if b.kinds == 1:  # every block alike: windows M apart, one product
            windows: Samples = np.ndarray(
                (count, b.span),
                dtype=np.float32,
                buffer=buffer,
                offset=(block * b.down + b.first_inputs[0] - self._first) * _ITEM,
                strides=(b.down * _ITEM, _ITEM),
            )
            out: Samples = np.dot(windows, b.matrix).ravel()
            return out
        every: Samples = np.ndarray(
            (buffer.size - b.span + 1, b.span),
            dtype=np.float32,
            buffer=buffer,
            strides=(_ITEM, _ITEM),
        )
        period, kind = divmod(block, b.kinds)
        rows = every[b.starts[kind : kind + count] + (period * b.down - self._first)]
        product: Samples = np.matmul(rows[:, None, :], b.matrices[kind : kind + count]).ravel()
        return product


class SoxrStream:
    """soxr's HQ stream behind the same two calls, for rates the FIR does not take (and the
    benchmarks' reference: what the proxy used before the FIR)."""

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
    return Resampler(rate) if phases_for(rate) <= MAX_PHASES else SoxrStream(rate)
