"""The server's one VAD engine: made when the first session turns turn detection on (a proxy
without turn detection loads no model and runs no loop), stepped by one task, closed at
shutdown. When the engine fails (its model raises, or a step outlasts its deadline), every
session that used it is told, and the next session that turns detection on gets a fresh engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from proxy.vad import OnWindows, VadEngine, VadStream

log = structlog.get_logger("proxy.vad_service")

OnFailed = Callable[[], None]


class VadService:
    def __init__(self, engine_factory: Callable[[], VadEngine] = VadEngine) -> None:
        self._engine_factory = engine_factory
        self._engine: VadEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_failed: dict[VadStream, OnFailed] = {}

    @property
    def streams(self) -> int:
        return len(self._on_failed)

    def open(self, on_windows: OnWindows, on_failed: OnFailed) -> VadStream:
        """A stream for one session; ``on_failed`` is called (on the event loop) if the engine
        stops."""
        if self._engine is None:
            engine = self._engine = self._engine_factory()
            self._task = asyncio.create_task(self._run(engine))
        stream = self._engine.open(on_windows)
        self._on_failed[stream] = on_failed
        return stream

    def close_stream(self, stream: VadStream) -> None:
        stream.close()
        self._on_failed.pop(stream, None)

    async def _run(self, engine: VadEngine) -> None:
        try:
            await engine.run()
        except Exception:
            log.exception("vad_engine_failed", streams=len(self._on_failed))
        # run() only returns by failing (cancellation propagates past this point).
        self._engine = self._task = None
        failed, self._on_failed = self._on_failed, {}
        # The sessions first: closing waits for a step that may never end.
        for on_failed in failed.values():
            on_failed()
        await asyncio.to_thread(engine.close)

    async def close(self) -> None:
        task, engine = self._task, self._engine
        self._engine = self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if engine is not None:
            await asyncio.to_thread(engine.close)
