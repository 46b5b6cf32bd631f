"""Tests for the fake vLLM realtime server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devtools.fake_vllm import FRAME_BYTES, FakeVllm, predict_deltas, predict_text

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
ROOT = Path(__file__).resolve().parents[2]
SHORT_WAV = ROOT / "samples" / "short.wav"
SPEECH = SHORT_WAV.read_bytes()[44:]  # canonical 44-byte WAV header, then PCM16LE 16 kHz mono
GUARD_S = 5.0  # hang guard for a single expected event


def speech(seconds: float, offset_s: float = 0.0) -> bytes:
    start = int(offset_s * 16000) * 2
    return SPEECH[start : start + int(seconds * 16000) * 2]


def noise(seconds: float, seed: int = 1) -> bytes:
    """Deterministic non-silent PCM of any length (the sample is only 5.7 s long)."""
    out = bytearray()
    state = seed
    while len(out) < int(seconds * 16000) * 2:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out += (state >> 8 & 0x7FFF).to_bytes(2, "little")
    return bytes(out)


def expected_total(pcm: bytes) -> int:
    """floor((A - 2.5) / 80) + 11 with A the audio length in ms."""
    ms = len(pcm) / 32
    return int((ms - 2.5) // 80) + 11


class Client:
    """A thin test client for the upstream protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def update(self, model: str = MODEL) -> None:
        await self.send({"type": "session.update", "model": model})

    async def commit(self, final: bool | None = None) -> None:
        event: dict[str, Any] = {"type": "input_audio_buffer.commit"}
        if final is not None:
            event["final"] = final
        await self.send(event)

    async def append(self, pcm: bytes, chunk: int = 3200) -> None:
        for i in range(0, len(pcm), chunk):
            audio = base64.b64encode(pcm[i : i + chunk]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})

    async def recv(self, limit_s: float = GUARD_S) -> dict[str, Any]:
        async with asyncio.timeout(limit_s):
            raw = await self.ws.recv()
        assert isinstance(raw, str)
        event = json.loads(raw)
        assert isinstance(event, dict)
        return event

    async def quiet(self, seconds: float = 0.3) -> None:
        """Assert that nothing arrives for `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                raw = await self.ws.recv()
        except TimeoutError:
            return
        pytest.fail(f"unexpected event: {raw!r}")

    async def deltas(self, count: int) -> list[str]:
        out = []
        for _ in range(count):
            event = await self.recv()
            assert event["type"] == "transcription.delta", event
            out.append(event["delta"])
        return out

    async def until_done(self) -> tuple[list[str], dict[str, Any]]:
        deltas: list[str] = []
        while True:
            event = await self.recv()
            if event["type"] == "transcription.done":
                return deltas, event
            assert event["type"] == "transcription.delta", event
            deltas.append(event["delta"])

    async def error(self) -> str:
        event = await self.recv()
        assert event["type"] == "error", event
        assert set(event) == {"type", "error", "code"}
        assert isinstance(event["error"], str)
        code = event["code"]
        assert isinstance(code, str)
        return code

    async def closed_code(self) -> int | None:
        try:
            async with asyncio.timeout(GUARD_S):
                while True:
                    await self.ws.recv()
        except ConnectionClosed:
            return self.ws.close_code


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll the fake's counters (they have no events to wait on)."""
    async with asyncio.timeout(GUARD_S):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def open_client(fake: FakeVllm, *, validated: bool = True) -> Client:
    client = Client(await connect(fake.url))
    created = await client.recv()
    assert created["type"] == "session.created"
    if validated:
        await client.update()
    return client


async def utterance(client: Client, pcm: bytes) -> tuple[list[str], dict[str, Any]]:
    await client.commit()
    await client.append(pcm)
    await client.commit(final=True)
    return await client.until_done()


# -- happy path and arithmetic ---------------------------------------------------------------


async def test_session_created_shape(fake: FakeVllm) -> None:
    async with connect(fake.url) as ws:
        raw = await ws.recv()
        assert isinstance(raw, str)
        assert re.fullmatch(
            r'\{"type":"session\.created","id":"sess-[0-9a-f]{16}","created":\d+\}', raw
        )
        event = json.loads(raw)
        assert abs(event["created"] - time.time()) < 60
    assert fake.connections_total == 1


@pytest.mark.parametrize("seconds", [0.3, 0.5, 1.0, 2.0, 3.614])
async def test_happy_path_counts_and_usage(fake: FakeVllm, seconds: float) -> None:
    pcm = speech(seconds)
    client = await open_client(fake)
    deltas, done = await utterance(client, pcm)
    total = expected_total(pcm)
    assert len(deltas) == total
    assert done["text"] == "".join(deltas) == predict_text(pcm)
    assert deltas == predict_deltas(pcm)
    assert done["usage"] == {
        "prompt_tokens": 39,
        "total_tokens": 39 + total,
        "completion_tokens": total,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    await client.ws.close()


async def test_known_counts_from_the_reference(fake: FakeVllm) -> None:
    # Counts observed on the real server: 0.3 s -> 14, 0.5 s -> 17, 1.0 s -> 23, 2.0 s -> 35.
    client = await open_client(fake)
    for seconds, count in [(0.3, 14), (0.5, 17), (1.0, 23), (2.0, 35)]:
        deltas, done = await utterance(client, speech(seconds))
        assert len(deltas) == count == done["usage"]["completion_tokens"]
    assert fake.generations_completed == 4


async def test_done_is_compact_json(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.commit()
    await client.append(speech(0.5))
    await client.commit(final=True)
    async with asyncio.timeout(GUARD_S):
        while True:
            raw = await client.ws.recv()
            assert isinstance(raw, str)
            if '"transcription.done"' in raw:
                break
    assert raw.startswith('{"type":"transcription.done","text":')
    assert raw.endswith(
        '"usage":{"prompt_tokens":39,"total_tokens":56,"completion_tokens":17,'
        '"prompt_tokens_details":null,"completion_tokens_details":null}}'
    )


async def test_deltas_before_final_follow_the_audio(fake: FakeVllm) -> None:
    pcm = speech(1.0)
    client = await open_client(fake)
    await client.commit()
    await client.append(pcm)
    before = await client.deltas(6)  # floor((1000 - 2.5) / 80) - 6
    await client.quiet()
    assert before == predict_deltas(pcm, final=False)
    await client.commit(final=True)
    after, done = await client.until_done()
    assert len(after) == 17
    assert done["text"] == "".join(before + after) == predict_text(pcm)


async def test_first_delta_needs_delay_plus_one_frame(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.commit()
    await client.append(speech(0.56))  # 560 ms: floor(557.5 / 80) - 6 = 0
    await client.quiet()
    await client.append(speech(0.0025, offset_s=0.56))  # up to 562.5 ms: exactly one token
    assert len(await client.deltas(1)) == 1
    await client.quiet()


async def test_transcript_looks_like_text(fake: FakeVllm) -> None:
    pcm = speech(5.0)
    client = await open_client(fake)
    deltas, done = await utterance(client, pcm)
    words = [d for d in deltas if d]
    assert 0.25 < len(words) / len(deltas) < 0.75  # about half the deltas are empty
    assert all(re.fullmatch(r" [a-z]+", w) for w in words)
    assert done["text"] == predict_text(pcm)
    assert predict_text(pcm) != predict_text(speech(5.0, offset_s=0.5))


async def test_silence_gives_empty_deltas(fake: FakeVllm) -> None:
    pcm = bytes(32000)  # 1 s of digital silence
    client = await open_client(fake)
    deltas, done = await utterance(client, pcm)
    assert len(deltas) == 23
    assert set(deltas) == {""}
    assert done["text"] == ""


@pytest.mark.parametrize("pcm", [speech(2.0), bytes(32000)], ids=["speech", "silence"])
async def test_a_word_every_step_when_asked(fake: FakeVllm, pcm: bytes) -> None:
    fake.word_every_step = True
    client = await open_client(fake)
    deltas, done = await utterance(client, pcm)
    frames = -(-len(pcm) // FRAME_BYTES)
    # Every step with audio writes a word, silence too; the right padding stays empty.
    assert all(re.fullmatch(r" [a-z]+", d) for d in deltas[:frames])
    assert deltas == predict_deltas(pcm, every_step=True)
    assert done["text"] == "".join(deltas)
    assert deltas[:frames] != predict_deltas(pcm)[:frames]


async def test_predict_deltas_pure_function() -> None:
    pcm = speech(2.0)
    assert predict_deltas(pcm) == predict_deltas(bytes(pcm))
    assert len(predict_deltas(pcm)) == expected_total(pcm)
    assert len(predict_deltas(pcm, final=False)) == expected_total(pcm) - 17
    assert predict_deltas(b"") == []
    assert predict_deltas(speech(0.3), final=False) == []
    # Tokens depend on their own frame only: a longer utterance starts with the same tokens.
    assert predict_deltas(speech(3.0))[:24] == predict_deltas(pcm)[:24]
    # Tokens past the end of the audio (flush silence) are empty after the first one.
    assert set(predict_deltas(pcm)[len(pcm) // FRAME_BYTES + 1 :]) == {""}
    assert predict_deltas(pcm, max_model_len=39 + 5) == predict_deltas(pcm)[:5]


async def test_the_first_right_padding_step_sometimes_finishes_a_word(fake: FakeVllm) -> None:
    """As the real model often does: the step just past the audio carries text for some
    audio (a function of its last frame), and every later padding step is empty."""
    lengths = [0.5 + 0.08 * n + 0.02 for n in range(30)]
    tails = {}
    for seconds in lengths:
        pcm = speech(seconds)
        frames = -(-len(pcm) // FRAME_BYTES)
        predicted = predict_deltas(pcm)
        tails[seconds] = predicted[frames]
        assert set(predicted[frames + 1 :]) == {""}
    assert 0 < sum(1 for tail in tails.values() if tail) < len(lengths)
    # The fake sends what is predicted, the padding word included.
    seconds = next(s for s, tail in tails.items() if tail)
    client = await open_client(fake)
    deltas, done = await utterance(client, speech(seconds))
    assert deltas == predict_deltas(speech(seconds))
    assert done["text"].endswith(tails[seconds])
    # Silence finishes no word.
    assert set(predict_deltas(bytes(len(speech(seconds))))) == {""}


async def test_other_delay() -> None:
    pcm = speech(1.0)
    async with FakeVllm(transcription_delay_ms=160) as fake:
        client = await open_client(fake)
        await client.commit()
        await client.append(pcm)
        before = await client.deltas(10)  # floor(997.5 / 80) - 2
        await client.quiet()
        await client.commit(final=True)
        after, done = await client.until_done()
    assert len(before) + len(after) == 23
    assert done["usage"]["prompt_tokens"] == 35
    assert done["usage"]["total_tokens"] == 58
    assert before + after == predict_deltas(pcm, delay_ms=160)


async def test_append_before_commit_is_consumed(fake: FakeVllm) -> None:
    pcm = speech(1.0)
    client = await open_client(fake)
    await client.append(pcm)
    await client.commit()
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert len(deltas) == 23
    assert done["text"] == predict_text(pcm)


async def test_several_utterances_per_socket(fake: FakeVllm) -> None:
    client = await open_client(fake)
    for offset in (0.0, 1.0, 2.0):
        pcm = speech(0.5, offset_s=offset)
        deltas, done = await utterance(client, pcm)
        assert len(deltas) == 17
        assert done["text"] == predict_text(pcm)
    assert fake.generations_started == fake.generations_completed == 3
    assert fake.open_connections == 1


async def test_empty_utterance(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.commit()
    await client.commit(final=True)
    event = await client.recv()
    assert event == {
        "type": "transcription.done",
        "text": "",
        "usage": {
            "prompt_tokens": 0,
            "total_tokens": 0,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    deltas, _ = await utterance(client, speech(0.5))
    assert len(deltas) == 17


async def test_session_update_is_never_answered(fake: FakeVllm) -> None:
    client = await open_client(fake, validated=False)
    await client.send({"type": "session.update", "model": MODEL, "temperature": 0.7})
    await client.quiet()
    assert fake.received == [(1, {"type": "session.update", "model": MODEL, "temperature": 0.7})]


async def test_empty_model_name_is_accepted(fake: FakeVllm) -> None:
    client = await open_client(fake, validated=False)
    await client.update("")
    deltas, _ = await utterance(client, speech(0.5))
    assert len(deltas) == 17


async def test_validation_is_sticky(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.update("nope")
    assert await client.error() == "model_not_found"
    deltas, _ = await utterance(client, speech(0.5))
    assert len(deltas) == 17


async def test_second_commit_during_generation_is_ignored(fake: FakeVllm) -> None:
    pcm = speech(1.0)
    client = await open_client(fake)
    await client.commit()
    await client.append(pcm[:16000])
    await client.commit()
    await client.append(pcm[16000:])
    await client.commit(final=True)
    deltas, _ = await client.until_done()
    assert len(deltas) == 23
    assert fake.generations_started == 1
    await client.quiet()


# -- errors ---------------------------------------------------------------------------------


async def test_commit_before_update_is_refused(fake: FakeVllm) -> None:
    client = await open_client(fake, validated=False)
    await client.commit()
    assert await client.error() == "model_not_validated"
    await client.commit(final=True)
    assert await client.error() == "model_not_validated"
    assert fake.generations_started == 0


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "session.update"}, "invalid_event"),
        ({"type": "session.update", "model": None}, "invalid_event"),
        ({"type": "session.update", "model": "nope"}, "model_not_found"),
        ({"type": "response.create"}, "unknown_event"),
        ({"type": "input_audio_buffer.clear"}, "unknown_event"),
        ({"model": MODEL}, "unknown_event"),
        ({"type": "input_audio_buffer.append", "audio": ""}, "invalid_audio"),
        ({"type": "input_audio_buffer.append", "audio": "!!!"}, "invalid_audio"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, "invalid_audio"),  # 3 bytes
        ({"type": "input_audio_buffer.append"}, "processing_error"),
        ({"type": "input_audio_buffer.commit", "final": "maybe"}, "processing_error"),
    ],
)
async def test_error_codes(fake: FakeVllm, event: dict[str, Any], code: str) -> None:
    client = await open_client(fake, validated=False)
    await client.send(event)
    assert await client.error() == code
    await client.quiet(0.1)  # exactly one reply, and the socket stays open
    await client.update()
    deltas, _ = await utterance(client, speech(0.5))
    assert len(deltas) == 17


async def test_error_texts(fake: FakeVllm) -> None:
    client = await open_client(fake, validated=False)
    await client.update("nope")
    assert (await client.recv())["error"] == "The model `nope` does not exist."
    await client.send({"type": "session.update"})
    assert (await client.recv())["error"] == "Missing required field: model"
    await client.send({"type": "response.create"})
    assert (await client.recv())["error"] == "Unknown event type: response.create"
    await client.send({})
    assert (await client.recv())["error"] == "Unknown event type: None"
    await client.ws.send("{not json")
    assert await client.recv() == {"type": "error", "error": "Invalid JSON", "code": "invalid_json"}


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", "42", "null"])
async def test_non_object_frames(fake: FakeVllm, raw: str) -> None:
    client = await open_client(fake, validated=False)
    await client.ws.send(raw)
    expected = "invalid_json" if raw.startswith("{") else "processing_error"
    assert await client.error() == expected
    assert fake.received == []


async def test_invalid_audio_mid_utterance_drops_only_that_chunk(fake: FakeVllm) -> None:
    pcm = speech(1.0)
    client = await open_client(fake)
    await client.commit()
    await client.append(pcm[:16000])
    await client.send({"type": "input_audio_buffer.append", "audio": "AAAA"})
    await client.append(pcm[16000:])
    await client.commit(final=True)
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "transcription.done":
        events.append(await client.recv())
    assert [e["code"] for e in events if e["type"] == "error"] == ["invalid_audio"]
    deltas = [e["delta"] for e in events if e["type"] == "transcription.delta"]
    assert len(deltas) == 23
    assert events[-1]["text"] == predict_text(pcm)


async def test_binary_frame_drops_the_connection(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.ws.send(b"\x00\x01")
    assert await client.closed_code() == 1006
    client2 = await open_client(fake)
    deltas, _ = await utterance(client2, speech(0.5))
    assert len(deltas) == 17


# -- queue quirks -----------------------------------------------------------------------------


async def test_final_without_commit_produces_nothing_until_a_commit(fake: FakeVllm) -> None:
    pcm = speech(1.0)
    client = await open_client(fake)
    await client.append(pcm)
    await client.commit(final=True)
    await client.quiet()
    await client.commit()
    deltas, done = await client.until_done()
    assert len(deltas) == 23
    assert done["text"] == predict_text(pcm)


async def test_stray_final_poisons_the_next_utterance(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.commit(final=True)  # no generation running: leaves an end marker behind
    await client.quiet(0.1)
    await client.commit()
    event = await client.recv()
    assert event["type"] == "transcription.done"
    assert event["text"] == ""
    assert event["usage"]["total_tokens"] == event["usage"]["prompt_tokens"] == 0
    pcm = speech(0.5)
    deltas, done = await utterance(client, pcm)
    assert len(deltas) == 17
    assert done["text"] == predict_text(pcm)


async def test_audio_sent_before_done_is_wiped() -> None:
    # A slow flush makes sure the early audio arrives before `done`.
    async with FakeVllm(step_delay_s=0.02) as fake:
        client = await open_client(fake)
        await client.commit()
        await client.append(speech(1.0))
        await client.commit(final=True)
        await client.append(speech(1.0, offset_s=1.0))  # meant for the next utterance: lost
        deltas, _ = await client.until_done()
        assert len(deltas) == 23
        pcm = speech(0.5, offset_s=3.0)
        deltas, done = await utterance(client, pcm)
        assert len(deltas) == 17
        assert done["text"] == predict_text(pcm)


async def test_audio_sent_after_done_stays_queued(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await utterance(client, speech(0.5))
    early = speech(0.5, offset_s=1.0)
    await client.append(early)
    later = speech(0.5, offset_s=2.0)
    deltas, done = await utterance(client, later)
    assert len(deltas) == expected_total(early + later) == 23
    assert done["text"] == predict_text(early + later)


async def test_max_model_len_rollover() -> None:
    async with FakeVllm(max_model_len=128) as fake:
        client = await open_client(fake)
        await client.commit()
        pcm = noise(96 * 0.08)  # 96 frames: floor(7677.5 / 80) - 6 = 89 = 128 - 39
        await client.append(pcm)
        deltas, done = await client.until_done()  # no final was sent
        assert len(deltas) == 89
        assert done["usage"]["completion_tokens"] == 89
        assert done["usage"]["total_tokens"] == 128
        assert done["text"] == "".join(predict_deltas(pcm, max_model_len=128))
        # Later appends and a final just queue up until the next non-final commit.
        rest = speech(0.5)
        await client.append(rest)
        await client.commit(final=True)
        await client.quiet()
        await client.commit()
        deltas, done = await client.until_done()
        assert len(deltas) == 17
        assert done["text"] == predict_text(rest)
        assert fake.generations_completed == 2


async def test_max_model_len_wipes_unread_audio() -> None:
    async with FakeVllm(max_model_len=128) as fake:
        client = await open_client(fake)
        long = noise(8.0)
        await client.append(long, chunk=len(long))  # one chunk: reaches the cap
        await client.append(speech(1.0))  # still queued when the cap is hit: wiped
        await client.commit()
        deltas, done = await client.until_done()
        assert done["usage"]["total_tokens"] == 128
        assert len(deltas) == 89
        await client.commit()
        await client.commit(final=True)
        event = await client.recv()
        assert event["type"] == "transcription.done"
        assert event["usage"]["completion_tokens"] == 0
        assert fake.generations_aborted == 0


async def test_client_disconnect_aborts_generation(fake: FakeVllm) -> None:
    client = await open_client(fake)
    await client.commit()
    await client.append(speech(1.0))
    await client.deltas(6)
    await client.ws.close()
    await wait_until(lambda: fake.open_connections == 0)
    assert fake.generations_aborted == 1
    client2 = await open_client(fake)
    deltas, _ = await utterance(client2, speech(0.5))
    assert len(deltas) == 17
    assert fake.connections_total == 2


# -- fault switches ---------------------------------------------------------------------------


async def test_fail_after_deltas(fake: FakeVllm) -> None:
    fake.fail_after_deltas = 3
    first, second = speech(1.0), speech(0.5, offset_s=2.0)
    client = await open_client(fake)
    await client.append(first, chunk=len(first))  # one chunk: the generation fails while reading it
    await client.append(second, chunk=len(second))  # left in the queue by the failure
    await client.commit()
    assert await client.deltas(3) == predict_deltas(first, final=False)[:3]
    assert await client.error() == "processing_error"
    await client.quiet()
    assert fake.generations_failed == 1
    fake.fail_after_deltas = None
    # The queue was not cleared: the next generation starts with the audio left behind.
    await client.commit()
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert len(deltas) == 17
    assert done["text"] == predict_text(second)


async def test_fail_after_deltas_stays_armed(fake: FakeVllm) -> None:
    fake.fail_after_deltas = 0
    client = await open_client(fake)
    for _ in range(2):
        await client.commit()
        assert await client.error() == "processing_error"
    assert fake.generations_failed == 2


async def test_die_after_deltas(fake: FakeVllm) -> None:
    fake.die_after_deltas = 2
    bystander = await open_client(fake)
    client = await open_client(fake)
    await client.commit()
    await client.append(speech(1.0))
    assert len(await client.deltas(2)) == 2
    assert await client.closed_code() == 1006
    assert await bystander.closed_code() == 1006
    assert fake.deaths == 1
    assert getattr(fake, "die_after_deltas") is None  # one-shot  # noqa: B009 (defeats narrowing)
    await wait_until(lambda: fake.open_connections == 0)
    assert fake.generations_aborted == 1
    client2 = await open_client(fake)
    deltas, _ = await utterance(client2, speech(0.5))
    assert len(deltas) == 17


async def test_hang_and_resume(fake: FakeVllm) -> None:
    fake.hang()
    client = Client(await connect(fake.url))
    await client.quiet()  # not even session.created
    await client.update()
    await client.commit()
    pcm = speech(1.0)
    await client.append(pcm)
    await client.commit(final=True)
    await client.quiet()
    await wait_until(lambda: len(fake.received) == 3 + len(pcm) // 3200)  # still reading
    fake.resume()
    assert (await client.recv())["type"] == "session.created"
    deltas, done = await client.until_done()
    assert len(deltas) == 23
    assert done["text"] == predict_text(pcm)


async def test_hang_mid_utterance(fake: FakeVllm) -> None:
    pcm = speech(2.0)
    client = await open_client(fake)
    await client.commit()
    await client.append(pcm[:32000])
    await client.deltas(6)
    fake.hang()
    await client.append(pcm[32000:])
    await client.quiet()
    fake.resume()
    await client.commit(final=True)
    deltas, done = await client.until_done()
    assert len(deltas) == 35 - 6
    assert done["text"] == predict_text(pcm)


async def test_step_delay_keeps_results() -> None:
    pcm = speech(0.5)
    async with FakeVllm(step_delay_s=0.005) as fake:
        client = await open_client(fake)
        deltas, _ = await utterance(client, pcm)
    assert deltas == predict_deltas(pcm)


@pytest.mark.parametrize(("code", "expected"), [(None, 1006), (1012, 1012)])
async def test_kill_connections(fake: FakeVllm, code: int | None, expected: int) -> None:
    clients = [await open_client(fake) for _ in range(2)]
    await clients[0].commit()
    await clients[0].append(speech(1.0))
    await clients[0].deltas(6)
    await fake.kill_connections(code)
    for client in clients:
        assert await client.closed_code() == expected
    await wait_until(lambda: fake.open_connections == 0)
    assert fake.generations_aborted == 1
    client = await open_client(fake)
    deltas, _ = await utterance(client, speech(0.5))
    assert len(deltas) == 17


@pytest.mark.parametrize(("code", "expected"), [(None, 1006), (1012, 1012)])
async def test_kill_connection_spares_the_others(
    fake: FakeVllm, code: int | None, expected: int
) -> None:
    first, second = await open_client(fake), await open_client(fake)
    await fake.kill_connection(1, code)
    assert await first.closed_code() == expected
    await wait_until(lambda: fake.open_connections == 1)
    deltas, _ = await utterance(second, speech(0.5))
    assert len(deltas) == 17
    await fake.kill_connection(1)  # no longer open: ignored
    await fake.kill_connection(99)


async def test_stop_closes_sockets_with_1012() -> None:
    fake = FakeVllm()
    await fake.start()
    client = await open_client(fake)
    await fake.stop()
    assert await client.closed_code() == 1012
    with pytest.raises(ConnectionRefusedError):
        await connect(fake.url, open_timeout=GUARD_S)


async def test_restart_on_the_same_port() -> None:
    fake = FakeVllm()
    await fake.start()
    try:
        url = fake.url
        client = await open_client(fake)
        await fake.stop()
        assert await client.closed_code() == 1012
        await fake.start()
        assert fake.url == url
        client = await open_client(fake)
        deltas, _ = await utterance(client, speech(0.3))
        assert len(deltas) == 14
        assert fake.connections_total == 2
    finally:
        await fake.stop()


async def test_max_num_seqs_stalls_the_excess(fake: FakeVllm) -> None:
    fake.max_num_seqs = 1
    first, second = speech(1.0), speech(1.0, offset_s=2.0)
    a = await open_client(fake)
    b = await open_client(fake)
    await a.commit()
    await a.append(first)
    assert len(await a.deltas(6)) == 6
    await b.commit()
    await b.append(second)
    await b.commit(final=True)
    await b.quiet(0.5)  # waiting for a slot: no deltas and no error
    await a.commit(final=True)
    _, done_a = await a.until_done()
    assert done_a["text"] == predict_text(first)
    deltas, done_b = await b.until_done()
    assert len(deltas) == 23
    assert done_b["text"] == predict_text(second)


async def test_raising_max_num_seqs_releases_waiters(fake: FakeVllm) -> None:
    fake.max_num_seqs = 0
    client = await open_client(fake)
    await client.commit()
    await client.append(speech(0.5))
    await client.commit(final=True)
    await client.quiet()
    fake.max_num_seqs = None
    deltas, _ = await client.until_done()
    assert len(deltas) == 17


# -- HTTP -----------------------------------------------------------------------------------


async def test_http_endpoints(fake: FakeVllm) -> None:
    async with httpx.AsyncClient(base_url=fake.http_url, timeout=GUARD_S) as http:
        health = await http.get("/health")
        assert health.status_code == 200
        assert health.content == b""
        fake.healthy = False
        assert (await http.get("/health")).status_code == 503
        fake.healthy = True
        assert (await http.get("/health")).status_code == 200
        models = await http.get("/v1/models")
        assert models.status_code == 200
        assert models.headers["content-type"] == "application/json"
        assert models.json() == {
            "object": "list",
            "data": [
                {
                    "id": MODEL,
                    "object": "model",
                    "root": "/models/fake",
                    "max_model_len": 131072,
                }
            ],
        }
        assert (await http.get("/nope")).status_code == 404
    assert fake.url == f"ws://127.0.0.1:{fake.port}/v1/realtime"
    assert fake.http_url == f"http://127.0.0.1:{fake.port}"


async def test_advertised_max_model_len_differs_from_the_enforced_one() -> None:
    async with FakeVllm(max_model_len=128) as fake:
        fake.advertised_max_model_len = 4096
        async with httpx.AsyncClient(timeout=GUARD_S) as http:
            data = (await http.get(f"{fake.http_url}/v1/models")).json()["data"]
        assert data[0]["max_model_len"] == 4096
        pcm = noise(8.0)
        client = await open_client(fake)
        deltas, done = await utterance(client, pcm)
        assert len(deltas) == 128 - 39 < len(predict_deltas(pcm))  # still cut at 128
        assert done["text"] == "".join(deltas)
        fake.advertised_max_model_len = None
        async with httpx.AsyncClient(timeout=GUARD_S) as http:
            data = (await http.get(f"{fake.http_url}/v1/models")).json()["data"]
        assert data[0]["max_model_len"] == 128


async def test_websocket_on_other_path_is_404(fake: FakeVllm) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{fake.port}/v1/other", open_timeout=GUARD_S)
    assert info.value.response.status_code == 404
    assert fake.connections_total == 0


async def test_custom_served_name() -> None:
    async with FakeVllm(served_model_name="other/model", max_model_len=2048) as fake:
        client = await open_client(fake, validated=False)
        await client.update(MODEL)
        assert await client.error() == "model_not_found"
        await client.update("other/model")
        deltas, _ = await utterance(client, speech(0.3))
        assert len(deltas) == 14
        async with httpx.AsyncClient(timeout=GUARD_S) as http:
            data = (await http.get(f"{fake.http_url}/v1/models")).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in data] == [("other/model", 2048)]


async def test_command_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.fake_vllm",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode().strip()
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1/realtime", line)
        async with connect(line) as ws:
            client = Client(ws)
            assert (await client.recv())["type"] == "session.created"
            await client.update()
            deltas, _ = await utterance(client, speech(0.3))
            assert len(deltas) == 14
            proc.send_signal(signal.SIGTERM)
            assert await client.closed_code() == 1012
        async with asyncio.timeout(GUARD_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
