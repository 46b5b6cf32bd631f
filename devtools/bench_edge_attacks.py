"""The WebSocket edge under attack (issue 24): the proxy's RSS and CPU, and a normal client's
commit->done, while one attack runs: oversized upgrade heads held open (h1), pings from a peer
that never reads (h2), endless empty continuation frames (h3), or nothing (idle).

``python -m devtools.bench_edge_attacks [--proxy-root DIR] [--seconds N] [ATTACK ...]`` runs the
proxy found in DIR (default: this clone), so the same measurement can be taken of another
checkout (e.g. the main branch's) for a before/after table. Figures are indicative on a shared
machine; the tests (tests/proxy/test_ws_protocol.py) check the behaviour itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from devtools.bench_proxy_procs import (
    ROOT,
    Child,
    cpu_seconds,
    free_port,
    rss_bytes,
    start_fake,
    stop,
)
from devtools.processes import stop_process

HOST = "127.0.0.1"
ATTACKS = ("idle", "h1", "h2", "h3")
CLIP_SECONDS = 1.0
# The victim's pause between utterances: a normal client, well inside the message rate limit.
PAUSE_S = 0.2
PCM_BYTES_PER_S = 32_000
CHUNK_BYTES = 2560  # 80 ms
UPGRADE = (
    "GET /api/asr-streaming HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def start_proxy_in(
    root: Path, upstream_url: str, api_key: str, logs: Path, settings: Sequence[str]
) -> tuple[Child, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXTRAL_", "WS_"))}
    env.update(
        VOXTRAL_API_KEY=api_key,
        VOXTRAL_UPSTREAM_URL=upstream_url,
        SERVER_BIND_HOST=HOST,
        SERVER_PORT=str(port),
        MAX_OPEN_SOCKETS="40",
        LOG_LEVEL="WARNING",
    )
    env.update(dict(setting.split("=", 1) for setting in settings))
    log_path = logs / f"proxy-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy"],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    child = Child("proxy", proc, log_path)
    deadline = time.monotonic() + 30
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"http://{HOST}:{port}/readyz").status_code == 200:
                    return child, port
            time.sleep(0.1)
    stop_process(proc, 5)
    raise RuntimeError(f"the proxy in {root} did not become ready (see {log_path})")


def masked(opcode: Opcode, payload: bytes = b"", *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=True)


async def raw_session(port: int, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(UPGRADE.format(extra=f"X-API-Key: {key}\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def flood(writer: asyncio.StreamWriter, blob: bytes, stop_at: float) -> None:
    """Writes ``blob`` again and again until ``stop_at``, never reading."""
    with contextlib.suppress(OSError, TimeoutError):
        while time.monotonic() < stop_at:
            writer.write(blob)
            async with asyncio.timeout(max(0.01, stop_at - time.monotonic())):
                await writer.drain()


async def attack(name: str, port: int, key: str, stop_at: float) -> None:
    if name == "idle":
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    elif name == "h1":
        held = []
        extra = f"X-API-Key: {key}\r\nX-Pad: {'p' * 9000}\r\n"
        for _ in range(45):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(HOST, port)
                writer.write(UPGRADE.format(extra=extra).encode())
                held.append(writer)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        for writer in held:
            writer.close()
    else:
        _, writer = await raw_session(port, key)
        if name == "h2":
            blob = masked(Opcode.PING, b"x" * 125) * 8000
        else:
            writer.write(masked(Opcode.TEXT, b"", fin=False))
            blob = masked(Opcode.CONT, fin=False) * 170_000
        await flood(writer, blob, stop_at)
        writer.close()


async def victim(port: int, key: str, pcm: bytes, stop_at: float) -> dict[str, Any]:
    """Utterances one after another; commit->done of each, and the connections refused."""
    url = f"ws://{HOST}:{port}/api/asr-streaming"
    latencies: list[float] = []
    refused = 0
    n = 0
    while time.monotonic() < stop_at:
        try:
            async with asyncio.timeout(max(1.0, stop_at - time.monotonic() + 15)):
                async with connect(url, additional_headers={"X-API-Key": key}) as ws:
                    created = orjson.loads(await ws.recv())
                    if created["type"] != "session.created":
                        refused += 1
                        await asyncio.sleep(0.5)
                        continue
                    while time.monotonic() < stop_at:
                        n += 1
                        rid = f"u{n}"

                        async def send(kind: str, payload: dict[str, Any], rid: str = rid) -> None:
                            message = {
                                "type": kind,
                                "session_id": "victim",
                                "request_id": rid,
                                "payload": payload,
                            }
                            await ws.send(orjson.dumps(message).decode())

                        await send("input_audio_buffer.commit", {"final": False})
                        for i in range(0, len(pcm), CHUNK_BYTES):
                            chunk = pcm[i : i + CHUNK_BYTES]
                            await send(
                                "input_audio_buffer.append",
                                {"audio": base64.b64encode(chunk).decode()},
                            )
                        committed = time.monotonic()
                        await send("input_audio_buffer.commit", {"final": True})
                        while True:
                            event = orjson.loads(await ws.recv())
                            if event["type"] == "transcription.done" and event["request_id"] == rid:
                                latencies.append((time.monotonic() - committed) * 1000)
                                break
                        await asyncio.sleep(PAUSE_S)
        except Exception:
            if time.monotonic() < stop_at:
                refused += 1
            await asyncio.sleep(0.5)
    latencies.sort()
    return {
        "utterances": len(latencies),
        "refused_or_failed": refused,
        "done_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "done_p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 1) if latencies else None,
        "done_max_ms": round(latencies[-1], 1) if latencies else None,
    }


async def run_one(name: str, port: int, pid: int, key: str, pcm: bytes, seconds: float) -> Any:
    rss_start = rss_bytes(pid)
    cpu_start = cpu_seconds(pid)
    started = time.monotonic()
    stop_at = started + seconds
    peak = rss_start
    readyz: list[int] = []

    async def sample() -> None:
        nonlocal peak
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            while time.monotonic() < stop_at:
                peak = max(peak, rss_bytes(pid))
                try:
                    readyz.append((await http.get(f"http://{HOST}:{port}/readyz")).status_code)
                except httpx.HTTPError:
                    readyz.append(0)
                await asyncio.sleep(0.5)

    attacker = asyncio.create_task(attack(name, port, key, stop_at))
    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0.5)  # the attack first
    victim_result = await victim(port, key, pcm, stop_at)
    await asyncio.gather(attacker, sampler, return_exceptions=True)
    elapsed = time.monotonic() - started
    return {
        "attack": name,
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_peak_mib": round(peak / 2**20, 1),
        "cpu_pct": round(100 * (cpu_seconds(pid) - cpu_start) / elapsed, 1),
        "readyz_not_200": sum(status != 200 for status in readyz),
        **victim_result,
    }


def load_clip() -> bytes:
    with wave.open(str(ROOT / "samples" / "short.wav"), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    return pcm[: int(CLIP_SECONDS * PCM_BYTES_PER_S)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--proxy-root", type=Path, default=ROOT)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a proxy setting for the run (e.g. WS_MAX_CONTROL_FRAMES_PER_S=1000000)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "edge-logs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pcm = load_clip()
    for name in args.attacks:
        fake, upstream = start_fake(args.out / f"fake-{name}.log", 480)
        key = secrets.token_urlsafe(32)
        try:
            proxy, port = start_proxy_in(args.proxy_root, upstream, key, args.out, args.set)
            try:
                result = asyncio.run(run_one(name, port, proxy.pid, key, pcm, args.seconds))
            finally:
                stop(proxy)
        finally:
            stop(fake)
        print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
