"""The token clock on the real vLLM, straight on its /v1/realtime socket (no proxy in between).

Every delta is counted, empty ones included, and compared with the arithmetic the proxy's clock
rests on, written out here from its raw form (not taken from ``proxy.audio_clock``, so a wrong
helper there cannot make this test agree with it):

- with a final commit, an utterance of A of audio gets floor((A - 2.5 ms) / 80 ms) + 11 deltas,
  whatever the delay, and none at all without audio;
- before the final commit, vLLM has sent max(0, floor((A - 2.5 ms) / 80 ms) - delay / 80)
  deltas: it waits for the audio, one step per 80 ms frame;
- a generation makes at most max_model_len - (33 + delay / 80) steps, then ends with ``done`` by
  itself, drops the audio it holds, and the next commit starts again with fresh padding.

If a vLLM upgrade changes the clock, these tests fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from proxy.vllm_wire import FRAME_BYTES, FRAME_MS
from tests.e2e.flow import PCM_BYTES_PER_MS, SERVED_MODEL, UTTERANCE_LIMIT_S
from tests.e2e.stack import Stack, running_stack
from tests.harness import chunks, load_pcm

pytestmark = pytest.mark.vllm

# The model's 2.5 ms look-ahead, in bytes of 16 kHz PCM16.
LOOK_AHEAD_BYTES = 80
# What the final commit adds: its right padding (delay/80 + 11 frames) less the delay/80 frames
# the prompt holds back.
FLUSH_DELTAS = 11
# BOS + 32 frames of left padding; the delay adds one token per 80 ms.
PROMPT_BASE = 33
SHARED_DELAY_MS = 480
SHARED_MAX_MODEL_LEN = 2048
# The stacks started here: the length cap small enough for a rollover within seconds of audio.
OWN_MAX_MODEL_LEN = 128
# How long a step must stay away before "vLLM is waiting for audio" is believed.
QUIET_S = 1.0

SPEECH = load_pcm("mid.wav")

# An utterance per length: whole frames, a partial last frame, and both sides of the look-ahead.
LENGTHS = {
    "empty": 0,
    "1 sample": 2,
    "0.4 s": 400 * PCM_BYTES_PER_MS,
    "1 s": 1000 * PCM_BYTES_PER_MS,
    "1.234 s": 1234 * PCM_BYTES_PER_MS,
    "3 s": 3000 * PCM_BYTES_PER_MS,
    "10 frames + 39 samples": 10 * FRAME_BYTES + 78,
    "10 frames + 40 samples": 10 * FRAME_BYTES + 80,
}


def deltas_with_final(audio_bytes: int) -> int:
    return (audio_bytes - LOOK_AHEAD_BYTES) // FRAME_BYTES + FLUSH_DELTAS if audio_bytes else 0


def deltas_before_final(audio_bytes: int, delay_ms: int) -> int:
    return max(0, (audio_bytes - LOOK_AHEAD_BYTES) // FRAME_BYTES - delay_ms // FRAME_MS)


def prompt_tokens(delay_ms: int) -> int:
    return PROMPT_BASE + delay_ms // FRAME_MS


@dataclass(frozen=True)
class Vllm:
    url: str
    delay_ms: int
    max_model_len: int


def vllm_of(stack: Stack, delay_ms: int, max_model_len: int) -> Vllm:
    return Vllm(f"ws://127.0.0.1:{stack.vllm_port}/v1/realtime", delay_ms, max_model_len)


@pytest.fixture(scope="module")
def vllm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cpu_vllm_env: Path
) -> Iterator[Vllm]:
    """vLLM at the delay ``request.param``: the shared stack at its 480 ms, or a stack of its own
    at another delay (capped at 128 tokens)."""
    delay_ms: int = request.param
    if delay_ms == SHARED_DELAY_MS:
        stack: Stack = request.getfixturevalue("stack")
        yield vllm_of(stack, delay_ms, SHARED_MAX_MODEL_LEN)
        return
    with running_stack(
        tmp_path_factory.mktemp(f"clock{delay_ms}"),
        cpu_vllm_env,
        VOXTRAL_TRANSCRIPTION_DELAY_MS=str(delay_ms),
        VLLM_MAX_MODEL_LEN=str(OWN_MAX_MODEL_LEN),
    ) as own:
        yield vllm_of(own, delay_ms, OWN_MAX_MODEL_LEN)


class Upstream:
    """A raw vLLM realtime socket; keeps every delta of the current generation."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.deltas: list[str] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def commit(self, *, final: bool = False) -> None:
        await self.send({"type": "input_audio_buffer.commit", "final": final})

    async def append(self, pcm: bytes) -> None:
        for piece in chunks(pcm, FRAME_BYTES):
            audio = base64.b64encode(piece).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})

    async def _next(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        assert event["type"] in ("transcription.delta", "transcription.done"), event
        return event

    async def deltas_reach(self, count: int) -> None:
        """Reads deltas until ``count`` of this generation have come, then checks that no more
        come while vLLM waits for audio."""
        try:
            async with asyncio.timeout(UTTERANCE_LIMIT_S):
                while len(self.deltas) < count:
                    event = await self._next(UTTERANCE_LIMIT_S)
                    assert event["type"] == "transcription.delta", (count, self.deltas, event)
                    self.deltas.append(event["delta"])
        except TimeoutError:
            pytest.fail(f"vLLM sent {len(self.deltas)} deltas, not {count}, and then nothing")
        try:
            extra = await self._next(QUIET_S)
        except TimeoutError:
            return
        pytest.fail(f"vLLM sent more than {count} deltas before their audio came: {extra}")

    async def done(self) -> dict[str, Any]:
        """Reads the rest of the generation; returns ``done``'s payload and starts a new count."""
        while (event := await self._next(UTTERANCE_LIMIT_S))["type"] == "transcription.delta":
            self.deltas.append(event["delta"])
        assert event["text"] == "".join(self.deltas)
        event["deltas"], self.deltas = len(self.deltas), []
        return event

    async def utterance(self, pcm: bytes) -> dict[str, Any]:
        await self.commit()
        await self.append(pcm)
        await self.commit(final=True)
        return await self.done()


@contextlib.asynccontextmanager
async def upstream(vllm: Vllm) -> AsyncIterator[Upstream]:
    async with connect(vllm.url, max_size=None) as ws:
        created = json.loads(await asyncio.wait_for(ws.recv(), UTTERANCE_LIMIT_S))
        assert created["type"] == "session.created", created
        await ws.send(json.dumps({"type": "session.update", "model": SERVED_MODEL}))
        yield Upstream(ws)


def check_usage(done: dict[str, Any], vllm: Vllm, *, audio: bool) -> None:
    usage = done["usage"]
    assert usage["completion_tokens"] == done["deltas"]
    assert usage["prompt_tokens"] == (prompt_tokens(vllm.delay_ms) if audio else 0)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def report(vllm: Vllm, case: str, observed: int, expected: int) -> None:
    """One line of the observed-against-formula table (shown with ``pytest -s``)."""
    print(f"clock delay_ms={vllm.delay_ms} {case}: observed={observed} formula={expected}")


ALL_DELAYS = pytest.mark.parametrize("vllm", [SHARED_DELAY_MS, 80, 2400], indirect=True)
OWN_DELAYS = pytest.mark.parametrize("vllm", [80, 2400], indirect=True)


@ALL_DELAYS
async def test_one_delta_per_frame_plus_the_flush(vllm: Vllm) -> None:
    """Every utterance length gets floor((A - 2.5 ms) / 80) + 11 deltas, at any delay."""
    async with upstream(vllm) as socket:
        for case, size in LENGTHS.items():
            done = await socket.utterance(SPEECH[:size])
            report(vllm, case, done["deltas"], deltas_with_final(size))
            assert done["deltas"] == deltas_with_final(size), case
            check_usage(done, vllm, audio=size > 0)


@ALL_DELAYS
async def test_steps_wait_for_their_audio(vllm: Vllm) -> None:
    """Nothing before (delay/80 + 1) frames plus 2.5 ms of audio, then one delta per frame as
    it arrives (one sample short of a frame gives none), then the flush on the final commit.
    The proxy sends audio on exactly these boundaries: one sample off costs a frame per word."""
    first = (vllm.delay_ms // FRAME_MS + 1) * FRAME_BYTES + LOOK_AHEAD_BYTES
    step = first + FRAME_BYTES
    cuts = [first - 2, first, step - 2, step, first + 4 * FRAME_BYTES]
    counts = []
    async with upstream(vllm) as socket:
        await socket.commit()
        sent = 0
        for cut in cuts:
            await socket.append(SPEECH[sent:cut])
            sent = cut
            expected = deltas_before_final(sent, vllm.delay_ms)
            await socket.deltas_reach(expected)
            report(vllm, f"{sent} bytes, no final", len(socket.deltas), expected)
            counts.append(len(socket.deltas))
        assert counts == [0, 1, 1, 2, 5]
        await socket.commit(final=True)
        done = await socket.done()
    report(vllm, f"{sent} bytes, then final", done["deltas"], deltas_with_final(sent))
    assert done["deltas"] == deltas_with_final(sent)
    check_usage(done, vllm, audio=True)


@OWN_DELAYS
async def test_a_cut_at_max_model_len_restarts_the_count(vllm: Vllm) -> None:
    """vLLM ends a generation at its length cap by itself; the next one starts from nothing:
    fresh padding, and none of the audio the cut generation held."""
    cap = vllm.max_model_len - prompt_tokens(vllm.delay_ms)
    # Two frames more than the cap can take before a final commit.
    too_much = (cap + vllm.delay_ms // FRAME_MS + 2) * FRAME_BYTES
    assert deltas_before_final(too_much, vllm.delay_ms) > cap
    async with upstream(vllm) as socket:
        await socket.commit()
        await socket.append(SPEECH[:too_much])
        cut = await socket.done()
        report(vllm, f"cut ({too_much} bytes, no final)", cut["deltas"], cap)
        assert cut["deltas"] == cap
        check_usage(cut, vllm, audio=True)
        assert cut["usage"]["total_tokens"] == vllm.max_model_len

        # The next generation waits for its own (delay/80 + 1) frames, as the first one did.
        first = (vllm.delay_ms // FRAME_MS + 1) * FRAME_BYTES + LOOK_AHEAD_BYTES
        rest = SPEECH[too_much:]
        await socket.commit()
        await socket.append(rest[: first - 2])
        await socket.deltas_reach(0)
        await socket.append(rest[first - 2 : first])
        await socket.deltas_reach(1)
        await socket.commit(final=True)
        after = await socket.done()
    report(
        vllm, f"after the cut: {first} bytes, then final", after["deltas"], deltas_with_final(first)
    )
    assert after["deltas"] == deltas_with_final(first)
    check_usage(after, vllm, audio=True)
