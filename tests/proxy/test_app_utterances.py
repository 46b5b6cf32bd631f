"""The utterance lifecycle through the real proxy and the fake vLLM, over real sockets."""

from __future__ import annotations

from typing import Any

from devtools.fake_vllm import FRAME_BYTES, FakeVllm, predict_deltas, predict_text
from proxy.audio_format import NATIVE
from tests.harness import (
    Client,
    assert_error,
    b64,
    chunks,
    connected,
    fake_and_proxy,
    load_pcm,
    of_request,
    serve_proxy,
    texts,
    upstream_commits,
    wait_for,
)

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
SHORT = load_pcm("short.wav")
MID = load_pcm("mid.wav")
LONG = load_pcm("long.wav")
# Audio per segment at max_model_len 128 and the 480 ms delay: 128 - 39 prompt tokens, less the
# flush's 11 and one frame of margin.
ROLLOVER_SEGMENT_BYTES = (128 - 39 - 12) * FRAME_BYTES
# A second, different utterance (the start of mid.wav, whole frames).
OTHER = MID[: 50 * FRAME_BYTES]


def done_of(events: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [
        e for e in events if e["type"] == "transcription.done" and e["request_id"] == request_id
    ]


def assert_complete(events: list[dict[str, Any]], request_id: str, pcm: bytes) -> None:
    """The utterance's events are its non-empty deltas, in order, then one full done."""
    mine = of_request(events, request_id)
    assert [e["type"] for e in mine[:-1]] == ["transcription.delta"] * (len(mine) - 1)
    done = mine[-1]
    assert done["type"] == "transcription.done", mine[-1]
    expected = predict_text(pcm)
    assert done["payload"]["text"] == expected
    assert "".join(texts(events, request_id)) == expected
    assert texts(events, request_id) == [d for d in predict_deltas(pcm) if d]


async def ping_barrier(client: Client, tag: str = "barrier") -> list[dict[str, Any]]:
    """Everything up to the pong for one ping: the server has handled what came before."""
    await client.send("ping", tag)
    return await client.recv_until("pong", tag)


# -- the happy path -------------------------------------------------------------------------


async def test_one_utterance_minimal_flow() -> None:
    assert "" in predict_deltas(SHORT)  # vLLM sends empty deltas here: none may reach the client
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT)
        events = await client.recv_until("transcription.done", "r1")
    assert all(e["session_id"] == "s1" for e in events)
    assert all(e["request_id"] == "r1" for e in events)
    assert all(e["payload"]["delta"] for e in events if e["type"] == "transcription.delta")
    assert_complete(events, "r1", SHORT)
    done = events[-1]["payload"]
    assert set(done) == {"text", "segments", "usage", "audio_ms"}
    assert done["audio_ms"] == len(SHORT) // 32
    usage = done["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens", "audio_seconds"}
    assert usage["audio_seconds"] == done["audio_ms"] / 1000
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == len(predict_deltas(SHORT))


async def test_two_utterances_back_to_back_come_back_complete_and_in_order() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT)
        await client.utterance("r2", OTHER)  # sent without waiting for r1's done
        events = await client.recv_until("transcription.done", "r2")
        events += await ping_barrier(client)
    assert_complete(events, "r1", SHORT)
    assert_complete(events, "r2", OTHER)
    order = [e["request_id"] for e in events if e["type"].startswith("transcription.")]
    assert order == sorted(order)  # every r1 event before the first r2 event
    assert len(done_of(events, "r1")) == len(done_of(events, "r2")) == 1
    assert fake.connections_total == 1  # both went over the same upstream socket


async def test_three_utterances_queue_in_order() -> None:
    parts = [SHORT, OTHER, MID[60 * FRAME_BYTES : 100 * FRAME_BYTES]]
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        for number, pcm in enumerate(parts, 1):
            await client.utterance(f"r{number}", pcm)
        events = await client.recv_until("transcription.done", "r3")
    dones = [e["request_id"] for e in events if e["type"] == "transcription.done"]
    assert dones == ["r1", "r2", "r3"]
    for number, pcm in enumerate(parts, 1):
        assert_complete(events, f"r{number}", pcm)


# -- barge-in and cancel --------------------------------------------------------------------


async def test_barge_in_supersedes_the_open_utterance() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT[: 40 * FRAME_BYTES], final=False)
        await client.recv_until("transcription.delta", "r1")  # r1 runs upstream
        await client.utterance("r2", OTHER)
        events = await client.recv_until("transcription.done", "r2")
        events += await ping_barrier(client)
    cancelled = [e for e in events if e["type"] == "cancelled"]
    assert [(e["request_id"], e["payload"]) for e in cancelled] == [
        ("r1", {"reason": "superseded"})
    ]
    after = events[events.index(cancelled[0]) + 1 :]
    assert of_request(after, "r1") == []
    assert_complete(events, "r2", OTHER)
    assert fake.connections_total == 2  # r1's generation was dropped with its socket


async def test_cancel_running_utterance() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT, final=False)
        await client.recv_until("transcription.delta", "r1")
        await client.send("cancel", "r1", {"reason": "user_stop"})
        events = await client.recv_until("cancelled", "r1")
        assert events[-1]["payload"] == {"reason": "user_stop"}
        # vLLM has no cancel: the proxy drops that upstream socket and dials a fresh one.
        await wait_for(lambda: fake.connections_total == 2 and fake.open_connections == 1)
        assert fake.generations_aborted == 1
        await client.utterance("r2", OTHER)
        later = await client.recv_until("transcription.done", "r2")
        later += await ping_barrier(client)
    assert of_request(later, "r1") == []
    assert_complete(later, "r2", OTHER)


async def test_cancel_finalizing_utterance_with_default_reason() -> None:
    async with fake_and_proxy({"step_delay_s": 0.02}) as (fake, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT)
        await client.recv_until("transcription.delta", "r1")
        await client.send("cancel", "r1")
        events = await client.recv_until("cancelled", "r1")
        assert events[-1]["payload"] == {"reason": "client_request"}
        fake.step_delay_s = 0.0
        await client.utterance("r2", OTHER)
        later = await client.recv_until("transcription.done", "r2")
        later += await ping_barrier(client)
    assert of_request(later, "r1") == []
    assert_complete(later, "r2", OTHER)


async def test_cancel_queued_utterance() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        fake.hang()  # r1's done cannot arrive, so r2 waits in the proxy
        await client.utterance("r1", SHORT)
        await client.utterance("r2", OTHER)
        await client.send("cancel", "r2", {"reason": "changed_mind"})
        events = await client.recv_until("cancelled", "r2")
        assert events[-1]["payload"] == {"reason": "changed_mind"}
        fake.resume()
        events += await client.recv_until("transcription.done", "r1")
        await client.utterance("r3", OTHER)
        events += await client.recv_until("transcription.done", "r3")
        events += await ping_barrier(client)
    assert [e["type"] for e in of_request(events, "r2")] == ["cancelled"]
    assert_complete(events, "r1", SHORT)
    assert_complete(events, "r3", OTHER)
    # Nothing of r2 ever reached vLLM, and its socket was never recycled for it.
    assert fake.connections_total == 1
    assert fake.generations_started == 2


async def test_cancel_of_unknown_request_is_no_active_request() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("cancel", "nope")
        assert_error(await client.recv(), "no_active_request", "nope")
        await client.send("ping", "p1")
        assert (await client.recv())["type"] == "pong"


# -- append and commit edge cases -----------------------------------------------------------


async def test_append_for_another_request_is_a_mismatch() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.open("r1")
        await client.append("r9", SHORT[:FRAME_BYTES])
        payload = assert_error(await client.recv(), "request_id_mismatch", "r9")
        assert payload["details"].get("open_request_id") == "r1"
        # The utterance itself is unharmed by the dropped chunk.
        for piece in chunks(OTHER):
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert_complete(events, "r1", OTHER)


async def test_append_with_nothing_open_is_no_active_request() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.append("r1", SHORT[:FRAME_BYTES])
        assert_error(await client.recv(), "no_active_request", "r1")


async def test_append_and_final_after_final_are_no_active_request() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.utterance("r1", OTHER)
        await client.append("r1", SHORT[:FRAME_BYTES])
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
        events += await ping_barrier(client)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 2
    for error in errors:
        assert_error(error, "no_active_request", "r1")
    assert_complete([e for e in events if e["type"] != "error"], "r1", OTHER)


async def test_invalid_audio_is_refused_and_dropped() -> None:
    bad = [
        "",
        "not base64!",
        b64(b"\x01\x02\x03"),  # odd number of bytes
        b64(b"\x01\x02") + "\n",  # anything besides the base64 itself
        b64(b"\x01\x02\x03\x04")[:-1],  # bad padding
        "-_-_",  # URL-safe alphabet
    ]
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.open("r1")
        for audio in bad:
            await client.send("input_audio_buffer.append", "r1", {"audio": audio})
            assert_error(await client.recv(), "invalid_audio", "r1")
        for piece in chunks(OTHER):
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert_complete(events, "r1", OTHER)


async def test_reopening_the_open_utterance_has_no_effect() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.open("r1")
        for piece in chunks(OTHER)[:20]:
            await client.append("r1", piece)
        await client.open("r1")
        for piece in chunks(OTHER)[20:]:
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
    assert_complete(events, "r1", OTHER)
    assert fake.generations_started == 1


async def test_reusing_an_id_still_in_flight_is_refused() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        fake.hang()
        await client.utterance("r1", OTHER)
        await client.open("r1")
        assert_error(await client.recv(), "invalid_message", "r1")
        fake.resume()
        events = await client.recv_until("transcription.done", "r1")
        events += await ping_barrier(client)
    assert_complete(events, "r1", OTHER)


# -- session.update, ping, end --------------------------------------------------------------


async def test_session_update_with_the_served_model() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("session.update", "u1", {"model": MODEL})
        updated = await client.recv()
        assert updated == {
            "type": "session.updated",
            "session_id": "s1",
            "request_id": "u1",
            "payload": {
                "model": MODEL,
                "segment_pause_ms": 480,
                "audio": NATIVE.as_payload(),
                "turn_detection": None,
            },
        }
        await client.send("session.update", None, {"model": MODEL})
        assert (await client.recv())["request_id"] is None


async def test_session_update_with_another_model_is_unsupported() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("session.update", "u2", {"model": "someone/else"})
        assert_error(await client.recv(), "unsupported_model", "u2")
        # The connection goes on, and utterances still work.
        await client.utterance("r1", OTHER)
        events = await client.recv_until("transcription.done", "r1")
    assert_complete(events, "r1", OTHER)


async def test_ping_is_answered_with_the_same_payload() -> None:
    payload = {"n": 1, "nested": {"list": [1, "x", None, 2.5, True]}, "text": "héllo ✓"}
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("ping", "p1", payload)
        assert await client.recv() == {
            "type": "pong",
            "session_id": "s1",
            "request_id": "p1",
            "payload": payload,
        }
        await client.send("ping")
        assert await client.recv() == {
            "type": "pong",
            "session_id": "s1",
            "request_id": None,
            "payload": {},
        }


async def test_end_delivers_every_done_then_session_ended_and_1000() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.utterance("r1", SHORT)
        await client.utterance("r2", OTHER, final=False)  # still open: end finalizes it
        await client.send("end")
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1000
    assert events[-1] == {
        "type": "session.ended",
        "session_id": "s1",
        "request_id": None,
        "payload": {},
    }
    assert_complete(events[:-1], "r1", SHORT)
    assert_complete(events[:-1], "r2", OTHER)
    assert [e["type"] for e in events].count("session.ended") == 1


async def test_end_finalizes_the_one_open_utterance() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.utterance("r1", OTHER, final=False)
        await client.send("end")
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1000
    assert events[-1]["type"] == "session.ended"
    assert_complete(events[:-1], "r1", OTHER)


async def test_end_with_nothing_in_flight_closes_at_once() -> None:
    async with fake_and_proxy() as (_, proxy), connected(proxy) as client:
        await client.send("end", "e1")
        events, code = await client.recv_all_until_closed(timeout=10)
    assert [e["type"] for e in events] == ["session.ended"]
    assert code == 1000


async def test_commit_after_end_is_refused() -> None:
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        fake.hang()
        await client.utterance("r1", OTHER)
        await client.send("end")
        await client.open("r2")
        assert_error(await client.recv(), "invalid_message", "r2")
        fake.resume()
        events, code = await client.recv_all_until_closed(timeout=10)
    assert code == 1000
    assert [e["type"] for e in events][-1] == "session.ended"
    assert_complete(events[:-1], "r1", OTHER)


# -- long utterances: rolling over vLLM's max_model_len --------------------------------------


async def test_rollover_before_the_length_cap() -> None:
    """The proxy knows max_model_len from /v1/models and cuts segments before vLLM must."""
    async with (
        fake_and_proxy({"max_model_len": 128}, max_audio_ahead_s=3600.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        assert proxy.server.state.monitor.max_model_len == 128
        # 640 ms chunks, read at once: the audio held while a segment flushes stays within
        # inbound_queue_max.
        await client.open("r1")
        for piece in chunks(LONG, 8 * FRAME_BYTES):
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
        events += await ping_barrier(client)
    assert len(done_of(events, "r1")) == 1
    assert [e for e in events if e["type"] == "error"] == []
    # Each segment is a generation of its own, with its own right padding (which may finish
    # a word): the text is the segments' texts, one after the other.
    segments = chunks(LONG, ROLLOVER_SEGMENT_BYTES)
    expected = [d for segment in segments for d in predict_deltas(segment) if d]
    assert texts(events, "r1") == expected
    assert done_of(events, "r1")[0]["payload"]["text"] == "".join(expected)
    assert events[-2]["payload"]["audio_ms"] == len(LONG) // 32
    assert fake.generations_started > 2
    # Every segment was ended by the proxy's final commit, never by vLLM's length cap.
    assert upstream_commits(fake, final=True) == fake.generations_started


async def test_rollover_at_the_proxys_own_bound_segment_max_s() -> None:
    """vLLM's length (131072) is far off: SEGMENT_MAX_S alone cuts the generations, each one of
    that much audio, the utterance still one done."""
    async with (
        fake_and_proxy(segment_max_s=10.0, max_audio_ahead_s=3600.0) as (fake, proxy),
        connected(proxy) as client,
    ):
        # 640 ms chunks, read at once (no bound on audio ahead of real time).
        await client.open("r1")
        for piece in chunks(LONG, 8 * FRAME_BYTES):
            await client.append("r1", piece)
        await client.final("r1")
        events = await client.recv_until("transcription.done", "r1")
        events += await ping_barrier(client)
    assert len(done_of(events, "r1")) == 1
    assert [e for e in events if e["type"] == "error"] == []
    segments = chunks(LONG, 10 * 1000 * 32)
    expected = [d for segment in segments for d in predict_deltas(segment) if d]
    assert texts(events, "r1") == expected
    assert fake.generations_started == len(segments) == -(-len(LONG) // (10 * 1000 * 32))
    assert upstream_commits(fake, final=True) == fake.generations_started


async def test_rollover_after_vllm_ends_a_generation_by_itself() -> None:
    """vLLM enforces a shorter max_model_len than it advertises: it sends done unasked, and the
    proxy continues the utterance in a new generation, still with one done."""
    # The fake's cap, 128 - 39 = 89 tokens, is reached on frame 96 (after the 480 ms delay):
    # with exactly that much audio nothing is left queued when vLLM ends the generation.
    first = LONG[: 96 * FRAME_BYTES]
    rest = LONG[96 * FRAME_BYTES : 156 * FRAME_BYTES]  # fits in one generation
    async with FakeVllm(max_model_len=128) as fake:
        fake.advertised_max_model_len = 131072
        async with serve_proxy(fake.url) as proxy, connected(proxy) as client:
            assert proxy.server.state.monitor.max_model_len == 131072  # no proactive cut
            await client.utterance("r1", first, final=False)
            await wait_for(lambda: fake.generations_completed == 1)  # cut by the cap
            # Audio reaching vLLM between its cut and the proxy's new commit would be wiped
            # (vLLM's loss, as documented): continue once the proxy has re-committed.
            await wait_for(lambda: upstream_commits(fake, final=False) == 2)
            for piece in chunks(rest):
                await client.append("r1", piece)
            await client.final("r1")
            events = await client.recv_until("transcription.done", "r1")
            events += await ping_barrier(client)
    assert len(done_of(events, "r1")) == 1
    assert [e for e in events if e["type"] == "error"] == []
    # Frames 90..96 went into the capped generation without text (vLLM's loss, before the
    # proxy can know); all the audio sent after it is transcribed.
    expected = "".join(predict_deltas(first, final=False, max_model_len=128)) + predict_text(rest)
    done = done_of(events, "r1")[0]["payload"]
    assert done["text"] == expected
    assert "".join(texts(events, "r1")) == expected
    assert done["audio_ms"] == (len(first) + len(rest)) // 32
    assert fake.generations_started == 2
