"""LiveKit Agents' OpenAI STT plugin in realtime mode, pointed at our server by its base URL.

    livekit_stt.py BASE_URL KEY MODEL AUDIO_FILE

BASE_URL is http://HOST:PORT/v1; AUDIO_FILE is 24 kHz mono PCM16 (speech, then silence). With a
model that is not one of OpenAI's realtime-only ones the plugin asks for server VAD and never
commits. The stream transcribes the audio, then the STT's options change (the plugin re-sends
session.update on the same socket), and the stream transcribes the audio again.

Prints {"utterances": [[event, ...] per utterance]}: each event {"type", "text"?,
"request_id"?, "audio_duration"?}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from livekit import rtc
from livekit.agents import stt, utils
from livekit.plugins import openai

RATE = 24_000
FRAME_SAMPLES = RATE // 100  # 10 ms, as a LiveKit room delivers audio
GUARD_S = 30.0


def push(stream: Any, audio: bytes) -> None:
    size = FRAME_SAMPLES * 2
    for start in range(0, len(audio) - size + 1, size):
        stream.push_frame(
            rtc.AudioFrame(
                data=audio[start : start + size],
                sample_rate=RATE,
                num_channels=1,
                samples_per_channel=FRAME_SAMPLES,
            )
        )


async def until_usage(events: Any) -> list[dict[str, Any]]:
    """The stream's events up to the recognition usage that closes an utterance."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(GUARD_S):
        async for event in events:
            entry: dict[str, Any] = {"type": event.type.value}
            if event.alternatives:
                entry["text"] = event.alternatives[0].text
                entry["request_id"] = event.request_id
            if event.type is stt.SpeechEventType.RECOGNITION_USAGE:
                entry["audio_duration"] = event.recognition_usage.audio_duration
                seen.append(entry)
                return seen
            seen.append(entry)
    raise AssertionError(f"the stream ended early: {seen}")


async def main(audio: bytes) -> None:
    base_url, key, model, _ = sys.argv[1:5]
    async with utils.http_context.open():
        recognizer = openai.STT(
            model=model, use_realtime=True, base_url=base_url, api_key=key, language="en"
        )
        stream = recognizer.stream()
        events = stream.__aiter__()
        utterances = []
        try:
            push(stream, audio)
            utterances.append(await until_usage(events))
            # A changed option goes to the open socket as another session.update.
            recognizer.update_options(language="fr")
            push(stream, audio)
            utterances.append(await until_usage(events))
        finally:
            await stream.aclose()
            await recognizer.aclose()
    print(json.dumps({"utterances": utterances}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[4]).read_bytes()))
    # Skip the interpreter's teardown: LiveKit's native runtime once aborted there (a Rust panic
    # in a tokio worker, exit -6) after every result had been printed.
    sys.stdout.flush()
    os._exit(0)
