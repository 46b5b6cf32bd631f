"""Pipecat's OpenAIRealtimeSTTService, unchanged, with only its base URL pointed at us, through
Pipecat's own run_test helper: interim and final transcription frames, with the pipeline's VAD
committing the turn and with server VAD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devtools.fake_vllm import predict_text
from tests.compat.audio import speech_16k
from tests.compat.harness import CompatStack, run_client, upstream_utterances

pytestmark = pytest.mark.compat


async def frames_of(
    env: Path, stack: CompatStack, tmp_path: Path, mode: str
) -> list[dict[str, Any]]:
    path = tmp_path / "speech.raw"
    path.write_bytes(speech_16k())
    result = await run_client(
        env,
        "pipecat_stt",
        f"{stack.ws_url}/v1/realtime",
        stack.key,
        "gpt-realtime-whisper",
        str(path),
        mode,
        stack=stack,
    )
    frames: list[dict[str, Any]] = result["frames"]
    assert [f for f in frames if f["type"] == "ErrorFrame"] == []
    (sent,) = upstream_utterances(stack.fake)
    finals = [f["text"] for f in frames if f["type"] == "TranscriptionFrame"]
    assert finals == [predict_text(sent)]
    assert finals[0].strip()
    interims = [f["text"] for f in frames if f["type"] == "InterimTranscriptionFrame"]
    assert interims
    assert "".join(interims) == finals[0]
    return frames


async def test_the_pipelines_vad_commits_the_turn(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    await frames_of(client_env, stack, tmp_path, "local")


async def test_server_vad_proposes_the_turns(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    frames = await frames_of(client_env, stack, tmp_path, "server_vad")
    kinds = {f["type"] for f in frames}
    assert {"ProposedUserStartedSpeakingFrame", "ProposedUserStoppedSpeakingFrame"} <= kinds
