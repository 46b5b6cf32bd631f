"""The OpenAI SDK (openai-python's realtime client), unchanged, against WS /v1/realtime: every
frame it receives is valid for the SDK's own model of its type, and the transcripts are what the
fake vLLM makes of the audio that reached it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_vllm import predict_text
from tests.compat.audio import speech_24k, speech_ulaw_8k
from tests.compat.harness import CompatStack, run_client, upstream_utterances

pytestmark = pytest.mark.compat

COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


async def run(
    env: Path, stack: CompatStack, tmp_path: Path, scenario: str, audio: bytes, model: str
) -> list[dict[str, Any]]:
    return (await run_full(env, stack, tmp_path, scenario, audio, model))["frames"]


async def run_full(
    env: Path, stack: CompatStack, tmp_path: Path, scenario: str, audio: bytes, model: str
) -> dict[str, Any]:
    path = tmp_path / "audio.raw"
    path.write_bytes(audio)
    result = await run_client(
        env,
        "openai_sdk",
        f"{stack.http_url}/v1",
        stack.key,
        scenario,
        str(path),
        model,
        stack=stack,
    )
    assert result["invalid"] == [], result["invalid"]
    frames: list[dict[str, Any]] = result["frames"]
    assert frames[0]["type"] == "session.created"
    event_ids = [frame["event_id"] for frame in frames]
    assert len(set(event_ids)) == len(event_ids)
    assert [f["type"] for f in frames].count("session.updated") == 1
    return result


def of_type(frames: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


def the_item(frames: Sequence[dict[str, Any]]) -> str:
    """The one item_id every item event names."""
    items = {frame["item_id"] for frame in frames if "item_id" in frame}
    assert len(items) == 1, items
    return items.pop()


def check_transcript(frames: Sequence[dict[str, Any]], expected_pcm: bytes) -> None:
    (completed,) = of_type(frames, COMPLETED)
    deltas = of_type(frames, DELTA)
    assert all(d["delta"] for d in deltas)
    assert completed["transcript"] == "".join(d["delta"] for d in deltas)
    assert completed["transcript"] == predict_text(expected_pcm)
    assert completed["transcript"].strip()
    assert completed["usage"]["type"] == "duration"
    assert completed["usage"]["seconds"] > 0


async def test_commit_mode(client_env: Path, stack: CompatStack, tmp_path: Path) -> None:
    audio = speech_24k()
    frames = await run(client_env, stack, tmp_path, "commit", audio, "gpt-realtime-whisper")
    updated = of_type(frames, "session.updated")[0]["session"]["audio"]["input"]
    assert updated["turn_detection"] is None
    assert updated["transcription"]["model"] == "gpt-realtime-whisper"
    assert of_type(frames, "error") == []
    (committed,) = of_type(frames, "input_audio_buffer.committed")
    item_frames = [f for f in frames if "item_id" in f]
    assert the_item(item_frames) == committed["item_id"]
    assert committed["previous_item_id"] is None
    (sent,) = upstream_utterances(stack.fake)
    check_transcript(frames, sent)
    (completed,) = of_type(frames, COMPLETED)
    assert completed["usage"]["seconds"] == pytest.approx(len(audio) / 48_000, abs=0.01)


async def test_pcmu_with_server_vad(client_env: Path, stack: CompatStack, tmp_path: Path) -> None:
    frames = await run(
        client_env, stack, tmp_path, "pcmu_vad", speech_ulaw_8k(), "gpt-4o-mini-transcribe"
    )
    updated = of_type(frames, "session.updated")[0]["session"]["audio"]["input"]
    assert updated["format"] == {"type": "audio/pcmu"}
    assert updated["turn_detection"]["type"] == "server_vad"
    assert updated["turn_detection"]["silence_duration_ms"] == 500
    assert of_type(frames, "error") == []
    kinds = [f["type"] for f in frames if "item_id" in f]
    assert kinds[0] == "input_audio_buffer.speech_started"
    assert kinds[-1] == COMPLETED
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index(
        "input_audio_buffer.committed"
    )
    the_item([f for f in frames if "item_id" in f])
    (started,) = of_type(frames, "input_audio_buffer.speech_started")
    (stopped,) = of_type(frames, "input_audio_buffer.speech_stopped")
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
    (sent,) = upstream_utterances(stack.fake)
    check_transcript(frames, sent)


async def test_an_empty_commit_is_refused_and_the_session_goes_on(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    frames = await run(
        client_env, stack, tmp_path, "empty_commit", speech_24k(), "gpt-realtime-whisper"
    )
    (error,) = of_type(frames, "error")
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["event_id"] == "client-commit-1"
    (sent,) = upstream_utterances(stack.fake)
    check_transcript(frames, sent)


async def test_clear_drops_the_buffered_audio(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    audio = speech_24k()
    frames = await run(client_env, stack, tmp_path, "clear", audio, "gpt-realtime-whisper")
    assert of_type(frames, "error") == []
    assert len(of_type(frames, "input_audio_buffer.cleared")) == 1
    (completed,) = of_type(frames, COMPLETED)
    # Only the audio sent after the clear is transcribed: the item has its full duration.
    assert completed["usage"]["seconds"] == pytest.approx(len(audio) / 48_000, abs=0.01)
    check_transcript(
        [f for f in frames if f.get("item_id") == completed["item_id"]],
        upstream_utterances(stack.fake)[-1],
    )


async def test_a_client_secret_minted_by_the_sdk_opens_a_session(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    result = await run_full(
        client_env, stack, tmp_path, "secret", speech_24k(), "gpt-realtime-whisper"
    )
    assert result["secret"]["value"].startswith("ek_")
    assert result["secret"]["session"]["audio"]["input"]["turn_detection"] is None
    (sent,) = upstream_utterances(stack.fake)
    check_transcript(result["frames"], sent)
