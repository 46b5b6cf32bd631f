"""CPU cost of the proxy's audio conversion (proxy/audio_convert.py), per second of client audio.

Run: `.venv/bin/python -m devtools.bench_audio_convert [--seconds 60] [--repeats 5]`. Each path
converts `--seconds` of a speech-like signal cut into pieces of the given size, as one utterance
(converter made, fed, flushed); the best of `--repeats` runs is reported, since other load only
ever adds time. `--resamplers` measures the resampler alone instead, at each common rate in
20 ms pieces of noise, beside soxr's HQ stream in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from clients.audio import encode_pcm16
from proxy.audio_convert import AudioConverter
from proxy.audio_format import AudioFormat, Encoding
from proxy.resample import SoxrStream, StreamResampler, make_resampler

RESAMPLER_RATES = (8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 48_000)

PATHS = (
    ("pcm16 16 kHz mono (passthrough), 80 ms", AudioFormat(Encoding.PCM16, 16_000, 1), 80),
    ("pcm16 16 kHz mono (passthrough), 20 ms", AudioFormat(Encoding.PCM16, 16_000, 1), 20),
    ("g711_ulaw 8 kHz mono, 20 ms", AudioFormat(Encoding.G711_ULAW, 8_000, 1), 20),
    ("g711_alaw 8 kHz mono, 20 ms", AudioFormat(Encoding.G711_ALAW, 8_000, 1), 20),
    ("pcm16 8 kHz mono, 20 ms", AudioFormat(Encoding.PCM16, 8_000, 1), 20),
    ("pcm16 24 kHz mono, 20 ms", AudioFormat(Encoding.PCM16, 24_000, 1), 20),
    ("pcm16 24 kHz mono, 40 ms", AudioFormat(Encoding.PCM16, 24_000, 1), 40),
    ("pcm16 16 kHz stereo, 80 ms", AudioFormat(Encoding.PCM16, 16_000, 2), 80),
    ("pcm16 44.1 kHz stereo, 20 ms", AudioFormat(Encoding.PCM16, 44_100, 2), 20),
    ("pcm16 48 kHz stereo, 20 ms", AudioFormat(Encoding.PCM16, 48_000, 2), 20),
    ("pcm16 48 kHz stereo, 80 ms", AudioFormat(Encoding.PCM16, 48_000, 2), 80),
)


def client_audio(fmt: AudioFormat, seconds: float) -> bytes:
    """A few tones under a syllable-rate envelope plus noise: busy enough to exercise every
    stage, in the client's format."""
    rng = np.random.default_rng(7)
    t = np.arange(int(fmt.sample_rate * seconds)) / fmt.sample_rate
    voice = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 660.0, 1800.0)) / 3
    signal = voice * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(t.size)
    pcm = np.round(signal * 12_000).astype("<i2")
    if fmt.channels == 2:
        pcm = np.repeat(pcm, 2)
    return encode_pcm16(pcm.tobytes(), fmt.encoding)


class _Stream(Protocol):
    def feed(self, piece: Any, /) -> object: ...

    def flush(self) -> object: ...


def best_ms_per_audio_s(
    make: Callable[[], _Stream], pieces: Sequence[Any], seconds: float, repeats: int
) -> float:
    """A fresh stream fed `pieces` (`seconds` of audio) and flushed, best of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        stream = make()
        for piece in pieces:
            stream.feed(piece)
        stream.flush()
        best = min(best, time.process_time() - started)
    return best / seconds * 1000.0


def cpu_ms_per_audio_s(fmt: AudioFormat, piece_ms: int, seconds: float, repeats: int) -> float:
    data = client_audio(fmt, seconds)
    step = fmt.chunk_bytes(piece_ms)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    return best_ms_per_audio_s(lambda: AudioConverter(fmt), pieces, seconds, repeats)


def resampler_ms_per_audio_s(
    make: Callable[[int], StreamResampler], rate: int, seconds: float, repeats: int
) -> float:
    """One resampler stream alone, fed `seconds` of noise in 20 ms pieces and flushed."""
    x = np.random.default_rng(2).standard_normal(int(rate * seconds)).astype(np.float32) * 3000
    step = rate // 50
    pieces = [x[i : i + step] for i in range(0, x.size, step)]
    return best_ms_per_audio_s(lambda: make(rate), pieces, seconds, repeats)


def utterance_setup_us(fmt: AudioFormat, repeats: int = 2000) -> float:
    """Making and flushing a converter with no audio: the fixed cost per utterance."""
    started = time.process_time()
    for _ in range(repeats):
        AudioConverter(fmt).flush()
    return (time.process_time() - started) / repeats * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resamplers", action="store_true", help="the resampler alone, by rate")
    args = parser.parse_args()
    if args.resamplers:
        print(f"{'rate':>6} {'FIR ms per audio s':>18} {'soxr HQ':>8}")
        for rate in RESAMPLER_RATES:
            fir = resampler_ms_per_audio_s(make_resampler, rate, args.seconds, args.repeats)
            hq = resampler_ms_per_audio_s(SoxrStream, rate, args.seconds, args.repeats)
            print(f"{rate:>6} {fir:>18.3f} {hq:>8.3f}")
        return 0
    print(f"{'path':<42} {'CPU ms per audio s':>18} {'setup us':>9}")
    for label, fmt, piece_ms in PATHS:
        cost = cpu_ms_per_audio_s(fmt, piece_ms, args.seconds, args.repeats)
        print(f"{label:<42} {cost:>18.3f} {utterance_setup_us(fmt):>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
