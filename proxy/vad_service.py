"""The server's one VAD engine: made when the first session turns turn detection on (a proxy
without turn detection loads no model and runs no loop), stepped by one task, closed at
shutdown. When the engine fails (its model raises, a step outlasts its deadline, or a session
finds it fallen behind real time), the failure is counted by reason, every session that used it
is told, and the next session that turns detection on gets a fresh engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from proxy.metrics import Metrics
from proxy.vad import OnWindows, VadEngine, VadFailure, VadStalled, VadStream

log = structlog.get_logger("proxy.vad_service")

OnFailed = Callable[[VadFailure], None]


class VadService:
    def __init__(
        self,
        engine_factory: Callable[[], VadEngine] = VadEngine,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine_factory = engine_factory
        self._metrics = metrics
        self._engine: VadEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_failed: dict[VadStream, OnFailed] = {}
        # Failed engines being closed (each waits for its step in flight, at most its deadline).
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def streams(self) -> int:
        return len(self._on_failed)

    def open(self, on_windows: OnWindows, on_failed: OnFailed) -> VadStream:
        """A stream for one session; ``on_failed`` is called (on the event loop, with the
        reason) if the engine fails."""
        if self._engine is None:
            engine = self._engine = self._engine_factory()
            if self._metrics is not None:
                engine.on_step = self._metrics.vad_step_seconds.observe
            self._task = asyncio.create_task(self._run(engine))
        stream = self._engine.open(on_windows)
        self._on_failed[stream] = on_failed
        return stream

    def close_stream(self, stream: VadStream) -> None:
        stream.close()
        self._on_failed.pop(stream, None)

    def fell_behind(self) -> None:
        """A session found the engine far behind the real-time audio of its stream (the
        session has turned its own detection off): the engine fails for every other session,
        as a broken one does, and the next session gets a fresh one."""
        task = self._task
        if task is None:
            return  # failed already
        log.error("vad_engine_behind", streams=len(self._on_failed))
        task.cancel()
        self._failed(VadFailure.FELL_BEHIND)

    async def _run(self, engine: VadEngine) -> None:
        try:
            await engine.run()
        except VadStalled:
            log.exception("vad_engine_stalled", streams=len(self._on_failed))
            reason = VadFailure.STEP_DEADLINE
        except Exception:
            log.exception("vad_engine_failed", streams=len(self._on_failed))
            reason = VadFailure.MODEL_ERROR
        # run() only returns by failing (cancellation propagates past this point).
        self._failed(reason)

    def _failed(self, reason: VadFailure) -> None:
        engine = self._engine
        assert engine is not None
        self._engine = self._task = None
        if self._metrics is not None:
            self._metrics.vad_engine_failures.labels(reason.value).inc()
        failed, self._on_failed = self._on_failed, {}
        # The sessions first: closing waits for a step that may never end.
        for on_failed in failed.values():
            on_failed(reason)
        closing = asyncio.create_task(asyncio.to_thread(engine.close))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        task, engine = self._task, self._engine
        self._engine = self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if self._closing:
            await asyncio.wait(self._closing)
