"""LiveKit Agents' OpenAI STT plugin (realtime mode), unchanged, with only its base URL pointed at
us. With one of OpenAI's server-endpointed models (the README's) our server VAD drives
START/END_OF_SPEECH and usage carries the item's duration; with gpt-realtime-whisper (the
plugin's realtime default) the plugin's own VAD commits each turn. Either way the final transcript
is what the fake vLLM makes of the audio, and a changed option re-sends session.update on the
same socket, after which the next utterance is transcribed as well."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fake_vllm import predict_text
from tests.compat.audio import speech_24k
from tests.compat.harness import CompatStack, run_client, upstream_utterances

pytestmark = pytest.mark.compat


@pytest.mark.parametrize(
    ("model", "server_vad"), [("gpt-4o-transcribe", True), ("gpt-realtime-whisper", False)]
)
async def test_livekit_stream_over_a_reconfigured_socket(
    client_env: Path, stack: CompatStack, tmp_path: Path, model: str, server_vad: bool
) -> None:
    path = tmp_path / "speech.raw"
    path.write_bytes(speech_24k())
    result = await run_client(
        client_env,
        "livekit_stt",
        f"{stack.http_url}/v1",
        stack.key,
        model,
        str(path),
        stack=stack,
    )
    utterances = result["utterances"]
    sent = upstream_utterances(stack.fake)
    assert len(utterances) == len(sent) == 2
    for events, pcm in zip(utterances, sent, strict=True):
        kinds = [event["type"] for event in events]
        assert kinds.index("start_of_speech") < kinds.index("end_of_speech")
        assert kinds[-1] == "recognition_usage"
        finals = [event for event in events if event["type"] == "final_transcript"]
        assert [event["text"] for event in finals] == [predict_text(pcm)]
        assert finals[0]["text"].strip()
        # The plugin takes an item's duration from our speech_started/stopped.
        assert (events[-1]["audio_duration"] > 0) is server_vad
    # Both utterances went over one client socket (whose ?model= was accepted).
    opened = [line for line in stack.lines if "session_opened" in line]
    assert len(opened) == 1, opened
    assert '"protocol": "openai"' in opened[0]
