"""Mistral's SDK (mistralai's realtime transcription), unchanged, against
WS /v1/audio/transcriptions/realtime: every frame passes the SDK's own model for its type, and
the transcripts are what the fake vLLM makes of the audio that reached it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.fake_vllm import predict_text
from proxy.protocols.mistral import MISTRAL_MODELS
from tests.compat.audio import speech_16k, speech_ulaw_8k
from tests.compat.harness import CompatStack, compat_stack, run_client, upstream_utterances
from tests.speech import spoken_recording

pytestmark = pytest.mark.compat

MODEL = MISTRAL_MODELS[0]
DONE = "transcription.done"
DELTA = "transcription.text.delta"
SEGMENT = "transcription.segment"


async def run(
    env: Path,
    stack: CompatStack,
    tmp_path: Path,
    scenario: str,
    audio: bytes,
    model: str = MODEL,
    *extra: str,
    key: str | None = None,
) -> dict[str, Any]:
    path = tmp_path / "audio.raw"
    path.write_bytes(audio)
    result = await run_client(
        env,
        "mistral_sdk",
        stack.http_url,
        key or stack.key,
        scenario,
        str(path),
        model,
        *extra,
        stack=stack,
    )
    assert result.get("invalid", []) == [], result["invalid"]
    return result


def of_type(events: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


def utterances(events: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events of each done, in order: the deltas and segments before it, and the done."""
    groups: list[list[dict[str, Any]]] = [[]]
    for event in events:
        if event["type"] in (DELTA, SEGMENT, DONE):
            groups[-1].append(event)
        if event["type"] == DONE:
            groups.append([])
    return groups[:-1]


def check_utterance(events: Sequence[dict[str, Any]], pcm16k: bytes, audio_s: float) -> None:
    """Deltas and segments, then the done: each segment comes once all of its text has (when a
    pause closes it, or at the end); the done's text is the deltas joined and what the fake
    predicts; its segments are the segment events; its usage counts whole seconds."""
    kinds = [event["type"] for event in events]
    assert kinds[-1] == DONE
    assert DONE not in kinds[:-1]
    delivered, segmented = "", ""
    for event in events[:-1]:
        if event["type"] == DELTA:
            delivered += event["text"]
        else:
            segmented += event["text"]
            assert segmented == delivered
    done = events[-1]
    deltas = of_type(events, DELTA)
    assert done["text"] == "".join(d["text"] for d in deltas) == predict_text(pcm16k)
    assert done["text"].strip()
    assert done["model"] == MODEL
    assert "language" in done
    assert done["language"] is None
    assert done["usage"]["prompt_audio_seconds"] == round(audio_s)
    assert done["usage"]["prompt_tokens"] > 0
    segments = of_type(events, SEGMENT)
    assert segments
    assert [
        {"text": s["text"], "start": s["start"], "end": s["end"]} for s in done["segments"]
    ] == [{"text": s["text"], "start": s["start"], "end": s["end"]} for s in segments]
    assert "".join(s["text"] for s in segments).strip() == done["text"].strip()


def session_of(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    assert events[0]["type"] == "session.created"
    session: dict[str, Any] = events[0]["session"]
    assert session["request_id"]  # the connection id of the log lines
    assert session["model"] == MODEL
    return session


async def test_transcribe_stream(client_env: Path, stack: CompatStack, tmp_path: Path) -> None:
    audio = speech_16k()
    result = await run(client_env, stack, tmp_path, "stream", audio)
    events = result["events"]
    session_of(events)
    assert of_type(events, "error") == []
    (updated,) = of_type(events, "session.updated")
    assert updated["session"]["audio_format"] == {"encoding": "pcm_s16le", "sample_rate": 16000}
    # transcribe_stream stops at the first done: the flush's, with the whole text.
    (group,) = utterances(events)
    sent = [pcm for pcm in upstream_utterances(stack.fake) if pcm]
    assert sent[0] == audio
    check_utterance(group, audio, len(audio) / 32_000)


async def test_mulaw_8k(client_env: Path, stack: CompatStack, tmp_path: Path) -> None:
    audio = speech_ulaw_8k()
    result = await run(client_env, stack, tmp_path, "ulaw", audio)
    events = result["events"]
    assert session_of(events)["audio_format"] == {"encoding": "pcm_s16le", "sample_rate": 16000}
    (updated,) = of_type(events, "session.updated")
    assert updated["session"]["audio_format"] == {"encoding": "pcm_mulaw", "sample_rate": 8000}
    (group,) = utterances(events)
    sent = [pcm for pcm in upstream_utterances(stack.fake) if pcm]
    check_utterance(group, sent[0], len(audio) / 8_000)


async def test_flush_keeps_the_session_and_end_closes_it(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    audio = speech_16k()
    result = await run(client_env, stack, tmp_path, "flush_end", audio)
    events = result["events"]
    assert result["closed"] is True
    assert of_type(events, "error") == []
    first, second = utterances(events)
    sent = upstream_utterances(stack.fake)
    assert sent == [audio, audio]
    check_utterance(first, audio, len(audio) / 32_000)
    check_utterance(second, audio, len(audio) / 32_000)


async def test_end_right_after_a_flush_is_answered_by_an_empty_done(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    # transcribe_stream sends flush then end and stops reading at the first done; a browser
    # session (the token scenario) reads on: its end, after the flush's done, gets a done too.
    audio = speech_16k()
    result = await run(client_env, stack, tmp_path, "token", audio, MODEL, MISTRAL_MODELS[1])
    first = result["sessions"][0]
    dones = of_type(first["events"], DONE)
    assert [d["text"] for d in dones] == [predict_text(audio), ""]
    assert dones[1]["segments"] == []
    assert dones[1]["usage"]["prompt_audio_seconds"] == 0
    assert first["close_code"] == 1000


async def test_a_client_session_token_is_reusable_and_bound_to_its_model(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    audio = speech_16k()
    result = await run(client_env, stack, tmp_path, "token", audio, MODEL, MISTRAL_MODELS[1])
    session = result["session"]
    assert session["purpose"] == "realtime"
    assert session["object"] == "client.session"
    assert session["client_secret"]["value"].startswith("rt_")
    assert 100 < result["ttl_left_s"] <= 125
    first, second, other = result["sessions"]
    for opened in (first, second):
        assert opened["subprotocol"] == "realtime"
        session_of(opened["events"])
        assert of_type(opened["events"], "error") == []
        assert of_type(opened["events"], DONE)[0]["text"] == predict_text(audio)
    (error,) = other["events"]
    assert error["type"] == "error"
    assert error["error"]["code"] == 4001
    assert "another model" in error["error"]["message"]
    assert other["close_code"] == 4001


async def test_a_wrong_model_is_refused_naming_the_accepted_ones(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    result = await run(client_env, stack, tmp_path, "refused", speech_16k(), "whisper-1")
    assert result["raised"] == "RealtimeTranscriptionWSError"
    assert (result["payload"], result["code"]) == ("RealtimeTranscriptionError", 4103)
    assert "'whisper-1' is not served here" in result["message"]
    for name in (stack.proxy.config.served_model_name, *MISTRAL_MODELS):
        assert name in result["message"]


async def test_a_wrong_key_is_refused(client_env: Path, stack: CompatStack, tmp_path: Path) -> None:
    result = await run(client_env, stack, tmp_path, "refused", speech_16k(), key="not-the-key-0000")
    assert result["raised"] == "RealtimeTranscriptionWSError"
    assert (result["payload"], result["code"]) == ("RealtimeTranscriptionError", 4001)
    assert "Wrong API key" in result["message"]
    assert "not-the-key" not in "".join(stack.lines)


async def test_a_delay_not_served_is_refused_and_the_session_goes_on(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    result = await run(client_env, stack, tmp_path, "refused", speech_16k(), MODEL, "delay")
    assert result["raised"] is None
    events = result["events"]
    session_of(events)
    (error,) = of_type(events, "error")
    assert error["error"]["code"] == 4101
    assert "target_streaming_delay_ms=960 is not served" in error["error"]["message"]
    assert "480" in error["error"]["message"]


async def test_aliases_and_the_served_name_are_accepted(client_env: Path, tmp_path: Path) -> None:
    async with compat_stack(MODEL_ALIASES="my-stt", STRICT_MODEL_NAMES="1") as stack:
        result = await run(client_env, stack, tmp_path, "refused", speech_16k(), MODEL)
        assert result["raised"] == "RealtimeTranscriptionWSError"
        assert "my-stt" in result["message"]
        result = await run(client_env, stack, tmp_path, "refused", speech_16k(), "my-stt", "delay")
        assert result["raised"] is None
        assert result["events"][0]["session"]["model"] == "my-stt"


async def test_a_pause_closes_a_segment_before_the_text_after_it(
    client_env: Path, stack: CompatStack, tmp_path: Path
) -> None:
    audio = spoken_recording(("short", "short"), lead_s=0.5, gap_s=1.5, trailer_s=1.0).pcm
    result = await run(client_env, stack, tmp_path, "stream", audio)
    (group,) = utterances(result["events"])
    check_utterance(group, audio, len(audio) / 32_000)
    kinds = [event["type"] for event in group]
    assert kinds.count(SEGMENT) >= 2
    # The first segment came while the utterance went on: text followed it.
    assert DELTA in kinds[kinds.index(SEGMENT) :]
