"""Times through the real proxy and the fake vLLM (which plays vLLM's token clock): audio_ms of
every delta, segments at pauses and usage.audio_seconds on done, session.update's pause."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from devtools.fake_vllm import FRAME_BYTES, predict_deltas
from proxy.audio_format import NATIVE
from tests.harness import assert_error, chunks, connected, fake_and_proxy, load_pcm

MS = 32  # bytes of 16 kHz PCM16 per millisecond
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
SHORT = load_pcm("short.wav")
MID = load_pcm("mid.wav")


def expected_times(pcm: bytes, *, delay_ms: int = 480) -> list[tuple[str, int]]:
    """(text, audio_ms) of each delta with text: step k sits at k * 80 ms, clamped to the end."""
    return [
        (text, min(k * 80, len(pcm) // MS))
        for k, text in enumerate(predict_deltas(pcm, delay_ms=delay_ms))
        if text
    ]


async def transcribe(
    pcm: bytes,
    *,
    update: dict[str, Any] | None = None,
    delay_ms: int = 480,
    max_model_len: int = 131072,
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Streams one utterance; returns (delta, audio_ms) of each delta and done's payload."""
    fake = {"transcription_delay_ms": delay_ms, "max_model_len": max_model_len}
    async with (
        fake_and_proxy(fake, transcription_delay_ms=delay_ms) as (_, proxy),
        connected(proxy) as client,
    ):
        if update is not None:
            await client.send("session.update", "u1", update)
            assert (await client.recv())["type"] == "session.updated"
        await client.utterance("r1", pcm)
        events = await client.recv_until("transcription.done", "r1")
    deltas = [
        (e["payload"]["delta"], e["payload"]["audio_ms"])
        for e in events
        if e["type"] == "transcription.delta"
    ]
    return deltas, events[-1]["payload"]


@pytest.mark.parametrize("delay_ms", [80, 480, 2400])
async def test_every_delta_has_the_audio_ms_of_its_step(delay_ms: int) -> None:
    deltas, done = await transcribe(SHORT, delay_ms=delay_ms)
    assert deltas == expected_times(SHORT, delay_ms=delay_ms)
    assert done["text"] == "".join(text for text, _ in deltas)


async def test_a_word_finished_in_the_right_padding_is_clamped_to_the_audio_end() -> None:
    # Lengths whose first right-padding step finishes a word (the fake decides from the audio).
    cuts = [n * FRAME_BYTES + 640 for n in range(10, 60)]
    cut = next(c for c in cuts if predict_deltas(MID[:c])[-(-c // FRAME_BYTES)])
    pcm = MID[:cut]
    deltas, done = await transcribe(pcm)
    end_ms = len(pcm) // MS
    assert deltas[-1][1] == end_ms
    assert deltas == expected_times(pcm)
    assert done["segments"][-1]["end_ms"] == end_ms


async def test_done_carries_the_audio_seconds_and_vllms_token_counts() -> None:
    _deltas, done = await transcribe(MID)
    assert done["audio_ms"] == len(MID) // MS
    assert done["usage"]["audio_seconds"] == len(MID) // MS / 1000
    steps = len(predict_deltas(MID))
    assert done["usage"]["completion_tokens"] == steps
    assert done["usage"]["prompt_tokens"] == 39


def speech_with_pauses() -> bytes:
    """3.2 s of speech, 1 s of silence, 1.6 s of speech, 0.4 s of silence, 2.4 s of speech."""
    first, second, third = (
        MID[: 40 * FRAME_BYTES],
        MID[40 * FRAME_BYTES : 60 * FRAME_BYTES],
        MID[-30 * FRAME_BYTES :],
    )
    return first + bytes(1000 * MS) + second + bytes(400 * MS) + third


def split_at_pauses(pcm: bytes, pause_ms: int) -> list[dict[str, Any]]:
    """The segments of ``pcm``'s predicted deltas, split where at least ``pause_ms`` of steps
    without text lie between two with text."""
    end = len(pcm) // MS
    segments: list[dict[str, Any]] = []
    last_end = None
    for text, start in expected_times(pcm):
        stop = min(start + 80, end)
        if last_end is None or start - last_end >= pause_ms:
            segments.append({"text": "", "start_ms": start, "end_ms": stop})
        segments[-1]["text"] += text
        segments[-1]["end_ms"] = last_end = stop
    return segments


async def test_segments_split_at_the_pauses() -> None:
    pcm = speech_with_pauses()
    _, done = await transcribe(pcm)
    segments = done["segments"]
    assert segments == split_at_pauses(pcm, 480)
    assert "".join(s["text"] for s in segments) == done["text"]
    # The 1 s of silence after 3.2 s of speech splits there.
    gaps = [(a["end_ms"], b["start_ms"]) for a, b in itertools.pairwise(segments)]
    assert any(end <= 3200 and start >= 4200 for end, start in gaps)


async def test_a_session_sets_its_own_pause() -> None:
    pcm = speech_with_pauses()
    _, default = await transcribe(pcm)
    _, long_pause = await transcribe(pcm, update={"segment_pause_ms": 60000})
    _, short_pause = await transcribe(pcm, update={"segment_pause_ms": 80})
    assert long_pause["segments"] == split_at_pauses(pcm, 60000)
    assert len(long_pause["segments"]) == 1
    assert short_pause["segments"] == split_at_pauses(pcm, 80)
    assert len(short_pause["segments"]) > len(default["segments"]) > 1


async def test_the_pause_from_the_environment_and_session_update() -> None:
    async with fake_and_proxy(segment_pause_ms=960) as (_, proxy), connected(proxy) as client:
        await client.send("session.update", "u1", {"segment_pause_ms": 1200, "model": MODEL})
        updated = await client.recv()
        assert updated["payload"] == {
            "model": MODEL,
            "segment_pause_ms": 1200,
            "audio": NATIVE.as_payload(),
            "turn_detection": None,
        }
        for bad in (0, 79, 60001, 480.5, "480", True):
            await client.send("session.update", "u2", {"segment_pause_ms": bad})
            assert_error(await client.recv(), "invalid_message", "u2")
        await client.send("session.update", "u3", {"segment_pause_ms": 480, "model": "other"})
        assert_error(await client.recv(), "unsupported_model", "u3")
        # Refused updates changed nothing.
        await client.send("session.update", "u4", {"model": MODEL})
        assert (await client.recv())["payload"]["segment_pause_ms"] == 1200


async def test_a_rolled_over_utterance_keeps_counting_from_its_first_sample() -> None:
    """At max_model_len 128 the proxy cuts a segment every 77 frames; each segment's steps
    count again from 0, at the audio where the previous one ended."""
    segment_bytes = (128 - 39 - 12) * FRAME_BYTES
    pcm = MID[: 200 * FRAME_BYTES]
    deltas, done = await transcribe(pcm, max_model_len=128)
    expected = []
    for index, segment in enumerate(chunks(pcm, segment_bytes)):
        offset = index * segment_bytes // MS
        expected += [(text, offset + ms) for text, ms in expected_times(segment)]
    assert deltas == expected
    assert done["usage"]["completion_tokens"] == sum(
        len(predict_deltas(segment)) for segment in chunks(pcm, segment_bytes)
    )
    assert done["usage"]["audio_seconds"] == len(pcm) // MS / 1000
