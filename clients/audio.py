"""Audio input: decode a file into the session's audio format (16 kHz mono PCM16LE unless asked
otherwise), cut it into chunks of whole sample frames, pace the chunks.

The formats and the G.711 tables come from `proxy.audio_format` and `proxy.g711`: the server's own
definitions, importable without the server's dependencies (standard library and numpy only).
"""

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

from proxy.audio_format import CHUNK_MS, NATIVE, AudioFormat, Encoding
from proxy.g711 import encode_alaw, encode_ulaw

# What vLLM takes, and every session's default: 16 kHz mono PCM16LE in 80 ms chunks.
SAMPLE_RATE = NATIVE.sample_rate
BYTES_PER_SAMPLE = NATIVE.sample_bytes
CHUNK_BYTES = NATIVE.chunk_bytes(CHUNK_MS)  # 2560
# Telephony providers stream 8 kHz μ-law in 20 ms frames.
TELEPHONY_FORMAT = AudioFormat(Encoding.G711_ULAW, 8_000, 1)
TELEPHONY_FRAME_MS = 20

# Containers libsndfile decodes natively (MP3 since libsndfile 1.1); anything else goes
# through ffmpeg.
SOUNDFILE_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga"}
    | ({".mp3"} if "MP3" in sf.available_formats() else set())
)


class AudioError(Exception):
    """A file that cannot be turned into PCM; the message is one line meant for the user."""


def pcm_seconds(pcm_bytes: int) -> float:
    """Duration of `pcm_bytes` bytes of 16 kHz mono PCM16."""
    return pcm_bytes / NATIVE.bytes_per_second


def load_pcm(path: str | Path, *, ffmpeg: str | None = None) -> bytes:
    """Decode `path` to 16 kHz mono PCM16LE bytes (`load_audio` in the default format)."""
    return load_audio(path, NATIVE, ffmpeg=ffmpeg)


def load_audio(path: str | Path, fmt: AudioFormat, *, ffmpeg: str | None = None) -> bytes:
    """Decode `path` into `fmt`: resampled to its rate, mixed down (or copied) to its channels,
    encoded as PCM16LE or G.711.

    WAV/FLAC/OGG/MP3 are read with soundfile and resampled with soxr; other formats need `ffmpeg`
    (found on PATH unless given). Raises AudioError with a one-line message on any failure.
    """
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"audio file not found: {p}")
    if p.suffix.lower() in SOUNDFILE_SUFFIXES:
        pcm = _load_with_soundfile(p, fmt)
    else:
        pcm = _load_with_ffmpeg(p, ffmpeg, fmt)
    if not pcm:
        raise AudioError(f"no audio in {p}")
    return encode_pcm16(pcm, fmt.encoding)


def encode_pcm16(pcm: bytes, encoding: Encoding) -> bytes:
    """PCM16LE samples in `encoding` (G.711 takes one byte per sample)."""
    if encoding is Encoding.G711_ULAW:
        return encode_ulaw(pcm)
    if encoding is Encoding.G711_ALAW:
        return encode_alaw(pcm)
    return pcm


def _load_with_soundfile(path: Path, fmt: AudioFormat) -> bytes:
    """The file as PCM16LE at `fmt`'s rate and channel count."""
    try:
        info = sf.info(str(path))
        if info.samplerate == fmt.sample_rate and info.channels == fmt.channels:
            # Already the rate and layout: take the 16-bit samples as they are (bit-exact).
            native: np.ndarray = sf.read(str(path), dtype="int16")[0]
            return bytes(native.astype("<i2").tobytes())
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioError(f"cannot decode {path}: {first_line}") from None
    if data.size == 0:
        return b""
    if fmt.channels == 2 and data.shape[1] == 2:
        return float_to_pcm16(resample(data, int(rate), fmt.sample_rate))
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    frames = resample(mono, int(rate), fmt.sample_rate)
    if fmt.channels == 2:
        frames = np.repeat(frames, 2)  # the same signal on both sides, interleaved
    return float_to_pcm16(frames)


def _load_with_ffmpeg(path: Path, ffmpeg: str | None, fmt: AudioFormat) -> bytes:
    exe = ffmpeg or shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(
            f"cannot decode {path.suffix or path.name} files without ffmpeg: install ffmpeg, "
            "or convert the file to WAV, FLAC or OGG"
        )
    cmd = [exe, "-nostdin", "-v", "error", "-i", str(path)]
    cmd += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", str(fmt.channels)]
    cmd += ["-ar", str(fmt.sample_rate), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else f"exit code {proc.returncode}"
        raise AudioError(f"ffmpeg cannot decode {path}: {detail}")
    whole = len(proc.stdout) // fmt.frame_bytes * fmt.frame_bytes
    return proc.stdout[:whole]


def resample(samples: np.ndarray, rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample float samples (mono, or frames x channels) from `rate` to `to_rate`."""
    if rate == to_rate:
        return samples
    out: np.ndarray = soxr.resample(samples, rate, to_rate, quality="HQ")
    return out


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1) to PCM16LE bytes (frames x channels are interleaved), clipping
    what is out of range.

    The 32768 scale is the one libsndfile uses, so 16-bit input survives the round trip exactly.
    """
    scaled = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    return scaled.tobytes()


def iter_chunks(
    audio: bytes, chunk_bytes: int = CHUNK_BYTES, *, frame_bytes: int = BYTES_PER_SAMPLE
) -> Iterator[bytes]:
    """Split audio into `chunk_bytes` pieces; the last one may be shorter. Pieces hold whole
    sample frames of `frame_bytes` bytes."""
    if chunk_bytes <= 0 or chunk_bytes % frame_bytes:
        raise ValueError(f"chunk_bytes must be a positive multiple of {frame_bytes}")
    for start in range(0, len(audio), chunk_bytes):
        yield audio[start : start + chunk_bytes]


async def paced_chunks(
    audio: bytes,
    *,
    speed: float | None = 1.0,
    chunk_bytes: int = CHUNK_BYTES,
    fmt: AudioFormat = NATIVE,
) -> AsyncIterator[bytes]:
    """Yield chunks of `fmt` audio on a real-time schedule (`speed` times faster); `speed=None`
    means no pacing.

    The schedule is anchored at the first chunk, so a slow send does not push later chunks back.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    start = time.monotonic()
    sent_s = 0.0
    for chunk in iter_chunks(audio, chunk_bytes, frame_bytes=fmt.frame_bytes):
        if speed is not None:
            delay = start + sent_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the receiver run between sends
        yield chunk
        sent_s += len(chunk) / fmt.bytes_per_second
