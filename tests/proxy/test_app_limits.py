"""Limits, timeouts and their close codes, with small limits, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import FRAME_BYTES, predict_text
from tests.harness import (
    Client,
    assert_error,
    b64,
    chunks,
    connected,
    fake_and_proxy,
    finalizing_held,
    load_pcm,
    of_request,
    texts,
    upstream_commits,
    wait_for,
)

SHORT = load_pcm("short.wav")
OTHER = load_pcm("mid.wav")[: 50 * FRAME_BYTES]
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"


def dones(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transcription.done"]


async def send_quietly(client: Client, kind: str, request_id: str | None, payload: Any) -> None:
    """Sends, ignoring a close that already happened (the test reads the close afterwards)."""
    with contextlib.suppress(ConnectionClosed):
        await client.send(kind, request_id, payload)


# -- idle timeout ---------------------------------------------------------------------------


async def test_idle_timeout_closes_with_4000() -> None:
    async with fake_and_proxy(idle_timeout_s=0.5) as (_, proxy), connected(proxy) as client:
        events, code = await client.recv_all_until_closed(timeout=10)
    assert len(events) == 1
    assert_error(events[0], "idle_timeout")
    assert code == 4000


async def test_ping_keeps_an_idle_connection_open() -> None:
    async with fake_and_proxy(idle_timeout_s=0.6) as (_, proxy), connected(proxy) as client:
        for number in range(10):  # 1.5 s in all, far beyond the idle timeout
            await asyncio.sleep(0.15)
            await client.send("ping", f"p{number}")
            assert (await client.recv())["type"] == "pong"
        events, code = await client.recv_all_until_closed(timeout=10)
    assert [e["payload"]["code"] for e in events] == ["idle_timeout"]
    assert code == 4000


async def test_websocket_ping_frames_do_not_count_as_activity() -> None:
    async with fake_and_proxy(idle_timeout_s=0.5) as (_, proxy), connected(proxy) as client:

        async def keep_pinging() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await client.ws.ping()
                    await asyncio.sleep(0.05)

        pinger = asyncio.create_task(keep_pinging())
        try:
            events, code = await client.recv_all_until_closed(timeout=10)
        finally:
            pinger.cancel()
    assert [e["payload"]["code"] for e in events] == ["idle_timeout"]
    assert code == 4000


async def test_finalizing_utterance_pauses_the_idle_timeout() -> None:
    async with (
        fake_and_proxy(idle_timeout_s=0.5) as (fake, proxy),
        connected(proxy) as client,
    ):
        await finalizing_held(fake, client, "r1", OTHER)
        await asyncio.sleep(1.5)  # three idle timeouts while the client waits for its done
        fake.resume()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 4000
    assert [e["type"] for e in events[-2:]] == ["transcription.done", "error"]
    assert events[-2]["payload"]["text"] == predict_text(OTHER)
    assert_error(events[-1], "idle_timeout")
    assert [e for e in events[:-1] if e["type"] == "error"] == []


# -- maximum duration -----------------------------------------------------------------------


async def test_max_duration_finalizes_the_open_utterance_then_closes_4003() -> None:
    async with (
        fake_and_proxy(max_duration_s=1.0, drain_timeout_s=5.0) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", OTHER, final=False)  # never finalized by the client
        events, code = await client.recv_all_until_closed(timeout=15)
    assert code == 4003
    assert [e["type"] for e in events[-2:]] == ["transcription.done", "error"]
    done = events[-2]
    assert done["request_id"] == "r1"
    assert done["payload"]["text"] == predict_text(OTHER)
    assert "".join(texts(events, "r1")) == predict_text(OTHER)
    assert_error(events[-1], "max_duration_reached")


async def test_commit_after_max_duration_is_refused() -> None:
    async with (
        fake_and_proxy(max_duration_s=1.0, drain_timeout_s=5.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", OTHER, final=False)
        await wait_for(lambda: upstream_commits(fake, final=False) == 1)
        fake.hang()
        # The deadline finalizes r1 (its final commit reaches vLLM); its done is held back.
        await wait_for(lambda: upstream_commits(fake, final=True) == 1)
        await client.open("r2")
        events = await client.recv_until("error", "r2")
        assert_error(events[-1], "max_duration_reached", "r2")
        fake.resume()
        events, code = await client.recv_all_until_closed(timeout=15)
    assert code == 4003
    assert dones(events)[0]["payload"]["text"] == predict_text(OTHER)
    assert of_request(events, "r2") == []
    assert_error(events[-1], "max_duration_reached")


async def test_max_duration_grace_is_bounded() -> None:
    async with (
        fake_and_proxy(max_duration_s=1.0, drain_timeout_s=0.5) as (fake, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", OTHER, final=False)
        await wait_for(lambda: upstream_commits(fake, final=False) == 1)
        fake.hang()  # r1's done never comes
        events, code = await client.recv_all_until_closed(timeout=15)
        fake.resume()
    assert code == 4003
    assert dones(events) == []
    assert_error(events[-2], "max_duration_reached", "r1")
    assert_error(events[-1], "max_duration_reached")


# -- inbound queue --------------------------------------------------------------------------


async def test_inbound_queue_overflow_closes_with_4004() -> None:
    async with (
        fake_and_proxy(inbound_queue_max=8) as (fake, proxy),
        connected(proxy) as client,
    ):
        fake.hang()  # r1's done never arrives, so r2's audio is held in the proxy
        await client.utterance("r1", OTHER[: 4 * FRAME_BYTES])  # 6 messages: within the limit
        await client.open("r2")
        for piece in chunks(SHORT)[:20]:
            await send_quietly(client, "input_audio_buffer.append", "r2", {"audio": b64(piece)})
        events, code = await client.recv_all_until_closed(timeout=10)
        fake.resume()
    assert code == 4004
    assert dones(events) == []
    assert_error(events[-3], "inbound_queue_full", "r1")
    assert_error(events[-2], "inbound_queue_full", "r2")
    assert_error(events[-1], "inbound_queue_full")


async def inbound_bytes_high_water(http_url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{http_url}/metrics")).text
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "voxtral_proxy_inbound_bytes_high_water"
    ]
    return float(family.samples[0].value)


async def test_held_audio_past_the_byte_budget_closes_with_4004() -> None:
    """Issue 16 finding 4: r1 finalizes on a vLLM that does not answer while r2's big appends
    are held in the proxy. They were bounded in messages only (256 of 1 MiB each); now they end
    the connection with inbound_queue_full before their bytes pass the budget."""
    budget = 256 * 1024
    piece = b64(bytes(45 * 1024))  # 61,440 bytes held per append, within one 64 KiB frame
    async with (
        fake_and_proxy(max_message_bytes=65_536, inbound_queue_max_bytes=budget) as (fake, proxy),
        connected(proxy) as client,
    ):
        fake.hang()
        await client.utterance("r1", OTHER[: 4 * FRAME_BYTES])
        await wait_for(lambda: upstream_commits(fake, final=True) == 1)
        await client.open("r2")
        for _ in range(50):  # far below the message bound
            await send_quietly(client, "input_audio_buffer.append", "r2", {"audio": piece})
        events, code = await client.recv_all_until_closed(timeout=10)
        high_water = await inbound_bytes_high_water(proxy.http_url)
        fake.resume()
    assert code == 4004
    assert dones(events) == []
    assert_error(events[-3], "inbound_queue_full", "r1")
    payload = assert_error(events[-2], "inbound_queue_full", "r2")
    assert "inbound_queue_max_bytes" in payload["message"]
    assert_error(events[-1], "inbound_queue_full")
    # The most ever held: within the budget, and so close that one more append did not fit.
    assert budget - len(piece) < high_water <= budget


# -- utterances in flight -------------------------------------------------------------------


async def test_utterances_in_flight_are_bounded_and_announced() -> None:
    """Issue 25: (open, final) pairs queued thousands of utterances, each with its own state.
    One past the bound is refused by name and the connection stays."""
    async with (
        fake_and_proxy(max_utterances_in_flight=3) as (fake, proxy),
        connected(proxy, expect_created=False) as client,
    ):
        created = await client.recv()
        assert created["payload"]["limits"]["max_utterances_in_flight"] == 3
        fake.hang()  # r1's done waits: r2 and r3 queue behind it
        for request_id in ("r1", "r2", "r3"):
            await client.utterance(request_id, OTHER[: 2 * FRAME_BYTES])
        await client.open("r4")
        events = await client.recv_until("error", "r4")
        payload = assert_error(events[-1], "rate_limited", "r4")
        assert payload["details"] == {"max_utterances_in_flight": 3}
        assert "max_utterances_in_flight" in payload["message"]
        fake.resume()
        events = await client.recv_until("transcription.done", "r3")
        assert [e["request_id"] for e in dones(events)] == ["r1", "r2", "r3"]
        await client.utterance("r4", OTHER[: 2 * FRAME_BYTES])  # room again
        events = await client.recv_until("transcription.done", "r4")
    assert [e for e in events if e["type"] == "error"] == []


# -- audio ahead of real time ---------------------------------------------------------------


async def held_seconds(http_url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{http_url}/metrics")).text
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "voxtral_proxy_client_held_seconds"
    ]
    return float(family.samples[0].value)


async def test_audio_ahead_of_real_time_is_slowed_not_cut() -> None:
    """Issue 25: an unpaced client sent minutes of audio into vLLM's unbounded queue in
    seconds. Past the bound the proxy stops reading it until real time catches up: every word
    still arrives, without an error."""
    async with (
        fake_and_proxy(max_audio_ahead_s=1.0) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", OTHER)  # 4 s of audio as fast as the socket takes it
        events = await client.recv_until("transcription.done", "r1")
        held = await held_seconds(proxy.http_url)
    assert [e for e in events if e["type"] == "error"] == []
    assert dones(events)[0]["payload"]["text"] == predict_text(OTHER)
    assert held > 0


async def test_audio_at_real_time_is_never_held() -> None:
    async with (
        fake_and_proxy(max_audio_ahead_s=1.0) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.open("r1")
        for piece in chunks(OTHER[: 15 * FRAME_BYTES]):
            await client.append("r1", piece)
            await asyncio.sleep(0.08)
        await client.final("r1")
        await client.recv_until("transcription.done", "r1")
        assert await held_seconds(proxy.http_url) == 0


# -- rate limits ----------------------------------------------------------------------------


async def test_message_rate_limit_then_close_4008() -> None:
    async with (
        fake_and_proxy(max_messages_per_window=5, message_window_s=60.0) as (_, proxy),
        connected(proxy) as client,
    ):
        for number in range(5):
            await client.send("session.update", f"u{number}", {"model": MODEL})
            assert (await client.recv())["type"] == "session.updated"
        await client.send("session.update", "u5", {"model": MODEL})
        details = assert_error(await client.recv(), "rate_limited", "u5")["details"]
        assert details["kind"] == "messages"
        assert details["limit"] == 5
        assert details["window_seconds"] == 60
        assert 0 < details["retry_in"] <= 60
        # ping is not counted
        await client.send("ping", "p1", {"still": "here"})
        assert (await client.recv())["payload"] == {"still": "here"}
        # A client that keeps going after being told is disconnected.
        for number in range(6, 200):
            await send_quietly(client, "session.update", f"u{number}", {"model": MODEL})
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 4008
    assert len(events) >= 2
    for event in events[:-1]:
        assert_error(event, "rate_limited", event["request_id"])
        assert event["request_id"] is not None
        assert event["payload"]["details"]["kind"] == "messages"
    assert_error(events[-1], "rate_limited")


async def test_cancel_rate_limit() -> None:
    async with (
        fake_and_proxy(max_cancels_per_window=2, cancel_window_s=60.0) as (_, proxy),
        connected(proxy) as client,
    ):
        for request_id in ("r1", "r2"):
            await client.utterance(request_id, SHORT[: 10 * FRAME_BYTES], final=False)
            await client.send("cancel", request_id)
            await client.recv_until("cancelled", request_id)
        await client.utterance("r3", SHORT[: 10 * FRAME_BYTES], final=False)
        await client.send("cancel", "r3")
        events = await client.recv_until("error", "r3")
        details = assert_error(events[-1], "rate_limited", "r3")["details"]
        assert details["kind"] == "cancels"
        assert details["limit"] == 2
        assert details["window_seconds"] == 60
        assert 0 < details["retry_in"] <= 60
        # The refused cancel was dropped: r3 is still open and completes.
        for piece in chunks(SHORT[10 * FRAME_BYTES :]):
            await client.append("r3", piece)
        await client.final("r3")
        events += await client.recv_until("transcription.done", "r3")
    assert [e["type"] for e in of_request(events, "r3") if e["type"] != "transcription.delta"] == [
        "error",
        "transcription.done",
    ]
    assert events[-1]["payload"]["text"] == predict_text(SHORT)


async def test_barge_in_counts_against_the_cancel_limit() -> None:
    async with (
        fake_and_proxy(max_cancels_per_window=1, cancel_window_s=60.0) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", SHORT[: 10 * FRAME_BYTES], final=False)
        await client.open("r2")  # barge-in: r1 is superseded
        events = await client.recv_until("cancelled", "r1")
        await client.open("r3")  # a second barge-in is over the limit
        events += await client.recv_until("error", "r3")
        details = assert_error(events[-1], "rate_limited", "r3")["details"]
        assert details["kind"] == "cancels"
        for piece in chunks(OTHER):
            await client.append("r2", piece)
        await client.final("r2")
        events += await client.recv_until("transcription.done", "r2")
    assert events[-1]["payload"]["text"] == predict_text(OTHER)
    assert [e["type"] for e in of_request(events, "r3")] == ["error"]
    assert [e for e in events if e["type"] == "error" and e["request_id"] != "r3"] == []


# -- frames ---------------------------------------------------------------------------------


async def test_frame_over_max_message_bytes_is_refused_and_the_connection_stays() -> None:
    limit = 4096
    async with (
        fake_and_proxy(max_message_bytes=limit) as (_, proxy),
        connected(proxy) as client,
    ):
        big = orjson.dumps(
            {
                "type": "ping",
                "session_id": "s1",
                "request_id": "p1",
                "payload": {"pad": "x" * limit},
            }
        ).decode()
        assert len(big) > limit
        await client.send_raw(big)
        error = await client.recv()
        assert error["type"] == "error"
        assert error["payload"]["code"] == "payload_too_large"
        # A frame just under the limit is served.
        fits = {"pad": "y" * (limit - 200)}
        await client.send("ping", "p2", fits)
        pong = await client.recv()
        assert (pong["type"], pong["request_id"], pong["payload"]) == ("pong", "p2", fits)
        # An oversized audio chunk is dropped; the utterance goes on without it.
        await client.open("r1")
        await client.append("r1", SHORT[:limit])  # its base64 is a third larger
        error = await client.recv()
        assert error["payload"]["code"] == "payload_too_large"
        for piece in chunks(OTHER, 1024):
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert events[-1]["payload"]["text"] == predict_text(OTHER)
    assert [e for e in events if e["type"] == "error"] == []


async def test_server_close_while_vllm_streams_frees_the_slot() -> None:
    """A server-side close (here 4004) while vLLM is still sending must not keep the slot: the
    5 s below only guards a hang (the slot comes back within milliseconds)."""
    long = load_pcm("long.wav")
    async with fake_and_proxy(
        {"max_model_len": 128}, max_connections=1, max_audio_ahead_s=3600.0
    ) as (_, proxy):
        async with connected(proxy) as client:
            # 80 ms chunks sent at once (read at once: no bound on audio ahead of real time):
            # the audio held during the first segment's flush goes over inbound_queue_max
            # while vLLM streams that segment's deltas.
            await client.utterance("r1", long)
            events, code = await client.recv_all_until_closed(timeout=10)
        assert code == 4004
        assert_error(events[-1], "inbound_queue_full")
        await wait_for(lambda: proxy.server.state.slots_taken == 0, guard_s=5.0)
        async with connected(proxy) as client:
            await client.send("ping", "p1")
            assert (await client.recv())["type"] == "pong"
