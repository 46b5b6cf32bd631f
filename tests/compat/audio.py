"""The speech the compat tests send, in the formats their clients send: 24 kHz PCM16 (OpenAI's
rate), 8 kHz μ-law, and 16 kHz PCM16 (a Pipecat pipeline's rate)."""

from __future__ import annotations

import numpy as np
import soxr

from clients.audio import encode_pcm16
from proxy.audio_format import Encoding
from tests.speech import SAMPLE_RATE, spoken_recording


def speech_16k(trailer_s: float = 1.5) -> bytes:
    """Half a second of quiet, the short spoken clip, then ``trailer_s`` of quiet (long enough
    for server VAD to end the turn)."""
    return spoken_recording(("short",), lead_s=0.5, trailer_s=trailer_s).pcm


def resampled(pcm16k: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm16k, dtype="<i2")
    out = soxr.resample(samples, SAMPLE_RATE, rate)
    return np.asarray(out, dtype="<i2").tobytes()


def speech_24k(trailer_s: float = 1.5) -> bytes:
    return resampled(speech_16k(trailer_s), 24_000)


def speech_ulaw_8k(trailer_s: float = 1.5) -> bytes:
    return encode_pcm16(resampled(speech_16k(trailer_s), 8_000), Encoding.G711_ULAW)
