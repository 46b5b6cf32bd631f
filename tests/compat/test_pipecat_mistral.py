"""Pipecat's MistralSTTService, unchanged, with only its base URL pointed at us, through Pipecat's
own run_test helper: two turns in one session, each ended by the pipeline's VAD (a flush), each
giving one final transcription."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fake_vllm import predict_text
from proxy.protocols.mistral import MISTRAL_MODELS
from tests.compat.audio import speech_16k
from tests.compat.harness import CompatStack, run_client, upstream_utterances

pytestmark = pytest.mark.compat


async def test_a_transcription_frame_per_flush(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    audio = speech_16k()
    path = tmp_path / "speech.raw"
    path.write_bytes(audio)
    result = await run_client(
        client_env,
        "pipecat_mistral_stt",
        stack.http_url,
        stack.key,
        MISTRAL_MODELS[0],
        str(path),
        stack=stack,
    )
    frames = result["frames"]
    assert [f for f in frames if f["type"] == "ErrorFrame"] == []
    sent = upstream_utterances(stack.fake)
    assert len(sent) == 2
    finals = [f["text"] for f in frames if f["type"] == "TranscriptionFrame"]
    assert finals == [predict_text(pcm) for pcm in sent]
    assert all(final.strip() for final in finals)
    # Interim frames carry the text so far of the turn: the last of each turn is its final.
    interims = [f["text"] for f in frames if f["type"] == "InterimTranscriptionFrame"]
    assert finals[0] in interims
    assert finals[1] in interims
