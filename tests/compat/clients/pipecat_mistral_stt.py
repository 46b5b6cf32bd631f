"""Pipecat's MistralSTTService, pointed at our server by its base URL, run through Pipecat's own
test helper (a pipeline of the service alone): two spoken turns, each ended by the pipeline's VAD
(the service flushes), in one session.

    pipecat_mistral_stt.py BASE_URL KEY MODEL AUDIO_FILE

BASE_URL is http://HOST:PORT; AUDIO_FILE is 16 kHz mono PCM16 (the pipeline's rate).

Prints {"frames": [{"type": frame class, "text"?: ...}, ...]}: the transcription and error
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
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.mistral.stt import MistralSTTService
from pipecat.tests.utils import SleepFrame, run_test

RATE = 16_000
FRAME_BYTES = RATE // 50 * 2  # 20 ms
KEPT = (TranscriptionFrame, InterimTranscriptionFrame, ErrorFrame)


async def main(audio: bytes) -> None:
    base_url, key, model = sys.argv[1:4]
    service = MistralSTTService(
        api_key=key, base_url=base_url, settings=MistralSTTService.Settings(model=model)
    )
    audio_frames = [
        InputAudioRawFrame(audio=audio[i : i + FRAME_BYTES], sample_rate=RATE, num_channels=1)
        for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)
    ]
    turn = [
        VADUserStartedSpeakingFrame(),
        *audio_frames,
        VADUserStoppedSpeakingFrame(),
        SleepFrame(sleep=2.0),
    ]
    # The service connects when the pipeline starts; its first audio waits for that.
    frames: list[Any] = [SleepFrame(sleep=0.5), *turn, *turn]
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
