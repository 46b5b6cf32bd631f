"""The OpenAI SDK (openai-python, realtime) as an application would use it against our server,
with every raw frame checked against the SDK's own pydantic model for its type.

    openai_sdk.py BASE_URL KEY SCENARIO AUDIO_FILE [MODEL]

BASE_URL is http://HOST:PORT/v1. Scenarios:
- commit: pcm 24 kHz, turn_detection null, the audio in 100 ms appends, one commit.
- pcmu_vad: audio/pcmu with server_vad; the audio (speech, then silence) and no commit.
- empty_commit: a commit with nothing appended (refused), then the audio and a commit.
- clear: half the audio then clear, then the audio and a commit.
- secret: the key mints a client secret (the SDK's client_secrets.create, its answer checked
  against the SDK's model); the session runs as in commit, with the secret as the API key.

Prints {"frames": [every server frame, parsed], "invalid": [why a frame failed its model]}, and
for secret {"secret": the minted answer}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import typing
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from openai.types.beta.realtime import TranscriptionSessionUpdatedEvent
from openai.types.realtime import ClientSecretCreateResponse, RealtimeServerEvent
from pydantic import BaseModel, ValidationError

COMPLETED = "conversation.item.input_audio_transcription.completed"
GUARD_S = 30.0


def server_models() -> dict[str, type[BaseModel]]:
    """Each server event type and the SDK's model for it."""
    union = typing.get_args(RealtimeServerEvent)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (kind,) = typing.get_args(model.model_fields["type"].annotation)
        models[kind] = model
    models["transcription_session.updated"] = TranscriptionSessionUpdatedEvent
    return models


MODELS = server_models()


class Strict:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.frames: list[dict[str, Any]] = []
        self.invalid: list[str] = []

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(GUARD_S):
            raw = await self.connection.recv_bytes()
        data = json.loads(raw)
        self.frames.append(data)
        model = MODELS.get(data.get("type"))
        if model is None:
            self.invalid.append(f"unknown type {data.get('type')!r}")
        else:
            try:
                model.model_validate(data)
            except ValidationError as error:
                self.invalid.append(f"{data.get('type')}: {error}")
        return data

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            data = await self.recv()
            if data["type"] == kind:
                return data


def chunks(audio: bytes, size: int) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


async def append_all(connection: Any, audio: bytes, size: int) -> None:
    for piece in chunks(audio, size):
        await connection.input_audio_buffer.append(audio=base64.b64encode(piece).decode())


async def mint(base_url: str, key: str) -> tuple[str, dict[str, Any], list[str]]:
    """A client secret minted by the SDK: its value, the raw answer, why it failed the model."""
    client = AsyncOpenAI(api_key=key, base_url=base_url)
    raw = await client.realtime.client_secrets.with_raw_response.create(
        expires_after={"anchor": "created_at", "seconds": 60},
        session={"type": "transcription", "audio": {"input": {"turn_detection": None}}},
    )
    answer: dict[str, Any] = raw.http_response.json()
    try:
        ClientSecretCreateResponse.model_validate(answer)
        invalid = []
    except ValidationError as error:
        invalid = [f"client secret: {error}"]
    return answer["value"], answer, invalid


async def main(audio: bytes) -> None:
    base_url, key, scenario, _ = sys.argv[1:5]
    model = sys.argv[5] if len(sys.argv) > 5 else "gpt-realtime-whisper"
    result: dict[str, Any] = {}
    invalid: list[str] = []
    if scenario == "secret":
        key, result["secret"], invalid = await mint(base_url, key)
    client = AsyncOpenAI(api_key=key, base_url=base_url)
    pcm_100ms = 4800  # 100 ms of 24 kHz PCM16
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        strict = Strict(connection)
        first = await strict.recv()
        assert first["type"] == "session.created", first
        if scenario == "pcmu_vad":
            await connection.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcmu"},
                            "transcription": {"model": model, "language": "en"},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                        }
                    },
                }
            )
            await strict.until("session.updated")
            await append_all(connection, audio, 800)  # 100 ms of 8 kHz μ-law
            await strict.until(COMPLETED)
        else:
            await connection.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": model},
                            "turn_detection": None,
                        }
                    },
                }
            )
            await strict.until("session.updated")
            if scenario == "empty_commit":
                await connection.input_audio_buffer.commit(event_id="client-commit-1")
                await strict.until("error")
            elif scenario == "clear":
                half = len(audio) // 2 // 2 * 2
                await append_all(connection, audio[:half], pcm_100ms)
                await connection.input_audio_buffer.clear()
                await strict.until("input_audio_buffer.cleared")
            await append_all(connection, audio, pcm_100ms)
            await connection.input_audio_buffer.commit()
            await strict.until(COMPLETED)
    result.update(frames=strict.frames, invalid=invalid + strict.invalid)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
