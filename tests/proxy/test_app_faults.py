"""Upstream faults, vanishing clients and junk input, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import string
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fake_vllm import FRAME_BYTES, predict_text
from tests.harness import (
    Client,
    assert_error,
    connected,
    fake_and_proxy,
    finalizing_held,
    load_pcm,
    of_request,
    texts,
    wait_for,
)

SHORT = load_pcm("short.wav")
OTHER = load_pcm("mid.wav")[: 50 * FRAME_BYTES]
ERROR_CODES = {"invalid_json", "invalid_message", "unknown_type", "invalid_audio"}


def assert_lost_upstream(events: list[dict[str, Any]], code: int, request_id: str) -> None:
    """The utterance ends in upstream_unavailable, then the connection's error, then 1013."""
    assert code == 1013
    assert [e for e in events if e["type"] == "transcription.done"] == []
    assert_error(events[-2], "upstream_unavailable", request_id)
    assert_error(events[-1], "upstream_unavailable")
    assert [e["type"] for e in events[:-2]] == ["transcription.delta"] * (len(events) - 2)


async def served(client: Client, request_id: str, pcm: bytes) -> None:
    """One complete utterance on ``client``, checked against the fake's prediction."""
    await client.utterance(request_id, pcm)
    events = await client.recv_until("transcription.done", request_id)
    assert events[-1]["payload"]["text"] == predict_text(pcm)
    assert "".join(texts(events, request_id)) == predict_text(pcm)
    assert [e for e in events if e["type"] == "error"] == []


# -- vLLM goes away -------------------------------------------------------------------------


async def test_upstream_dies_mid_stream() -> None:
    async with fake_and_proxy() as (fake, proxy):
        async with connected(proxy) as client:
            fake.die_after_deltas = 5
            await client.utterance("r1", SHORT)
            events, code = await client.recv_all_until_closed(timeout=10)
        assert fake.deaths == 1
        assert_lost_upstream(events, code, "r1")
        # vLLM is listening again: the same proxy serves the next client.
        async with connected(proxy) as client:
            await served(client, "r2", OTHER)


async def test_one_upstream_socket_lost_leaves_other_clients_alone() -> None:
    async with (
        fake_and_proxy({"step_delay_s": 0.005}) as (fake, proxy),
        connected(proxy, session_id="a") as a,
        connected(proxy, session_id="b") as b,
    ):
        assert fake.connections_total == 2  # a's upstream socket is number 1, b's number 2
        await b.utterance("rb", SHORT)
        await a.utterance("ra", OTHER)
        await a.recv_until("transcription.delta", "ra")
        await fake.kill_connection(1)
        events, code = await a.recv_all_until_closed(timeout=10)
        assert_lost_upstream(events, code, "ra")
        b_events = await b.recv_until("transcription.done", "rb")
        assert b_events[-1]["payload"]["text"] == predict_text(SHORT)
        assert [e for e in b_events if e["type"] == "error"] == []
        await served(b, "rb2", OTHER)


async def test_vllm_restart_mid_stream_closes_with_1013() -> None:
    async with fake_and_proxy({"step_delay_s": 0.005}) as (fake, proxy):
        async with connected(proxy) as client:
            await client.utterance("r1", SHORT)
            await client.recv_until("transcription.delta", "r1")
            await fake.kill_connections(1012)  # what a SIGTERM'd vLLM sends
            events, code = await client.recv_all_until_closed(timeout=10)
        assert_lost_upstream(events, code, "r1")


async def test_upstream_error_mid_generation_ends_only_that_utterance() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        # All of r1 reaches vLLM before it generates, so no later r1 message can race the error.
        fake.fail_after_deltas = 2
        await finalizing_held(fake, client, "r1", SHORT)
        fake.resume()
        events = await client.recv_until("error", "r1")
        payload = assert_error(events[-1], "upstream_error", "r1")
        assert payload["details"]["upstream_code"] == "processing_error"
        assert [e["type"] for e in events[:-1]] == ["transcription.delta"] * (len(events) - 1)
        fake.fail_after_deltas = None
        await served(client, "r2", OTHER)
        await client.send("ping", "p1")
        after = await client.recv_until("pong", "p1")
    assert of_request(after, "r1") == []
    assert fake.generations_failed == 1


async def test_slow_upstream_still_delivers_everything_in_order() -> None:
    async with (
        fake_and_proxy({"step_delay_s": 0.005}) as (_, proxy),
        connected(proxy) as client,
    ):
        await client.utterance("r1", SHORT)
        await client.utterance("r2", OTHER)
        events = await client.recv_until("transcription.done", "r2")
    for request_id, pcm in (("r1", SHORT), ("r2", OTHER)):
        mine = of_request(events, request_id)
        assert mine[-1]["type"] == "transcription.done"
        assert mine[-1]["payload"]["text"] == predict_text(pcm)
        assert "".join(texts(events, request_id)) == predict_text(pcm)
    order = [e["request_id"] for e in events]
    assert order == sorted(order)


# -- the client goes away -------------------------------------------------------------------


async def test_vanished_client_frees_its_upstream_and_its_slot() -> None:
    async with fake_and_proxy({"step_delay_s": 0.005}) as (fake, proxy):
        async with connected(proxy) as client:
            await client.utterance("r1", SHORT, final=False)
            await client.recv_until("transcription.delta", "r1")
            client.ws.transport.abort()  # no close frame: the client just disappears
        await wait_for(lambda: fake.open_connections == 0)
        assert fake.generations_aborted == 1
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=5) as http:
            async with asyncio.timeout(10):
                while True:
                    if (await http.get("/healthz")).json()["connections"] == 0:
                        break
                    await asyncio.sleep(0.02)


# -- junk input -----------------------------------------------------------------------------

_KNOWN_TYPES = (
    "session.update",
    "input_audio_buffer.commit",
    "input_audio_buffer.append",
    "cancel",
    "ping",
    "end",
)
# Integers within 64 bits and finite floats: what any JSON parser round-trips exactly.
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_not_a_string = st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=2)
_bad_id = _not_a_string | st.just("") | st.text(min_size=129, max_size=140)
_good_id = st.text(string.ascii_letters, min_size=1, max_size=12)


def _could_be_valid(value: object) -> bool:
    """An object naming a known type might be a valid message: not junk."""
    return isinstance(value, dict) and value.get("type") in _KNOWN_TYPES


@st.composite
def _broken_envelope(draw: st.DrawFn) -> dict[str, Any]:
    """A message of a known type with exactly one field of the wrong type or shape."""
    kind = draw(st.sampled_from(_KNOWN_TYPES))
    message: dict[str, Any] = {"type": kind, "session_id": draw(_good_id)}
    message["request_id"] = draw(_good_id)
    if kind == "session.update":
        message["payload"] = {"model": "mistralai/Voxtral-Mini-4B-Realtime-2602"}
    elif kind == "input_audio_buffer.append":
        message["payload"] = {"audio": base64.b64encode(b"\x00\x01").decode()}
    elif kind == "input_audio_buffer.commit":
        message["payload"] = {"final": False}
    breakages = ["session_id", "request_id", "payload"]
    if kind in ("input_audio_buffer.commit", "input_audio_buffer.append", "cancel"):
        breakages.append("missing_request_id")
    breakages.append(
        {
            "session.update": "model",
            "input_audio_buffer.commit": "final",
            "input_audio_buffer.append": "audio",
            "cancel": "reason",
        }.get(kind, "type")
    )
    breakage = draw(st.sampled_from(breakages))
    if breakage == "session_id":
        message["session_id"] = draw(_bad_id)
    elif breakage == "request_id":
        message["request_id"] = draw(_bad_id.filter(lambda v: v is not None))
    elif breakage == "missing_request_id":
        del message["request_id"]
    elif breakage == "payload":
        message["payload"] = draw(_not_a_string.filter(lambda v: v is not None) | st.text())
    elif breakage == "model":
        message["payload"] = {"model": draw(_not_a_string)}
    elif breakage == "final":
        not_a_bool = st.none() | st.integers() | st.lists(st.integers(), max_size=2) | st.text()
        message["payload"] = {"final": draw(not_a_bool)}
    elif breakage == "audio":
        # Not base64 (empty audio is well formed: the session refuses it, see test_app_audio).
        message["payload"] = {"audio": draw(_not_a_string | st.sampled_from(["A===", "@@", "AAA"]))}
    elif breakage == "reason":
        message["payload"] = {"reason": draw(_not_a_string | st.just("") | st.just("r" * 257))}
    else:
        message["type"] = draw(_not_a_string)
    return message


_junk_frame = st.one_of(
    _json.filter(lambda v: not _could_be_valid(v)).map(json.dumps),
    st.text(max_size=40),  # mostly not JSON at all
    _broken_envelope().map(json.dumps),
)


async def test_junk_never_breaks_a_connection() -> None:
    loop = asyncio.get_running_loop()
    # Junk counts toward the message rate limit; that limit has tests of its own.
    async with fake_and_proxy(max_messages_per_window=1_000_000) as (_, proxy):
        async with connected(proxy) as client:

            async def exchange(frames: list[str], pong_payload: dict[str, Any]) -> None:
                for frame in frames:
                    await client.send_raw(frame)
                for frame in frames:
                    event = await client.recv(timeout=5)
                    assert event["type"] == "error", (frame, event)
                    assert event["payload"]["code"] in ERROR_CODES, (frame, event)
                await client.send("ping", "after-junk", pong_payload)
                pong = await client.recv(timeout=5)  # also proves no second event per frame
                assert (pong["type"], pong["payload"]) == ("pong", pong_payload), pong

            @settings(
                max_examples=150,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(
                frames=st.lists(_junk_frame, min_size=1, max_size=5),
                pong_payload=st.dictionaries(st.text(max_size=5), _json, max_size=3),
            )
            def check(frames: list[str], pong_payload: dict[str, Any]) -> None:
                future = asyncio.run_coroutine_threadsafe(exchange(frames, pong_payload), loop)
                future.result(timeout=30)

            # Hypothesis drives its examples from a thread; the sockets stay on this loop.
            await asyncio.to_thread(check)
        # The server still takes new connections, and serves them.
        async with connected(proxy) as client:
            await served(client, "r1", OTHER)
