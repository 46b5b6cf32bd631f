"""Client-side helpers for the end-to-end tests: connecting to a stack, streaming audio at a
chosen pace, and the checks every completed utterance must pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect

from tests.e2e.stack import Stack
from tests.harness import FRAME_BYTES, Client, chunks, load_pcm

SERVED_MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
PCM_BYTES_PER_MS = 32
# vLLM's realtime prompt for Voxtral is always 39 tokens.
PROMPT_TOKENS = 39
# Generous: a guard against hangs, never a latency assertion (2 shared cores).
UTTERANCE_LIMIT_S = 60.0

SPEECH = load_pcm("short.wav")


def speech(ms: int) -> bytes:
    """The first ``ms`` milliseconds of a real speech sample."""
    size = ms * PCM_BYTES_PER_MS
    assert size <= len(SPEECH)
    return SPEECH[:size]


def completion_tokens_for(audio_ms: int) -> int:
    """What vLLM generates for one utterance of ``audio_ms`` at the default 480 ms delay: one token
    per 80 ms of audio plus a fixed tail (verified exact on this vLLM build)."""
    return (audio_ms * 10 - 25) // 800 + 11


@contextlib.asynccontextmanager
async def session(
    stack: Stack, session_id: str = "e2e", query: str = ""
) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """A connected client and its ``session.created`` event (``query``: more parameters)."""
    async with connect(
        f"{stack.ws_url}?session_id={session_id}{'&' + query if query else ''}",
        additional_headers={"X-API-Key": stack.api_key},
        max_size=None,
    ) as ws:
        client = Client(ws, session_id)
        created = await client.recv(UTTERANCE_LIMIT_S)
        assert created["type"] == "session.created", created
        yield client, created


async def stream(client: Client, request_id: str, pcm: bytes, pace: float = 4.0) -> None:
    """Append ``pcm`` in 80 ms chunks, ``pace`` times faster than real time."""
    for piece in chunks(pcm, FRAME_BYTES):
        await client.append(request_id, piece)
        await asyncio.sleep(len(piece) / PCM_BYTES_PER_MS / 1000 / pace)


async def utterance(client: Client, request_id: str, pcm: bytes, pace: float = 4.0) -> None:
    await client.open(request_id)
    await stream(client, request_id, pcm, pace)
    await client.final(request_id)


async def poll_until(condition: Callable[[], Awaitable[bool]], limit_s: float = 30.0) -> None:
    """Poll a condition on the server (there is no event to wait on), with a hang guard."""
    async with asyncio.timeout(limit_s):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.2)


def of(events: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["request_id"] == request_id]


def check_done(events: list[dict[str, Any]], request_id: str, audio_ms: int) -> dict[str, Any]:
    """The utterance's events are deltas then exactly one ``done``, nothing after it; the text is
    the concatenation of the (non-empty) deltas; usage matches what vLLM generates for the
    audio. Returns the ``done`` payload."""
    mine = of(events, request_id)
    kinds = [e["type"] for e in mine]
    assert kinds.count("transcription.done") == 1, kinds
    assert kinds[-1] == "transcription.done", kinds
    assert set(kinds[:-1]) <= {"transcription.delta"}, kinds
    deltas = [e["payload"]["delta"] for e in mine[:-1]]
    assert all(isinstance(d, str) and d for d in deltas), deltas
    done: dict[str, Any] = mine[-1]["payload"]
    assert done["text"] == "".join(deltas)
    assert done["audio_ms"] == audio_ms
    usage = done["usage"]
    assert usage["prompt_tokens"] == PROMPT_TOKENS
    assert usage["completion_tokens"] == completion_tokens_for(audio_ms)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Only non-empty deltas are forwarded, so there are at most as many as generated tokens.
    assert len(deltas) <= usage["completion_tokens"]
    return done
