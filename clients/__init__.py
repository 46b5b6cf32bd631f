"""Client library and tools for the Yap Voxtral STT envelope protocol (`/api/asr-streaming`)."""

from clients.audio import CHUNK_BYTES, SAMPLE_RATE, AudioError, load_pcm, paced_chunks
from clients.client import (
    ClientError,
    ClientTimeout,
    CloseInfo,
    ProtocolError,
    SessionInfo,
    Utterance,
    UtteranceResult,
    VoxtralClient,
    build_url,
)
from clients.timing import UtteranceTimings

__all__ = [
    "CHUNK_BYTES",
    "SAMPLE_RATE",
    "AudioError",
    "ClientError",
    "ClientTimeout",
    "CloseInfo",
    "ProtocolError",
    "SessionInfo",
    "Utterance",
    "UtteranceResult",
    "UtteranceTimings",
    "VoxtralClient",
    "build_url",
    "load_pcm",
    "paced_chunks",
]
