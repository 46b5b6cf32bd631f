"""Audio loading, resampling, chunking and the ffmpeg fallback (no server needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clients.audio import (
    CHUNK_BYTES,
    SAMPLE_RATE,
    AudioError,
    iter_chunks,
    load_pcm,
    paced_chunks,
    pcm_seconds,
)
from clients.cli import sample


def _dominant_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)[int(spectrum.argmax())])


def test_wire_format_wav_is_read_bit_exact() -> None:
    path = sample("mid.wav")
    pcm = load_pcm(path)
    assert pcm == path.read_bytes()[44:]  # canonical 44-byte header, then the frames
    assert pcm_seconds(len(pcm)) == pytest.approx(11.0)


def test_chunks_are_80_ms() -> None:
    pcm = load_pcm(sample("mid.wav"))
    chunks = list(iter_chunks(pcm))
    assert CHUNK_BYTES == 2560
    assert [len(c) for c in chunks[:-1]] == [CHUNK_BYTES] * 137
    assert len(chunks[-1]) == 1280  # mid.wav is 137.5 chunks
    assert b"".join(chunks) == pcm


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype"), [("flac", "FLAC", "PCM_24"), ("ogg", "OGG", "VORBIS")]
)
def test_stereo_44k_is_downmixed_and_resampled(
    tmp_path: Path, suffix: str, fmt: str, subtype: str
) -> None:
    rate, seconds, tone = 44_100, 1.5, 440.0
    t = np.arange(int(rate * seconds)) / rate
    left = 0.4 * np.sin(2 * np.pi * tone * t)
    stereo = np.stack([left, left], axis=1)
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, stereo, rate, format=fmt, subtype=subtype)

    pcm = load_pcm(path)

    assert len(pcm) % 2 == 0
    assert pcm_seconds(len(pcm)) == pytest.approx(seconds, abs=0.01)
    assert _dominant_hz(pcm) == pytest.approx(tone, abs=2.0)
    peak = np.abs(np.frombuffer(pcm, dtype="<i2")).max() / 32768
    assert peak == pytest.approx(0.4, abs=0.05)  # downmix averaged, not summed


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        load_pcm(tmp_path / "nope.wav")


def test_garbage_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot decode") as info:
        load_pcm(path)
    assert "\n" not in str(info.value)


def test_empty_audio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype="int16"), SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match="no audio"):
        load_pcm(path)


def test_other_formats_without_ffmpeg_name_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.mp3"
    path.write_bytes(b"\xff\xfb" + b"\0" * 100)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(AudioError, match="ffmpeg") as info:
        load_pcm(path)
    assert "\n" not in str(info.value)


def _stub_ffmpeg(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "ffmpeg"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_ffmpeg_output_is_used_as_pcm(tmp_path: Path) -> None:
    # A stand-in ffmpeg that prints 3 bytes of "PCM": the odd trailing byte must be dropped.
    exe = _stub_ffmpeg(tmp_path, "printf 'abc'")
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"whatever")
    assert load_pcm(path, ffmpeg=str(exe)) == b"ab"


def test_ffmpeg_failure_is_one_line(tmp_path: Path) -> None:
    exe = _stub_ffmpeg(tmp_path, "echo 'first' >&2; echo 'Invalid data found' >&2; exit 1")
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"whatever")
    with pytest.raises(AudioError, match="Invalid data found") as info:
        load_pcm(path, ffmpeg=str(exe))
    assert "\n" not in str(info.value)


async def test_unpaced_chunks_cover_the_audio() -> None:
    pcm = bytes(range(256)) * 30  # 7680 bytes = 3 chunks
    chunks = [c async for c in paced_chunks(pcm, speed=None)]
    assert [len(c) for c in chunks] == [CHUNK_BYTES] * 3
    assert b"".join(chunks) == pcm


async def test_paced_chunks_reject_bad_speed() -> None:
    with pytest.raises(ValueError, match="speed"):
        [c async for c in paced_chunks(b"\0\0", speed=0)]
