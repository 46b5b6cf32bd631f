"""Turn detection through the real proxy, the real VAD model and the fake vLLM, over real
sockets: real speech from samples/ streamed without commits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devtools.fake_vllm import predict_text
from proxy.session._turn_stream import MAX_TURN_LEAD_MS, MAX_UNSCORED_MS
from proxy.turns import TurnOptions
from proxy.vad import WINDOW_MS, Float32Array, VadEngine, VadModel
from tests.harness import (
    Client,
    RunningProxy,
    b64,
    chunks,
    connected,
    fake_and_proxy,
    of_request,
    wait_for,
)
from tests.speech import PCM_BYTES_PER_MS, noise, spoken_recording, to_pcm16
from tests.tones import upstream_audio

BOUNDARY_TOLERANCE_MS = 200
OPTIONS = TurnOptions()
# 320 ms pieces every 48 ms: about seven times real time, within the second of audio the
# engine scores per stream per 100 ms tick.
PIECE_BYTES = 320 * PCM_BYTES_PER_MS
PACE_S = 0.048


class Events:
    """Reads every event of a client in the background (a turn's deltas come while the client
    is still streaming)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.items: list[dict[str, Any]] = []
        self._new = asyncio.Event()

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                self.items.append(await self.client.recv(timeout=60))
                self._new.set()

    async def until(self, kind: str, request_id: str | None = None) -> dict[str, Any]:
        """The first event of ``kind`` (for ``request_id``), once it has come."""
        return await self.first(
            lambda e: e["type"] == kind and request_id in (None, e["request_id"])
        )

    async def first(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                for event in self.items:
                    if match(event):
                        return event
                self._new.clear()
                await self._new.wait()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e["type"] == kind]


@contextlib.asynccontextmanager
async def turn_client(
    proxy: RunningProxy, *, query: str = "turn_detection=server_vad"
) -> AsyncIterator[tuple[Client, Events]]:
    async with connected(proxy, query=query, expect_created=False) as client:
        created = await client.recv()
        assert created["type"] == "session.created"
        events = Events(client)
        reader = asyncio.create_task(events.read())
        try:
            yield client, events
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def stream(client: Client, pcm: bytes, *, request_id: str | None = None) -> None:
    """Appends with no request_id (unless given) and no commits, faster than real time."""
    for piece in chunks(pcm, PIECE_BYTES):
        await client.append(request_id, piece) if request_id else await client.send(
            "input_audio_buffer.append", None, {"audio": b64(piece)}
        )
        await asyncio.sleep(PACE_S)


async def engine_failures(proxy: RunningProxy) -> dict[str, float]:
    """``voxtral_proxy_vad_engine_failures_total`` by reason, read from /metrics."""
    async with httpx.AsyncClient(base_url=proxy.http_url, timeout=5.0) as http:
        text = (await http.get("/metrics")).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "voxtral_proxy_vad_engine_failures_total"
    }


def turn_audio(
    pcm: bytes, started: dict[str, Any], stopped: dict[str, Any], done: dict[str, Any]
) -> bytes:
    """A turn's audio as the protocol defines it: from the prefix padding before the start to
    the moment the stop was known (silence_ms after the end, in whole VAD windows), and past it
    what had arrived by then, up to the lead a turn may go ahead of the VAD. Where in that span
    it ends depends on the pacing: ``done`` says how long it was."""
    start_ms = max(0, started["payload"]["audio_start_ms"] - OPTIONS.prefix_padding_ms)
    windows = -(-OPTIONS.silence_ms // WINDOW_MS)
    known_ms = stopped["payload"]["audio_end_ms"] + windows * WINDOW_MS
    end_ms = start_ms + done["payload"]["audio_ms"]
    assert known_ms <= end_ms <= known_ms + MAX_TURN_LEAD_MS
    return pcm[start_ms * PCM_BYTES_PER_MS : end_ms * PCM_BYTES_PER_MS]


async def test_one_turn_per_spoken_clip_with_its_boundaries_and_text() -> None:
    recording = spoken_recording(("short", "long"))
    async with fake_and_proxy() as (fake, proxy), turn_client(proxy) as (client, events):
        await stream(client, recording.pcm)
        await events.until("transcription.done", "turn-2")
        await asyncio.sleep(0.5)  # nothing more may come: a third turn would have started
    turns = [f"turn-{i}" for i in range(1, len(recording.truth) + 1)]
    assert [e["request_id"] for e in events.of_type("input_audio_buffer.speech_started")] == turns
    assert [e["request_id"] for e in events.of_type("input_audio_buffer.speech_stopped")] == turns
    assert [e["request_id"] for e in events.of_type("transcription.done")] == turns
    assert events.of_type("error") == []
    errors = []
    sent = 0
    for request_id, (true_start, true_end) in zip(turns, recording.truth, strict=True):
        mine = of_request(events.items, request_id)
        kinds = [e["type"] for e in mine]
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert kinds[-1] == "transcription.done"
        assert kinds.index("input_audio_buffer.speech_stopped") < len(kinds) - 1
        started, stopped, done = (
            mine[0],
            next(e for e in mine if e["type"].endswith("stopped")),
            mine[-1],
        )
        errors.append(
            (
                started["payload"]["audio_start_ms"] - true_start,
                stopped["payload"]["audio_end_ms"] - true_end,
            )
        )
        audio = turn_audio(recording.pcm, started, stopped, done)
        assert done["payload"]["text"] == predict_text(audio)
        sent += len(audio)
    print(f"boundary errors through the proxy (start, end) in ms per clip: {errors}")
    for start_error, end_error in errors:
        assert abs(start_error) <= BOUNDARY_TOLERANCE_MS
        assert abs(end_error) <= BOUNDARY_TOLERANCE_MS
    # The silence between turns never went to vLLM.
    assert len(upstream_audio(fake)) == sent
    assert proxy.server.state.vad.streams == 0


async def test_noise_alone_opens_no_turn_and_speech_after_it_opens_the_first() -> None:
    quiet = to_pcm16(noise(6.0, -30, seed=2))
    speech = spoken_recording(("short",), lead_s=0.5, trailer_s=1.0)
    async with fake_and_proxy() as (fake, proxy), connected(proxy) as client:
        await client.send("session.update", "u1", {"turn_detection": {"type": "server_vad"}})
        updated = await client.recv()
        assert updated["type"] == "session.updated"
        assert updated["payload"]["turn_detection"] == OPTIONS.as_payload()
        events = Events(client)
        reader = asyncio.create_task(events.read())
        await stream(client, quiet + speech.pcm)
        started = await events.until("input_audio_buffer.speech_started")
        await events.until("transcription.done", "turn-1")
        reader.cancel()
    # The noise opened nothing: the first turn is the speech after it.
    assert started["request_id"] == "turn-1"
    noise_ms = len(quiet) // PCM_BYTES_PER_MS
    assert started["payload"]["audio_start_ms"] >= noise_ms
    assert events.of_type("error") == []
    assert fake.generations_started == 1


async def test_push_to_talk_commit_ends_the_turn_at_once() -> None:
    recording = spoken_recording(("long",), trailer_s=0.5, max_clip_s=8.0)
    # Stop streaming in the middle of the clip and commit: the turn ends with what was sent.
    cut = (recording.truth[0][0] + 3000) * PCM_BYTES_PER_MS // PIECE_BYTES * PIECE_BYTES
    async with fake_and_proxy() as (fake, proxy), turn_client(proxy) as (client, events):
        await stream(client, recording.pcm[:cut])
        started = await events.until("input_audio_buffer.speech_started")
        await client.final("whatever-the-client-calls-it")
        done = await events.until("transcription.done", "turn-1")
    assert events.of_type("input_audio_buffer.speech_stopped") == []
    assert events.of_type("error") == []
    start_ms = started["payload"]["audio_start_ms"] - OPTIONS.prefix_padding_ms
    audio = recording.pcm[start_ms * PCM_BYTES_PER_MS : cut]
    assert done["payload"]["text"] == predict_text(audio)
    assert len(upstream_audio(fake)) == len(audio)


async def test_a_final_commit_with_no_turn_open_is_refused() -> None:
    async with fake_and_proxy() as (_, proxy), turn_client(proxy) as (client, events):
        await client.final("r1")
        error = await events.until("error")
    assert error["request_id"] == "r1"
    assert error["payload"]["code"] == "no_active_request"
    assert "No turn is open" in error["payload"]["message"]


async def test_commit_to_open_is_refused_while_turn_detection_is_on() -> None:
    async with fake_and_proxy() as (_, proxy), turn_client(proxy) as (client, events):
        await client.open("r1")
        error = await events.until("error")
    assert (error["request_id"], error["payload"]["code"]) == ("r1", "invalid_message")
    assert "Turn detection is on" in error["payload"]["message"]


async def test_cancel_of_a_turn_ends_it_and_later_turns_still_come() -> None:
    recording = spoken_recording(("short", "short"))
    cut = (recording.truth[0][0] + 1000) * PCM_BYTES_PER_MS // PIECE_BYTES * PIECE_BYTES
    async with fake_and_proxy() as (_, proxy), turn_client(proxy) as (client, events):
        await stream(client, recording.pcm[:cut])
        started = await events.until("input_audio_buffer.speech_started")
        await client.send("cancel", started["request_id"])
        cancelled = await events.until("cancelled", "turn-1")
        await stream(client, recording.pcm[cut:])
        second_start = recording.truth[1][0]
        last = await events.first(
            lambda e: (
                e["type"] == "input_audio_buffer.speech_started"
                and e["payload"]["audio_start_ms"] >= second_start - BOUNDARY_TOLERANCE_MS
            )
        )
        await events.until("transcription.done", last["request_id"])
    assert cancelled["payload"]["reason"] == "client_request"
    assert events.of_type("error") == []
    # The cancelled turn ends in its cancel alone; every later one (the rest of the first clip
    # may make one, as speech went on) in one done.
    ended = [e for e in events.items if e["type"] in ("transcription.done", "cancelled")]
    later = [e["request_id"] for e in events.of_type("input_audio_buffer.speech_started")][1:]
    assert [(e["type"], e["request_id"]) for e in ended] == [("cancelled", "turn-1")] + [
        ("transcription.done", request_id) for request_id in later
    ]


async def test_a_turn_past_max_model_len_rolls_over_with_one_done() -> None:
    recording = spoken_recording(("long",), max_clip_s=20.0, trailer_s=1.0)
    async with (
        fake_and_proxy({"max_model_len": 128}) as (fake, proxy),
        turn_client(proxy) as (client, events),
    ):
        await stream(client, recording.pcm)
        done = await events.until("transcription.done", "turn-1")
        await asyncio.sleep(0.3)
    assert len(events.of_type("transcription.done")) == len(
        events.of_type("input_audio_buffer.speech_started")
    )
    assert events.of_type("error") == []
    started = events.of_type("input_audio_buffer.speech_started")[0]
    stopped = events.of_type("input_audio_buffer.speech_stopped")[0]
    turn_audio(recording.pcm, started, stopped, done)
    assert fake.generations_started > 2


async def test_a_client_that_leaves_mid_turn_frees_its_vad_stream_and_upstream() -> None:
    recording = spoken_recording(("long",), max_clip_s=8.0)
    async with fake_and_proxy() as (fake, proxy):
        async with turn_client(proxy) as (client, events):
            await stream(client, recording.pcm[: (recording.truth[0][0] + 2000) * PCM_BYTES_PER_MS])
            await events.until("input_audio_buffer.speech_started")
            assert proxy.server.state.vad.streams == 1
        await wait_for(lambda: proxy.server.state.vad.streams == 0)
        await wait_for(lambda: fake.open_connections == 0)
        # The next session's turns work as before.
        short = spoken_recording(("short",), lead_s=0.5, trailer_s=1.0)
        async with turn_client(proxy) as (client, events):
            await stream(client, short.pcm)
            done = await events.until("transcription.done", "turn-1")
    assert done["payload"]["text"]


class BrokenModel(VadModel):
    """A model that fails on its first batch."""

    def __init__(self) -> None:
        pass

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        raise RuntimeError("the model broke")


async def test_a_failed_vad_engine_ends_turn_detection_for_each_session_with_an_error() -> None:
    recording = spoken_recording(("short",), lead_s=0.5, trailer_s=1.0)
    async with fake_and_proxy() as (_, proxy):
        service = proxy.server.state.vad
        service._engine_factory = lambda: VadEngine(BrokenModel())
        async with (
            turn_client(proxy) as (first, first_events),
            turn_client(proxy) as (
                second,
                second_events,
            ),
        ):
            await stream(first, recording.pcm[:PIECE_BYTES])
            await stream(second, recording.pcm[:PIECE_BYTES])
            errors = [await first_events.until("error"), await second_events.until("error")]
            # Each session goes on without turn detection: appends need a request_id again.
            await first.send("input_audio_buffer.append", None, {"audio": b64(recording.pcm[:640])})
            refused = await first_events.first(
                lambda e: e["type"] == "error" and e["payload"]["code"] == "invalid_message"
            )
        assert service.streams == 0
        # A later session gets a fresh engine.
        service._engine_factory = VadEngine
        async with turn_client(proxy) as (client, events):
            await stream(client, recording.pcm)
            done = await events.until("transcription.done", "turn-1")
        counted = await engine_failures(proxy)
    assert counted == {"model_error": 1.0, "step_deadline": 0.0, "fell_behind": 0.0}
    for error in errors:
        assert error["payload"]["code"] == "internal_error"
        assert "Turn detection stopped working" in error["payload"]["message"]
    assert "request_id" in refused["payload"]["message"]
    assert done["payload"]["text"]


async def test_binary_frames_stream_the_turns_too() -> None:
    recording = spoken_recording(("short",), lead_s=0.5, trailer_s=1.0)
    async with fake_and_proxy() as (_, proxy), turn_client(proxy) as (client, events):
        for piece in chunks(recording.pcm, PIECE_BYTES):
            await client.send_raw(piece)
            await asyncio.sleep(PACE_S)
        done = await events.until("transcription.done", "turn-1")
    started = events.of_type("input_audio_buffer.speech_started")[0]
    stopped = events.of_type("input_audio_buffer.speech_stopped")[0]
    audio = turn_audio(recording.pcm, started, stopped, done)
    assert done["payload"]["text"] == predict_text(audio)
    assert events.of_type("error") == []


# Stream positions on whole VAD windows and whole 80 ms pieces: what is sent is all scored.
ALIGN_BYTES = 5 * WINDOW_MS * PCM_BYTES_PER_MS


def aligned(ms: int) -> int:
    return ms * PCM_BYTES_PER_MS // ALIGN_BYTES * ALIGN_BYTES


class GatedModel(VadModel):
    """The real model behind a gate: while ``gate`` is shut an inference waits for it. Counts
    the windows it has scored."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.windows_scored = 0

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        self.gate.wait()
        result = super().run(audio, state)
        self.windows_scored += len(audio)
        return result


async def test_once_a_turn_is_open_its_audio_reaches_vllm_before_the_vad_scores_it() -> None:
    recording = spoken_recording(("long",), max_clip_s=8.0)
    cut = aligned(recording.truth[0][0] + 2000)
    frame = recording.pcm[cut : cut + 80 * PCM_BYTES_PER_MS]
    model = GatedModel()
    async with fake_and_proxy() as (fake, proxy):
        # A deadline the gate never reaches: the engine must not fail (which would end the turn
        # and send its audio) while the test holds it.
        proxy.server.state.vad._engine_factory = lambda: VadEngine(model, step_deadline_s=60)
        async with turn_client(proxy) as (client, events):
            await stream(client, recording.pcm[:cut])
            await events.until("input_audio_buffer.speech_started")
            await wait_for(lambda: model.windows_scored * WINDOW_MS * PCM_BYTES_PER_MS == cut)
            model.gate.clear()  # the VAD scores nothing more until the gate opens
            try:
                await client.send_raw(frame)
                await wait_for(lambda: upstream_audio(fake).endswith(frame))
                scored_when_forwarded = model.windows_scored
            finally:
                model.gate.set()
            await client.final("ptt")
            done = await events.until("transcription.done", "turn-1")
    assert scored_when_forwarded * WINDOW_MS * PCM_BYTES_PER_MS == cut
    assert upstream_audio(fake).endswith(frame)
    assert done["payload"]["text"]
    assert events.of_type("error") == []


class HangingModel(VadModel):
    """The real model until ``hang`` is set; from then on an inference never returns (until
    ``release``, at the end of the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.release = threading.Event()

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        if self.hang.is_set():
            self.release.wait()
        return super().run(audio, state)


async def test_a_hung_vad_fails_turn_detection_at_its_deadline_and_a_fresh_engine_follows() -> None:
    recording = spoken_recording(("long",), max_clip_s=8.0)
    cut = aligned(recording.truth[0][0] + 2000)
    more = recording.pcm[cut : cut + PIECE_BYTES]
    model = HangingModel()
    async with fake_and_proxy() as (_, proxy):
        service = proxy.server.state.vad
        service._engine_factory = lambda: VadEngine(model, step_deadline_s=0.2)
        try:
            async with turn_client(proxy) as (client, events):
                await stream(client, recording.pcm[:cut])
                started = await events.until("input_audio_buffer.speech_started")
                model.hang.set()
                await client.send_raw(more)  # its windows' step never returns
                error = await events.until("error")
                done = await events.until("transcription.done", "turn-1")
            assert service.streams == 0
            # The next session to turn detection on gets a fresh engine.
            service._engine_factory = VadEngine
            short = spoken_recording(("short",), lead_s=0.5, trailer_s=1.0)
            async with turn_client(proxy) as (client, later):
                await stream(client, short.pcm)
                later_done = await later.until("transcription.done", "turn-1")
            counted = await engine_failures(proxy)
        finally:
            model.release.set()
    assert counted == {"model_error": 0.0, "step_deadline": 1.0, "fell_behind": 0.0}
    # The engine is blamed, not the client, and the open turn ends with all the audio received.
    assert (error["request_id"], error["payload"]["code"]) == (None, "internal_error")
    assert "Turn detection stopped working" in error["payload"]["message"]
    assert [e["payload"]["code"] for e in events.of_type("error")] == ["internal_error"]
    start = (started["payload"]["audio_start_ms"] - OPTIONS.prefix_padding_ms) * PCM_BYTES_PER_MS
    audio = recording.pcm[start : cut + len(more)]
    assert done["payload"]["audio_ms"] == len(audio) // PCM_BYTES_PER_MS
    assert done["payload"]["text"] == predict_text(audio)
    assert later_done["payload"]["text"]


class SlowModel(VadModel):
    """The real model, taking ``delay_s`` longer for each batch (until ``release``): its steps
    finish, at a tenth of real time or less."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.release = threading.Event()

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        self.release.wait(self.delay_s)
        return super().run(audio, state)


async def test_an_engine_behind_real_time_audio_is_given_up_and_the_client_is_not_blamed() -> None:
    model = SlowModel(delay_s=0.5)
    piece = bytes(PIECE_BYTES)
    # 1.5 times real time: at most a third of the backlog is the client's lead when the VAD is
    # 10 s behind (a busier machine only sends slower).
    pace_s = PIECE_BYTES / PCM_BYTES_PER_MS / 1000 / 1.5
    async with fake_and_proxy() as (_, proxy):
        service = proxy.server.state.vad
        # A deadline the slow steps never reach: this engine is slow, not hung.
        service._engine_factory = lambda: VadEngine(model, step_deadline_s=60)
        try:
            async with (
                turn_client(proxy) as (client, events),
                turn_client(proxy) as (other, other_events),
            ):
                await other.send_raw(piece)
                for _ in range(2 * MAX_UNSCORED_MS // 320):
                    await client.send_raw(piece)
                    await asyncio.sleep(pace_s)
                    if events.of_type("error"):
                        break
                error = await events.until("error")
                other_error = await other_events.until("error")
                # The session goes on without turn detection: appends need a request_id again.
                await client.send("input_audio_buffer.append", None, {"audio": b64(piece)})
                refused = await events.first(
                    lambda e: e["type"] == "error" and e["payload"]["code"] == "invalid_message"
                )
            assert service.streams == 0
            counted = await engine_failures(proxy)
        finally:
            model.release.set()
    for told in (error, other_error):
        assert (told["request_id"], told["payload"]["code"]) == (None, "internal_error")
        assert "overloaded" in told["payload"]["message"]
    assert [e["payload"]["code"] for e in events.of_type("error")] == [
        "internal_error",
        "invalid_message",
    ]
    assert "request_id" in refused["payload"]["message"]
    assert counted == {"model_error": 0.0, "step_deadline": 0.0, "fell_behind": 1.0}
