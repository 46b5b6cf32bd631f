"""`python -m devtools.bench_vad`: what batched turn detection costs per stream, in this process.

For each stream count N, N simulated sessions get real speech at real-time pace (one 80 ms
frame each per 80 ms, each stream starting at its own place in the clip, and sending at its own
moment within the 80 ms, as clients that connected at different times do) for `--seconds`,
twice back to back: fed into `proxy.vad.VadEngine` with its step loop running, and fed into a
plain buffer (the pacing alone). It reports the process CPU (all threads) per audio second per
stream for both and the difference (what the VAD adds), whether the engine kept up (windows
scored against windows fed while measuring), and how late a 10 ms timer on the event loop fired
(p50, p99). With the VAD on, CPU is divided by the audio actually scored, so a machine too busy
for the engine to keep up shows as fewer windows scored, not as a lower cost.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.audio import CHUNK_BYTES, AudioError, load_pcm, pcm_seconds
from clients.stats import summarize
from devtools.bench_proxy_procs import ROOT
from proxy.audio_format import CHUNK_MS
from proxy.vad import STEP_INTERVAL_S, WINDOW_MS, WINDOW_SAMPLES, VadEngine, VadModel, Window

_LAG_PROBE_S = 0.01
_WARMUP_S = 1.0
# The streams' frames arrive in this many groups spread over each 80 ms.
_PHASES = 8


@dataclass(frozen=True)
class Run:
    streams: int
    cpu_ms_per_audio_s: float
    windows_fed: int
    windows_scored: int
    lag_p50_ms: float
    lag_p99_ms: float


async def _probe_lag(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + _LAG_PROBE_S
        await asyncio.sleep(_LAG_PROBE_S)
        lags.append(loop.time() - due)


async def measure(
    streams: int, seconds: float, pcm: bytes, model: VadModel | None, interval_s: float
) -> Run:
    """One run: ``model`` None feeds a plain buffer instead of the engine."""
    scored = 0

    def on_windows(windows: list[Window]) -> None:
        nonlocal scored
        scored += len(windows)

    engine = VadEngine(model) if model is not None else None
    sinks = [engine.open(on_windows) if engine else bytearray() for _ in range(streams)]
    frames = len(pcm) // CHUNK_BYTES
    offsets = [i * frames // streams for i in range(streams)]
    runner = asyncio.create_task(engine.run(interval_s)) if engine else None
    lags: list[float] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    chunk_s = CHUNK_MS / 1000
    warmup_ticks = round(_WARMUP_S / chunk_s)
    ticks = warmup_ticks + max(1, round(seconds / chunk_s))
    fed = scored_before = 0
    start = loop.time()
    cpu0 = 0.0
    for tick in range(ticks):
        if tick == warmup_ticks:
            cpu0 = time.process_time()
            fed, scored_before = 0, scored
            prober = asyncio.create_task(_probe_lag(lags, stop))
        for phase in range(_PHASES):
            for sink, offset in zip(sinks[phase::_PHASES], offsets[phase::_PHASES], strict=True):
                at = (offset + tick) % frames * CHUNK_BYTES
                frame = pcm[at : at + CHUNK_BYTES]
                if isinstance(sink, bytearray):
                    sink[:] = frame
                else:
                    sink.feed(frame)
                fed += len(frame)
            due = start + (tick + (phase + 1) / _PHASES) * chunk_s
            await asyncio.sleep(max(0.0, due - loop.time()))
    cpu = time.process_time() - cpu0
    stop.set()
    await prober
    if runner is not None:
        runner.cancel()
    if engine is not None:
        engine.close()
    scored -= scored_before
    audio_s = scored * WINDOW_MS / 1000 if engine else pcm_seconds(fed)
    lag = summarize(lags, ndigits=6)
    return Run(
        streams=streams,
        cpu_ms_per_audio_s=cpu * 1000 / audio_s if audio_s else math.inf,
        windows_fed=fed // (2 * WINDOW_SAMPLES),
        windows_scored=scored,
        lag_p50_ms=(lag["p50"] or 0.0) * 1000,
        lag_p99_ms=(lag["p99"] or 0.0) * 1000,
    )


def _stream_counts(raw: str) -> list[int]:
    try:
        counts = [int(part) for part in raw.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("use stream counts like 100,300") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("stream counts must be whole numbers >= 1")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bench_vad",
        description="CPU per audio second per stream of batched turn detection (VAD on vs off).",
    )
    parser.add_argument("--streams", type=_stream_counts, default=[100, 300])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per run (after 1 s warm-up)"
    )
    parser.add_argument(
        "--tick-ms",
        type=float,
        default=STEP_INTERVAL_S * 1000,
        help="the engine's step interval (default: the engine's own)",
    )
    parser.add_argument("--audio", type=Path, default=ROOT / "samples" / "long.wav")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.tick_ms <= 0:
        parser.error("--seconds and --tick-ms must be > 0")
    return args


async def bench(args: argparse.Namespace, pcm: bytes) -> None:
    model = VadModel()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"{'streams':>7} {'vad':>4} {'cpu ms/audio s/stream':>22} {'scored/fed':>12} "
        f"{'loop lag p50/p99 ms':>20}"
    )
    for streams in args.streams:
        on = await measure(streams, args.seconds, pcm, model, args.tick_ms / 1000)
        off = await measure(streams, args.seconds, pcm, None, args.tick_ms / 1000)
        for name, run in (("on", on), ("off", off)):
            kept_up = f"{run.windows_scored}/{run.windows_fed}" if name == "on" else "-"
            print(
                f"{streams:>7} {name:>4} {run.cpu_ms_per_audio_s:>22.2f} {kept_up:>12} "
                f"{run.lag_p50_ms:>9.1f}/{run.lag_p99_ms:<10.1f}"
            )
        print(
            f"{streams:>7} adds {on.cpu_ms_per_audio_s - off.cpu_ms_per_audio_s:>22.2f} ms CPU "
            "per audio second per stream"
        )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pcm = load_pcm(args.audio)
        if len(pcm) < CHUNK_BYTES:
            raise AudioError(f"{args.audio} is shorter than one {CHUNK_MS} ms frame")
    except AudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    asyncio.run(bench(args, pcm))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
