"""Test signals in every audio format, and how to measure what arrives: a pure tone, its client
bytes, the tone's signal-to-noise ratio and frequency at 16 kHz, and the audio vLLM should
receive and did receive."""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

from clients.audio import encode_pcm16
from devtools.fake_vllm import FakeVllm
from proxy.audio_convert import AudioConverter
from proxy.audio_format import NATIVE, AudioFormat, Encoding

UPSTREAM_RATE = NATIVE.sample_rate
# The telephony formats the tests send most.
ULAW_8K = AudioFormat(Encoding.G711_ULAW, 8000, 1)
ALAW_8K = AudioFormat(Encoding.G711_ALAW, 8000, 1)
Int16s = npt.NDArray[np.int16]


def tone(rate: int, hz: float, seconds: float, amplitude: float = 16384.0) -> Int16s:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * hz * t + 0.25)).astype(np.int16)


def encode(fmt: AudioFormat, left: Int16s, right: Int16s | None = None) -> bytes:
    """Mono samples (or a left and right channel) as client bytes in `fmt`."""
    if fmt.channels == 2:
        frames = np.empty(left.size * 2, dtype="<i2")
        frames[0::2] = left
        frames[1::2] = left if right is None else right
    else:
        frames = left.astype("<i2")
    return encode_pcm16(frames.tobytes(), fmt.encoding)


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    """16 kHz PCM16LE as float samples."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def tone_snr_db(y: npt.NDArray[np.float64], hz: float) -> float:
    """Signal to noise and distortion of a pure tone at 16 kHz: the best-fitting sinusoid at
    `hz` is the signal, everything else is noise. 20 ms at each end are left out."""
    edge = UPSTREAM_RATE // 50
    y = y[edge:-edge]
    t = np.arange(y.size) / UPSTREAM_RATE
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    fit = basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    return float(10 * np.log10(np.mean(fit**2) / np.mean((y - fit) ** 2)))


def dominant_hz(y: npt.NDArray[np.float64]) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / UPSTREAM_RATE)[int(spectrum.argmax())])


def converted(fmt: AudioFormat, parts: list[bytes]) -> bytes:
    """What vLLM should receive for `parts` sent in `fmt`, converted independently of the
    proxy's stream."""
    converter = AudioConverter(fmt)
    out = [chunk for part in parts for chunk in converter.feed(part)]
    return b"".join(out + converter.flush())


def upstream_audio(fake: FakeVllm) -> bytes:
    """Every byte of audio the fake vLLM received, in order (one connection)."""
    return b"".join(
        base64.b64decode(event["audio"])
        for _, event in fake.received
        if event.get("type") == "input_audio_buffer.append"
    )
