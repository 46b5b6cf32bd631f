"""Test recordings for turn detection, built from the spoken clips in samples/: clips with
silence between them (a -60 dBFS noise floor throughout), and noise alone."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE_RATE = 16_000
PCM_BYTES_PER_MS = 32


def clip(name: str) -> npt.NDArray[np.int16]:
    with wave.open(str(SAMPLES / f"{name}.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def noise(seconds: float, dbfs: float, seed: int, *, pink: bool = False) -> npt.NDArray[np.float64]:
    """Gaussian noise at an RMS of ``dbfs``; pink (power falling as 1/f) when asked."""
    count = round(seconds * SAMPLE_RATE)
    white = np.random.default_rng(seed).standard_normal(count)
    if pink:
        spectrum = np.fft.rfft(white)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        white = np.fft.irfft(spectrum, count)
    return white / np.sqrt(np.mean(white**2)) * 10 ** (dbfs / 20) * 32768


def to_pcm16(audio: npt.NDArray[np.float64] | npt.NDArray[np.int16]) -> bytes:
    return np.clip(np.round(audio), -32768, 32767).astype("<i2").tobytes()


def speech_extent_ms(audio: npt.NDArray[np.int16]) -> tuple[int, int]:
    """Where a clip's sound starts and ends, measured without the model: the first and last
    10 ms frame within 35 dB of the clip's loudest frame."""
    frame = SAMPLE_RATE // 100
    frames = audio[: len(audio) // frame * frame].astype(np.float64).reshape(-1, frame)
    level = 10 * np.log10(np.mean((frames / 32768) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() - 35)
    return int(loud[0]) * 10, (int(loud[-1]) + 1) * 10


@dataclass(frozen=True)
class Recording:
    pcm: bytes
    # Where each clip's sound starts and ends, in ms from the recording's start.
    truth: list[tuple[int, int]]


def spoken_recording(
    names: tuple[str, ...] = ("short", "long"),
    *,
    lead_s: float = 1.0,
    gap_s: float = 1.5,
    trailer_s: float = 1.5,
    max_clip_s: float | None = None,
) -> Recording:
    """Silence, then each clip (cut to ``max_clip_s`` if given) followed by ``gap_s`` of
    silence, the last by ``trailer_s``."""
    clips = [clip(name) for name in names]
    if max_clip_s is not None:
        clips = [audio[: int(max_clip_s * SAMPLE_RATE)] for audio in clips]
    parts: list[npt.NDArray[np.float64]] = [np.zeros(int(lead_s * SAMPLE_RATE))]
    truth: list[tuple[int, int]] = []
    offset_ms = lead_s * 1000
    for audio in clips:
        start, end = speech_extent_ms(audio)
        truth.append((round(offset_ms + start), round(offset_ms + end)))
        parts += [audio.astype(np.float64), np.zeros(int(gap_s * SAMPLE_RATE))]
        offset_ms += len(audio) * 1000 / SAMPLE_RATE + gap_s * 1000
    parts[-1] = np.zeros(int(trailer_s * SAMPLE_RATE))
    recording = np.concatenate(parts)
    recording += noise(len(recording) / SAMPLE_RATE, -60, seed=1)
    return Recording(to_pcm16(recording), truth)
