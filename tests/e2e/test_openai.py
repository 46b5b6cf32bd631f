"""The OpenAI SDK, unchanged, through the shared stack to the real vLLM: every frame valid for
the SDK's own models, one item committed and completed once, its duration the client's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat import env_path
from tests.compat.audio import speech_24k
from tests.compat.harness import ClientFailed, run_client
from tests.e2e.stack import Stack

pytestmark = [pytest.mark.vllm, pytest.mark.compat]

COMPLETED = "conversation.item.input_audio_transcription.completed"


async def test_the_openai_sdk_against_the_real_vllm(stack: Stack, tmp_path: Path) -> None:
    env = env_path.compat_env()
    audio = speech_24k(trailer_s=0.5)
    path = tmp_path / "speech.raw"
    path.write_bytes(audio)
    try:
        result = await run_client(
            env,
            "openai_sdk",
            f"{stack.http_url}/v1",
            stack.api_key,
            "commit",
            str(path),
            "gpt-realtime-whisper",
            guard_s=240.0,
        )
    except ClientFailed as failed:
        raise AssertionError(f"{failed}\n--- stack\n{stack.log_tail()}") from None
    assert result["invalid"] == [], result["invalid"]
    frames = result["frames"]
    kinds = [frame["type"] for frame in frames]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert "error" not in kinds
    (completed,) = [frame for frame in frames if frame["type"] == COMPLETED]
    (committed,) = [frame for frame in frames if frame["type"] == "input_audio_buffer.committed"]
    assert committed["item_id"] == completed["item_id"]
    deltas = [frame["delta"] for frame in frames if frame["type"].endswith(".delta")]
    assert all(deltas)
    assert completed["transcript"] == "".join(deltas)
    assert completed["usage"]["seconds"] == pytest.approx(len(audio) / 48_000, abs=0.01)
