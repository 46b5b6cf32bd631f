"""Turn detection on the real vLLM (CPU, tiny model): audio streamed without commits comes back as
one utterance per spoken turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.flow import UTTERANCE_LIMIT_S, check_done, session
from tests.e2e.stack import Stack
from tests.harness import FRAME_BYTES, b64, chunks
from tests.speech import PCM_BYTES_PER_MS, spoken_recording

pytestmark = pytest.mark.vllm


async def test_a_two_turn_recording_gives_two_done(stack: Stack) -> None:
    recording = spoken_recording(("short", "short"), lead_s=0.5, trailer_s=1.0)
    async with session(stack, "turns", "turn_detection=server_vad") as (client, created):
        assert created["payload"]["turn_detection"]["type"] == "server_vad"
        for piece in chunks(recording.pcm, 4 * FRAME_BYTES):
            await client.send("input_audio_buffer.append", None, {"audio": b64(piece)})
            await asyncio.sleep(len(piece) / PCM_BYTES_PER_MS / 1000 / 4)
        events: list[dict[str, Any]] = await client.recv_until(
            "transcription.done", "turn-2", 2 * UTTERANCE_LIMIT_S
        )
    for request_id in ("turn-1", "turn-2"):
        mine = [e["type"] for e in events if e["request_id"] == request_id]
        assert [k for k in mine if k != "transcription.delta"] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "transcription.done",
        ]
        utterance = [e for e in events if not e["type"].startswith("input_audio_buffer.")]
        done = [e for e in utterance if e["request_id"] == request_id][-1]["payload"]
        check_done(utterance, request_id, done["audio_ms"])
