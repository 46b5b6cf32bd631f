"""`python -m devtools.bench_proxy_turns` (`make bench-proxy MODE=turns`): what turn detection
costs the proxy, with it off and on, back to back, for each stream count.

Each stream plays the same speech (samples/short.wav and 1.5 s of silence, over and over, each
stream starting at another point) at real-time pace in 80 ms appends through the real proxy
(`python -m proxy`, its own process) in front of a fresh fake vLLM. Off: the client commits one
utterance around the whole stream, as today. On: it connects with `turn_detection=server_vad`,
sends appends without a request_id and no commits, and the server opens one turn per spoken
clip. Every stream also sends a ping every half second: its round trip shows how long the
proxy's event loop makes a message wait. Reported per stream count and mode: the proxy's CPU per
second of audio per stream (from /proc, over the steady window), the ping round trip p50/p99,
the turns and done events seen, the time from each turn's speech onset to its
`speech_started` (onset→turn-open: when the stream reached `audio_start_ms` in real time to when
the event arrived; `min_speech_ms` of it is the rule, the rest is the VAD's wait and work), and
the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from clients.audio import CHUNK_BYTES, load_pcm
from devtools.bench_proxy_check import summary_ms
from devtools.bench_proxy_load import json_text, sleep_until
from devtools.bench_proxy_procs import ROOT, Sampler, start_fake, start_proxy, stop
from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS
from proxy.vllm_wire import PCM_BYTES_PER_MS

CHUNK_S = 0.080
PING_EVERY_S = 0.5
GAP_S = 1.5
SETTLE_S = 3.0  # after the last stream starts, before the measured window
MODES = ("off", "on")


@dataclass(frozen=True, slots=True)
class Plan:
    url: str
    api_key: str
    turns: bool
    frames: tuple[str, ...]  # base64 of each 80 ms frame of the looped speech
    streams: tuple[int, ...]  # this worker's stream indexes
    total_streams: int
    start: float
    ramp_s: float
    seconds: float


@dataclass(slots=True)
class Result:
    rtts_s: list[float] = field(default_factory=list)
    onset_to_open_s: list[float] = field(default_factory=list)
    turns: int = 0
    done: int = 0
    errors: list[str] = field(default_factory=list)


async def _stream(plan: Plan, index: int, result: Result) -> None:
    session = f"bench-{index}"
    query = f"session_id={session}" + ("&turn_detection=server_vad" if plan.turns else "")
    ws = await connect(
        f"{plan.url}?{query}",
        additional_headers={"X-API-Key": plan.api_key},
        max_size=None,
        ping_interval=None,
        open_timeout=60,
        proxy=None,
    )
    await ws.recv()  # session.created
    # Frame i (audio from i * 80 ms) is sent at start + i * 80 ms.
    start = plan.start + plan.ramp_s * index / plan.total_streams
    reader = asyncio.create_task(_read(ws, result, start))
    rid = None if plan.turns else f"utt-{index}"
    envelope: dict[str, Any] = {"session_id": session, "request_id": rid}
    first = index * 7919 % len(plan.frames)
    await sleep_until(start)
    if rid is not None:
        await ws.send(_commit(envelope, final=False))
    frames = round(plan.seconds / CHUNK_S)
    ping_every = round(PING_EVERY_S / CHUNK_S)
    for i in range(frames):
        await sleep_until(start + i * CHUNK_S)
        audio = plan.frames[(first + i) % len(plan.frames)]
        await ws.send(
            json_text(
                {"type": "input_audio_buffer.append", **envelope, "payload": {"audio": audio}}
            )
        )
        if i % ping_every == 0:
            ping = {"type": "ping", "session_id": session, "payload": {"t": time.monotonic()}}
            await ws.send(json_text(ping))
    if rid is not None:
        await ws.send(_commit(envelope, final=True))
    await asyncio.sleep(2.0)  # the last done
    reader.cancel()
    await ws.close()


def onset_to_open_s(speech_started: dict[str, Any], stream_start: float, arrived: float) -> float:
    """Onset→turn-open of an envelope ``speech_started`` that arrived at ``arrived``: from the
    moment the stream reached the speech's ``audio_start_ms`` in real time (frame i, the audio
    from i frame spans on, is sent at ``stream_start`` plus i frame spans) to its arrival."""
    audio_start_ms: int = speech_started["payload"]["audio_start_ms"]
    return arrived - (stream_start + audio_start_ms / 1000)


def _commit(envelope: dict[str, Any], *, final: bool) -> str:
    return json_text({"type": "input_audio_buffer.commit", **envelope, "payload": {"final": final}})


async def _read(ws: ClientConnection, result: Result, start: float) -> None:
    async for raw in ws:
        event = orjson.loads(raw)
        kind = event["type"]
        if kind == "pong":
            result.rtts_s.append(time.monotonic() - event["payload"]["t"])
        elif kind == "input_audio_buffer.speech_started":
            result.turns += 1
            result.onset_to_open_s.append(onset_to_open_s(event, start, time.monotonic()))
        elif kind == "transcription.done":
            result.done += 1
        elif kind == "error":
            result.errors.append(event["payload"]["code"])


async def _drive(plan: Plan) -> Result:
    result = Result()
    outcomes = await asyncio.gather(
        *(_stream(plan, index, result) for index in plan.streams), return_exceptions=True
    )
    result.errors += [type(o).__name__ for o in outcomes if isinstance(o, BaseException)]
    return result


def _worker(plan: Plan, results: Queue[Result]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results.put(runner.run(_drive(plan)))


def _frames() -> tuple[str, ...]:
    pcm = load_pcm(ROOT / "samples" / "short.wav") + bytes(int(GAP_S * 1000) * PCM_BYTES_PER_MS)
    pcm = pcm[: len(pcm) // CHUNK_BYTES * CHUNK_BYTES]
    return tuple(
        base64.b64encode(pcm[i : i + CHUNK_BYTES]).decode() for i in range(0, len(pcm), CHUNK_BYTES)
    )


def run_level(n: int, turns: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    mode = "on" if turns else "off"
    fake, fake_url = start_fake(out / f"fake-{n}-{mode}.log", DEFAULT_TRANSCRIPTION_DELAY_MS)
    proxy = start_proxy(out / f"proxy-{n}-{mode}.log", fake_url, n + 10)
    try:
        ctx = multiprocessing.get_context("spawn")
        results: Queue[Result] = ctx.Queue()
        ramp_s = min(5.0, n / 60)
        start = time.monotonic() + 3.0 + n / 100  # time to connect every stream
        frames = _frames()
        workers = [
            ctx.Process(
                target=_worker,
                args=(
                    Plan(
                        proxy.ws_url,
                        proxy.api_key,
                        turns,
                        frames,
                        tuple(range(w, n, args.workers)),
                        n,
                        start,
                        ramp_s,
                        args.seconds,
                    ),
                    results,
                ),
            )
            for w in range(args.workers)
        ]
        for worker in workers:
            worker.start()
        window = (start + ramp_s + SETTLE_S, start + args.seconds - 0.5)
        with Sampler([proxy.child.pid]) as sampler:
            time.sleep(max(0.0, window[0] - time.monotonic()))
            first = sampler.sample()
            time.sleep(max(0.0, window[1] - time.monotonic()))
            last = sampler.sample()
        load = os.getloadavg()[0]
        collected = [results.get(timeout=args.seconds + 120) for _ in workers]
        for worker in workers:
            worker.join()
    finally:
        stop(proxy.child)
        stop(fake)
    pid = proxy.child.pid
    cpu_s = last.cpu_s[pid] - first.cpu_s[pid]
    audio_s = n * (last.at - first.at)
    rtts = [rtt for result in collected for rtt in result.rtts_s]
    opens = [delay for result in collected for delay in result.onset_to_open_s]
    errors = [error for result in collected for error in result.errors]
    return {
        "streams": n,
        "turn_detection": mode,
        "cpu_ms_per_audio_s_per_stream": round(cpu_s / audio_s * 1000, 2),
        "proxy_cores": round(cpu_s / (last.at - first.at), 2),
        "ping_ms": summary_ms(rtts),
        "onset_to_open_ms": summary_ms(opens),
        "turns": sum(result.turns for result in collected),
        "done": sum(result.done for result in collected),
        "errors": sorted(set(errors))[:10],
        "error_count": len(errors),
        "load_1min": round(load, 2),
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "streams  turns  CPU ms/audio s/stream  proxy cores  ping p50  ping p99  "
        "turns  onset→open p50  p99  done  errors  load",
    ]
    for row in rows:
        ping, opened = row["ping_ms"], row["onset_to_open_ms"]
        lines.append(
            f"{row['streams']:>7}  {row['turn_detection']:>5}  "
            f"{row['cpu_ms_per_audio_s_per_stream']:>21.2f}  {row['proxy_cores']:>11.2f}  "
            f"{ping.get('p50', float('nan')):>8.1f}  {ping.get('p99', float('nan')):>8.1f}  "
            f"{row['turns']:>5}  {opened.get('p50') or float('nan'):>14.1f}  "
            f"{opened.get('p99') or float('nan'):>4.0f}  "
            f"{row['done']:>4}  {row['error_count']:>6}  "
            f"{row['load_1min']:>4.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100,300", help="stream counts, e.g. 100,300")
    parser.add_argument("--seconds", type=float, default=25.0, help="audio per stream")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(part) for part in args.streams.split(",")):
        for mode in MODES:
            rows.append(run_level(n, mode == "on", args, args.out))
            print(orjson.dumps(rows[-1]).decode(), flush=True)
    print(format_table(rows))
    (args.out / "bench-proxy-turns.json").write_text(orjson.dumps(rows).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
