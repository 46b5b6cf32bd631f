"""proxy.audio_convert: client audio in every supported format to 16 kHz mono PCM16, each piece
forwarded as soon as it is converted, with the same result as converting the whole at once."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audio_convert import UPSTREAM_RATE, AudioConverter, InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16
from proxy.resample import make_resampler
from tests.tones import ALAW_8K, ULAW_8K, dominant_hz, encode, tone, tone_snr_db
from tests.tones import samples as pcm_samples

# Every path through the converter: each law, resampling up and down (integer and fractional
# ratios), stereo with and without resampling, and the native passthrough.
FORMATS = [
    ULAW_8K,
    ALAW_8K,
    AudioFormat(Encoding.G711_ULAW, 8000, 2),
    AudioFormat(Encoding.PCM16, 8000, 1),
    AudioFormat(Encoding.PCM16, 11025, 1),
    AudioFormat(Encoding.PCM16, 24000, 1),
    AudioFormat(Encoding.PCM16, 44100, 1),
    AudioFormat(Encoding.PCM16, 48000, 1),
    AudioFormat(Encoding.PCM16, 48000, 2),
    AudioFormat(Encoding.PCM16, 16000, 2),
    AudioFormat(Encoding.PCM16, 32000, 1),
    AudioFormat(Encoding.PCM16, 22050, 2),
    AudioFormat(Encoding.PCM16, 8001, 1),  # a ratio the FIR does not take: soxr
    NATIVE,
]
SOXR_RATE = 8001  # soxr works in blocks: many pieces give nothing at once
RESAMPLED = [fmt for fmt in FORMATS if fmt.sample_rate != UPSTREAM_RATE]


def stream(fmt: AudioFormat, data: bytes, piece_ms: int | None) -> list[bytes]:
    """Every chunk the converter emits for `data` fed in `piece_ms` pieces (None: in one piece),
    then flushed."""
    converter = AudioConverter(fmt)
    step = len(data) if piece_ms is None else fmt.chunk_bytes(piece_ms)
    chunks: list[bytes] = []
    for start in range(0, len(data), step):
        chunks += converter.feed(data[start : start + step])
    return chunks + converter.flush()


def samples(chunks: list[bytes]) -> npt.NDArray[np.float64]:
    return pcm_samples(b"".join(chunks))


def decoded_mono(fmt: AudioFormat, data: bytes) -> npt.NDArray[np.float32]:
    """The client's audio as mono float samples, decoded independently of the converter."""
    if fmt.encoding is Encoding.PCM16:
        values = np.frombuffer(data, dtype="<i2").astype(np.float32)
    else:
        table = ULAW_TO_PCM16 if fmt.encoding is Encoding.G711_ULAW else ALAW_TO_PCM16
        values = table[np.frombuffer(data, dtype=np.uint8)].astype(np.float32)
    if fmt.channels == 2:
        values = (values[0::2] + values[1::2]) / 2
    return values


def one_shot(fmt: AudioFormat, data: bytes) -> npt.NDArray[np.float64]:
    """The whole signal decoded apart from the converter and resampled in one call, as the
    reference for the streamed result (tests/proxy/test_resample.py checks the resampler)."""
    mono = decoded_mono(fmt, data)
    if fmt.sample_rate != UPSTREAM_RATE:
        resampler = make_resampler(fmt.sample_rate)
        mono = np.concatenate((resampler.feed(mono), resampler.flush()))
    return np.rint(np.clip(mono, -32768, 32767)).astype(np.float64)


# ---------------------------------------------------------------- chunks and the tail


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("piece_ms", [20, 80])
def test_each_piece_goes_out_as_one_chunk_and_the_tail_is_flushed(
    fmt: AudioFormat, piece_ms: int
) -> None:
    seconds = 2.013
    left = tone(fmt.sample_rate, 440.0, seconds)
    data = encode(fmt, left)
    chunks = stream(fmt, data, piece_ms)
    pieces = -(-len(data) // fmt.chunk_bytes(piece_ms))
    # One per piece, and the resampler's tail.
    assert (1 if fmt.sample_rate == SOXR_RATE else pieces) <= len(chunks) <= pieces + 1
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    # Every input sample is accounted for: the output lasts as long as the input.
    assert abs(len(b"".join(chunks)) // 2 - left.size * UPSTREAM_RATE / fmt.sample_rate) <= 1
    # ... and its last 10 ms still carry the tone (the resampler's tail was drained).
    last = samples(chunks)[-160:]
    assert np.sqrt(np.mean(last**2)) > 0.6 * 16384 / np.sqrt(2)


@pytest.mark.parametrize("fmt", [f for f in RESAMPLED if f.sample_rate != SOXR_RATE], ids=str)
def test_each_20_ms_piece_goes_out_but_for_2_ms(fmt: AudioFormat) -> None:
    converter = AudioConverter(fmt)
    data = encode(fmt, tone(fmt.sample_rate, 440.0, 1.0))
    step = fmt.chunk_bytes(20)
    out = 0
    for start in range(0, len(data), step):
        out += sum(len(c) for c in converter.feed(data[start : start + step]))
        owed = UPSTREAM_RATE * 2 * min(start + step, len(data)) // fmt.bytes_per_second
        assert owed - out <= UPSTREAM_RATE * 2 * 2 // 1000


# ---------------------------------------------------------------- streamed = one shot


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("piece_ms", [20, 80])
def test_streamed_equals_one_shot_within_one_lsb(fmt: AudioFormat, piece_ms: int) -> None:
    rng = np.random.default_rng(5)
    # Speech-like: tones under an envelope, plus noise, so every frequency band is exercised.
    base = tone(fmt.sample_rate, 300.0, 1.5, 6000) + tone(fmt.sample_rate, 2900.0, 1.5, 3000)
    noisy = base + rng.normal(0, 800, base.size)
    data = encode(fmt, np.clip(noisy, -32768, 32767).astype(np.int16))
    streamed = samples(stream(fmt, data, piece_ms))
    whole = samples(stream(fmt, data, None))
    reference = one_shot(fmt, data)
    assert streamed.size == reference.size == whole.size
    # Stated tolerance: 1 LSB (float32 rounding in a different order); in practice equal.
    assert np.max(np.abs(streamed - reference)) <= 1
    assert np.max(np.abs(whole - reference)) <= 1


@pytest.mark.parametrize("fmt", RESAMPLED, ids=str)
def test_no_click_at_piece_or_chunk_boundaries(fmt: AudioFormat) -> None:
    # A pure 440 Hz tone has |second difference| <= (2 pi f / fs)^2 * A at every sample; a
    # discontinuity at a boundary (lost, doubled or misaligned samples) breaks that bound.
    amplitude = 16384.0
    y = samples(stream(fmt, encode(fmt, tone(fmt.sample_rate, 440.0, 1.0, amplitude)), 20))
    curvature = np.abs(np.diff(y[320:-320], n=2))
    bound = (2 * np.pi * 440.0 / UPSTREAM_RATE) ** 2 * amplitude
    # G.711 adds its quantization noise (about 400 at this level), PCM16 rounding only (the
    # input's, interpolated, and the output's); one lost sample would add up to
    # 2 pi f / fs * A = 2800.
    slack = 600.0 if fmt.encoding is not Encoding.PCM16 else 12.0
    assert curvature.max() <= bound + slack


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(FORMATS),
    st.lists(st.integers(1, 1500), min_size=1, max_size=30),
)
def test_any_cut_gives_the_same_audio(fmt: AudioFormat, frames_per_piece: list[int]) -> None:
    total = sum(frames_per_piece)
    rng = np.random.default_rng(total)
    data = rng.integers(0, 256, total * fmt.frame_bytes, dtype=np.uint8).tobytes()
    converter = AudioConverter(fmt)
    chunks: list[bytes] = []
    start = 0
    for frames in frames_per_piece:
        piece = data[start : start + frames * fmt.frame_bytes]
        start += len(piece)
        chunks += converter.feed(piece)
    chunks += converter.flush()
    assert converter.input_bytes == len(data)
    streamed, reference = samples(chunks), one_shot(fmt, data)
    assert streamed.size == reference.size  # may be 0: one frame at 44.1 kHz is 0.36 samples
    assert np.all(np.abs(streamed - reference) <= 1)


# ---------------------------------------------------------------- tones arrive as tones


TONE_FORMATS = [
    ULAW_8K,
    ALAW_8K,
    AudioFormat(Encoding.PCM16, 8000, 1),
    AudioFormat(Encoding.PCM16, 24000, 1),
    AudioFormat(Encoding.PCM16, 44100, 1),
    AudioFormat(Encoding.PCM16, 48000, 1),
    AudioFormat(Encoding.PCM16, 48000, 2),
    AudioFormat(Encoding.G711_ULAW, 8000, 2),
    AudioFormat(Encoding.PCM16, 16000, 2),
]


@pytest.mark.parametrize("fmt", TONE_FORMATS, ids=str)
def test_a_1khz_tone_arrives_as_a_1khz_tone(fmt: AudioFormat) -> None:
    seconds = 2.0
    y = samples(stream(fmt, encode(fmt, tone(fmt.sample_rate, 1000.0, seconds)), 20))
    assert y.size == UPSTREAM_RATE * seconds
    assert dominant_hz(y) == pytest.approx(1000.0, abs=1.0)
    snr = tone_snr_db(y, 1000.0)
    # G.711 is limited by its own quantization (about 38 dB); PCM16 by 16-bit rounding.
    assert snr >= (30.0 if fmt.encoding is not Encoding.PCM16 else 70.0), snr


def test_stereo_is_mixed_down_to_the_mean_of_the_channels() -> None:
    fmt = AudioFormat(Encoding.PCM16, 48000, 2)
    left = tone(48000, 1000.0, 1.0)
    silent = np.zeros_like(left)
    y = samples(stream(fmt, encode(fmt, left, silent), 20))
    rms = np.sqrt(np.mean(y[320:-320] ** 2))
    assert rms == pytest.approx(16384 / 2 / np.sqrt(2), rel=0.01)  # half the tone
    # Opposite channels cancel.
    y = samples(stream(fmt, encode(fmt, left, -left), 20))
    assert np.max(np.abs(y)) <= 1


def test_resampler_overshoot_is_clipped_not_wrapped() -> None:
    # A full-scale square wave rings past full scale after resampling; int16 must saturate.
    fmt = AudioFormat(Encoding.PCM16, 8000, 1)
    square = np.where(np.sin(2 * np.pi * 250 * np.arange(8000) / 8000) >= 0, 32767, -32768)
    data = encode(fmt, square.astype(np.int16))
    y = samples(stream(fmt, data, 20))
    assert y.max() == 32767
    assert y.min() == -32768
    assert np.max(np.abs(y - one_shot(fmt, data))) <= 1


# ---------------------------------------------------------------- passthrough


def test_native_audio_passes_through_byte_for_byte() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 32000 * 3 + 1234, dtype=np.uint8).tobytes()
    for piece_ms in (20, 80, None):
        step = len(data) if piece_ms is None else NATIVE.chunk_bytes(piece_ms)
        chunks = stream(NATIVE, data, piece_ms)
        assert chunks == [data[i : i + step] for i in range(0, len(data), step)]


def test_a_native_piece_is_forwarded_without_a_copy() -> None:
    converter = AudioConverter(NATIVE)
    piece = bytes(range(256)) * 10
    assert converter.feed(piece)[0] is piece
    assert converter.feed(piece[:2])[0] == piece[:2]
    assert converter.flush() == []


def test_nothing_fed_flushes_nothing() -> None:
    for fmt in (NATIVE, ULAW_8K, AudioFormat(Encoding.PCM16, 44100, 2)):
        assert AudioConverter(fmt).flush() == []


def test_input_bytes_count_the_clients_audio() -> None:
    converter = AudioConverter(ULAW_8K)
    for _ in range(50):
        converter.feed(b"\xff" * 160)
    converter.flush()
    assert converter.input_bytes == 8000
    assert ULAW_8K.duration_ms(converter.input_bytes) == 1000


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fmt", "piece"),
    [
        (NATIVE, b""),
        (NATIVE, b"\x00"),
        (NATIVE, b"\x00" * 2561),
        (ULAW_8K, b""),
        (AudioFormat(Encoding.PCM16, 48000, 2), b"\x00" * 6),  # a frame and a half
        (AudioFormat(Encoding.PCM16, 16000, 2), b"\x00\x00"),  # half a stereo frame
        (AudioFormat(Encoding.G711_ALAW, 8000, 2), b"\xd5" * 3),
    ],
)
def test_partial_frames_are_refused_and_nothing_is_kept(fmt: AudioFormat, piece: bytes) -> None:
    converter = AudioConverter(fmt)
    whole = encode(fmt, tone(fmt.sample_rate, 440.0, 0.1))
    expected = stream(fmt, whole, None)
    with pytest.raises(InvalidAudio) as caught:
        converter.feed(piece)
    assert caught.value.message == fmt.audio_problem(len(piece))
    assert converter.input_bytes == 0
    # The converter goes on as if the bad piece never came.
    assert converter.feed(whole) + converter.flush() == expected


def test_feed_after_flush_is_a_bug() -> None:
    converter = AudioConverter(ULAW_8K)
    converter.feed(b"\xff" * 160)
    assert converter.flush()
    assert converter.flush() == []
    with pytest.raises(RuntimeError, match="new converter"):
        converter.feed(b"\xff" * 160)
