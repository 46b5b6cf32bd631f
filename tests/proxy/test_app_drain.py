"""Graceful shutdown: what SIGTERM starts (``ProxyServer.begin_shutdown``), over real sockets."""

from __future__ import annotations

from devtools.fake_vllm import FRAME_BYTES, predict_text
from tests.harness import (
    assert_error,
    connected,
    fake_and_proxy,
    finalizing_held,
    load_pcm,
    texts,
    upstream_commits,
    wait_for,
)

OTHER = load_pcm("mid.wav")[: 50 * FRAME_BYTES]
SHORT = load_pcm("short.wav")


async def test_open_utterance_is_finalized_and_delivered_before_1001() -> None:
    async with (
        fake_and_proxy(drain_timeout_s=5.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", OTHER, final=False)  # the client never finalizes it
        await wait_for(lambda: upstream_commits(fake, final=False) == 1)
        proxy.server.begin_shutdown()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1001
    assert [e["type"] for e in events[-2:]] == ["transcription.done", "error"]
    assert events[-2]["request_id"] == "r1"
    assert events[-2]["payload"]["text"] == predict_text(OTHER)
    assert "".join(texts(events, "r1")) == predict_text(OTHER)
    assert_error(events[-1], "shutting_down")


async def test_every_queued_utterance_is_delivered_before_1001() -> None:
    async with (
        fake_and_proxy(drain_timeout_s=5.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        fake.hang()
        await client.utterance("r1", SHORT)
        await client.utterance("r2", OTHER, final=False)
        await wait_for(lambda: upstream_commits(fake, final=True) == 1)
        proxy.server.begin_shutdown()
        fake.resume()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1001
    dones = [e for e in events if e["type"] == "transcription.done"]
    assert [(e["request_id"], e["payload"]["text"]) for e in dones] == [
        ("r1", predict_text(SHORT)),
        ("r2", predict_text(OTHER)),
    ]
    assert_error(events[-1], "shutting_down")
    assert [e for e in events[:-1] if e["type"] == "error"] == []


async def test_new_utterance_during_drain_is_refused() -> None:
    async with (
        fake_and_proxy(drain_timeout_s=5.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        await finalizing_held(fake, client, "r1", OTHER)
        proxy.server.begin_shutdown()
        await client.open("r2")
        events = await client.recv_until("error", "r2")
        assert_error(events[-1], "shutting_down", "r2")
        fake.resume()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1001
    assert [e["request_id"] for e in events if e["type"] == "transcription.done"] == ["r1"]
    assert [e["request_id"] for e in events if e["request_id"] == "r2"] == []


async def test_idle_connection_is_closed_at_once() -> None:
    async with fake_and_proxy(drain_timeout_s=30.0) as (_, proxy), connected(proxy) as client:
        proxy.server.begin_shutdown()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1001
    assert len(events) == 1
    assert_error(events[0], "shutting_down")


async def test_drain_deadline_ends_what_is_left() -> None:
    async with (
        fake_and_proxy(drain_timeout_s=0.5) as (fake, proxy),
        connected(proxy) as client,
    ):
        await finalizing_held(fake, client, "r1", OTHER)  # r1's done never comes
        proxy.server.begin_shutdown()
        events, code = await client.recv_all_until_closed(timeout=10)
        fake.resume()
    assert code == 1001
    assert [e for e in events if e["type"] == "transcription.done"] == []
    assert_error(events[-2], "shutting_down", "r1")
    assert_error(events[-1], "shutting_down")
