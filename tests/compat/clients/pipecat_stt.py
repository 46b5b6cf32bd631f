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
import json
import sys
from pathlib import Path
from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.tests.utils import SleepFrame, run_test

RATE = 16_000
FRAME_BYTES = RATE // 50 * 2  # 20 ms
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
    audio_frames: list[Any] = []
    for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
        chunk = audio[i : i + FRAME_BYTES]
        audio_frames += [
            InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1),
            SleepFrame(sleep=FRAME_BYTES / 2 / RATE),
        ]
    # Then time for the last transcript before run_test ends the pipeline (a hang guard: the
    # fake answers within milliseconds).
    frames: list[Any]
    if mode == "server_vad":
        frames = [*audio_frames, SleepFrame(sleep=5.0)]
    else:
        frames = [
            VADUserStartedSpeakingFrame(),
            *audio_frames,
            VADUserStoppedSpeakingFrame(),
            SleepFrame(sleep=5.0),
        ]
    down, up = await run_test(
        service,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_in_sample_rate=RATE),
    )
    kept = []
    for frame in [*down, *up]:
        if isinstance(frame, KEPT):
            entry: dict[str, Any] = {"type": type(frame).__name__}
            text = getattr(frame, "text", None) or getattr(frame, "error", None)
            if text is not None:
                entry["text"] = text
            kept.append(entry)
    print(json.dumps({"frames": kept}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
