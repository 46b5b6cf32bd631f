"""What the Pipecat client scripts share: the pipeline's audio rate and 20 ms frames, and a run
of Pipecat's own test helper (a pipeline of the service alone) that prints the frames kept.

The scripts run as files in the compat env, so they import this module as a sibling.
"""

from __future__ import annotations

import json
from typing import Any

from pipecat.frames.frames import InputAudioRawFrame
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import run_test

RATE = 16_000
FRAME_BYTES = RATE // 50 * 2  # 20 ms


def audio_frames(audio: bytes) -> list[InputAudioRawFrame]:
    """``audio`` (mono PCM16 at RATE) as the pipeline's 20 ms input frames (a partial last one
    left out)."""
    return [
        InputAudioRawFrame(audio=audio[i : i + FRAME_BYTES], sample_rate=RATE, num_channels=1)
        for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)
    ]


async def run_and_print(service: Any, frames: list[Any], kept: tuple[type, ...]) -> None:
    """Runs ``frames`` through ``service`` and prints {"frames": [{"type", "text"?}, ...]}: the
    frames of the ``kept`` classes it pushed, down then up, in order."""
    down, up = await run_test(
        service,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_in_sample_rate=RATE),
    )
    shown = []
    for frame in [*down, *up]:
        if isinstance(frame, kept):
            entry: dict[str, Any] = {"type": type(frame).__name__}
            text = getattr(frame, "text", None) or getattr(frame, "error", None)
            if text is not None:
                entry["text"] = text
            shown.append(entry)
    print(json.dumps({"frames": shown}))
