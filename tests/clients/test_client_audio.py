"""The client library's audio formats and framing.

Against the real proxy and the fake vLLM: each format is asked for, announced, converted and
transcribed. What only the wire shows (which kind of frame, of what size, and a server that
ignores the format) is checked against a small recording peer (conftest.recording_peer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from clients.audio import TELEPHONY_FORMAT, load_audio
from clients.cli import sample
from clients.client import ClientError, VoxtralClient
from devtools.fake_vllm import FakeVllm, predict_text
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from tests.clients.conftest import recording_peer
from tests.harness import RunningProxy
from tests.tones import converted, upstream_audio


def cut(audio: bytes, size: int) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


# ---------------------------------------------------------------- connect


async def test_native_format_adds_nothing_to_the_query() -> None:
    async with recording_peer() as peer, await VoxtralClient.connect(peer.url) as client:
        assert client.audio_format == NATIVE
    assert set(peer.query) == {"session_id"}


async def test_format_is_asked_for_in_the_query() -> None:
    async with recording_peer() as peer:
        client = await VoxtralClient.connect(
            peer.url, audio_format="pcm16", sample_rate=44100, channels=2
        )
        async with client:
            assert client.audio_format == AudioFormat(Encoding.PCM16, 44100, 2)
    assert peer.query["audio_format"] == "pcm16"
    assert peer.query["sample_rate"] == "44100"
    assert peer.query["channels"] == "2"


async def test_the_proxy_announces_the_format_asked_for(proxy: RunningProxy) -> None:
    # connect() fails unless session.created announces the format it asked for.
    client = await VoxtralClient.connect(
        proxy.ws_url, api_key=proxy.api_key, audio_format="g711_alaw"
    )
    async with client:
        assert client.audio_format == AudioFormat(Encoding.G711_ALAW, 8000, 1)
        assert client.session.payload["audio"] == client.audio_format.as_payload()


async def test_a_server_that_ignores_the_format_is_refused() -> None:
    # Today's proxy announces pcm16 16 kHz mono whatever the query says.
    async with recording_peer(announce=NATIVE.as_payload()) as peer:
        with pytest.raises(ClientError, match="does not support this audio format") as caught:
            await VoxtralClient.connect(peer.url, audio_format="g711_ulaw")
    assert "g711_ulaw 8000 Hz mono" in str(caught.value)
    assert peer.frames == []  # nothing was sent


async def test_an_unknown_announced_format_is_refused() -> None:
    async with recording_peer(announce={"format": "opus"}) as peer:
        with pytest.raises(ClientError, match="unknown audio format"):
            await VoxtralClient.connect(peer.url)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"audio_format": "opus"}, "audio_format"),
        ({"audio_format": "g711_ulaw", "sample_rate": 16000}, "8000 only"),
        ({"sample_rate": 96000}, "8000 to 48000"),
        ({"channels": 6}, "channels must be 1 or 2"),
    ],
)
async def test_unsupported_formats_fail_before_connecting(
    kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ClientError, match=says):
        await VoxtralClient.connect("127.0.0.1:9", **kwargs)  # never reached


# ---------------------------------------------------------------- through the proxy


async def test_telephony_mulaw_is_transcribed(fake: FakeVllm, proxy: RunningProxy) -> None:
    ulaw = load_audio(sample("short.wav"), TELEPHONY_FORMAT)
    client = await VoxtralClient.connect(
        proxy.ws_url, api_key=proxy.api_key, audio_format="g711_ulaw"
    )
    async with client:
        assert client.binary  # the default
        result = await client.transcribe(ulaw, speed=None, chunk_ms=20)
    expected = converted(TELEPHONY_FORMAT, cut(ulaw, 160))
    assert upstream_audio(fake) == expected
    assert result.status == "done"
    assert result.text == predict_text(expected)
    assert result.text


@pytest.mark.parametrize("binary", [True, False])
async def test_any_rate_and_layout_is_transcribed(
    fake: FakeVllm, proxy: RunningProxy, binary: bool
) -> None:
    fmt = AudioFormat(Encoding.PCM16, 24000, 2)
    audio = load_audio(sample("short.wav"), fmt)
    client = await VoxtralClient.connect(
        proxy.ws_url, api_key=proxy.api_key, sample_rate=24000, channels=2, binary=binary
    )
    async with client:
        result = await client.transcribe(audio, speed=None)
    expected = converted(fmt, cut(audio, fmt.chunk_bytes(80)))
    assert upstream_audio(fake) == expected
    assert result.text == predict_text(expected)


async def test_partial_frames_from_an_iterator_reach_the_proxy_whole(
    fake: FakeVllm, proxy: RunningProxy
) -> None:
    fmt = AudioFormat(Encoding.PCM16, 16000, 2)  # 4-byte frames, no resampling
    audio = load_audio(sample("short.wav"), fmt)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(audio), 999):  # never a whole number of frames
            yield audio[start : start + 999]

    client = await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key, channels=2)
    async with client:
        result = await client.transcribe(pieces(), speed=None)
    # Mixing down needs no state: the pieces' cut does not matter.
    assert upstream_audio(fake) == converted(fmt, [audio])
    assert result.status == "done"


# ---------------------------------------------------------------- framing


async def test_telephony_streams_20ms_mulaw_binary_frames() -> None:
    ulaw = load_audio(sample("short.wav"), TELEPHONY_FORMAT)
    async with recording_peer() as peer:
        client = await VoxtralClient.connect(peer.url, audio_format="g711_ulaw", binary=True)
        async with client:
            result = await client.transcribe(ulaw, speed=None, chunk_ms=20, request_id="r1")
    assert result.status == "done"
    kinds = peer.kinds()
    assert kinds[0] == "input_audio_buffer.commit"
    assert kinds[-1] == "input_audio_buffer.commit"
    assert set(kinds[1:-1]) == {"binary"}
    pieces = peer.audio()
    assert b"".join(pieces) == ulaw
    assert {len(p) for p in pieces[:-1]} == {160}  # 20 ms at 8 kHz, one byte per sample
    assert result.timings.audio_s == pytest.approx(len(ulaw) / 8000)


async def test_json_appends_carry_the_same_audio() -> None:
    fmt = AudioFormat(Encoding.PCM16, 24000, 2)
    audio = load_audio(sample("short.wav"), fmt)
    async with recording_peer() as peer:
        client = await VoxtralClient.connect(peer.url, sample_rate=24000, channels=2, binary=False)
        async with client:
            await client.transcribe(audio, speed=None)
    kinds = peer.kinds()
    assert set(kinds[1:-1]) == {"input_audio_buffer.append"}
    pieces = peer.audio()
    assert b"".join(pieces) == audio
    assert {len(p) for p in pieces[:-1]} == {fmt.chunk_bytes(80)}
    events = peer.events()
    assert {e["request_id"] for e in events} == {events[0]["request_id"]}


async def test_binary_can_be_chosen_per_utterance() -> None:
    pcm = load_audio(sample("short.wav"), NATIVE)[:32000]
    async with recording_peer() as peer:
        client = await VoxtralClient.connect(peer.url, binary=False)
        async with client:
            await client.transcribe(pcm, speed=None, binary=True)
            await client.transcribe(pcm, speed=None)
    kinds = peer.kinds()
    middle = kinds.index("input_audio_buffer.commit", 1) + 1  # after the first final commit
    assert set(kinds[1 : middle - 1]) == {"binary"}
    assert "input_audio_buffer.append" in kinds[middle:]
    assert "binary" not in kinds[middle:]
    assert b"".join(peer.audio()) == pcm * 2


async def test_partial_frames_from_an_iterator_are_sent_as_whole_frames() -> None:
    fmt = AudioFormat(Encoding.PCM16, 16000, 2)  # 4-byte frames
    audio = bytes(range(256)) * 40

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(audio), 999):  # never a whole number of frames
            yield audio[start : start + 999]

    async with recording_peer() as peer:
        client = await VoxtralClient.connect(peer.url, channels=2, binary=True)
        async with client:
            assert client.audio_format == fmt
            await client.transcribe(pieces())
    sent = peer.audio()
    assert all(len(p) % 4 == 0 for p in sent)
    assert b"".join(sent) == audio


async def test_bytes_that_are_not_whole_frames_are_refused() -> None:
    async with recording_peer() as peer:
        client = await VoxtralClient.connect(peer.url, channels=2)
        async with client:
            with pytest.raises(ClientError, match="whole sample frames of 4 bytes"):
                client.stream(b"\x00" * 6)
            with pytest.raises(ClientError, match="chunk_ms"):
                client.stream(b"\x00" * 8, chunk_ms=0)
