"""Audio formats and binary frames through the real proxy, against the fake vLLM: what vLLM
receives (16 kHz PCM16 mono whose spectrum and length match what the client sent), frames of
both kinds in order, every refusal, and format changes."""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from devtools.fake_vllm import predict_text
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS
from proxy.g711 import encode_ulaw
from proxy.vllm_wire import FRAME_BYTES, step_audio_bytes, steps_sent
from tests.harness import (
    Client,
    assert_error,
    b64,
    connected,
    fake_and_proxy,
    load_pcm,
    texts,
    wait_for,
)
from tests.tones import (
    ALAW_8K,
    ULAW_8K,
    UPSTREAM_RATE,
    converted,
    dominant_hz,
    encode,
    samples,
    tone,
    tone_snr_db,
    upstream_audio,
)

# Each encoding, resampling up and down (integer and fractional ratios), stereo with and without
# resampling, and vLLM's own format.
FORMATS = [
    ULAW_8K,
    ALAW_8K,
    AudioFormat(Encoding.G711_ALAW, 8000, 2),
    AudioFormat(Encoding.PCM16, 8000, 1),
    AudioFormat(Encoding.PCM16, 22050, 1),
    AudioFormat(Encoding.PCM16, 24000, 1),
    AudioFormat(Encoding.PCM16, 48000, 2),
    AudioFormat(Encoding.PCM16, 16000, 2),
    NATIVE,
]
TONE_HZ = 1000.0
TONE_S = 1.0
PIECE_MS = 20  # what phone providers send


def query(fmt: AudioFormat) -> str:
    return "&".join(f"{name}={value}" for name, value in fmt.query_params().items())


def pieces(fmt: AudioFormat, data: bytes, ms: int = PIECE_MS) -> list[bytes]:
    step = fmt.chunk_bytes(ms)
    return [data[i : i + step] for i in range(0, len(data), step)]


async def send_binary(client: Client, parts: list[bytes]) -> None:
    for part in parts:
        await client.send_raw(part)


def telephony_speech() -> bytes:
    """The short sample as 8 kHz μ-law (every other sample: the fake only hashes the audio)."""
    pcm = np.frombuffer(load_pcm(), dtype="<i2")[::2]
    return encode_ulaw(pcm.astype("<i2").tobytes())


# ---------------------------------------------------------------- each format end to end


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
async def test_a_1khz_tone_arrives_at_16khz_with_its_length(fmt: AudioFormat) -> None:
    sent = encode(fmt, tone(fmt.sample_rate, TONE_HZ, TONE_S))
    async with fake_and_proxy() as (fake, proxy), connected(proxy, query=query(fmt)) as client:
        await client.open("r1")
        await send_binary(client, pieces(fmt, sent))
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert [e for e in events if e["type"] == "error"] == []
    assert events[-1]["payload"]["audio_ms"] == TONE_S * 1000
    received = samples(upstream_audio(fake))
    # The resampler's tail flush gives the whole signal: the length is the input's, at 16 kHz.
    assert abs(received.size - TONE_S * UPSTREAM_RATE) <= 1
    assert abs(dominant_hz(received) - TONE_HZ) <= 2
    snr = tone_snr_db(received, TONE_HZ)
    assert snr >= (30 if fmt.encoding is not Encoding.PCM16 else 70), snr


async def test_session_created_and_updated_show_the_format_in_effect() -> None:
    async with fake_and_proxy() as (_, proxy):
        async with connected(proxy, expect_created=False, query=query(ULAW_8K)) as client:
            created = await client.recv()
            assert created["payload"]["audio"] == ULAW_8K.as_payload()
            await client.send("session.update", "u1", {"audio": {"format": "pcm16"}})
            updated = await client.recv()
        async with connected(proxy, expect_created=False) as client:
            created = await client.recv()
    assert updated["type"] == "session.updated"
    assert updated["payload"]["audio"] == NATIVE.as_payload()
    assert created["payload"]["audio"] == NATIVE.as_payload()


async def test_a_telephony_bridge_streaming_binary_ulaw_gets_its_done() -> None:
    speech = telephony_speech()
    parts = pieces(ULAW_8K, speech)
    async with (
        fake_and_proxy() as (fake, proxy),
        connected(proxy, query="audio_format=g711_ulaw&sample_rate=8000") as client,
    ):
        await client.open("call-1")
        await send_binary(client, parts)
        await client.final("call-1")
        events = await client.recv_until("transcription.done", "call-1")
    expected = converted(ULAW_8K, parts)
    assert upstream_audio(fake) == expected
    done = events[-1]["payload"]
    assert done["text"] == predict_text(expected)
    assert done["text"]
    assert done["audio_ms"] == ULAW_8K.duration_ms(len(speech))


SHAPES = [
    NATIVE,
    ULAW_8K,
    AudioFormat(Encoding.PCM16, 8000, 1),
    AudioFormat(Encoding.PCM16, 24000, 1),
    AudioFormat(Encoding.PCM16, 48000, 1),
]


@pytest.mark.parametrize("fmt", SHAPES, ids=str)
async def test_each_20_ms_frame_that_completes_a_step_reaches_vllm_before_the_next_is_sent(
    fmt: AudioFormat,
) -> None:
    # Nothing waits for a later frame: every step of vLLM's that a frame's audio (less the
    # resampler's 2 ms at most) completes has its audio at vLLM while the client still holds
    # the next frame. The frames in between wait for the one that completes a step, so vLLM
    # gets one append per step.
    parts = pieces(fmt, encode(fmt, tone(fmt.sample_rate, TONE_HZ, 1.2)))
    owed_slack = UPSTREAM_RATE * 2 * 2 // 1000
    async with fake_and_proxy() as (fake, proxy), connected(proxy, query=query(fmt)) as client:
        delay_ms = proxy.server.state.config.transcription_delay_ms
        await client.open("r1")
        sent = 0
        for part in parts:
            await client.send_raw(part)
            sent += len(part)
            owed = UPSTREAM_RATE * 2 * sent // fmt.bytes_per_second - owed_slack
            due = steps_sent(owed, delay_ms, final=False)
            await wait_for(
                lambda due=due: steps_sent(len(upstream_audio(fake)), delay_ms, final=False) >= due
            )
        steps = steps_sent(len(upstream_audio(fake)), delay_ms, final=False)
        appends = sum(1 for _, e in fake.received if e["type"] == "input_audio_buffer.append")
        await client.final("r1")
        await client.recv_until("transcription.done", "r1")
    assert steps == steps_sent(UPSTREAM_RATE * 2 * 12 // 10 - owed_slack, delay_ms, final=False)
    assert appends == steps
    assert len(upstream_audio(fake)) == UPSTREAM_RATE * 2 * sent // fmt.bytes_per_second


# ---------------------------------------------------------------- order


@pytest.mark.parametrize("fmt", [NATIVE, ULAW_8K], ids=str)
async def test_binary_and_json_appends_interleaved_arrive_in_order(fmt: AudioFormat) -> None:
    speech = load_pcm() if fmt.is_native else telephony_speech()
    parts = pieces(fmt, speech, 40)
    async with fake_and_proxy() as (fake, proxy), connected(proxy, query=query(fmt)) as client:
        await client.open("r1")
        for index, part in enumerate(parts):
            if index % 3 == 1:
                await client.append("r1", part)
            else:
                await client.send_raw(part)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    expected = speech if fmt.is_native else converted(fmt, parts)
    assert upstream_audio(fake) == expected
    assert "".join(texts(events, "r1")) == predict_text(expected)


async def test_native_json_appends_that_each_complete_a_step_go_up_verbatim() -> None:
    speech = load_pcm()
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.utterance("r1", speech)
        await client.recv_until("transcription.done", "r1")
    # The 80 ms appends before vLLM's first step go up together with the one that completes it;
    # from there each completes a step of its own and goes up as it came.
    first = step_audio_bytes(0, DEFAULT_TRANSCRIPTION_DELAY_MS)
    joined = -(-first // FRAME_BYTES) * FRAME_BYTES
    sent = [b64(speech[:joined])]
    sent += [b64(speech[i : i + FRAME_BYTES]) for i in range(joined, len(speech), FRAME_BYTES)]
    appends = [e["audio"] for _, e in fake.received if e["type"] == "input_audio_buffer.append"]
    assert appends == sent


# ---------------------------------------------------------------- format changes


async def test_the_format_changes_between_utterances() -> None:
    speech = load_pcm()
    ulaw = telephony_speech()
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.open("r1")
        await send_binary(client, pieces(NATIVE, speech))
        await client.final("r1")
        first = (await client.recv_until("transcription.done", "r1"))[-1]
        await client.send("session.update", "u1", {"audio": ULAW_8K.as_payload()})
        assert (await client.recv())["payload"]["audio"] == ULAW_8K.as_payload()
        await client.open("r2")
        await send_binary(client, pieces(ULAW_8K, ulaw))
        await client.final("r2")
        second = (await client.recv_until("transcription.done", "r2"))[-1]
    assert first["payload"]["audio_ms"] == NATIVE.duration_ms(len(speech))
    assert second["payload"]["audio_ms"] == ULAW_8K.duration_ms(len(ulaw))
    assert upstream_audio(fake) == speech + converted(ULAW_8K, pieces(ULAW_8K, ulaw))


@pytest.mark.parametrize("stage", ["open", "finalizing"])
async def test_a_format_change_during_an_utterance_is_refused(stage: str) -> None:
    speech = load_pcm()
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        if stage == "finalizing":
            fake.hang()  # the done waits until the update has been answered
        await client.utterance("r1", speech, final=stage == "finalizing")
        await client.send("session.update", "u1", {"audio": ULAW_8K.as_payload()})
        event = await client.recv()
        while event["type"] == "transcription.delta":
            event = await client.recv()
        payload = assert_error(event, "invalid_message", "u1")
        fake.resume()
        if stage == "open":
            await client.final("r1")
        done = (await client.recv_until("transcription.done", "r1"))[-1]
        # The same format again is no change: accepted at any time.
        await client.send("session.update", "u2", {"audio": NATIVE.as_payload()})
        updated = await client.recv()
    assert "between utterances" in payload["message"]
    assert done["payload"]["text"] == predict_text(speech)
    assert updated["payload"]["audio"] == NATIVE.as_payload()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("audio_format=opus", "audio_format"),
        ("audio_format=g711_ulaw&sample_rate=16000", "sample_rate"),
        ("sample_rate=96000", "sample_rate"),
        ("channels=6", "channels"),
    ],
)
async def test_an_unsupported_format_at_connect_is_refused_and_closed(
    params: str, field: str
) -> None:
    async with (
        fake_and_proxy() as (fake, proxy),
        connected(proxy, query=params, expect_created=False) as client,
    ):
        events, code = await client.recv_all_until_closed()
    assert len(events) == 1
    payload = assert_error(events[0], "unsupported_audio_format")
    assert payload["details"]["field"] == field
    assert payload["details"]["supported"]["format"] == ["pcm16", "g711_ulaw", "g711_alaw"]
    assert code == 1008
    assert fake.connections_total == 0  # refused before vLLM is asked for anything


@pytest.mark.parametrize(
    ("audio", "field"),
    [
        ({"format": "mp3"}, "audio.format"),
        ({"format": "g711_alaw", "sample_rate": 16000}, "audio.sample_rate"),
        ({"format": "pcm16", "sample_rate": 4000}, "audio.sample_rate"),
        ({"channels": 3}, "audio.channels"),
        ({"encoding": "pcm16"}, "audio.encoding"),
        ("pcm16", "audio"),
    ],
)
async def test_an_unsupported_format_in_session_update_is_refused(audio: Any, field: str) -> None:
    speech = load_pcm()
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("session.update", "u1", {"audio": audio})
        payload = assert_error(await client.recv(), "unsupported_audio_format", "u1")
        # The session goes on in its format.
        await client.open("r1")
        await send_binary(client, pieces(NATIVE, speech))
        await client.final("r1")
        done = (await client.recv_until("transcription.done", "r1"))[-1]
    assert payload["details"]["field"] == field
    assert done["payload"]["text"] == predict_text(speech)


async def test_a_binary_frame_with_nothing_open_is_no_active_request() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send_raw(b"\x00\x01" * 160)
        payload = assert_error(await client.recv(), "no_active_request")
        await client.utterance("r1", load_pcm())
        done = (await client.recv_until("transcription.done", "r1"))[-1]
        await client.send_raw(b"\x00\x01" * 160)  # after the final commit: nothing open
        after = assert_error(await client.recv(), "no_active_request")
    assert "binary frame" in payload["message"]
    assert after["message"] == payload["message"]
    assert done["payload"]["text"] == predict_text(load_pcm())


@pytest.mark.parametrize(
    ("fmt", "frame"),
    [
        (NATIVE, b""),
        (NATIVE, b"\x00"),
        (NATIVE, b"\x00" * 321),
        (AudioFormat(Encoding.PCM16, 48000, 2), b"\x00" * 6),
        (AudioFormat(Encoding.G711_ULAW, 8000, 2), b"\xff" * 3),
        (ULAW_8K, b""),
    ],
    ids=repr,
)
async def test_a_partial_sample_frame_is_invalid_audio(fmt: AudioFormat, frame: bytes) -> None:
    whole = encode(fmt, tone(fmt.sample_rate, TONE_HZ, 0.5))
    async with fake_and_proxy() as (fake, proxy), connected(proxy, query=query(fmt)) as client:
        await client.open("r1")
        await client.send_raw(frame)
        binary = assert_error(await client.recv(), "invalid_audio")
        # The same bytes in a JSON append: the same refusal, with its request_id.
        await client.send("input_audio_buffer.append", "r1", {"audio": b64(frame)})
        json = assert_error(await client.recv(), "invalid_audio", "r1")
        await send_binary(client, pieces(fmt, whole))
        await client.final("r1")
        done = (await client.recv_until("transcription.done", "r1"))[-1]
    assert binary["message"] == json["message"]
    assert str(fmt.frame_bytes) in binary["message"] or not frame
    # Nothing of the refused pieces went up.
    assert done["payload"]["audio_ms"] == 500
    assert upstream_audio(fake) == (whole if fmt.is_native else converted(fmt, pieces(fmt, whole)))


async def test_a_binary_frame_over_max_message_bytes_is_payload_too_large() -> None:
    async with fake_and_proxy(max_message_bytes=4096) as (_, proxy), connected(proxy) as client:
        await client.open("r1")
        await client.send_raw(b"\x00" * 4098)
        payload = assert_error(await client.recv(), "payload_too_large")
        await client.send_raw(b"\x00" * 4096)  # at the limit: taken
        await client.final("r1")
        done = (await client.recv_until("transcription.done", "r1"))[-1]
    assert payload["details"] == {"max_message_bytes": 4096}
    assert done["payload"]["audio_ms"] == 128


async def test_binary_frames_count_toward_the_message_rate() -> None:
    async with (
        fake_and_proxy(max_messages_per_window=4, message_window_s=60.0) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.open("r1")  # 1
        for _ in range(3):  # 2, 3, 4
            await client.send_raw(b"\x00\x00" * 160)
        await client.send_raw(b"\x00\x00" * 160)
        payload = assert_error(await client.recv(), "rate_limited")
    assert payload["details"]["kind"] == "messages"
    assert payload["details"]["limit"] == 4


async def test_binary_frames_keep_the_session_from_idling() -> None:
    async with fake_and_proxy(idle_timeout_s=0.5) as (_, proxy), connected(proxy) as client:
        await client.open("r1")
        for _ in range(15):  # 1.5 s of audio at real time: three idle timeouts' worth
            await client.send_raw(b"\x00\x00" * 320)
            await asyncio.sleep(0.1)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert [e for e in events if e["type"] == "error"] == []


# ---------------------------------------------------------------- files sent as audio


def wav_file(fmt: AudioFormat, seconds: float) -> bytes:
    """A WAV file (header and samples) of a tone in `fmt`."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(fmt.channels)
        wav.setsampwidth(2)
        wav.setframerate(fmt.sample_rate)
        wav.writeframes(encode(fmt, tone(fmt.sample_rate, TONE_HZ, seconds)))
    return out.getvalue()


async def test_a_wav_file_of_another_format_is_refused_naming_it_and_ends_with_done() -> None:
    data = wav_file(AudioFormat(Encoding.PCM16, 44100, 2), 1.0)
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.open("r1")
        await send_binary(client, [data[i : i + 2560] for i in range(0, len(data), 2560)])
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    errors = [e for e in events if e["type"] == "error"]
    assert errors, events
    first = assert_error(errors[0], "invalid_audio")
    assert "a file (WAV of pcm16 44100 Hz stereo)" in first["message"]
    assert "pcm16 16000 Hz mono" in first["message"]
    # Every piece of it was refused: nothing reached vLLM, nothing was billed.
    assert all(e["payload"]["message"] == first["message"] for e in errors)
    assert events[-1]["payload"]["usage"]["audio_seconds"] == 0
    assert upstream_audio(fake) == b""


async def test_a_wav_file_of_the_sessions_format_is_taken_without_its_header() -> None:
    data = wav_file(NATIVE, 1.0)
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.open("r1")
        await client.append("r1", data[:2604])
        await send_binary(client, [data[i : i + 2560] for i in range(2604, len(data), 2560)])
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert [e for e in events if e["type"] == "error"] == []
    assert events[-1]["payload"]["audio_ms"] == 1000
    assert upstream_audio(fake) == data[44:]


async def test_a_file_at_the_start_of_the_turn_stream_is_refused() -> None:
    mp3 = io.BytesIO()
    sf.write(mp3, tone(16000, TONE_HZ, 1.0).astype(np.float32) / 32768, 16000, format="MP3")
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, query="turn_detection=server_vad") as client,
    ):
        await client.send_raw(mp3.getvalue()[:2560])
        refused = assert_error(await client.recv(), "invalid_audio")
    assert "a file (MP3)" in refused["message"]
    assert "session.update" in refused["message"]
