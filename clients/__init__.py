"""Client library and tools for the Yap Voxtral STT envelope protocol (`/api/asr-streaming`)."""

from clients.audio import (
    CHUNK_BYTES,
    SAMPLE_RATE,
    TELEPHONY_FORMAT,
    AudioError,
    load_audio,
    load_pcm,
    paced_chunks,
)
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
    "TELEPHONY_FORMAT",
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
    "load_audio",
    "load_pcm",
    "paced_chunks",
]
