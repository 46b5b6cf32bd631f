"""File headers at the start of an utterance's audio: every container recognised from real files
(or, for MP4 and WebM, which nothing here encodes, from their documented header bytes), each
signature refused when its header does not validate, a WAV of the session's format stripped, and
minutes of real speech, silence and noise in every supported format never taken for a file, at
any byte offset."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from clients.audio import encode_pcm16, float_to_pcm16, resample
from proxy.audio_convert import InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.audio_input import UtteranceAudio
from proxy.containers import STREAM_RESTART, FirstAudioCheck, sniff
from tests.speech import clip, noise
from tests.tones import ALAW_8K, ULAW_8K

STEREO_44K = AudioFormat(Encoding.PCM16, 44100, 2)


def encoded(fmt: str, subtype: str | None = None, rate: int = 16000, channels: int = 1) -> bytes:
    """One second of speech written by libsndfile as a `fmt` file."""
    speech = clip("short")[:rate].astype(np.float32) / 32768
    data = np.repeat(speech[:, None], channels, axis=1) if channels > 1 else speech
    out = io.BytesIO()
    sf.write(out, data, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def id3_tag(version: int = 4) -> bytes:
    """An ID3v2 tag holding one 10-byte padding area (size in four 7-bit bytes)."""
    return b"ID3" + bytes([version, 0, 0]) + bytes([0, 0, 0, 10]) + bytes(10)


MP4_HEAD = struct.pack(">I", 24) + b"ftypM4A " + bytes(4) + b"M4A isom"
WEBM_HEAD = bytes.fromhex("1a45dfa3") + bytes.fromhex("9f4286810142f7810142f2810442f381084282")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (encoded("WAV", "PCM_16"), "WAV"),
        (encoded("WAV", "PCM_16", 44100, 2), "WAV"),
        (encoded("WAV", "ULAW", 8000), "WAV"),
        (encoded("WAV", "FLOAT"), "WAV"),
        (encoded("FLAC"), "FLAC"),
        (encoded("OGG", "VORBIS"), "Ogg"),
        (encoded("MP3", "MPEG_LAYER_III"), "MP3"),
        (id3_tag() + encoded("MP3", "MPEG_LAYER_III"), "MP3 (ID3 tag)"),
        (MP4_HEAD, "MP4/M4A"),
        (WEBM_HEAD, "WebM/Matroska"),
    ],
    ids=[
        "wav",
        "wav-44k-stereo",
        "wav-ulaw",
        "wav-float",
        "flac",
        "ogg",
        "mp3",
        "id3",
        "mp4",
        "webm",
    ],
)
def test_each_container_is_recognised_from_its_first_bytes(data: bytes, name: str) -> None:
    container = sniff(data[:2560])
    assert container is not None
    assert container.name == name


def test_a_wav_header_says_its_format_and_where_its_samples_start() -> None:
    data = encoded("WAV", "PCM_16", 44100, 2)
    container = sniff(data)
    assert container is not None
    assert container.wav_format == STEREO_44K
    assert container.data_offset == 44
    assert sniff(encoded("WAV", "ULAW", 8000)).wav_format == ULAW_8K  # type: ignore[union-attr]
    assert sniff(encoded("WAV", "FLOAT")).wav_format is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00",  # no fmt chunk before the samples
        b"RIFF\x24\x00\x00\x00WAVEfmt \x04\x00\x00\x00\x01\x00\x01\x00",  # fmt chunk too short
        encoded("WAV", "PCM_16")[:12]
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 0, 16000, 0, 2, 16),
        b"ID3\x05\x00\x00\x00\x00\x00\x0a" + bytes(20),  # no such version
        b"ID3\x04\x00\x00\x80\x00\x00\x0a" + bytes(20),  # size bytes are 7-bit
        b"OggS\x01\x02" + bytes(30),  # page version 1
        b"fLaC\x04\x00\x00\x22" + bytes(34),  # first block is not STREAMINFO
        b"fLaC\x00\x00\x00\x10" + bytes(34),  # STREAMINFO of the wrong length
        struct.pack(">I", 24) + b"ftyp\x00\x01\x02\x03" + bytes(12),  # unprintable brand
        struct.pack(">I", 4) + b"ftypM4A " + bytes(12),  # box smaller than its own header
        bytes.fromhex("1a45dfa300") + bytes(10),  # EBML size of zero length
    ],
    ids=[
        "riff-no-fmt",
        "riff-short-fmt",
        "riff-no-channels",
        "id3-version",
        "id3-size",
        "ogg-version",
        "flac-block",
        "flac-length",
        "ftyp-brand",
        "ftyp-size",
        "ebml-size",
    ],
)
def test_a_signature_whose_header_does_not_validate_is_not_a_container(data: bytes) -> None:
    assert sniff(data) is None


def frame_starts(mp3: bytes, count: int) -> list[int]:
    """Where the first `count` frames of a tagless MP3 start (each header is the first's)."""
    starts = [0]
    while len(starts) < count:
        starts.append(mp3.index(mp3[:2], starts[-1] + 4))
    return starts


def test_mpeg_needs_three_agreeing_frame_headers_each_one_frame_length_on() -> None:
    mp3 = encoded("MP3", "MPEG_LAYER_III")[:2560]
    assert mp3[0] == 0xFF  # libsndfile writes no tag: the first frame is at the start
    _, second, third = frame_starts(mp3, 3)
    assert sniff(mp3) is not None
    assert sniff(mp3[: third + 4]) is not None
    assert sniff(mp3[: third + 3]) is None  # the third header incomplete
    assert sniff(mp3[:4] + bytes(2556)) is None  # a lone header
    for at in (second, third):
        reserved_version = mp3[:at] + b"\xff\xeb" + mp3[at + 2 :]
        assert sniff(reserved_version) is None
        other_rate = mp3[: at + 2] + bytes([mp3[at + 2] ^ 0x04]) + mp3[at + 3 :]
        assert sniff(other_rate) is None  # a stream keeps its sample rate


def test_a_wav_of_the_sessions_format_is_stripped_and_its_samples_taken() -> None:
    data = encoded("WAV", "PCM_16")
    check = FirstAudioCheck(NATIVE)
    assert check.check(data[:2604]) == data[44:2604]
    assert check.check(data[2604:5164]) == data[2604:5164]


def test_a_header_only_first_piece_gives_no_audio_and_the_next_is_taken() -> None:
    data = encoded("WAV", "PCM_16")
    audio = UtteranceAudio(NATIVE)
    assert audio.take(data[:44], 44) == []
    assert audio.client_bytes == 0
    upstream = audio.take(data[44:2604], 2560)
    assert [n for _, n in upstream] == [2560]
    assert audio.client_bytes == 2560


@pytest.mark.parametrize(
    ("data", "fmt", "says"),
    [
        (encoded("WAV", "PCM_16", 44100, 2), NATIVE, "a file (WAV of pcm16 44100 Hz stereo)"),
        (encoded("WAV", "PCM_16"), ULAW_8K, "a file (WAV of pcm16 16000 Hz mono)"),
        (encoded("MP3", "MPEG_LAYER_III"), NATIVE, "a file (MP3)"),
        (encoded("OGG", "VORBIS"), ULAW_8K, "a file (Ogg)"),
    ],
    ids=["wav-44k", "wav-not-ulaw", "mp3", "ogg"],
)
def test_a_file_is_refused_naming_it_and_what_to_send_and_so_is_the_rest(
    data: bytes, fmt: AudioFormat, says: str
) -> None:
    audio = UtteranceAudio(fmt)
    piece = data[: fmt.chunk_bytes(80)]
    with pytest.raises(InvalidAudio) as refused:
        audio.take(piece, len(piece))
    message = refused.value.message
    assert says in message
    assert f"raw {fmt.describe()} samples" in message or f"({fmt.describe()})" in message
    assert "open a new utterance" in message
    # The bytes after a header are no samples of the session's format: refused as well.
    rest = data[len(piece) : len(piece) + fmt.chunk_bytes(80)]
    with pytest.raises(InvalidAudio) as again:
        audio.take(rest, len(rest))
    assert again.value.message == message
    assert audio.client_bytes == 0


def test_base64_first_pieces_are_checked_like_binary_ones() -> None:
    import base64

    data = encoded("WAV", "PCM_16", 44100, 2)[:2560]
    with pytest.raises(InvalidAudio):
        UtteranceAudio(NATIVE).take(base64.b64encode(data).decode(), len(data))
    wav = encoded("WAV", "PCM_16")[:2604]
    upstream = UtteranceAudio(NATIVE).take(base64.b64encode(wav).decode(), len(wav))
    assert [n for _, n in upstream] == [2560]


def test_the_turn_streams_refusal_says_how_to_start_a_new_stream() -> None:
    check = FirstAudioCheck(NATIVE, STREAM_RESTART)
    with pytest.raises(InvalidAudio) as refused:
        check.check(encoded("FLAC")[:2560])
    assert STREAM_RESTART in refused.value.message


def test_only_the_first_piece_is_checked() -> None:
    check = FirstAudioCheck(NATIVE)
    assert check.check(b"\x00\x00") == b"\x00\x00"
    flac = encoded("FLAC")[:2560]
    assert check.check(flac) is flac


# ---------------------------------------------------------------- real audio is never a file

EVERY_FORMAT = [
    NATIVE,
    AudioFormat(Encoding.PCM16, 8000, 1),
    AudioFormat(Encoding.PCM16, 44100, 2),
    AudioFormat(Encoding.PCM16, 48000, 1),
    ULAW_8K,
    ALAW_8K,
    AudioFormat(Encoding.G711_ULAW, 8000, 2),
]


def minutes_of_audio() -> npt.NDArray[np.float32]:
    """About three minutes at 16 kHz: every spoken sample, digital silence, PCM16 -1 (FF FF),
    a quiet noise floor, loud white noise that clips, and pink noise, as float in [-1, 1)."""
    speech = np.concatenate([clip(name) for name in ("long", "mid", "short")]).astype(np.float64)
    parts = [
        speech,
        np.zeros(16000 * 20),
        np.full(16000 * 10, -1.0),
        noise(20, -60, seed=1),
        noise(10, -80, seed=4),  # a few LSBs: mostly -1, 0 and small negative samples
        noise(20, -3, seed=2),
        noise(20, -20, seed=3, pink=True),
        speech * 0.01,
    ]
    return (np.concatenate(parts) / 32768).astype(np.float32)


def client_bytes(fmt: AudioFormat, audio: npt.NDArray[np.float32]) -> bytes:
    frames = resample(audio, 16000, fmt.sample_rate)
    if fmt.channels == 2:
        frames = np.repeat(frames, 2)
    return encode_pcm16(float_to_pcm16(frames), fmt.encoding)


def candidate_offsets(data: bytes) -> Iterator[int]:
    """Every offset where a signature could start: a frame sync (FF, then 3 set bits), a
    signature's first byte, or four bytes before `ftyp`."""
    array = np.frombuffer(data, dtype=np.uint8)
    sync = np.flatnonzero((array[:-1] == 0xFF) & (array[1:] & 0xE0 == 0xE0))
    firsts = np.flatnonzero(np.isin(array, list(b"RIOf\x1a")))
    yield from sorted({*sync.tolist(), *firsts.tolist()})
    at = data.find(b"ftyp")
    while at != -1:
        if at >= 4:
            yield at - 4
        at = data.find(b"ftyp", at + 1)


@pytest.fixture(scope="module")
def audio() -> npt.NDArray[np.float32]:
    return minutes_of_audio()


@pytest.mark.parametrize("fmt", EVERY_FORMAT, ids=str)
def test_minutes_of_speech_silence_and_noise_are_never_a_file_at_any_offset(
    fmt: AudioFormat, audio: npt.NDArray[np.float32]
) -> None:
    data = client_bytes(fmt, audio)
    assert len(data) >= fmt.bytes_per_second * 170
    window = 4096  # more than any frame length the MPEG check computes
    found = [
        (offset, sniff(data[offset : offset + window]))
        for offset in candidate_offsets(data)
        if sniff(data[offset : offset + window]) is not None
    ]
    assert found == []


@pytest.mark.parametrize("fmt", EVERY_FORMAT, ids=str)
@pytest.mark.parametrize("piece_ms", [20, 80])
def test_streamed_as_utterances_none_is_refused(
    fmt: AudioFormat, piece_ms: int, audio: npt.NDArray[np.float32]
) -> None:
    """Each piece of the stream opens an utterance of its own: every piece is a first one."""
    data = client_bytes(fmt, audio)
    step = fmt.chunk_bytes(piece_ms)
    for start in range(0, len(data) - step, step):
        piece = data[start : start + step]
        assert FirstAudioCheck(fmt).check(piece) is piece
