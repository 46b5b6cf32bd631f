"""The whole chain on the shared stack: client -> proxy -> real vLLM (CPU, tiny model) and back.

The model's weights are random, so only structure, order and counts are asserted, never words.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.e2e.flow import (
    SERVED_MODEL,
    UTTERANCE_LIMIT_S,
    check_done,
    of,
    poll_until,
    session,
    speech,
    stream,
    utterance,
)
from tests.e2e.stack import Stack

pytestmark = pytest.mark.vllm


async def test_minimal_flow(stack: Stack) -> None:
    async with session(stack, "minimal") as (client, created):
        assert created["session_id"] == "minimal"
        assert created["request_id"] is None
        assert created["payload"]["model"] == SERVED_MODEL
        assert created["payload"]["transcription_delay_ms"] == 480

        await utterance(client, "r1", speech(1000))
        events = await client.recv_until("transcription.done", "r1", UTTERANCE_LIMIT_S)
        check_done(events, "r1", 1000)
        assert all(e["session_id"] == "minimal" for e in events)


async def test_end_after_an_utterance_closes_with_1000(stack: Stack) -> None:
    async with session(stack, "ending") as (client, _):
        await utterance(client, "r1", speech(500))
        await client.send("end")
        events, code = await client.recv_all_until_closed(UTTERANCE_LIMIT_S)
    assert events[-1] == {
        "type": "session.ended",
        "session_id": "ending",
        "request_id": None,
        "payload": {},
    }
    check_done(events[:-1], "r1", 500)
    assert code == 1000


async def test_two_utterances_back_to_back(stack: Stack) -> None:
    async with session(stack) as (client, _):
        # The second utterance is sent without waiting for the first one's done.
        await utterance(client, "a", speech(500))
        await utterance(client, "b", speech(500))
        events = await client.recv_until("transcription.done", "b", 2 * UTTERANCE_LIMIT_S)
    check_done(events, "a", 500)
    check_done(events, "b", 500)
    done_a = next(i for i, e in enumerate(events) if e["type"] == "transcription.done")
    assert events[done_a]["request_id"] == "a"
    assert all(e["request_id"] == "a" for e in events[:done_a])
    assert all(e["request_id"] == "b" for e in events[done_a + 1 :])


async def test_cancel_then_next_utterance(stack: Stack) -> None:
    async with session(stack) as (client, _):
        await client.open("c1")
        await stream(client, "c1", speech(1000))
        await client.send("cancel", "c1", {"reason": "user stopped"})
        events = await client.recv_until("cancelled", "c1", UTTERANCE_LIMIT_S)
        assert events[-1]["payload"] == {"reason": "user stopped"}
        assert {e["type"] for e in events[:-1]} <= {"transcription.delta"}

        await utterance(client, "c2", speech(500))
        after = await client.recv_until("transcription.done", "c2", UTTERANCE_LIMIT_S)
    assert of(after, "c1") == []  # nothing for an utterance after its end
    check_done(after, "c2", 500)


async def test_barge_in_supersedes_the_open_utterance(stack: Stack) -> None:
    async with session(stack) as (client, _):
        await client.open("old")
        await stream(client, "old", speech(500))
        await client.open("new")  # a new commit while "old" is open
        await stream(client, "new", speech(500))
        await client.final("new")
        events = await client.recv_until("transcription.done", "new", UTTERANCE_LIMIT_S)
    old = of(events, "old")
    assert old[-1]["type"] == "cancelled"
    assert old[-1]["payload"] == {"reason": "superseded"}
    assert [e["type"] for e in old[:-1]] == ["transcription.delta"] * (len(old) - 1)
    check_done(events, "new", 500)


async def no_connections(stack: Stack) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return bool((await http.get(f"{stack.http_url}/healthz")).json()["connections"] == 0)


async def test_abrupt_disconnect_then_new_session(stack: Stack) -> None:
    async with session(stack, "dropped") as (client, _):
        await client.open("d1")
        await stream(client, "d1", speech(1000), pace=1.0)
        # Gone without a close frame, mid-utterance.
        client.ws.transport.abort()

    await poll_until(lambda: no_connections(stack))

    async with session(stack, "after") as (client, _):
        await utterance(client, "d2", speech(500))
        events = await client.recv_until("transcription.done", "d2", UTTERANCE_LIMIT_S)
    check_done(events, "d2", 500)


async def test_four_concurrent_streams(stack: Stack) -> None:
    async def one(index: int) -> list[dict[str, Any]]:
        async with session(stack, f"par{index}") as (client, _):
            await utterance(client, f"u{index}", speech(1000), pace=1.0)
            return await client.recv_until("transcription.done", f"u{index}", 2 * UTTERANCE_LIMIT_S)

    results = await asyncio.gather(*(one(i) for i in range(4)))
    for index, events in enumerate(results):
        check_done(events, f"u{index}", 1000)
        assert all(e["session_id"] == f"par{index}" for e in events)
