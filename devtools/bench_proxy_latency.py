"""`python -m devtools.bench_proxy_latency` (`make bench-proxy MODE=latency`): how soon the first
word, and every later one, arrives in each audio shape, through the proxy against straight to vLLM.

One fake vLLM (`--word-every-step`: every model step writes a word, so the first word is the
first step whatever the audio) and one proxy (`python -m proxy`, its own process) in front of
it. The same speech (samples/short.wav) is streamed at real-time pace, one stream at a time,
`--repeats` times per shape: straight to the fake in 16 kHz 20 ms appends (the floor), then
through the proxy in each shape of SHAPES. Per shape (median over the repeats): the first word's
time from the first frame sent, the mean delay of each word against the same word on the direct
path, the time from the final commit to `transcription.done` (with server VAD on there is
no commit: from the last frame of speech), and with server VAD on the time from the speech's
onset to the turn opening (`speech_started`, as `make bench-proxy MODE=turns` measures it: the
first word's time includes it). Results: a table on stdout and `bench-proxy-latency.json` in
`--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from clients.audio import encode_pcm16, load_audio
from devtools.bench_proxy_load import json_text, sleep_until
from devtools.bench_proxy_procs import ROOT, start_fake, start_proxy, stop
from devtools.bench_proxy_turns import onset_to_open_s
from devtools.fake_vllm import DEFAULT_MODEL
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS

SILENCE_AFTER_S = 1.5  # server VAD: the pause that ends the turn


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    fmt: AudioFormat
    frame_ms: int
    binary: bool = True
    server_vad: bool = False


SHAPES = (
    Shape("json 16 kHz, 80 ms appends (native)", NATIVE, 80, binary=False),
    Shape("binary pcm16 16 kHz, 20 ms", NATIVE, 20),
    Shape("g711_ulaw 8 kHz, 20 ms", AudioFormat(Encoding.G711_ULAW, 8000, 1), 20),
    Shape("pcm16 8 kHz, 20 ms", AudioFormat(Encoding.PCM16, 8000, 1), 20),
    Shape("pcm16 48 kHz, 20 ms", AudioFormat(Encoding.PCM16, 48000, 1), 20),
    Shape("pcm16 24 kHz, 20 ms", AudioFormat(Encoding.PCM16, 24000, 1), 20),
    Shape("binary 16 kHz, 20 ms, server VAD", NATIVE, 20, server_vad=True),
)


@dataclass(slots=True)
class Run:
    words_s: list[float]  # each word's arrival, from the first frame sent
    done_after_s: float | None  # transcription.done after the final commit (or the speech)
    onset_to_open_s: float | None = None  # the (first) turn's, with server VAD on


def frames(shape: Shape, audio: Path) -> list[bytes]:
    data = load_audio(audio, shape.fmt)  # already in the shape's encoding
    step = shape.fmt.chunk_bytes(shape.frame_ms)
    return [data[i : i + step] for i in range(0, len(data) - step + 1, step)]


async def _words(
    ws: ClientConnection, start: list[float], words: list[float], opens: list[float] | None = None
) -> float:
    """Collects each non-empty delta's time (and into ``opens`` each turn's onset→turn-open);
    returns when the (first) done arrives."""
    async for raw in ws:
        event = orjson.loads(raw)
        kind = event["type"]
        if kind == "transcription.delta":
            text = event["delta"] if "delta" in event else event["payload"]["delta"]
            if text:
                words.append(time.monotonic() - start[0])
        elif kind == "input_audio_buffer.speech_started" and opens is not None:
            opens.append(onset_to_open_s(event, start[0], time.monotonic()))
        elif kind == "transcription.done":
            return time.monotonic()
        elif kind == "error":
            raise RuntimeError(f"error event: {event}")
    raise RuntimeError("the socket closed before transcription.done")


async def run_direct(url: str, pieces: list[bytes], frame_s: float) -> Run:
    async with connect(url, max_size=None, ping_interval=None, proxy=None) as ws:
        await ws.recv()  # session.created
        await ws.send(json_text({"type": "session.update", "model": DEFAULT_MODEL}))
        await ws.send(json_text({"type": "input_audio_buffer.commit"}))
        start = [time.monotonic()]
        words: list[float] = []
        reader = asyncio.create_task(_words(ws, start, words))
        for i, piece in enumerate(pieces):
            await sleep_until(start[0] + i * frame_s)
            audio = base64.b64encode(piece).decode()
            await ws.send(json_text({"type": "input_audio_buffer.append", "audio": audio}))
        await sleep_until(start[0] + len(pieces) * frame_s)
        committed = time.monotonic()
        await ws.send(json_text({"type": "input_audio_buffer.commit", "final": True}))
        done = await reader
        return Run(words, done - committed)


async def run_proxied(url: str, api_key: str, shape: Shape, pieces: list[bytes], index: int) -> Run:
    query = "&".join(f"{k}={v}" for k, v in shape.fmt.query_params().items())
    if shape.server_vad:
        query += "&turn_detection=server_vad"
    session = f"latency-{index}"
    async with connect(
        f"{url}?session_id={session}&{query}",
        additional_headers={"X-API-Key": api_key},
        max_size=None,
        ping_interval=None,
        proxy=None,
    ) as ws:
        await ws.recv()  # session.created
        rid = None if shape.server_vad else f"u{index}"
        envelope: dict[str, Any] = {"session_id": session, "request_id": rid}
        if rid is not None:
            commit = {"type": "input_audio_buffer.commit", **envelope, "payload": {"final": False}}
            await ws.send(json_text(commit))
        frame_s = shape.frame_ms / 1000
        start = [time.monotonic()]
        words: list[float] = []
        opens: list[float] = []
        reader = asyncio.create_task(_words(ws, start, words, opens))
        silence = encode_pcm16(bytes(len(pieces[0]) * 2), shape.fmt.encoding)[: len(pieces[0])]
        tail = round(SILENCE_AFTER_S / frame_s) if shape.server_vad else 0
        for i, piece in enumerate([*pieces, *[silence] * tail]):
            await sleep_until(start[0] + i * frame_s)
            if reader.done():
                break
            if shape.binary:
                await ws.send(piece)
            else:
                audio = base64.b64encode(piece).decode()
                append = {
                    "type": "input_audio_buffer.append",
                    **envelope,
                    "payload": {"audio": audio},
                }
                await ws.send(json_text(append))
        ended = start[0] + len(pieces) * frame_s
        await sleep_until(ended)
        if rid is not None:
            ended = time.monotonic()
            commit = {"type": "input_audio_buffer.commit", **envelope, "payload": {"final": True}}
            await ws.send(json_text(commit))
        done = await reader
        return Run(words, done - ended, opens[0] if opens else None)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def summarise(direct: list[Run], runs: list[Run]) -> dict[str, Any]:
    reference = [statistics.median(ws) for ws in zip(*(r.words_s for r in direct), strict=False)]
    first = statistics.median(r.words_s[0] for r in runs if r.words_s)
    per_word = [
        statistics.mean(w - ref for w, ref in zip(r.words_s, reference, strict=False))
        for r in runs
        if r.words_s
    ]
    done = [r.done_after_s for r in runs if r.done_after_s is not None]
    opens = [r.onset_to_open_s for r in runs if r.onset_to_open_s is not None]
    return {
        "first_word_ms": _ms(first),
        "first_word_vs_direct_ms": _ms(first - reference[0]),
        "mean_word_delay_vs_direct_ms": _ms(statistics.median(per_word)),
        "done_after_commit_ms": _ms(statistics.median(done)) if done else None,
        "onset_to_turn_open_ms": _ms(statistics.median(opens)) if opens else None,
        "words": statistics.median(len(r.words_s) for r in runs),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    logs = args.out / "logs"
    fake, fake_url = start_fake(logs / "fake-latency.log", args.delay_ms, ["--word-every-step"])
    try:
        proxy = start_proxy(logs / "proxy-latency.log", fake_url, capacity=8)
        try:
            native = frames(SHAPES[1], args.audio)
            direct = [await run_direct(fake_url, native, 0.020) for _ in range(args.repeats)]
            results = {"direct 16 kHz, 20 ms": summarise(direct, direct)}
            for shape in SHAPES:
                print(f"{shape.name} ...", file=sys.stderr, flush=True)
                pieces = frames(shape, args.audio)
                runs = [
                    await run_proxied(proxy.ws_url, proxy.api_key, shape, pieces, i)
                    for i in range(args.repeats)
                ]
                results[shape.name] = summarise(direct, runs)
        finally:
            stop(proxy.child)
    finally:
        stop(fake)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        "shape",
        "first word ms",
        "vs direct",
        "mean word delay vs direct",
        "done after commit",
        "onset→turn open",
    )
    rows = [head] + [
        (
            name,
            str(r["first_word_ms"]),
            str(r["first_word_vs_direct_ms"]),
            str(r["mean_word_delay_vs_direct_ms"]),
            str(r["done_after_commit_ms"]),
            "" if r["onset_to_turn_open_ms"] is None else str(r["onset_to_turn_open_ms"]),
        )
        for name, r in results.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench_proxy_latency")
    parser.add_argument("--repeats", type=int, default=3, help="runs per shape (default 3)")
    parser.add_argument("--audio", type=Path, default=ROOT / "samples" / "short.wav")
    parser.add_argument("--delay-ms", type=int, default=DEFAULT_TRANSCRIPTION_DELAY_MS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("need --repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(bench(args))
    path = args.out / "bench-proxy-latency.json"
    document = {
        "tool": "devtools.bench_proxy_latency",
        "repeats": args.repeats,
        "transcription_delay_ms": args.delay_ms,
        "audio_file": str(args.audio),
        "shapes": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(format_table(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
