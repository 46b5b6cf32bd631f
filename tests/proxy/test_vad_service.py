"""proxy.vad_service: the real service and the real engine, with stand-ins for the model (one
that raises, one that hangs, one that scores every window 0): a failed engine is counted by
reason, every session that used it is told, and the next session gets a fresh engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from proxy.metrics import Metrics
from proxy.vad import WINDOW_SAMPLES, Float32Array, ScoresWindows, VadEngine, VadFailure, Window
from proxy.vad_service import VadService
from tests.proxy.vad_models import HungModel

WINDOW = bytes(2 * WINDOW_SAMPLES)


class SilentModel:
    """Scores every window 0."""

    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        return np.zeros(len(audio), dtype=np.float32), state


class RaisingModel:
    def run(self, audio: Float32Array, state: Float32Array) -> tuple[Float32Array, Float32Array]:
        raise RuntimeError("the model broke")


class Engines:
    """An engine factory: each engine it makes has the next of ``models`` (the last one for any
    beyond); counts the engines made."""

    def __init__(self, *models: ScoresWindows, step_deadline_s: float = 3.0) -> None:
        self.models = models
        self.step_deadline_s = step_deadline_s
        self.made = 0

    def __call__(self) -> VadEngine:
        model = self.models[min(self.made, len(self.models) - 1)]
        self.made += 1
        return VadEngine(model, step_deadline_s=self.step_deadline_s)


class Session:
    """What a session hands the service: its windows' and its failure's handlers."""

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.failures: list[VadFailure] = []
        self.scored = asyncio.Event()
        self.failed = asyncio.Event()

    def on_windows(self, windows: list[Window]) -> None:
        self.windows += windows
        self.scored.set()

    def on_failed(self, reason: VadFailure) -> None:
        self.failures.append(reason)
        self.failed.set()


def failures(metrics: Metrics) -> dict[str, float | None]:
    return {
        reason.value: metrics.registry.get_sample_value(
            "voxtral_proxy_vad_engine_failures_total", {"reason": reason.value}
        )
        for reason in VadFailure
    }


def counted(reason: VadFailure) -> dict[str, float | None]:
    return {r.value: 1.0 if r is reason else 0.0 for r in VadFailure}


async def until(event: asyncio.Event) -> None:
    async with asyncio.timeout(10):  # a hang guard
        await event.wait()


async def fails_then_recovers(
    engines: Engines,
    reason: VadFailure,
    cause: Callable[[VadService], Awaitable[None]] | None = None,
) -> None:
    """Two sessions on one engine; the first feeds a window (and ``cause`` acts, if given):
    both are told ``reason`` once, and a later session is scored by a fresh engine."""
    metrics = Metrics()
    service = VadService(engines, metrics)
    try:
        first, second = Session(), Session()
        stream = service.open(first.on_windows, first.on_failed)
        service.open(second.on_windows, second.on_failed)
        assert set(failures(metrics).values()) == {0.0}  # every reason shown from the start
        stream.feed(WINDOW)
        if cause is not None:
            await cause(service)
        await until(first.failed)
        await until(second.failed)
        assert (first.failures, second.failures) == ([reason], [reason])
        assert service.streams == 0
        assert failures(metrics) == counted(reason)
        later = Session()
        service.open(later.on_windows, later.on_failed).feed(WINDOW)
        await until(later.scored)
        assert engines.made == 2
        assert later.windows == [(32, 0.0)]
        assert later.failures == []
    finally:
        await service.close()


async def test_a_model_that_raises_fails_the_engine_for_every_session_and_is_counted() -> None:
    await fails_then_recovers(Engines(RaisingModel(), SilentModel()), VadFailure.MODEL_ERROR)


async def test_a_step_past_its_deadline_is_counted_as_such() -> None:
    hung = HungModel()
    engines = Engines(hung, SilentModel(), step_deadline_s=0.05)
    try:
        await fails_then_recovers(engines, VadFailure.STEP_DEADLINE)
    finally:
        hung.release.set()


async def test_an_engine_that_fell_behind_is_given_up_for_every_session_once() -> None:
    slow = HungModel()

    async def behind_twice(service: VadService) -> None:
        await asyncio.to_thread(slow.entered.wait, 10)  # a step is in flight
        service.fell_behind()
        service.fell_behind()  # another session, the same engine: counted once
        slow.release.set()  # the step ends; its results go nowhere

    try:
        await fails_then_recovers(
            Engines(slow, SilentModel()), VadFailure.FELL_BEHIND, behind_twice
        )
    finally:
        slow.release.set()


async def test_each_step_s_inference_time_is_observed() -> None:
    metrics = Metrics()
    service = VadService(Engines(SilentModel()), metrics)
    try:
        session = Session()
        service.open(session.on_windows, session.on_failed).feed(WINDOW * 3)
        await until(session.scored)
    finally:
        await service.close()
    steps = metrics.registry.get_sample_value("voxtral_proxy_vad_step_seconds_count")
    assert steps == 1  # one step scored the three windows
    assert len(session.windows) == 3
    assert b"voxtral_proxy_vad_step_seconds_bucket" in metrics.render()
