"""ITU-T G.711 μ-law and A-law: decoding tables and encoders for 16-bit linear PCM.

numpy only, so the Python clients (which encode telephony audio) share this one definition with
the proxy (which decodes it). Decoding is a 256-entry table; encoding a 65536-entry table built on
first use, following the standard's segment and quantizer definitions (the same arithmetic as the
ITU-T G.191 reference coder), with the standard's 14-bit (μ-law) and 13-bit (A-law) values
left-justified in 16 bits.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

# Sign bit of a code: set for positive values in both laws.
_SIGN = 0x80
# A-law transmits every even bit inverted.
_ALAW_INVERT = 0x55
# μ-law's decoder outputs sit at ((2m + 33) << s) - 33 in 14-bit units: this is the 33.
_ULAW_BIAS = 33


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256)
    inverted = ~code & 0x7F  # μ-law transmits the segment and mantissa inverted
    segment, mantissa = inverted >> 4, inverted & 0x0F
    magnitude14 = ((2 * mantissa + _ULAW_BIAS) << segment) - _ULAW_BIAS
    signed = np.where(code & _SIGN, magnitude14, -magnitude14) << 2
    return signed.astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256) ^ _ALAW_INVERT
    segment, mantissa = (code >> 4) & 0x07, code & 0x0F
    # Segments 0 and 1 share one step size; above, each segment doubles it.
    magnitude13 = np.where(
        segment == 0, 2 * mantissa + 1, (2 * mantissa + 33) << np.maximum(segment - 1, 0)
    )
    signed = np.where(code & _SIGN, magnitude13, -magnitude13) << 3
    return signed.astype(np.int16)


ULAW_TO_PCM16: npt.NDArray[np.int16] = _ulaw_decode_table()
ALAW_TO_PCM16: npt.NDArray[np.int16] = _alaw_decode_table()
ULAW_TO_PCM16.flags.writeable = False
ALAW_TO_PCM16.flags.writeable = False


def _all_pcm16() -> npt.NDArray[np.int32]:
    """Every int16 value, in the order of its bit pattern read as uint16 (the table index)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


@functools.cache
def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    x = _all_pcm16()
    # Magnitude in 14 bits (one's complement for negatives, so x and -x-1 code alike), biased.
    biased = np.minimum(np.where(x < 0, ~x, x) >> 2, 0x1FFF - _ULAW_BIAS) + _ULAW_BIAS
    segment = np.zeros_like(biased)
    for s in range(1, 8):
        segment += biased >= (64 << (s - 1))
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = ((7 - segment) << 4) | (0x0F - mantissa)
    return np.where(x >= 0, code | _SIGN, code).astype(np.uint8)


@functools.cache
def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    x = _all_pcm16()
    magnitude = np.where(x < 0, ~x, x) >> 4  # 12 bits
    segment = np.zeros_like(magnitude)
    for s in range(1, 8):
        segment += magnitude >= (16 << (s - 1))
    mantissa = (magnitude >> np.maximum(segment - 1, 0)) & 0x0F  # segments 0 and 1: no shift
    code = (segment << 4) | mantissa
    return (np.where(x >= 0, code | _SIGN, code) ^ _ALAW_INVERT).astype(np.uint8)


def encode_ulaw(pcm16: bytes) -> bytes:
    """PCM16LE bytes (an even count) to μ-law bytes, one per sample."""
    codes: npt.NDArray[np.uint8] = _ulaw_encode_table()[np.frombuffer(pcm16, dtype="<u2")]
    return codes.tobytes()


def encode_alaw(pcm16: bytes) -> bytes:
    """PCM16LE bytes (an even count) to A-law bytes, one per sample."""
    codes: npt.NDArray[np.uint8] = _alaw_encode_table()[np.frombuffer(pcm16, dtype="<u2")]
    return codes.tobytes()
