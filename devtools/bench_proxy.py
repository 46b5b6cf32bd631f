"""`python -m devtools.bench_proxy`: what the proxy costs, measured side by side with vLLM direct.

For each stream count N: N concurrent streams at real-time pace (one 80 ms frame per message,
starts staggered over `--ramp-seconds`) go first straight to a fresh fake vLLM in vLLM's own
protocol, then through the real proxy (`python -m proxy`, its own process) in front of another
fresh fake, in the envelope protocol, once per mode (`--modes`): base64 JSON appends, binary
frames, 8 kHz μ-law binary frames (resampled by the proxy), base64 appends of 24 kHz PCM16
(resampled too), and a voice-agent mix (utterances of `--utterance-seconds` back to back); and in
OpenAI's Realtime protocol, the same 24 kHz audio as base64 appends on `/v1/realtime`. Every mode
streams the same audio on the same streams. The load comes from `--workers` separate processes
that report their own CPU time and how late their sends were, so it is visible whether the
generator (or the machine) kept up.

Per N and mode it reports: per-delta latency (from sending the frame that releases a token to
receiving its delta; the fake's transcript is a pure function of the audio, so the releasing
frame is known), the latency the proxy adds (p50 and p99, proxied minus direct), the proxy's CPU
per second of audio streamed and per utterance, its RSS per stream (from /proc), and every lost,
duplicated or reordered event (each stream's deltas and done text against
`devtools.fake_vllm.predict_deltas`, run on what reaches vLLM).
Results: a table on stdout, `bench-proxy.json` and `bench-proxy.png` in `--out`.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing
import os
import platform
import queue
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clients.audio import CHUNK_BYTES, AudioError, load_pcm
from devtools.bench_proxy_check import (
    Expected,
    compare,
    expected_for,
    expected_for_utterances,
    summary_ms,
)
from devtools.bench_proxy_load import (
    BINARY_MODES,
    CHUNK_S,
    CONVERTED,
    DEFAULT_MODES,
    PROXIED_MODES,
    Mode,
    StreamPlan,
    StreamResult,
    WorkerPlan,
    WorkerResult,
    worker_main,
)
from devtools.bench_proxy_procs import (
    ROOT,
    TICKS_PER_S,
    Child,
    ProcessFailed,
    Sample,
    Sampler,
    start_fake,
    start_proxy,
    stop,
    wait_for_quiet,
)
from devtools.bench_proxy_profile import finish_py_spy, start_py_spy, summarize
from proxy.audio_convert import AudioConverter
from proxy.audio_format import CHUNK_MS, AudioFormat, Encoding
from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS
from proxy.g711 import encode_ulaw

SCHEMA_VERSION = 2
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
DEFAULT_STREAMS = "100,300,600"
START_DELAY_S = 0.5  # between the start signal and the common start time
CONNECT_PHASE_TIMEOUT_S = 180.0
# A send later than half a frame behind its schedule means the generator lost real-time pace.
BEHIND_LAG_S = 0.040
WORKER_BUSY = 0.8  # a worker above this share of one core may be the bottleneck
MACHINE_BUSY = 0.9
OTHER_LOAD_CORES = 0.2
QUIET_CORES = 0.25  # before a run, wait for the host to use less than this (see --quiet-wait)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("stream counts must be whole numbers >= 1")
    return values


def _mode_list(text: str) -> list[Mode]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in modes if m not in PROXIED_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(
            f"modes are a comma-separated choice of {', '.join(PROXIED_MODES)}"
        )
    # In the order given: swapping two modes between runs shows whether running later (on a
    # host still busy with the previous run) skews a comparison.
    return sorted((m for m in PROXIED_MODES if m in modes), key=modes.index)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bench_proxy",
        description="Proxy overhead: the same real-time load straight to a fake vLLM and "
        "through the proxy, side by side.",
    )
    parser.add_argument(
        "--streams",
        type=_int_list,
        default=_int_list(DEFAULT_STREAMS),
        help=f"concurrent stream counts to measure (default {DEFAULT_STREAMS})",
    )
    parser.add_argument(
        "--audio-seconds",
        type=float,
        default=15.0,
        help="audio per stream, streamed at real time (default 15)",
    )
    parser.add_argument(
        "--audio",
        type=Path,
        default=ROOT / "samples" / "long.wav",
        help="audio to cut the streams from (default samples/long.wav)",
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="load generator processes (default 4)"
    )
    parser.add_argument(
        "--ramp-seconds",
        type=float,
        default=2.0,
        help="stream starts are spread over this long (default 2)",
    )
    parser.add_argument(
        "--modes",
        type=_mode_list,
        default=list(DEFAULT_MODES),
        help="proxied modes to run, in this order: json (base64 appends), binary (binary "
        "frames), ulaw (8 kHz G.711 binary frames), pcm8k, pcm24k, pcm48k (binary PCM16 at "
        "those rates), json24k (base64 appends of 24 kHz PCM16), agent (binary, utterances "
        "back to back), openai (json24k's audio in OpenAI's Realtime protocol); "
        f"default {','.join(DEFAULT_MODES)}",
    )
    parser.add_argument(
        "--frame-ms",
        type=int,
        choices=(20, 40, 80),
        default=80,
        help="binary modes: the frame length (an 80 ms frame goes as several, paced in real "
        "time); default 80",
    )
    parser.add_argument(
        "--utterance-seconds",
        type=float,
        default=5.0,
        help="the agent mode's utterance length (default 5)",
    )
    parser.add_argument(
        "--delay-ms",
        type=int,
        default=DEFAULT_TRANSCRIPTION_DELAY_MS,
        help=f"the fake's transcription delay (default {DEFAULT_TRANSCRIPTION_DELAY_MS})",
    )
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="what the load generator offers the proxy (default deflate, as browsers "
        "and clients.client do; the proxy declines it). The direct run never offers it, so "
        "that the fake vLLM does the same work in both runs",
    )
    parser.add_argument(
        "--done-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for transcription.done after the last send",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-results",
        help="directory for bench-proxy.json/.png and logs (default bench-results)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for the host's CPUs to be nearly "
        "idle (0: don't wait; default 30)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="py-spy executable: profile the proxy during each proxied run",
    )
    args = parser.parse_args(argv)
    if args.audio_seconds < 0.16 or args.workers < 1 or args.ramp_seconds < 0:
        parser.error("need --audio-seconds >= 0.16, --workers >= 1, --ramp-seconds >= 0")
    if args.utterance_seconds < 0.16:
        parser.error("need --utterance-seconds >= 0.16")
    return args


@dataclass(frozen=True)
class Clip:
    frames_pcm: tuple[bytes, ...]
    frames_b64: tuple[str, ...]
    # The same frames in each converted mode's format (at 8 kHz every other sample, at 24 and
    # 48 kHz repeated samples: the fake only hashes the audio).
    frames_converted: dict[Mode, tuple[bytes, ...]]

    @classmethod
    def load(cls, path: Path) -> Clip:
        pcm = load_pcm(path)
        frames = tuple(
            pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES)
        )
        if not frames:
            raise AudioError(f"{path} is shorter than one 80 ms frame")
        converted = {
            mode: tuple(_in_format(np.frombuffer(f, dtype="<i2"), fmt) for f in frames)
            for mode, fmt in CONVERTED.items()
        }
        return cls(frames, tuple(base64.b64encode(f).decode() for f in frames), converted)

    def frames_for(self, mode: Mode) -> tuple[str, ...] | tuple[bytes, ...]:
        """The clip's frames as `mode` sends them."""
        if mode in CONVERTED:
            frames = self.frames_converted[mode]
            if mode in BINARY_MODES:
                return frames
            return tuple(base64.b64encode(frame).decode() for frame in frames)
        return self.frames_pcm if mode in BINARY_MODES else self.frames_b64

    def stream_pcm(self, plan: StreamPlan, first: int = 0, chunks: int | None = None) -> bytes:
        """The 16 kHz audio of `chunks` of the stream's frames from `first` (default: all)."""
        count = len(self.frames_pcm)
        chunks = plan.chunks - first if chunks is None else chunks
        start = plan.first_chunk + first
        return b"".join(self.frames_pcm[(start + j) % count] for j in range(chunks))

    def stream_converted_upstream(self, plan: StreamPlan, mode: Mode) -> bytes:
        """What the proxy sends vLLM for the stream's frames in a converted mode, converted as
        it does (the result does not depend on how the frames are cut)."""
        frames = self.frames_converted[mode]
        converter = AudioConverter(CONVERTED[mode])
        pcm = [
            chunk
            for j in range(plan.chunks)
            for chunk in converter.feed(frames[(plan.first_chunk + j) % len(frames)])
        ]
        return b"".join(pcm + converter.flush())


def _in_format(samples: npt.NDArray[np.int16], fmt: AudioFormat) -> bytes:
    """16 kHz samples as `fmt` audio of the same length (not a faithful resampling)."""
    if fmt.sample_rate < 16000:
        samples = samples[:: 16000 // fmt.sample_rate]
    elif fmt.sample_rate > 16000:
        samples = np.repeat(samples, fmt.sample_rate * 2 // 16000)[::2]
    pcm = samples.astype("<i2").tobytes()
    return encode_ulaw(pcm) if fmt.encoding is Encoding.G711_ULAW else pcm


@dataclass
class PhaseRun:
    """What one run (direct or proxied) produced before analysis."""

    mode: Mode
    results: dict[int, StreamResult]
    workers: list[WorkerResult]
    start: Sample
    end: Sample
    idle: Sample
    watched: dict[str, int]  # process name -> pid
    sampler: Sampler
    notes: list[str]
    profile: dict[str, Any] | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, clip: Clip) -> None:
        self.args = args
        self.clip = clip
        self.chunks = max(2, round(args.audio_seconds / CHUNK_S))
        self.utterance_chunks = max(2, round(args.utterance_seconds / CHUNK_S))
        self.logs = args.out / "logs"

    # ------------------------------------------------------------------ one level

    def plans(self, n: int) -> list[StreamPlan]:
        frames = len(self.clip.frames_pcm)
        return [
            StreamPlan(
                index=i,
                first_chunk=(i * 97) % frames,  # a different stretch of audio for each stream
                chunks=self.chunks,
                start_offset_s=self.args.ramp_seconds * i / n,
            )
            for i in range(n)
        ]

    def expected(self, mode: Mode, stream: StreamPlan) -> Expected:
        """What `stream` must receive in `mode` (vLLM's transcript of what reaches it)."""
        delay_ms = self.args.delay_ms
        if mode in CONVERTED:
            return expected_for(self.clip.stream_converted_upstream(stream, mode), delay_ms)
        if mode == "agent":
            utterances = [
                (first, self.clip.stream_pcm(stream, first, length))
                for first, length in stream.utterances(self.utterance_chunks)
            ]
            return expected_for_utterances(utterances, stream.chunks, delay_ms)
        return expected_for(self.clip.stream_pcm(stream), delay_ms)

    def level(self, n: int) -> dict[str, Any]:
        streams = self.plans(n)
        print(f"[N={n}] direct to the fake vLLM ...", file=sys.stderr, flush=True)
        fake, url = start_fake(self.logs / f"fake-direct-{n}.log", self.args.delay_ms)
        try:
            direct = self.phase("direct", url, None, streams, {"fake": fake})
        finally:
            stop(fake)
        baseline = {s.index: self.expected("direct", s) for s in streams}
        direct_stats = analyse(direct, baseline, self.chunks)
        modes: dict[str, dict[str, Any]] = {}
        for mode in self.args.modes:
            print(f"[N={n}] through the proxy, {mode} ...", file=sys.stderr, flush=True)
            fake, url = start_fake(self.logs / f"fake-{mode}-{n}.log", self.args.delay_ms)
            try:
                proxy = start_proxy(self.logs / f"proxy-{mode}-{n}.log", url, capacity=n + 16)
                try:
                    proxied = self.phase(
                        mode,
                        proxy.ws_url,
                        proxy.api_key,
                        streams,
                        {"fake": fake, "proxy": proxy.child},
                    )
                finally:
                    stop(proxy.child)
            finally:
                stop(fake)
            expected = {s.index: self.expected(mode, s) for s in streams}
            utterances = len(
                streams[0].utterances(self.utterance_chunks if mode == "agent" else None)
            )
            modes[mode] = compare_mode(self.chunks, direct_stats, expected, proxied, utterances * n)
        return assemble(n, self.chunks, direct_stats, modes)

    # ------------------------------------------------------------------ one run

    def phase(
        self,
        mode: Mode,
        url: str,
        api_key: str | None,
        streams: list[StreamPlan],
        children: dict[str, Child],
    ) -> PhaseRun:
        args = self.args
        workers = min(args.workers, len(streams))
        audio_s = self.chunks * CHUNK_S
        stream_window_s = args.ramp_seconds + audio_s + args.done_timeout + 5.0
        context = multiprocessing.get_context("spawn")
        reports: Any = context.Queue()
        go_queues: list[Any] = [context.Queue() for _ in range(workers)]
        plans = [
            WorkerPlan(
                worker=w,
                mode=mode,
                url=url,
                api_key=api_key,
                model=MODEL,
                clip=self.clip.frames_for(mode),
                streams=tuple(streams[w::workers]),
                utterance_chunks=self.utterance_chunks if mode == "agent" else None,
                frame_parts=CHUNK_MS // args.frame_ms if mode in BINARY_MODES else 1,
                # Straight to the fake, deflate would be accepted and cost the fake CPU that it
                # does not spend behind the proxy, skewing the baseline.
                compression=(
                    None if args.compression == "none" or mode == "direct" else args.compression
                ),
                connect_timeout_s=30.0,
                done_timeout_s=args.done_timeout,
                go_timeout_s=CONNECT_PHASE_TIMEOUT_S + 30.0,
            )
            for w in range(workers)
        ]
        watched = {name: child.pid for name, child in children.items()}
        notes: list[str] = []
        procs = [
            context.Process(target=worker_main, args=(plan, reports, go_queues[w]), daemon=True)
            for w, plan in enumerate(plans)
        ]
        results: dict[int, WorkerResult] = {}
        profile: dict[str, Any] | None = None
        busy = wait_for_quiet(args.quiet_wait, QUIET_CORES) if args.quiet_wait > 0 else None
        if busy is not None and busy >= QUIET_CORES:
            notes.append(f"{mode}: the host was still busy ({busy:.2f} cores) when the run began")
        with Sampler(list(watched.values())) as sampler:
            idle = sampler.sample()
            for proc in procs:
                proc.start()
            ready = self._collect(reports, "ready", workers, CONNECT_PHASE_TIMEOUT_S, results)
            connected = sum(ready.values())
            if connected < len(streams):
                notes.append(
                    f"{mode}: {len(streams) - connected} of {len(streams)} streams did not connect"
                )
            start_at = time.monotonic() + START_DELAY_S
            for go in go_queues:
                go.put(start_at)
            spy = None
            if args.py_spy and "proxy" in watched:
                raw = args.out / f"proxy-profile-{mode}-{len(streams)}.txt"
                spy = start_py_spy(args.py_spy, watched["proxy"], audio_s, raw)
            time.sleep(max(0.0, start_at - time.monotonic()))
            start = sampler.sample()
            self._collect(reports, "result", workers, stream_window_s + 60.0, results)
            end = sampler.sample()
            if spy is not None:
                error = finish_py_spy(spy, audio_s + 30.0)
                profile = {"error": error} if error else summarize(raw)
                profile["file"] = str(raw)
        for proc in procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()
                notes.append(f"{mode}: a load generator process had to be killed")
        for w in range(workers):
            if w not in results:
                notes.append(
                    f"{mode}: load generator {w} sent no result (its streams count as lost)"
                )
            elif results[w].crashed:
                notes.append(f"{mode}: load generator {w}: {results[w].crashed}")
        by_index = {s.index: s for r in results.values() for s in r.streams}
        return PhaseRun(
            mode,
            by_index,
            list(results.values()),
            start,
            end,
            idle,
            watched,
            sampler,
            notes,
            profile,
        )

    @staticmethod
    def _collect(
        reports: Any, kind: str, workers: int, timeout_s: float, results: dict[int, WorkerResult]
    ) -> dict[int, int]:
        """Waits for one `kind` report per worker (a worker that already sent its result, e.g.
        after crashing, counts as done). Returns the ready counts by worker."""
        ready: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = [
                w
                for w in range(workers)
                if w not in results and (kind == "result" or w not in ready)
            ]
            if not waiting:
                return ready
            try:
                message = reports.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return ready
            if message[0] == "ready":
                ready[message[1]] = message[2]
            elif message[0] == "result":
                results[message[1]] = message[2]


# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass
class PhaseStats:
    summary: dict[str, Any]
    latencies: dict[tuple[int, int], float]  # (stream, k-th non-empty delta) -> seconds


def analyse(run: PhaseRun, expected: dict[int, Expected], chunks: int) -> PhaseStats:
    lost = duplicated = reordered = mismatched = completed = connected = sent_chunks = 0
    latencies: dict[tuple[int, int], float] = {}
    done_latency: list[float] = []
    lags: list[float] = []
    failures: Counter[str] = Counter()
    error_events: Counter[str] = Counter()
    extensions: Counter[str] = Counter()
    for index, want in expected.items():
        result = run.results.get(index) or StreamResult(index, failure="no result")
        connected += result.connected
        extensions[result.extensions or "none"] += result.connected
        error_events.update(result.errors)
        if result.failure:
            failures[result.failure] += 1
        # vLLM's protocol carries the empty deltas too; the proxy forwards only non-empty ones.
        expected_seq = want.deltas if run.mode == "direct" else want.nonempty
        got = result.deltas
        check = compare(expected_seq, got, text_ok=result.done_text == want.text)
        lost += check.lost + (result.done_text is None)
        duplicated += check.duplicated
        reordered += check.reordered
        mismatched += result.done_text is not None and result.done_text != want.text
        lags += [
            sent - due
            for sent, due in zip(result.send_times, result.scheduled, strict=True)
            if not math.isnan(sent)
        ]
        sent_chunks += sum(not math.isnan(sent) for sent in result.send_times[:chunks])
        if result.done_text is None:
            continue
        completed += 1
        if result.done_time is not None and not math.isnan(result.send_times[chunks]):
            done_latency.append(result.done_time - result.send_times[chunks])
        if check.clean:
            times = [t for d, t in zip(result.deltas, result.delta_times, strict=True) if d]
            for k, trigger in enumerate(want.nonempty_triggers):
                latencies[(index, k)] = times[k] - result.send_times[trigger]

    window = run.end.at - run.start.at
    machine_busy = run.end.machine[0] - run.start.machine[0]
    machine_total = run.end.machine[1] - run.start.machine[1]
    # Audio that actually went out (streams that failed early count only what they sent).
    audio_s = max(sent_chunks, 1) * CHUNK_S
    processes: dict[str, Any] = {}
    for name, pid in run.watched.items():
        cpu = run.end.cpu_s.get(pid, math.nan) - run.start.cpu_s.get(pid, math.nan)
        idle_rss = run.idle.rss.get(pid)
        peak_rss = run.sampler.peak_rss(pid, run.start.at, run.end.at)
        processes[name] = {
            "cpu_s": _round(cpu, 3),
            "cpu_ms_per_audio_s": _round(1000 * cpu / audio_s, 3),
            "cpu_utilisation": _round(cpu / window, 3) if window > 0 else None,
            "rss_idle_mib": _mib(idle_rss),
            "rss_peak_mib": _mib(peak_rss),
            "rss_per_stream_kib": (
                _round((peak_rss - idle_rss) / 1024 / len(expected), 1)
                if peak_rss is not None and idle_rss is not None
                else None
            ),
        }
    steady = steady_state_cpu(run, chunks)
    if steady is not None:
        name, rate = steady
        processes[name]["streaming_cpu_ms_per_audio_s"] = _round(rate, 3)
        total = processes[name]["cpu_s"]
        # The rest of its CPU: connecting, finalizing and closing, spread over the streams.
        processes[name]["setup_cpu_ms_per_stream"] = (
            _round(1000 * (total - rate * audio_s / 1000) / len(expected), 2)
            if total is not None
            else None
        )
    per_worker = [
        {
            "worker": w.worker,
            "streams": len(w.streams),
            "cpu_s": _round(w.cpu_s, 3),
            "wall_s": _round(w.wall_s, 3),
            "utilisation": _round(w.cpu_s / w.wall_s, 3) if w.wall_s > 0 else None,
            "connect_cpu_s": _round(w.connect_cpu_s, 3),
        }
        for w in sorted(run.workers, key=lambda w: w.worker)
    ]
    utilisations = [w["utilisation"] for w in per_worker if w["utilisation"] is not None]
    # CPU the machine spent outside the benchmark's own processes (other work on the host
    # competes for the same cores and skews every figure).
    ours = sum(w.cpu_s for w in run.workers) + sum(
        p["cpu_s"] for p in processes.values() if p["cpu_s"] is not None
    )
    other_cores = (machine_busy / TICKS_PER_S - ours) / window if window > 0 else None
    summary = {
        "streams": len(expected),
        "audio_seconds_sent": round(sent_chunks * CHUNK_S, 3),
        "connected": connected,
        "completed": completed,
        "latency_ms": summary_ms(list(latencies.values())),
        "done_latency_ms": summary_ms(done_latency),
        "send_lag_ms": summary_ms(lags),
        "lost_events": lost,
        "duplicated_events": duplicated,
        "reordered_events": reordered,
        "done_text_mismatches": mismatched,
        "failures": dict(failures.most_common(5)),
        "error_events": dict(error_events),
        "websocket_extensions": dict(extensions),
        "window_s": _round(window, 3),
        "machine_cpu_busy_pct": _round(100 * machine_busy / machine_total, 1)
        if machine_total
        else None,
        "other_load_cores": _round(max(0.0, other_cores), 2) if other_cores is not None else None,
        "processes": processes,
        "loadgen": {
            "workers": len(per_worker),
            "cpu_s_total": _round(sum(w.cpu_s for w in run.workers), 3),
            "max_worker_utilisation": max(utilisations) if utilisations else None,
            "per_worker": per_worker,
        },
        "notes": run.notes,
    }
    if run.profile is not None:
        summary["profile"] = run.profile
    return PhaseStats(summary, latencies)


def steady_state_cpu(run: PhaseRun, chunks: int) -> tuple[str, float] | None:
    """CPU ms per audio second of the measured process (proxy, else fake) while every stream
    was streaming: from the last stream's first chunk to the first stream's last chunk, so
    connecting, finalizing and closing are left out."""
    name = "proxy" if "proxy" in run.watched else "fake"
    pid = run.watched.get(name)
    sends = [
        [t for t in result.send_times[:chunks] if not math.isnan(t)]
        for result in run.results.values()
    ]
    if pid is None or not sends or not all(sends):
        return None
    begin, end = max(times[0] for times in sends), min(times[-1] for times in sends)
    inside = [s for s in run.sampler.samples if begin <= s.at <= end and pid in s.cpu_s]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    audio_s = CHUNK_S * sum(first.at <= t < last.at for times in sends for t in times)
    if not audio_s:
        return None
    return name, 1000 * (last.cpu_s[pid] - first.cpu_s[pid]) / audio_s


def phase_notes(name: str, stats: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a run kept up with real time, and what may have skewed it."""
    kept_up, notes = True, []
    lag = stats["send_lag_ms"]["p99"]
    busiest = stats["loadgen"]["max_worker_utilisation"]
    if lag is None or lag > BEHIND_LAG_S * 1000:
        kept_up = False
        why = (
            "the load generator was busy"
            if busiest is not None and busiest > WORKER_BUSY
            else "back-pressure: the receiving side did not read fast enough"
        )
        notes.append(f"{name}: sends fell behind real time (p99 lag {lag} ms; {why})")
    if busiest is not None and busiest > WORKER_BUSY:
        notes.append(f"{name}: a load generator process was {100 * busiest:.0f}% busy")
    busy = stats["machine_cpu_busy_pct"]
    if busy is not None and busy > 100 * MACHINE_BUSY:
        notes.append(f"{name}: the machine's CPUs were {busy:.0f}% busy (saturated)")
    other = stats["other_load_cores"]
    if other is not None and other > OTHER_LOAD_CORES:
        notes.append(f"{name}: other processes on the host used {other:.2f} cores meanwhile")
    if stats["completed"] < stats["streams"]:
        kept_up = False
        notes.append(f"{name}: {stats['streams'] - stats['completed']} streams got no done")
    return kept_up, notes


def compare_mode(
    chunks: int,
    direct: PhaseStats,
    expected: dict[int, Expected],
    proxied: PhaseRun,
    utterances: int,
) -> dict[str, Any]:
    """One proxied mode against the direct run of the same streams."""
    p = analyse(proxied, expected, chunks)
    dl, pl = direct.summary["latency_ms"], p.summary["latency_ms"]
    paired = [
        p.latencies[key] - direct.latencies[key] for key in p.latencies.keys() & direct.latencies
    ]
    proxy_proc = p.summary["processes"].get("proxy", {})
    kept_up, notes = phase_notes(proxied.mode, p.summary)
    cpu_s = proxy_proc.get("cpu_s")
    return {
        "utterances": utterances,
        "added_latency_ms": {
            "p50": _diff(pl["p50"], dl["p50"]),
            "p99": _diff(pl["p99"], dl["p99"]),
        },
        "added_latency_paired_ms": summary_ms(paired),
        "proxy_cpu_ms_per_audio_s": proxy_proc.get("cpu_ms_per_audio_s"),
        "proxy_streaming_cpu_ms_per_audio_s": proxy_proc.get("streaming_cpu_ms_per_audio_s"),
        "proxy_setup_cpu_ms_per_stream": proxy_proc.get("setup_cpu_ms_per_stream"),
        "proxy_cpu_ms_per_utterance": (
            _round(1000 * cpu_s / utterances, 2) if cpu_s is not None and utterances else None
        ),
        "proxy_rss_per_stream_kib": proxy_proc.get("rss_per_stream_kib"),
        "lost_events": p.summary["lost_events"],
        "duplicated_events": p.summary["duplicated_events"],
        "reordered_events": p.summary["reordered_events"],
        "done_text_mismatches": p.summary["done_text_mismatches"],
        "kept_up_with_real_time": kept_up,
        "notes": notes,
        "proxy": p.summary,
    }


def assemble(
    n: int, chunks: int, direct: PhaseStats, modes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    kept_up, notes = phase_notes("direct", direct.summary)
    return {
        "n": n,
        "audio_seconds_per_stream": round(chunks * CHUNK_S, 3),
        "audio_seconds_total": round(n * chunks * CHUNK_S, 3),
        "direct_kept_up_with_real_time": kept_up,
        "notes": notes,
        "direct": direct.summary,
        "modes": modes,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


# ---------------------------------------------------------------------------------------------
# Output


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(levels: Sequence[dict[str, Any]]) -> str:
    head = (
        "N", "mode", "direct p50/p99 ms", "proxied p50/p99 ms", "added p50/p99 ms",
        "proxy CPU ms/audio-s", "streaming only", "setup ms/stream", "CPU ms/utterance",
        "proxy RSS KiB/stream", "lost/dup/reord", "loadgen max CPU", "machine CPU d/p",
        "other load d/p", "send lag p99", "real time",
    )  # fmt: skip
    rows = [head]
    for level in levels:
        d = level["direct"]
        for mode, m in level["modes"].items():
            p = m["proxy"]
            loadgen = max(
                (
                    x
                    for x in (
                        d["loadgen"]["max_worker_utilisation"],
                        p["loadgen"]["max_worker_utilisation"],
                    )
                    if x is not None
                ),
                default=None,
            )
            lag = max(
                (x for x in (d["send_lag_ms"]["p99"], p["send_lag_ms"]["p99"]) if x is not None),
                default=None,
            )
            kept_up = m["kept_up_with_real_time"] and level["direct_kept_up_with_real_time"]
            rows.append((
                str(level["n"]),
                mode,
                f"{_fmt(d['latency_ms']['p50'])}/{_fmt(d['latency_ms']['p99'])}",
                f"{_fmt(p['latency_ms']['p50'])}/{_fmt(p['latency_ms']['p99'])}",
                f"{_fmt(m['added_latency_ms']['p50'])}/{_fmt(m['added_latency_ms']['p99'])}",
                _fmt(m["proxy_cpu_ms_per_audio_s"], 2),
                _fmt(m.get("proxy_streaming_cpu_ms_per_audio_s"), 2),
                _fmt(m.get("proxy_setup_cpu_ms_per_stream"), 2),
                _fmt(m.get("proxy_cpu_ms_per_utterance"), 2),
                _fmt(m["proxy_rss_per_stream_kib"]),
                f"{m['lost_events']}/{m['duplicated_events']}/{m['reordered_events']}",
                "-" if loadgen is None else f"{100 * loadgen:.0f}%",
                f"{_fmt(d['machine_cpu_busy_pct'], 0)}%/{_fmt(p['machine_cpu_busy_pct'], 0)}%",
                f"{_fmt(d['other_load_cores'], 2)}/{_fmt(p['other_load_cores'], 2)} cores",
                "-" if lag is None else f"{lag:.1f} ms",
                "yes" if kept_up else "NO",
            ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def draw_chart(path: Path, levels: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [level["n"] for level in levels]
    modes = list(levels[0]["modes"]) if levels else []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in modes:
        for key, style in (("p50", "o-"), ("p99", "s--")):
            left.plot(
                ns,
                [_nan(level["modes"][mode]["added_latency_ms"][key]) for level in levels],
                style,
                label=f"{mode} added {key}",
            )
    left.axhline(10, color="grey", linewidth=0.8, linestyle=":", label="p99 target 10 ms")
    left.set(xlabel="concurrent streams", ylabel="ms", title="Latency added by the proxy")
    left.legend()
    for mode in modes:
        right.plot(
            ns,
            [_nan(level["modes"][mode]["proxy_cpu_ms_per_audio_s"]) for level in levels],
            "o-",
            label=mode,
        )
    right.axhline(1, color="grey", linewidth=0.8, linestyle=":", label="target 1 ms")
    right.set(
        xlabel="concurrent streams",
        ylabel="CPU ms per audio second",
        title="Proxy CPU per second of streamed audio",
    )
    right.set_ylim(bottom=0)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def format_profile(levels: Sequence[dict[str, Any]]) -> str:
    lines = []
    for level in levels:
        for mode, m in level["modes"].items():
            profile = m["proxy"].get("profile")
            if not profile:
                continue
            if "error" in profile:
                lines.append(f"N={level['n']} {mode}: profile failed: {profile['error']}")
                continue
            lines.append(
                f"N={level['n']} {mode}: proxy profile, {profile['samples']} samples "
                f"({profile['file']}); top self time:"
            )
            lines += [f"  {row['pct']:5.1f}%  {row['function']}" for row in profile["self"][:12]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        clip = Clip.load(args.audio)
    except AudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, clip)
    levels: list[dict[str, Any]] = []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        for n in args.streams:
            levels.append(bench.level(n))
    except ProcessFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not levels:
            return 2
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": "devtools.bench_proxy",
        "started_at": started,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "streams": args.streams,
            "audio_seconds_per_stream": round(bench.chunks * CHUNK_S, 3),
            "chunk_ms": round(CHUNK_S * 1000),
            "audio_file": str(args.audio),
            "workers": args.workers,
            "ramp_seconds": args.ramp_seconds,
            "transcription_delay_ms": args.delay_ms,
            "compression_offered": args.compression,
            "modes": args.modes,
            "binary_frame_ms": args.frame_ms,
            "utterance_seconds": round(bench.utterance_chunks * CHUNK_S, 3),
            "profiled": bool(args.py_spy),
        },
        "levels": levels,
    }
    json_path, chart_path = args.out / "bench-proxy.json", args.out / "bench-proxy.png"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    draw_chart(chart_path, levels)
    print(format_table(levels))
    for level in levels:
        notes = level["notes"] + level["direct"]["notes"]
        for m in level["modes"].values():
            notes += m["notes"] + m["proxy"]["notes"]
        for note in notes:
            print(f"N={level['n']}: {note}")
    profile = format_profile(levels)
    if profile:
        print(profile)
    print(f"wrote {json_path} and {chart_path}")
    clean = all(
        not (m[k] or lv["direct"][k])
        for lv in levels
        for m in lv["modes"].values()
        for k in ("lost_events", "duplicated_events", "reordered_events", "done_text_mismatches")
    )
    return 0 if clean and len(levels) == len(args.streams) else 1


if __name__ == "__main__":
    sys.exit(main())
