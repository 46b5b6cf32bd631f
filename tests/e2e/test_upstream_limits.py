"""On a stack of its own (VLLM_MAX_MODEL_LEN=128): rollover when vLLM ends a generation at its
length cap, and vLLM killed mid-stream (the launcher restarts it)."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.flow import (
    PCM_BYTES_PER_MS,
    PROMPT_TOKENS,
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
from tests.harness import load_pcm

pytestmark = pytest.mark.vllm

# At 128 tokens one generation holds 89 completion tokens, about 6 s of audio.
CAP_COMPLETION_TOKENS = 128 - PROMPT_TOKENS
# Audio the proxy gives one generation there: the cap less the flush's 11 steps and a margin.
SEGMENT_FRAMES = CAP_COMPLETION_TOKENS - 12
FRAME_MS = 80


async def test_rollover_past_max_model_len(small_stack: Stack) -> None:
    audio_ms = 10_000
    pcm = load_pcm("mid.wav")[: audio_ms * PCM_BYTES_PER_MS]
    async with session(small_stack) as (client, _):
        await utterance(client, "long", pcm, pace=2.0)
        events = await client.recv_until("transcription.done", "long", 3 * UTTERANCE_LIMIT_S)
    mine = of(events, "long")
    kinds = [e["type"] for e in mine]
    assert kinds == ["transcription.delta"] * (len(kinds) - 1) + ["transcription.done"]
    done = mine[-1]["payload"]
    deltas = [e["payload"]["delta"] for e in mine[:-1]]
    assert done["text"] == "".join(deltas)
    assert done["audio_ms"] == audio_ms
    usage = done["usage"]
    # More than one generation ran for this one utterance, and their usage was added up.
    segments, remainder = divmod(usage["prompt_tokens"], PROMPT_TOKENS)
    assert remainder == 0
    assert segments >= 2
    assert usage["completion_tokens"] > CAP_COMPLETION_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The proxy cut the audio every SEGMENT_FRAMES; each generation made one step per frame of
    # its audio less the look-ahead, plus 11 for its flush.
    cuts = [SEGMENT_FRAMES * FRAME_MS] * (audio_ms // (SEGMENT_FRAMES * FRAME_MS))
    cuts += [audio_ms - sum(cuts)]
    steps = sum((ms * 10 - 25) // (FRAME_MS * 10) + 11 for ms in cuts)
    print(f"rollover steps observed={usage['completion_tokens']} formula={steps} cuts={cuts}")
    assert segments == len(cuts)
    assert usage["completion_tokens"] == steps
    assert usage["audio_seconds"] == audio_ms / 1000
    times = [e["payload"]["audio_ms"] for e in mine[:-1]]
    assert times == sorted(times)
    assert all(0 <= t <= audio_ms for t in times)


async def not_ready(stack: Stack) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{stack.http_url}/readyz")).status_code == 503


async def test_vllm_killed_mid_stream(small_stack: Stack) -> None:
    first = small_stack.vllm_pid()
    assert first is not None
    async with session(small_stack, "victim") as (client, _):
        await client.open("k1")
        await stream(client, "k1", speech(1500), pace=1.0)
        os.killpg(first, signal.SIGKILL)
        events, code = await client.recv_all_until_closed(UTTERANCE_LIMIT_S)
    assert code == 1013
    # The utterance ends in upstream_unavailable (nothing after it), and so does the connection.
    mine = of(events, "k1")
    assert [e["type"] for e in mine[:-1]] == ["transcription.delta"] * (len(mine) - 1)
    assert mine[-1]["type"] == "error"
    assert mine[-1]["payload"]["code"] == "upstream_unavailable"
    assert events[-1]["type"] == "error"
    assert events[-1]["payload"]["code"] == "upstream_unavailable"

    # vLLM needs tens of seconds to come back: meanwhile the proxy is not ready and refuses.
    await poll_until(lambda: not_ready(small_stack))
    async with connect(
        small_stack.ws_url, additional_headers={"X-API-Key": small_stack.api_key}
    ) as ws:
        refused = await asyncio.wait_for(ws.recv(), UTTERANCE_LIMIT_S)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), UTTERANCE_LIMIT_S)
    assert '"upstream_unavailable"' in str(refused)
    assert '"session.created"' not in str(refused)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013

    # The launcher restarts vLLM; a new session then works.
    await asyncio.to_thread(small_stack.wait_ready)
    second = small_stack.vllm_pid()
    assert second is not None
    assert second != first
    assert "vllm exited; restarting" in small_stack.log_path.read_text()
    async with session(small_stack, "survivor") as (client, _):
        await utterance(client, "k2", speech(500))
        after = await client.recv_until("transcription.done", "k2", UTTERANCE_LIMIT_S)
    check_done(after, "k2", 500)
