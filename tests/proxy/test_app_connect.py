"""Connecting to /api/asr-streaming: auth, admission order and session.created (real sockets)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from devtools.fake_vllm import FakeVllm
from tests.harness import (
    TEST_KEY,
    RunningProxy,
    assert_error,
    connected,
    fake_and_proxy,
    finalizing_held,
    load_pcm,
    serve_proxy,
    wait_for,
)

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"


async def refused(
    proxy: RunningProxy,
    **connect_options: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Connects expecting a refusal: every event until the close, and the close code."""
    async with connected(proxy, expect_created=False, **connect_options) as client:
        return await client.recv_all_until_closed()


def assert_refusal(
    outcome: tuple[list[dict[str, Any]], int], code: str, close_code: int
) -> dict[str, Any]:
    """A refusal is exactly one error event (no session.created), then the close."""
    events, closed_with = outcome
    assert len(events) == 1, events
    payload = assert_error(events[0], code)
    assert closed_with == close_code
    return payload


# -- the three places a key may be ---------------------------------------------------------


async def test_key_in_query_string() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy, query=f"api_key={TEST_KEY}") as c:
        await c.send("ping", "p1")
        assert (await c.recv())["type"] == "pong"


async def test_key_in_x_api_key_header() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, headers={"X-API-Key": TEST_KEY}) as c,
    ):
        await c.send("ping", "p1")
        assert (await c.recv())["type"] == "pong"


async def test_key_as_bearer_token() -> None:
    async with (
        fake_and_proxy() as (_, proxy),
        connected(proxy, headers={"Authorization": f"Bearer {TEST_KEY}"}) as c,
    ):
        await c.send("ping", "p1")
        assert (await c.recv())["type"] == "pong"


@pytest.mark.parametrize(
    "how",
    [
        {"query": "api_key=wrong-key"},
        {"headers": {"X-API-Key": "wrong-key"}},
        {"headers": {"Authorization": "Bearer wrong-key"}},
        {"query": f"api_key={TEST_KEY[:-1]}"},  # a prefix of the key
        {"headers": {"X-API-Key": TEST_KEY + "0"}},  # the key plus one character
        {"headers": {"Authorization": f"Bearer {TEST_KEY[1:]}"}},
        {"headers": {"Authorization": TEST_KEY}},  # no Bearer scheme
        {"headers": {}},  # no key at all
    ],
    ids=[
        "query-wrong",
        "header-wrong",
        "bearer-wrong",
        "query-prefix",
        "header-longer",
        "bearer-suffix",
        "authorization-without-bearer",
        "missing",
    ],
)
async def test_wrong_partial_or_missing_key_is_unauthorized(how: dict[str, Any]) -> None:
    async with fake_and_proxy() as (fake, proxy):
        payload = assert_refusal(await refused(proxy, **how), "unauthorized", 4001)
        assert TEST_KEY not in payload["message"]
        assert fake.connections_total == 0  # vLLM is never dialled for a refused client


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ({"headers": {}}, "No API key or client token was sent"),
        ({"headers": {"X-API-Key": "k-wrong"}}, "Wrong API key"),
        ({"query": "api_key=k-wrong"}, "Wrong API key"),
    ],
    ids=["missing", "header-wrong", "query-wrong"],
)
async def test_unauthorized_says_missing_or_wrong_and_names_the_header_first(
    how: dict[str, Any], says: str
) -> None:
    async with fake_and_proxy() as (_, proxy):
        message = assert_refusal(await refused(proxy, **how), "unauthorized", 4001)["message"]
    assert message.startswith(says)
    if says.startswith("No API key"):
        # The forms to use first; the query last, with why it is the worse one.
        assert message.index("X-API-Key") < message.index("voxtral-stt.auth.")
        assert message.index("voxtral-stt.auth.") < message.index("?api_key=")
        assert "logs" in message
    else:
        assert "X-API-Key" not in message  # they sent one: the form was not the problem


async def test_query_key_wins_over_headers() -> None:
    """First match wins: a wrong key in the query is not rescued by a right one in a header."""
    async with fake_and_proxy() as (_, proxy):
        outcome = await refused(proxy, query="api_key=wrong-key", headers={"X-API-Key": TEST_KEY})
        assert_refusal(outcome, "unauthorized", 4001)
        async with connected(
            proxy, query=f"api_key={TEST_KEY}", headers={"X-API-Key": "wrong-key"}
        ) as client:
            await client.send("ping")
            assert (await client.recv())["type"] == "pong"


async def test_x_api_key_wins_over_bearer() -> None:
    async with fake_and_proxy() as (_, proxy):
        outcome = await refused(
            proxy, headers={"X-API-Key": "wrong-key", "Authorization": f"Bearer {TEST_KEY}"}
        )
        assert_refusal(outcome, "unauthorized", 4001)


async def test_several_keys_for_rotation() -> None:
    keys = ("old-key-1111", "new-key-2222")
    async with fake_and_proxy(api_keys=keys) as (_, proxy):
        for key in keys:
            async with connected(proxy, headers={"Authorization": f"Bearer {key}"}) as client:
                await client.send("ping")
                assert (await client.recv())["type"] == "pong"
        outcome = await refused(proxy, headers={"X-API-Key": "old-key-1111,new-key-2222"})
        assert_refusal(outcome, "unauthorized", 4001)
        assert_refusal(await refused(proxy, key=TEST_KEY), "unauthorized", 4001)


async def test_auth_failures_per_address_are_rate_limited() -> None:
    async with fake_and_proxy(max_auth_failures_per_window=3, auth_failure_window_s=60.0) as (
        _,
        proxy,
    ):
        for _ in range(3):
            assert_refusal(await refused(proxy, key="wrong-key"), "unauthorized", 4001)
        # Over the limit a wrong key is answered rate_limited ...
        payload = assert_refusal(await refused(proxy, key="wrong-key"), "rate_limited", 4008)
        details = payload["details"]
        assert details["kind"] == "auth_failures"
        assert details["limit"] == 3
        assert details["window_seconds"] == 60
        assert 0 < details["retry_in"] <= 60
        # ... while a valid key from the same address still gets in (finding 1 of issue 16).
        async with connected(proxy) as client:
            await client.send("ping")
            assert (await client.recv())["type"] == "pong"


# -- capacity, upstream, draining -----------------------------------------------------------


async def test_capacity_refuses_beyond_max_connections() -> None:
    async with fake_and_proxy(max_connections=1) as (_, proxy):
        async with connected(proxy) as first:
            assert_refusal(await refused(proxy), "server_at_capacity", 4002)
            # Auth is checked before capacity.
            assert_refusal(await refused(proxy, key="wrong-key"), "unauthorized", 4001)
            await first.send("ping")
            assert (await first.recv())["type"] == "pong"
        # The slot is given back once the server has finished with the first client.
        await wait_for(lambda: proxy.server.state.slots_taken == 0)
        async with connected(proxy) as second:
            await second.send("ping")
            assert (await second.recv())["type"] == "pong"


async def test_upstream_unavailable_at_connect_then_recovers() -> None:
    fake = FakeVllm()
    await fake.start()
    await fake.stop()  # vLLM down (its port is known, nothing listens)
    try:
        async with serve_proxy(fake.url) as proxy:
            # Auth comes first even while vLLM is down.
            assert_refusal(await refused(proxy, key="wrong-key"), "unauthorized", 4001)
            for _ in range(2):
                assert_refusal(await refused(proxy), "upstream_unavailable", 1013)
            await fake.start()  # vLLM is back on the same port
            async with connected(proxy) as client:
                await client.send("ping")
                assert (await client.recv())["type"] == "pong"
    finally:
        await fake.stop()


async def test_draining_refuses_new_connections() -> None:
    async with fake_and_proxy(drain_timeout_s=10.0) as (fake, proxy), connected(proxy) as busy:
        # Keeps an utterance in flight, so the drain lasts.
        await finalizing_held(fake, busy, "r1", load_pcm()[:64000])
        proxy.server.begin_shutdown()
        payload = assert_refusal(await refused(proxy), "shutting_down", 1001)
        assert payload["details"] == {}
        fake.resume()
        _, code = await busy.recv_all_until_closed()
        assert code == 1001


# -- session.created ------------------------------------------------------------------------


async def test_session_created_payload() -> None:
    overrides: dict[str, Any] = {
        "idle_timeout_s": 7.5,
        "max_duration_s": 120.0,
        "inbound_queue_max": 17,
        "inbound_queue_max_bytes": 300_000,
        "max_message_bytes": 65536,
        "max_utterances_in_flight": 5,
        "max_audio_ahead_s": 12.5,
        "segment_pause_ms": 720,
    }
    async with (
        fake_and_proxy(**overrides) as (_, proxy),
        connected(proxy, query="session_id=abc", expect_created=False) as client,
    ):
        created = await client.recv()
    assert set(created) == {"type", "session_id", "request_id", "payload"}
    assert created["type"] == "session.created"
    assert created["session_id"] == "abc"
    assert created["request_id"] is None
    payload = created["payload"]
    assert set(payload) == {
        "id",
        "model",
        "transcription_delay_ms",
        "segment_pause_ms",
        "audio",
        "limits",
        "turn_detection",
    }
    assert re.fullmatch(r"[0-9a-f]{12}", payload["id"])  # the connection's id in the logs
    assert payload["model"] == MODEL
    assert payload["transcription_delay_ms"] == 480
    assert payload["segment_pause_ms"] == 720
    assert payload["audio"] == {"format": "pcm16", "sample_rate": 16000, "channels": 1}
    assert payload["turn_detection"] is None  # off unless asked for
    assert payload["limits"] == {
        "idle_timeout_s": 7.5,
        "max_duration_s": 120,
        "inbound_queue_max": 17,
        "inbound_queue_max_bytes": 300_000,
        "max_message_bytes": 65536,
        "max_utterances_in_flight": 5,
        "max_audio_ahead_s": 12.5,
    }


async def test_session_ids_of_two_connections_differ() -> None:
    async with fake_and_proxy() as (_, proxy):
        ids = []
        for _ in range(2):
            async with connected(proxy, expect_created=False) as client:
                created = await client.recv()
                ids.append((created["session_id"], created["payload"]["id"]))
    (sid_a, id_a), (sid_b, id_b) = ids
    assert sid_a.startswith("sess_")
    assert sid_b.startswith("sess_")
    assert sid_a != sid_b
    assert id_a != id_b


async def test_query_session_id_is_echoed_until_the_client_speaks() -> None:
    async with fake_and_proxy() as (_, proxy):
        outcome = await refused(proxy, key="wrong-key", query="session_id=from-query")
        assert outcome[0][0]["session_id"] == "from-query"
        async with connected(proxy, query="session_id=from-query", expect_created=False) as c:
            assert (await c.recv())["session_id"] == "from-query"
            c.session_id = "from-message"
            await c.send("ping", "p1")
            pong = await c.recv()
        assert pong["type"] == "pong"
        assert pong["session_id"] == "from-message"
