"""Audio input: decode a file to 16 kHz mono PCM16LE, cut it into 80 ms chunks, pace the chunks."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2
CHUNK_MS = 80
CHUNK_BYTES = SAMPLE_RATE * CHUNK_MS // 1000 * BYTES_PER_SAMPLE  # 2560

# Containers libsndfile decodes natively; anything else goes through ffmpeg.
SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga"})


class AudioError(Exception):
    """A file that cannot be turned into PCM; the message is one line meant for the user."""


def pcm_seconds(pcm_bytes: int) -> float:
    """Duration of `pcm_bytes` bytes of 16 kHz mono PCM16."""
    return pcm_bytes / (SAMPLE_RATE * BYTES_PER_SAMPLE)


def load_pcm(path: str | Path, *, ffmpeg: str | None = None) -> bytes:
    """Decode `path` to 16 kHz mono PCM16LE bytes.

    WAV/FLAC/OGG are read with soundfile and resampled with soxr; other formats need `ffmpeg`
    (found on PATH unless given). Raises AudioError with a one-line message on any failure.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"audio file not found: {p}")
    if p.suffix.lower() in SOUNDFILE_SUFFIXES:
        pcm = _load_with_soundfile(p)
    else:
        pcm = _load_with_ffmpeg(p, ffmpeg)
    if not pcm:
        raise AudioError(f"no audio in {p}")
    return pcm


def _load_with_soundfile(path: Path) -> bytes:
    try:
        info = sf.info(str(path))
        if info.samplerate == SAMPLE_RATE and info.channels == 1:
            # Already the wire format: take the 16-bit samples as they are (bit-exact).
            native: np.ndarray = sf.read(str(path), dtype="int16")[0]
            return bytes(native.astype("<i2").tobytes())
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode {path}: {first_line}") from None
    if data.size == 0:
        return b""
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return float_to_pcm16(resample(mono, int(rate)))


def _load_with_ffmpeg(path: Path, ffmpeg: str | None) -> bytes:
    exe = ffmpeg or shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(
            f"cannot decode {path.suffix or path.name} files without ffmpeg: install ffmpeg, "
            "or convert the file to WAV, FLAC or OGG"
        )
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(path)]
    cmd += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else f"exit code {proc.returncode}"
        raise AudioError(f"ffmpeg cannot decode {path}: {detail}")
    return proc.stdout[: len(proc.stdout) // 2 * 2]


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample mono float samples from `rate` to 16 kHz (no-op when already there)."""
    if rate == SAMPLE_RATE:
        return samples
    out: np.ndarray = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return out


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1) to PCM16LE bytes, clipping what is out of range.

    The 32768 scale is the one libsndfile uses, so 16-bit input survives the round trip exactly.
    """
    scaled = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    return scaled.tobytes()


def iter_chunks(pcm: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Split PCM into `chunk_bytes` pieces; the last one may be shorter (always even-sized)."""
    if chunk_bytes <= 0 or chunk_bytes % 2:
        raise ValueError("chunk_bytes must be a positive even number")
    for start in range(0, len(pcm), chunk_bytes):
        yield pcm[start : start + chunk_bytes]


async def paced_chunks(
    pcm: bytes, *, speed: float | None = 1.0, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """Yield chunks on a real-time schedule (`speed` times faster); `speed=None` means no pacing.

    The schedule is anchored at the first chunk, so a slow send does not push later chunks back.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    start = time.monotonic()
    sent_s = 0.0
    for chunk in iter_chunks(pcm, chunk_bytes):
        if speed is not None:
            delay = start + sent_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the receiver run between sends
        yield chunk
        sent_s += pcm_seconds(len(chunk))
