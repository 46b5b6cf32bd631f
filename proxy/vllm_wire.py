"""Facts of vLLM 0.32.0's realtime server with Voxtral Mini 4B Realtime that the proxy relies on.

Each one is pinned by the end-to-end tests against the real ``vllm serve`` (tests/e2e).
"""

from __future__ import annotations

# One model step (one token, one ``transcription.delta``) per 80 ms frame of audio.
FRAME_MS = 80
# 80 ms of the 16 kHz mono PCM16 audio vLLM takes.
FRAME_BYTES = 2560
# Frames of silence vLLM puts before an utterance's first audio.
LEFT_PAD_FRAMES = 32


def right_pad_frames(delay_ms: int) -> int:
    """Frames of silence vLLM adds after the audio on a final commit: the delay, one frame for
    the BOS token, and 10 more so the model can finish a word cut by the end of the audio."""
    return delay_ms // FRAME_MS + 11
