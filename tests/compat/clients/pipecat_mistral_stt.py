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
import sys
from pathlib import Path
from typing import Any

from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.services.mistral.stt import MistralSTTService
from pipecat.tests.utils import SleepFrame
from pipecat_run import audio_frames, run_and_print

KEPT = (TranscriptionFrame, InterimTranscriptionFrame, ErrorFrame)


async def main(audio: bytes) -> None:
    base_url, key, model = sys.argv[1:4]
    service = MistralSTTService(
        api_key=key, base_url=base_url, settings=MistralSTTService.Settings(model=model)
    )
    turn = [
        VADUserStartedSpeakingFrame(),
        *audio_frames(audio),
        VADUserStoppedSpeakingFrame(),
        SleepFrame(sleep=2.0),
    ]
    # The service connects when the pipeline starts; its first audio waits for that.
    frames: list[Any] = [SleepFrame(sleep=0.5), *turn, *turn]
    await run_and_print(service, frames, KEPT)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
