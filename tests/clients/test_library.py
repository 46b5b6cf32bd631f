"""The client library against the real proxy and the fake vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clients.audio import CHUNK_BYTES, load_pcm, pcm_seconds
from clients.cli import sample
from clients.client import (
    ClientTimeout,
    ProtocolError,
    VoxtralClient,
    build_url,
)
from devtools.fake_vllm import FakeVllm, predict_text
from tests.harness import RunningProxy, serve_proxy

SHORT = load_pcm(sample("short.wav"))


async def test_stream_yields_deltas_then_text_and_timings(proxy: RunningProxy) -> None:
    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        assert client.session.model == proxy.config.served_model_name
        assert client.session.idle_timeout_s == proxy.config.idle_timeout_s
        utterance = client.stream(SHORT, speed=None)
        deltas = [delta async for delta in utterance]
        result = await utterance.result()

    expected = predict_text(SHORT)
    assert expected  # the fake produces words for this clip
    assert all(deltas)
    assert "".join(deltas) == expected
    assert result.status == "done"
    assert result.text == expected
    assert result.deltas == deltas
    t = result.timings
    assert t.audio_s == pytest.approx(pcm_seconds(len(SHORT)))
    assert t.opened is not None
    assert t.first_audio is not None
    assert t.first_word is not None
    assert t.final_commit is not None
    assert t.done is not None
    assert t.opened <= t.first_audio <= t.first_word <= t.done
    assert t.first_audio <= t.final_commit <= t.done
    assert t.ttfw_s is not None
    assert t.ttfw_s >= 0
    assert t.finalize_s is not None
    assert t.finalize_s >= 0
    assert t.rtf is not None
    assert t.rtf > 0
    figures = result.as_dict()
    assert {"ttfw_ms", "finalize_ms", "rtf", "audio_s", "text", "status"} <= figures.keys()


async def test_several_utterances_ping_and_end(proxy: RunningProxy) -> None:
    mid = load_pcm(sample("mid.wav"))
    client = await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key)
    async with client:
        first = await client.transcribe(SHORT, speed=None)
        rtt = await client.ping({"n": 1})
        second = await client.transcribe(mid, speed=None, request_id="second")
        info = await client.end()
    assert (first.text, second.text) == (predict_text(SHORT), predict_text(mid))
    assert second.request_id == "second"
    assert first.request_id != second.request_id
    assert rtt >= 0
    assert info.code == 1000
    assert info.error is None
    assert client.ended_payload is not None


async def test_back_to_back_utterances_end_in_order(proxy: RunningProxy) -> None:
    mid = load_pcm(sample("mid.wav"))
    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        first = client.stream(mid, speed=None)
        await first.wait_sent()
        second = client.stream(SHORT, speed=None)  # sent while the first may still finalize
        results = await asyncio.gather(first.result(), second.result())
    assert [r.text for r in results] == [predict_text(mid), predict_text(SHORT)]
    first_end, second_end = (r.end_index for r in results)
    assert first_end is not None
    assert second_end is not None
    assert first_end < second_end


async def test_async_iterator_source_with_odd_pieces(proxy: RunningProxy) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(SHORT), 1001):  # odd sizes: halves of samples are carried over
            yield SHORT[start : start + 1001]
            await asyncio.sleep(0)

    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        result = await client.transcribe(pieces())
    assert result.text == predict_text(SHORT)
    assert result.timings.audio_s == pytest.approx(pcm_seconds(len(SHORT)))


async def test_cancel_ends_the_utterance_and_the_session_goes_on(proxy: RunningProxy) -> None:
    long = load_pcm(sample("long.wav"))
    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        # Paced fast enough to keep the test short, slow enough that the audio is still open.
        utterance = client.stream(long, speed=8.0)
        async for _ in utterance:
            await utterance.cancel("changed my mind")
            break
        result = await utterance.result()
        assert result.status == "cancelled"
        assert result.cancel_reason == "changed my mind"
        assert result.timings.audio_s < pcm_seconds(len(long))  # sending stopped
        after = await client.transcribe(SHORT, speed=None)
    assert after.text == predict_text(SHORT)


async def test_wrong_key_raises_with_code_and_close_code(proxy: RunningProxy) -> None:
    with pytest.raises(ProtocolError) as info:
        await VoxtralClient.connect(proxy.ws_url, api_key="not-the-key")
    assert info.value.code == "unauthorized"
    assert info.value.close_code == 4001
    assert "not-the-key" not in str(info.value)


async def test_capacity_refusal_raises(fake: FakeVllm) -> None:
    async with (
        serve_proxy(fake.url, max_connections=1) as proxy,
        await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key),
    ):
        with pytest.raises(ProtocolError) as info:
            await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key)
    assert info.value.code == "server_at_capacity"
    assert info.value.close_code == 4002


async def test_upstream_loss_mid_utterance_raises_with_close_code(
    fake: FakeVllm, proxy: RunningProxy
) -> None:
    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        fake.die_after_deltas = 1
        utterance = client.stream(SHORT, speed=None)
        with pytest.raises(ProtocolError) as info:
            await utterance.result()
    assert info.value.code == "upstream_unavailable"
    assert info.value.request_id == utterance.request_id
    assert info.value.close_code == 1013


async def test_late_done_times_out(fake: FakeVllm, proxy: RunningProxy) -> None:
    async with await VoxtralClient.connect(proxy.ws_url, api_key=proxy.api_key) as client:
        fake.step_delay_s = 5.0  # every delta, and so the done, comes far too late
        utterance = client.stream(SHORT[: 10 * CHUNK_BYTES], speed=None, done_timeout=0.5)
        with pytest.raises(ClientTimeout, match=r"transcription\.done"):
            await utterance.result()
        fake.step_delay_s = 0.0


def test_build_url() -> None:
    assert build_url("localhost:8000") == "ws://localhost:8000/api/asr-streaming"
    assert build_url("stt.example.org", default_scheme="wss") == (
        "wss://stt.example.org/api/asr-streaming"
    )
    assert build_url("https://h:9/custom/path") == "wss://h:9/custom/path"
    assert build_url("ws://h:1", session_id="abc") == "ws://h:1/api/asr-streaming?session_id=abc"
