"""Audio in every supported format through the shared stack to the real vLLM: the proxy converts
each to 16 kHz PCM16 mono, and vLLM's usage shows it received exactly the client's duration."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from clients.audio import load_audio
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from tests.e2e.flow import UTTERANCE_LIMIT_S, check_done, session
from tests.e2e.stack import Stack
from tests.harness import SAMPLES, Client

pytestmark = pytest.mark.vllm

FORMATS = [
    NATIVE,
    AudioFormat(Encoding.G711_ULAW, 8000, 1),
    AudioFormat(Encoding.G711_ALAW, 8000, 1),
    AudioFormat(Encoding.PCM16, 48000, 2),
]
AUDIO_MS = 1000
PIECE_MS = 20  # as phone providers send


async def test_one_utterance_per_format_in_binary_frames(stack: Stack) -> None:
    for number, fmt in enumerate(FORMATS):
        audio = load_audio(SAMPLES / "short.wav", fmt)[: fmt.chunk_bytes(AUDIO_MS)]
        step = fmt.chunk_bytes(PIECE_MS)
        request_id = f"fmt-{number}"
        async with session(stack, f"formats-{number}") as (client, created):
            assert created["payload"]["audio"] == NATIVE.as_payload()
            # Between utterances, as a client that learns the format after connecting would.
            await client.send("session.update", "u", {"audio": fmt.as_payload()})
            updated = await client.recv(UTTERANCE_LIMIT_S)
            assert updated["payload"]["audio"] == fmt.as_payload(), updated
            await client.open(request_id)
            for start in range(0, len(audio), step):
                await client.send_raw(audio[start : start + step])
                await asyncio.sleep(PIECE_MS / 1000 / 4)  # four times real time
            await client.final(request_id)
            events = await client.recv_until("transcription.done", request_id, UTTERANCE_LIMIT_S)
        check_done(events, request_id, AUDIO_MS)


async def test_a_telephony_bridge_connecting_with_the_format_in_the_query(stack: Stack) -> None:
    fmt = AudioFormat(Encoding.G711_ULAW, 8000, 1)
    audio = load_audio(SAMPLES / "short.wav", fmt)[: fmt.chunk_bytes(AUDIO_MS)]
    url = f"{stack.ws_url}?session_id=call&audio_format=g711_ulaw&sample_rate=8000"
    headers = {"X-API-Key": stack.api_key}
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        client = Client(ws, "call")
        created = await client.recv(UTTERANCE_LIMIT_S)
        assert created["payload"]["audio"] == fmt.as_payload()
        await client.open("call-1")
        for start in range(0, len(audio), 160):  # 20 ms frames, as they come off the line
            await client.send_raw(audio[start : start + 160])
        await client.final("call-1")
        events = await client.recv_until("transcription.done", "call-1", UTTERANCE_LIMIT_S)
    check_done(events, "call-1", AUDIO_MS)
