"""Audio loading into every format, resampling, chunking and the ffmpeg fallback (no server
needed)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clients.audio import (
    CHUNK_BYTES,
    SAMPLE_RATE,
    TELEPHONY_FORMAT,
    TELEPHONY_FRAME_MS,
    AudioError,
    encode_pcm16,
    iter_chunks,
    load_audio,
    load_pcm,
    paced_chunks,
    pcm_seconds,
)
from clients.cli import sample
from proxy.audio_format import AudioFormat, Encoding
from proxy.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16


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
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\0\0\0\x18ftypM4A " + b"\0" * 100)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(AudioError, match="ffmpeg") as info:
        load_pcm(path)
    assert "\n" not in str(info.value)


def test_mp3_is_decoded_by_libsndfile_without_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.mp3"
    speech = np.frombuffer(load_pcm(sample("short.wav")), dtype="<i2")[:16000]
    sf.write(path, speech.astype(np.float32) / 32768, 16000, format="MP3")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    pcm = load_pcm(path)
    # A lossy codec's frames: about a second of audio, not the same samples.
    assert abs(len(pcm) - 32000) <= 2 * 1152 * 2


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


# ---------------------------------------------------------------- other formats


def _tone_file(tmp_path: Path, rate: int, channels: int, seconds: float = 1.0) -> Path:
    """A 440 Hz tone at 0.4 of full scale (left) and 880 Hz (right, when stereo), as 16-bit WAV."""
    t = np.arange(int(rate * seconds)) / rate
    sides = [0.4 * np.sin(2 * np.pi * 440.0 * t), 0.4 * np.sin(2 * np.pi * 880.0 * t)]
    path = tmp_path / f"tone-{rate}-{channels}.wav"
    sf.write(path, np.stack(sides[:channels], axis=1), rate, subtype="PCM_16")
    return path


def _hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(spectrum.argmax())])


@pytest.mark.parametrize(
    ("encoding", "table"),
    [(Encoding.G711_ULAW, ULAW_TO_PCM16), (Encoding.G711_ALAW, ALAW_TO_PCM16)],
)
def test_a_44k_stereo_file_becomes_8k_g711(
    tmp_path: Path, encoding: Encoding, table: np.ndarray
) -> None:
    fmt = AudioFormat(encoding, 8000, 1)
    codes = load_audio(_tone_file(tmp_path, 44_100, 1, 1.5), fmt)
    assert len(codes) == pytest.approx(1.5 * 8000, abs=2)  # one byte per sample
    decoded = table[np.frombuffer(codes, dtype=np.uint8)]
    assert _hz(decoded, 8000) == pytest.approx(440.0, abs=2.0)
    assert np.abs(decoded).max() / 32768 == pytest.approx(0.4, abs=0.03)


def test_telephony_format_is_8k_mulaw_mono() -> None:
    assert AudioFormat(Encoding.G711_ULAW, 8000, 1) == TELEPHONY_FORMAT
    assert TELEPHONY_FORMAT.chunk_bytes(TELEPHONY_FRAME_MS) == 160


def test_stereo_is_kept_for_a_stereo_format(tmp_path: Path) -> None:
    fmt = AudioFormat(Encoding.PCM16, 24_000, 2)
    pcm = load_audio(_tone_file(tmp_path, 48_000, 2), fmt)
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    assert frames.shape[0] == pytest.approx(24_000, abs=2)
    assert _hz(frames[:, 0], 24_000) == pytest.approx(440.0, abs=2.0)
    assert _hz(frames[:, 1], 24_000) == pytest.approx(880.0, abs=2.0)


def test_mono_is_copied_to_both_sides_for_a_stereo_format(tmp_path: Path) -> None:
    pcm = load_audio(_tone_file(tmp_path, 16_000, 1), AudioFormat(Encoding.PCM16, 16_000, 2))
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    assert np.array_equal(frames[:, 0], frames[:, 1])
    assert frames.shape[0] == 16_000


def test_a_file_already_in_the_format_is_read_bit_exact(tmp_path: Path) -> None:
    path = _tone_file(tmp_path, 44_100, 2)
    pcm = load_audio(path, AudioFormat(Encoding.PCM16, 44_100, 2))
    expected, _ = sf.read(path, dtype="int16")
    assert pcm == expected.astype("<i2").tobytes()


def test_ffmpeg_is_asked_for_the_format(tmp_path: Path) -> None:
    # The stand-in records its arguments and prints 5 bytes: one whole stereo PCM16 frame plus
    # a partial one, which must be dropped.
    args_file = tmp_path / "args"
    exe = _stub_ffmpeg(tmp_path, f'echo "$@" > {args_file}; printf "abcde"')
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"whatever")
    pcm = load_audio(path, AudioFormat(Encoding.PCM16, 22_050, 2), ffmpeg=str(exe))
    assert pcm == b"abcd"
    args = args_file.read_text().split()
    assert args[args.index("-ac") + 1] == "2"
    assert args[args.index("-ar") + 1] == "22050"


def test_encode_pcm16_per_encoding() -> None:
    pcm = np.array([0, 32767, -32768], dtype="<i2").tobytes()
    assert encode_pcm16(pcm, Encoding.PCM16) == pcm
    assert encode_pcm16(pcm, Encoding.G711_ULAW) == bytes([0xFF, 0x80, 0x00])
    assert encode_pcm16(pcm, Encoding.G711_ALAW) == bytes([0xD5, 0xAA, 0x2A])


def test_chunks_hold_whole_frames() -> None:
    audio = bytes(range(200))
    chunks = list(iter_chunks(audio, 64, frame_bytes=4))
    assert [len(c) for c in chunks] == [64, 64, 64, 8]
    with pytest.raises(ValueError, match="multiple of 4"):
        list(iter_chunks(audio, 62, frame_bytes=4))


async def test_unpaced_chunks_of_another_format() -> None:
    fmt = AudioFormat(Encoding.G711_ULAW, 8000, 1)
    audio = bytes(range(256)) * 2
    chunks = [c async for c in paced_chunks(audio, speed=None, chunk_bytes=160, fmt=fmt)]
    assert [len(c) for c in chunks] == [160, 160, 160, 32]
    assert b"".join(chunks) == audio


def test_the_clients_share_the_formats_without_the_server() -> None:
    # Apps import `clients`: the proxy's format and G.711 modules come along, its server stack
    # (and its converter) must not.
    code = (
        "import sys, clients; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'proxy', 'starlette', 'uvicorn', 'prometheus_client', 'structlog', 'httpx'})))"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert proc.stdout.split() == ["proxy", "proxy.audio_format", "proxy.g711"]


@pytest.mark.parametrize(
    ("subtype", "encoding", "table"),
    [("ULAW", Encoding.G711_ULAW, ULAW_TO_PCM16), ("ALAW", Encoding.G711_ALAW, ALAW_TO_PCM16)],
)
def test_a_g711_wav_is_sent_with_its_own_values(
    tmp_path: Path, subtype: str, encoding: Encoding, table: np.ndarray
) -> None:
    # libsndfile decodes the file's codes and load_audio encodes them again: the values the
    # server will decode are the file's (μ-law's negative zero may come back as positive zero).
    path = tmp_path / "phone.wav"
    t = np.arange(8000) / 8000
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), 8000, subtype=subtype)
    file_values, _ = sf.read(path, dtype="int16")
    codes = load_audio(path, AudioFormat(encoding, 8000, 1))
    assert np.array_equal(table[np.frombuffer(codes, dtype=np.uint8)], file_values)
