"""Pipecat's OpenAIRealtimeSTTService, pointed at our server by its base URL, run through
Pipecat's own test helper (a pipeline of the service alone).

    pipecat_stt.py WS_URL KEY MODEL AUDIO_FILE MODE

WS_URL is ws://HOST:PORT/v1/realtime; AUDIO_FILE is 16 kHz mono PCM16 (the pipeline's rate;
the service resamples to 24 kHz). MODE "local": the pipeline's VAD ends the turn (a
VADUserStoppedSpeakingFrame after the audio), the service commits. MODE "server_vad": the
service asks for server VAD; the audio ends with silence and nothing else.

Prints {"frames": [{"type": frame class, "text"?: ...}, ...]}: the transcription, turn and error
frames the service pushed, in order.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.tests.utils import SleepFrame
from pipecat_run import FRAME_BYTES, RATE, audio_frames, run_and_print

KEPT = (
    TranscriptionFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    ErrorFrame,
)


async def main(audio: bytes) -> None:
    ws_url, key, model, _, mode = sys.argv[1:6]
    turn_detection: dict[str, Any] | bool = (
        {"type": "server_vad", "silence_duration_ms": 500} if mode == "server_vad" else False
    )
    service = OpenAIRealtimeSTTService(
        api_key=key,
        base_url=ws_url,
        turn_detection=turn_detection,
        settings=OpenAIRealtimeSTTService.Settings(model=model),
    )
    # Audio flows from the pipeline's start at real-time pace, as a live transport's does: its
    # first frames reach the server before the service's session.update.
    paced: list[Any] = []
    for frame in audio_frames(audio):
        paced += [frame, SleepFrame(sleep=FRAME_BYTES / 2 / RATE)]
    # Then time for the last transcript before run_test ends the pipeline (a hang guard: the
    # fake answers within milliseconds).
    frames: list[Any]
    if mode == "server_vad":
        frames = [*paced, SleepFrame(sleep=5.0)]
    else:
        frames = [
            VADUserStartedSpeakingFrame(),
            *paced,
            VADUserStoppedSpeakingFrame(),
            SleepFrame(sleep=5.0),
        ]
    await run_and_print(service, frames, KEPT)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
