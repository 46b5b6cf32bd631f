"""The per-connection bounds of issue 25, measured against a proxy process of any checkout:

- ``rss``: the proxy's RSS after 40 s of (open, final) pairs in 48 kHz stereo on 2 connections,
  40 pairs a second each (80 messages a second, under the message rate), while vLLM answers
  nothing (every pair after the first queues in the proxy);
- ``unpaced``: a 60 s file sent as fast as the socket takes it: the audio vLLM received 10 s
  after the start, when the client's done arrived, and how it ended;
- ``warmup``: the warmup tool's ``--no-pace`` run of the same 60 s file (its JSON report);
- ``leave``: ``closes_total`` and the utterance outcomes after 5 clients close (1000) in the
  middle of an utterance.

``python -m devtools.bench_bounds [--proxy-root DIR] [--python PY] [FIGURE ...]`` runs the proxy
(and the warmup tool) of DIR with PY, e.g. the main branch's clone and its virtualenv for the
"before" column; the fake vLLM runs in this process, from this clone. The tests check the
behaviour itself (tests/proxy/test_app_limits.py, test_app_closes.py); these are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from devtools.bench_proxy_procs import ROOT, free_port, rss_bytes
from devtools.fake_vllm import FakeVllm
from devtools.processes import stop_process

HOST = "127.0.0.1"
PCM_BYTES_PER_S = 32_000
CHUNK_BYTES = 2560  # 80 ms of vLLM's format
FILE_SECONDS = 60
RSS_SECONDS = 40.0
PAIRS_PER_S = 40
STEREO_48K = {"audio_format": "pcm16", "sample_rate": "48000", "channels": "2"}
MIB = 1024 * 1024
ENDINGS = ("transcription.done", "error")


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    api_key: str

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/api/asr-streaming"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _spawn(
    args: list[str], root: Path, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


@contextlib.asynccontextmanager
async def proxy_of(root: Path, python: str, upstream_url: str, logs: Path) -> AsyncIterator[Proxy]:
    """``python -m proxy`` of ``root``, ready; vLLM's silence never ends a generation (the
    ``rss`` figure keeps vLLM silent on purpose)."""
    port = free_port()
    api_key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXTRAL_", "WS_"))}
    env.update(
        PYTHONPATH=str(root),
        VOXTRAL_API_KEY=api_key,
        VOXTRAL_UPSTREAM_URL=upstream_url,
        SERVER_BIND_HOST=HOST,
        SERVER_PORT=str(port),
        LOG_LEVEL="WARNING",
        WS_UPSTREAM_TIMEOUT_S="0",
    )
    proc = _spawn([python, "-m", "proxy"], root, env, logs / f"proxy-{port}.log")
    proxy = Proxy(proc, port, api_key)
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{proxy.http_url}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
        yield proxy
    finally:
        stop_process(proc, 15.0)


def sixty_seconds(path: Path) -> bytes:
    """60 s of speech from the samples (16 kHz mono PCM16), also written to ``path``."""
    pcm = b""
    while len(pcm) < FILE_SECONDS * PCM_BYTES_PER_S:
        for name in ("long", "short", "mid"):
            with wave.open(str(ROOT / "samples" / f"{name}.wav"), "rb") as clip:
                pcm += clip.readframes(clip.getnframes())
    pcm = pcm[: FILE_SECONDS * PCM_BYTES_PER_S]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(pcm)
    return pcm


def envelope(kind: str, request_id: str, payload: dict[str, Any] | None = None) -> str:
    message: dict[str, Any] = {"type": kind, "session_id": "bench", "request_id": request_id}
    if payload is not None:
        message["payload"] = payload
    return orjson.dumps(message).decode()


@contextlib.asynccontextmanager
async def session(proxy: Proxy, query: str = "") -> AsyncIterator[ClientConnection]:
    url = proxy.ws_url + (f"?{query}" if query else "")
    headers = {"X-API-Key": proxy.api_key}
    # The close frame goes at once; the wait for the server's side of the handshake is cut
    # short (it is no part of any figure).
    async with connect(url, additional_headers=headers, max_size=None, close_timeout=1.0) as ws:
        await ws.recv()  # session.created
        yield ws


async def read_events(ws: ClientConnection, into: list[tuple[float, dict[str, Any]]]) -> None:
    with contextlib.suppress(Exception):
        while True:
            into.append((time.monotonic(), orjson.loads(await ws.recv())))


@dataclass
class Bench:
    """What a figure runs against: the proxy of ``root`` (run with ``python``) in front of the
    fake vLLM, and a scratch directory."""

    proxy: Proxy
    fake: FakeVllm
    workdir: Path
    root: Path
    python: str


async def rss(bench: Bench) -> dict[str, Any]:
    proxy, fake = bench.proxy, bench.fake
    query = "&".join(f"{k}={v}" for k, v in STEREO_48K.items())
    before = rss_bytes(proxy.proc.pid)
    kinds: dict[str, int] = {}
    sent = 0

    async def pairs(ws: ClientConnection) -> None:
        nonlocal sent
        started = time.monotonic()
        number = 0
        while time.monotonic() - started < RSS_SECONDS:
            for final in (False, True):
                await ws.send(envelope("input_audio_buffer.commit", f"u{number}", {"final": final}))
            number += 1
            sent += 1
            await asyncio.sleep(max(0.0, started + number / PAIRS_PER_S - time.monotonic()))

    async with session(proxy, query) as first, session(proxy, query) as second:
        fake.hang()  # both sessions are up: from now on vLLM answers nothing
        events: list[tuple[float, dict[str, Any]]] = []
        readers = [asyncio.create_task(read_events(ws, events)) for ws in (first, second)]
        await asyncio.gather(pairs(first), pairs(second))
        after = rss_bytes(proxy.proc.pid)
        for reader in readers:
            reader.cancel()
    fake.resume()
    for _, event in events:
        kind = event["type"]
        if kind == "error":
            kind += ":" + event["payload"]["code"]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "rss_before_mib": round(before / MIB, 1),
        "rss_after_mib": round(after / MIB, 1),
        "pairs_sent": sent,
        "events": kinds,
    }


async def unpaced(bench: Bench) -> dict[str, Any]:
    proxy, fake = bench.proxy, bench.fake
    pcm = sixty_seconds(bench.workdir / "sixty.wav")

    def upstream_seconds() -> float:
        return (
            sum(
                len(base64.b64decode(event["audio"]))
                for _, event in fake.received
                if event.get("type") == "input_audio_buffer.append"
            )
            / PCM_BYTES_PER_S
        )

    async with session(proxy) as ws:
        events: list[tuple[float, dict[str, Any]]] = []
        started = time.monotonic()
        reader = asyncio.create_task(read_events(ws, events))
        await ws.send(envelope("input_audio_buffer.commit", "r1", {"final": False}))
        for offset in range(0, len(pcm), CHUNK_BYTES):
            audio = base64.b64encode(pcm[offset : offset + CHUNK_BYTES]).decode()
            await ws.send(envelope("input_audio_buffer.append", "r1", {"audio": audio}))
        await ws.send(envelope("input_audio_buffer.commit", "r1", {"final": True}))
        written_s = time.monotonic() - started
        await asyncio.sleep(max(0.0, started + 10.0 - time.monotonic()))
        at_10_s = upstream_seconds()
        async with asyncio.timeout(120):
            # The reader has no event to wait on: poll what it collected.
            while not any(e["type"] in ENDINGS for _, e in events):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        reader.cancel()
    at, end = next((t, e) for t, e in events if e["type"] in ENDINGS)
    return {
        "vllm_audio_s_after_10_s": round(at_10_s, 2),
        "ahead_of_real_time_after_10_s": round(at_10_s - 10.0, 2),
        "client_writes_done_s": round(written_s, 2),
        "ended_with": end["type"],
        "ended_after_s": round(at - started, 2),
        "audio_ms": end["payload"].get("audio_ms"),
    }


async def leave(bench: Bench) -> dict[str, Any]:
    proxy = bench.proxy
    pcm = sixty_seconds(bench.workdir / "sixty.wav")[: 4 * PCM_BYTES_PER_S]
    for number in range(5):
        async with session(proxy) as ws:
            request_id = f"r{number}"
            await ws.send(envelope("input_audio_buffer.commit", request_id, {"final": False}))
            for offset in range(0, len(pcm), CHUNK_BYTES):
                audio = base64.b64encode(pcm[offset : offset + CHUNK_BYTES]).decode()
                await ws.send(envelope("input_audio_buffer.append", request_id, {"audio": audio}))
            await asyncio.sleep(0.3)  # vLLM is transcribing it
            await ws.close(1000)
    async with httpx.AsyncClient(base_url=proxy.http_url, trust_env=False, timeout=5) as http:
        async with asyncio.timeout(10):
            # The proxy's own count of connections: nothing to wait on from here.
            while (await http.get("/healthz")).json()["connections"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        text = (await http.get("/metrics")).text
    wanted = ("voxtral_proxy_closes_total", "voxtral_proxy_utterances_total")
    return {
        "samples": [
            f"{sample.name}{json.dumps(sample.labels, sort_keys=True)} {sample.value:g}"
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in wanted and sample.value
        ]
    }


async def warmup(bench: Bench) -> dict[str, Any]:
    proxy, root, python = bench.proxy, bench.root, bench.python
    path = bench.workdir / "sixty.wav"
    sixty_seconds(path)
    env = dict(os.environ, PYTHONPATH=str(root), VOXTRAL_API_KEY=proxy.api_key)
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *(python, "-m", "clients.warmup", "--server", f"{HOST}:{proxy.port}"),
            *("--file", str(path), "--no-pace", "--json", "--timeout", "120"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        return {"exit": done.returncode, "wall_s": round(wall, 2), "stderr": done.stderr[-400:]}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    keep = ("status", "pacing", "audio_s", "ttfw_ms", "finalize_ms", "total_ms", "rtf")
    return {
        "exit": 0,
        "wall_s": round(wall, 2),
        "text_chars": len(report["text"]),
        **{key: report[key] for key in keep if key in report},
    }


MEASURES: dict[str, Callable[[Bench], Awaitable[dict[str, Any]]]] = {
    "rss": rss,
    "unpaced": unpaced,
    "warmup": warmup,
    "leave": leave,
}


async def run(figure: str, root: Path, python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-bounds-") as tmp:
        workdir = Path(tmp)
        async with FakeVllm(host=HOST) as fake, proxy_of(root, python, fake.url, workdir) as proxy:
            figures = await MEASURES[figure](Bench(proxy, fake, workdir, root, python))
    return {"figure": figure, "proxy_root": str(root), **figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bench_bounds", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--proxy-root", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument(
        "--python", default=sys.executable, help="its interpreter (its virtualenv's python)"
    )
    parser.add_argument("figures", nargs="*", choices=MEASURES, default=list(MEASURES))
    args = parser.parse_args(argv)
    for figure in args.figures:
        result = asyncio.run(run(figure, args.proxy_root.resolve(), args.python))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
