"""proxy.g711 against ITU-T G.711's tables (Table 1a for A-law, Table 2a for μ-law).

The expected values are written from the standard's tables, not from the module's arithmetic:
each table row is a segment, given by its first decoder output value and its step (in the
standard's units: 14-bit for μ-law, 13-bit for A-law), with 16 values per segment. A transmitted
code is the "character signal": sign bit set for positive values, then the 7-bit interval number,
with every one of those 7 bits inverted for μ-law and the even bits inverted (XOR 0x55) for A-law.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf

from proxy.g711 import ALAW_TO_PCM16, ULAW_TO_PCM16, encode_alaw, encode_ulaw

# Table 2a (μ-law): (first decoder output, step) of segments 1..8, in 14-bit units.
ULAW_SEGMENTS = [
    (0, 2),
    (33, 4),
    (99, 8),
    (231, 16),
    (495, 32),
    (1023, 64),
    (2079, 128),
    (4191, 256),
]
# Table 1a (A-law): the same for the 13-bit law (segments 1 and 2 share the smallest step).
ALAW_SEGMENTS = [(1, 2), (33, 2), (66, 4), (132, 8), (264, 16), (528, 32), (1056, 64), (2112, 128)]

# Values quoted with the standard's tables, in 16-bit PCM (μ-law x4, A-law x8).
ULAW_KNOWN = {0x00: -32124, 0x7F: 0, 0xFF: 0, 0x80: 32124, 0xEF: 132, 0x8F: 16764, 0x70: -120}
ALAW_KNOWN = {0xD5: 8, 0x55: -8, 0x2A: -32256, 0xAA: 32256, 0xC5: 264, 0xA5: 16896, 0x5A: -248}


def _standard_magnitudes(segments: list[tuple[int, int]]) -> list[int]:
    """Decoder outputs of intervals 0..127 (positive half), row by row from the table."""
    return [first + step * i for first, step in segments for i in range(16)]


def _expected_table(segments: list[tuple[int, int]], scale: int, invert: int) -> dict[int, int]:
    expected: dict[int, int] = {}
    for interval, magnitude in enumerate(_standard_magnitudes(segments)):
        expected[(0x80 | interval) ^ invert] = magnitude * scale
        expected[interval ^ invert] = -magnitude * scale
    return expected


def test_ulaw_segments_end_where_the_standard_says() -> None:
    # Table 2a's last output values of segments 1..8: a check on the rows written above.
    last = [m for i, m in enumerate(_standard_magnitudes(ULAW_SEGMENTS)) if i % 16 == 15]
    assert last == [30, 93, 219, 471, 975, 1983, 3999, 8031]


def test_alaw_segments_end_where_the_standard_says() -> None:
    last = [m for i, m in enumerate(_standard_magnitudes(ALAW_SEGMENTS)) if i % 16 == 15]
    assert last == [31, 63, 126, 252, 504, 1008, 2016, 4032]


def test_ulaw_decodes_every_code_as_table_2a() -> None:
    expected = _expected_table(ULAW_SEGMENTS, scale=4, invert=0x7F)
    assert {code: int(ULAW_TO_PCM16[code]) for code in range(256)} == expected


def test_alaw_decodes_every_code_as_table_1a() -> None:
    expected = _expected_table(ALAW_SEGMENTS, scale=8, invert=0x55)
    assert {code: int(ALAW_TO_PCM16[code]) for code in range(256)} == expected


@pytest.mark.parametrize(("code", "value"), sorted(ULAW_KNOWN.items()))
def test_ulaw_known_pairs(code: int, value: int) -> None:
    assert ULAW_TO_PCM16[code] == value
    if code != 0x7F:  # negative zero: encoding 0 gives the positive zero, 0xFF
        assert encode_ulaw(np.array([value], "<i2").tobytes()) == bytes([code])


@pytest.mark.parametrize(("code", "value"), sorted(ALAW_KNOWN.items()))
def test_alaw_known_pairs(code: int, value: int) -> None:
    assert ALAW_TO_PCM16[code] == value
    assert encode_alaw(np.array([value], "<i2").tobytes()) == bytes([code])


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        ULAW_TO_PCM16[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        ALAW_TO_PCM16[0] = 1


ALL_PCM16 = np.arange(-32768, 32768, dtype=np.int32)


@pytest.mark.parametrize(
    ("encode", "table", "segments", "scale"),
    [
        (encode_ulaw, ULAW_TO_PCM16, ULAW_SEGMENTS, 4),
        (encode_alaw, ALAW_TO_PCM16, ALAW_SEGMENTS, 8),
    ],
    ids=["ulaw", "alaw"],
)
def test_every_pcm16_value_encodes_to_its_quantization_interval(
    encode: Callable[[bytes], bytes], table: np.ndarray, segments: list[tuple[int, int]], scale: int
) -> None:
    codes = np.frombuffer(encode(ALL_PCM16.astype("<i2").tobytes()), dtype=np.uint8)
    decoded = table[codes].astype(np.int32)
    # Monotonic: a larger input never decodes smaller.
    assert np.all(np.diff(decoded) >= 0)
    # Within half a step of the input, plus the bits the law drops: the step of the segment
    # the input is coded in (at a segment's lower edge the interval reaches down halfway to the
    # segment below), except where full scale clips.
    top = _standard_magnitudes(segments)[-1] * scale
    inside = np.abs(ALL_PCM16) <= top
    steps = np.array([step * scale for _, step in segments])
    firsts = np.array([first * scale for first, _ in segments])
    segment = np.searchsorted(firsts, np.abs(decoded), side="right") - 1
    error = np.abs(decoded - ALL_PCM16)
    assert np.all(error[inside] <= steps[segment[inside]] // 2 + scale)
    assert decoded[0] == -top
    assert decoded[-1] == top


def test_full_scale_and_zero_codes() -> None:
    extremes = np.array([32767, -32768, 0, -1], "<i2").tobytes()
    assert encode_ulaw(extremes) == bytes([0x80, 0x00, 0xFF, 0x7F])
    assert encode_alaw(extremes) == bytes([0xAA, 0x2A, 0xD5, 0x55])


@pytest.mark.parametrize(
    ("encode", "table"), [(encode_ulaw, ULAW_TO_PCM16), (encode_alaw, ALAW_TO_PCM16)]
)
def test_tone_round_trip_has_the_laws_signal_to_noise(
    encode: Callable[[bytes], bytes], table: np.ndarray
) -> None:
    # G.711 keeps 35 dB or more signal to quantization noise over a wide range of levels; the
    # test tone is 1020 Hz, as in the ITU's measurements, so the samples do not repeat.
    t = np.arange(8000) / 8000
    for amplitude in (1000.0, 8000.0, 30000.0):
        x = np.round(amplitude * np.sin(2 * np.pi * 1020 * t + 0.3)).astype("<i2")
        y = table[np.frombuffer(encode(x.tobytes()), dtype=np.uint8)].astype(float)
        noise = y - x
        snr = 10 * np.log10(np.mean(x.astype(float) ** 2) / np.mean(noise**2))
        assert snr > 35.0, (amplitude, snr)


def _g711_wav(format_tag: int, codes: bytes) -> bytes:
    """A minimal 8 kHz mono WAV file holding G.711 codes (format tag 7 μ-law, 6 A-law)."""
    fmt = struct.pack("<HHIIHHH", format_tag, 1, 8000, 8000, 1, 8, 0)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(codes)) + codes
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(("format_tag", "table"), [(7, ULAW_TO_PCM16), (6, ALAW_TO_PCM16)])
def test_libsndfile_decodes_every_code_alike(format_tag: int, table: np.ndarray) -> None:
    # An independent implementation of the same standard, as a second opinion on the tables.
    decoded, rate = sf.read(io.BytesIO(_g711_wav(format_tag, bytes(range(256)))), dtype="int16")
    assert rate == 8000
    assert np.array_equal(decoded, table)
