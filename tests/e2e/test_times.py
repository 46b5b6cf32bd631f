"""Times through the whole chain on the shared stack: a client streams samples/mid.wav through
the proxy to the real vLLM and reads audio_ms on every delta, segments and usage.audio_seconds
on done.

The dummy model's weights are random and it emits mostly empty text, so what is asserted is
what the clock fixes, not words: every delta's time is a step of the clock (a multiple of 80 ms
of a step vLLM really made, or the audio's end for the right padding), in order, within the
audio; the segments cover the text; vLLM made floor((A - 2.5 ms) / 80 ms) + 11 steps (its
``completion_tokens``, one per delta, as tests/e2e/test_vllm_clock.py pins).
"""

from __future__ import annotations

import pytest

from tests.e2e.flow import PCM_BYTES_PER_MS, UTTERANCE_LIMIT_S, check_done, session, utterance
from tests.e2e.stack import Stack
from tests.harness import load_pcm

pytestmark = pytest.mark.vllm

MID = load_pcm("mid.wav")
FRAME_MS = 80


async def test_a_client_streaming_mid_wav_sees_times(stack: Stack) -> None:
    audio_ms = len(MID) // PCM_BYTES_PER_MS
    async with session(stack, "times") as (client, created):
        assert created["payload"]["segment_pause_ms"] == 480
        await utterance(client, "mid", MID, pace=8.0)
        events = await client.recv_until("transcription.done", "mid", 2 * UTTERANCE_LIMIT_S)
    done = check_done(events, "mid", audio_ms)
    steps = (audio_ms * 10 - 25) // (FRAME_MS * 10) + 11
    assert done["usage"]["completion_tokens"] == steps
    assert done["usage"]["audio_seconds"] == audio_ms / 1000

    times = [e["payload"]["audio_ms"] for e in events if e["type"] == "transcription.delta"]
    print(
        f"times mid.wav: {audio_ms} ms, steps observed={done['usage']['completion_tokens']} "
        f"formula={steps}, deltas with text={len(times)}, audio_ms={times}"
    )
    assert times == sorted(times)
    for time in times:
        # A step within the audio sits on the 80 ms grid; one in the right padding at the end.
        assert time == audio_ms or (time % FRAME_MS == 0 and time < audio_ms), time
        assert time // FRAME_MS < steps

    segments = done["segments"]
    assert "".join(s["text"] for s in segments) == done["text"]
    assert all(s["text"] for s in segments)
    bounds = [t for s in segments for t in (s["start_ms"], s["end_ms"])]
    assert bounds == sorted(bounds)
    assert all(0 <= t <= audio_ms for t in bounds)
    # Each segment starts at the time of its first delta.
    assert {s["start_ms"] for s in segments} <= set(times)
    assert bool(segments) == bool(done["text"])
