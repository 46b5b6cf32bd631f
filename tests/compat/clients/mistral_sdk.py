"""Mistral's SDK (mistralai, realtime transcription) as an application would use it against our
server, with only its server_url changed. Every server frame passes through the SDK's own parser,
which validates it with the SDK's pydantic model for its type (a frame that fails becomes an
UnknownRealtimeEvent, reported here as invalid).

    mistral_sdk.py SERVER_URL KEY SCENARIO AUDIO_FILE MODEL [ARG]

SERVER_URL is http://HOST:PORT. AUDIO_FILE is 16 kHz PCM16 (8 kHz μ-law for "ulaw"). Scenarios:
- stream: transcribe_stream over the audio in 80 ms chunks.
- ulaw: the same, with audio_format pcm_mulaw 8000.
- flush_end: connect(); the audio, flush_audio(), until done 1; the audio again, end_audio(),
  until done 2; then until the server closes.
- refused: connect(), with ARG "delay" asking for target_streaming_delay_ms 960; prints the
  exception connect() raised, or the first error event.
- token: realtime.sessions.create(), then connects as a browser does (no header; subprotocols
  ["realtime", token]) twice with MODEL and once with ARG as the model.

Prints {"events": [every event, as {"type", ...fields}], "invalid": [...], ...}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mistralai.client import Mistral
from mistralai.client.models import AudioFormat, RealtimeTranscriptionError
from mistralai.extra.realtime import RealtimeConnection, UnknownRealtimeEvent
from mistralai.extra.realtime.connection import parse_realtime_event
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CHUNK_MS = 80
# Past the real vLLM on CPU (tens of seconds a flush); the harness has its own hang guard.
GUARD_S = 200.0
DONE = "transcription.done"


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.invalid: list[str] = []

    def add(self, event: Any) -> dict[str, Any]:
        if isinstance(event, UnknownRealtimeEvent):
            self.invalid.append(f"{event.type}: {event.error}")
            entry = {"type": event.type, "unknown": True}
        else:
            entry = event.model_dump(mode="json", by_alias=True)
        self.events.append(entry)
        return entry


def chunks(audio: bytes, rate: int, sample_bytes: int) -> list[bytes]:
    size = rate * CHUNK_MS // 1000 * sample_bytes
    return [audio[i : i + size] for i in range(0, len(audio), size)]


async def stream(
    client: Mistral, model: str, audio: bytes, audio_format: AudioFormat, sample_bytes: int
) -> dict[str, Any]:
    recorder = Recorder()

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks(audio, audio_format.sample_rate, sample_bytes):
            yield chunk
            await asyncio.sleep(0)

    async with asyncio.timeout(GUARD_S):
        async for event in client.audio.realtime.transcribe_stream(
            source(), model, audio_format=audio_format
        ):
            recorder.add(event)
    return {"events": recorder.events, "invalid": recorder.invalid}


async def until_done(events: AsyncIterator[Any], recorder: Recorder) -> None:
    async for event in events:
        if recorder.add(event)["type"] == DONE:
            return
    raise AssertionError("the connection ended before a transcription.done")


async def flush_end(client: Mistral, model: str, audio: bytes) -> dict[str, Any]:
    recorder = Recorder()
    fmt = AudioFormat(encoding="pcm_s16le", sample_rate=16_000)
    async with asyncio.timeout(GUARD_S):
        connection: RealtimeConnection = await client.audio.realtime.connect(
            model, audio_format=fmt
        )
        events = connection.events()
        for chunk in chunks(audio, 16_000, 2):
            await connection.send_audio(chunk)
        await connection.flush_audio()
        await until_done(events, recorder)
        for chunk in chunks(audio, 16_000, 2):
            await connection.send_audio(chunk)
        await connection.end_audio()
        await until_done(events, recorder)
        # The server closes after the final done: the events end by themselves.
        async for event in events:
            recorder.add(event)
    return {"events": recorder.events, "invalid": recorder.invalid, "closed": True}


async def refused(client: Mistral, model: str, arg: str) -> dict[str, Any]:
    recorder = Recorder()
    delay = 960 if arg == "delay" else None
    async with asyncio.timeout(GUARD_S):
        try:
            connection = await client.audio.realtime.connect(
                model,
                audio_format=AudioFormat(encoding="pcm_s16le", sample_rate=16_000),
                target_streaming_delay_ms=delay,
            )
        except Exception as error:
            # The error frame as the SDK parsed it: its model, or None when it failed validation.
            payload = getattr(error, "payload", None)
            return {
                "raised": type(error).__name__,
                "message": str(error),
                "payload": None if payload is None else type(payload).__name__,
                "code": getattr(getattr(payload, "error", None), "code", None),
                "events": [],
            }
        async with connection:
            async for event in connection.events():
                recorder.add(event)
                if isinstance(event, RealtimeTranscriptionError):
                    break
    return {"raised": None, "events": recorder.events, "invalid": recorder.invalid}


async def browser(url: str, token: str, audio: bytes) -> dict[str, Any]:
    """A browser's session: the token offered as a subprotocol, no header; the audio, a flush,
    the done, then an end."""
    recorder = Recorder()
    async with connect(url, subprotocols=["realtime", token]) as ws:
        subprotocol = ws.subprotocol
        try:
            async for raw in ws:
                event = parse_realtime_event(json.loads(raw))
                kind = recorder.add(event)["type"]
                if kind == "session.created":
                    for chunk in chunks(audio, 16_000, 2):
                        await ws.send(
                            json.dumps(
                                {
                                    "type": "input_audio.append",
                                    "audio": base64.b64encode(chunk).decode(),
                                }
                            )
                        )
                    await ws.send(json.dumps({"type": "input_audio.flush"}))
                elif kind == DONE and len([e for e in recorder.events if e["type"] == DONE]) == 1:
                    await ws.send(json.dumps({"type": "input_audio.end"}))
        except ConnectionClosed:
            pass
        close_code = ws.close_code
    return {
        "subprotocol": subprotocol,
        "events": recorder.events,
        "invalid": recorder.invalid,
        "close_code": close_code,
    }


async def token(
    client: Mistral, server_url: str, model: str, other_model: str, audio: bytes
) -> dict[str, Any]:
    session = await client.realtime.sessions.create_async(
        request={"model": model, "purpose": "realtime", "ttl_seconds": 120}
    )
    value = session.client_secret.value
    ws_base = server_url.replace("http://", "ws://", 1) + "/v1/audio/transcriptions/realtime"
    async with asyncio.timeout(GUARD_S):
        first = await browser(f"{ws_base}?model={model}", value, audio)
        second = await browser(f"{ws_base}?model={model}", value, audio)
        other = await browser(f"{ws_base}?model={other_model}", value, audio)
    return {
        "session": session.model_dump(mode="json", by_alias=True),
        "ttl_left_s": session.client_secret.expires_at.timestamp() - time.time(),
        "sessions": [first, second, other],
        "invalid": first["invalid"] + second["invalid"] + other["invalid"],
    }


async def main(audio: bytes) -> None:
    server_url, key, scenario, _, model = sys.argv[1:6]
    arg = sys.argv[6] if len(sys.argv) > 6 else ""
    client = Mistral(api_key=key, server_url=server_url)
    if scenario == "stream":
        fmt = AudioFormat(encoding="pcm_s16le", sample_rate=16_000)
        result = await stream(client, model, audio, fmt, 2)
    elif scenario == "ulaw":
        fmt = AudioFormat(encoding="pcm_mulaw", sample_rate=8_000)
        result = await stream(client, model, audio, fmt, 1)
    elif scenario == "flush_end":
        result = await flush_end(client, model, audio)
    elif scenario == "refused":
        result = await refused(client, model, arg)
    elif scenario == "token":
        result = await token(client, server_url, model, arg, audio)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
