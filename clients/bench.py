"""`python -m clients.bench`: concurrent sessions against a server, or a sweep of levels.

Each session connects, streams one file as one utterance, and ends. A level runs `--n` sessions
(default: as many as its concurrency, one wave) with at most `concurrency` at a time, the first
wave started `--stagger` seconds apart. Capacity refusals (`server_at_capacity`) are counted apart
from other errors. Results go to a JSON, a CSV and a PNG chart in `--out-dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from clients.audio import load_audio
from clients.cli import (
    EXIT_FAILED,
    EXIT_OK,
    AudioOptions,
    add_audio_args,
    add_pacing_args,
    add_server_args,
    audio_options,
    int_list,
    open_session,
    pacing_label,
    positive_int,
    run_tool,
    sample,
    speed_of,
)
from clients.client import (
    ClientError,
    ClientTimeout,
    ProtocolError,
    build_url,
    redact_url,
)
from clients.report import draw_chart, format_table, write_csv, write_json
from clients.stats import summarize
from clients.timing import now
from clients.wer import reference_for, word_error_rate

CAPACITY_CODE = "server_at_capacity"
# `--sweep auto`: these levels below the server's capacity (GET /healthz), then the capacity.
AUTO_SWEEP = "auto"
AUTO_LEVELS = (1, 8, 32, 64, 100)
SCHEMA_VERSION = 1
END_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BenchConfig:
    server: str
    api_key: str | None
    open_timeout: float
    done_timeout: float
    speed: float | None
    stagger_s: float
    audio: AudioOptions


@dataclass
class SessionOutcome:
    status: Literal["ok", "refused", "error"]
    error_code: str | None = None
    error: str | None = None
    connect_ms: float | None = None
    timings: dict[str, float | None] | None = None
    wer: float | None = None

    def as_dict(self) -> dict[str, Any]:
        figures = self.timings or {}
        return {
            "status": self.status,
            "error_code": self.error_code,
            "error": self.error,
            "connect_ms": self.connect_ms,
            "ttfw_ms": figures.get("ttfw_ms"),
            "finalize_ms": figures.get("finalize_ms"),
            "rtf": figures.get("rtf"),
            "audio_s": figures.get("audio_s"),
            "wer": self.wer,
        }


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, ClientTimeout):
        return "timeout"
    if isinstance(exc, ClientError):
        return "client_error"
    return type(exc).__name__


async def run_session(cfg: BenchConfig, audio: bytes, reference: str | None) -> SessionOutcome:
    """One session: connect, one utterance, end. Never raises: failures become the outcome."""
    started = now()
    try:
        client = await open_session(cfg.server, cfg.api_key, cfg.open_timeout, cfg.audio)
    except Exception as exc:
        refused = isinstance(exc, ProtocolError) and exc.code == CAPACITY_CODE
        return SessionOutcome("refused" if refused else "error", _error_code(exc), str(exc))
    connect_ms = round((now() - started) * 1000.0, 2)
    try:
        async with client:
            result = await client.transcribe(
                audio,
                speed=cfg.speed,
                done_timeout=cfg.done_timeout,
                chunk_ms=cfg.audio.chunk_ms,
            )
            # The utterance is measured; a slow or failed `end` does not change its figures.
            with contextlib.suppress(ClientError):
                await client.end(END_TIMEOUT_S)
    except Exception as exc:
        return SessionOutcome("error", _error_code(exc), str(exc), connect_ms)
    wer = None if reference is None else round(word_error_rate(reference, result.text), 4)
    return SessionOutcome("ok", connect_ms=connect_ms, timings=result.timings.as_dict(), wer=wer)


async def run_level(
    cfg: BenchConfig,
    concurrency: int,
    n: int,
    audio: bytes,
    reference: str | None,
    progress: tqdm,
) -> dict[str, Any]:
    """Run `n` sessions, at most `concurrency` at once; returns the level's summary."""
    jobs = iter(range(n))
    outcomes: list[SessionOutcome] = []

    async def worker(slot: int) -> None:
        await asyncio.sleep(slot * cfg.stagger_s)  # staggered first wave
        for _ in jobs:  # the iterator is shared: each job is taken by exactly one worker
            outcomes.append(await run_session(cfg, audio, reference))
            progress.update(1)

    started = now()
    async with asyncio.TaskGroup() as group:
        for slot in range(min(concurrency, n)):
            group.create_task(worker(slot))
    return summarize_level(concurrency, n, now() - started, outcomes)


def summarize_level(
    concurrency: int, n: int, wall_s: float, outcomes: list[SessionOutcome]
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == "ok"]
    timings = [o.timings or {} for o in ok]
    audio_s = sum(t.get("audio_s") or 0.0 for t in timings)
    codes = Counter(o.error_code or "unknown" for o in outcomes if o.status == "error")
    wers = [o.wer for o in ok if o.wer is not None]
    return {
        "concurrency": concurrency,
        "n": n,
        "ok": len(ok),
        "capacity_refusals": sum(o.status == "refused" for o in outcomes),
        "errors": sum(codes.values()),
        "error_codes": dict(codes),
        "wall_s": round(wall_s, 3),
        "audio_s": round(audio_s, 3),
        # Seconds of audio transcribed per second of wall time, over the whole level.
        "throughput_x": round(audio_s / wall_s, 3) if wall_s > 0 else None,
        "utterances_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
        "ttfw_ms": summarize(t.get("ttfw_ms") for t in timings),
        "finalize_ms": summarize(t.get("finalize_ms") for t in timings),
        "rtf": summarize((t.get("rtf") for t in timings), ndigits=4),
        "connect_ms": summarize(o.connect_ms for o in ok),
        "wer_mean": round(sum(wers) / len(wers), 4) if wers else None,
        "utterances": [o.as_dict() for o in outcomes],
    }


async def bench(args: argparse.Namespace, audio_opts: AudioOptions) -> int:
    audio = load_audio(args.file, audio_opts.format)
    reference = reference_for(args.file)
    prepare_out_dir(args.out_dir)  # an unwritable folder fails now, not after the run
    cfg = BenchConfig(
        server=args.server,
        api_key=args.api_key,
        open_timeout=args.open_timeout,
        done_timeout=args.timeout,
        speed=speed_of(args),
        stagger_s=args.stagger,
        audio=audio_opts,
    )
    # Fail fast, with one clear line, when the server is unreachable or refuses the key or the
    # audio format.
    probe = await open_session(cfg.server, cfg.api_key, cfg.open_timeout, cfg.audio)
    await probe.close()
    await asyncio.sleep(args.settle)  # let the server release the probe's slot

    if args.sweep == AUTO_SWEEP:
        capacity = await server_capacity(cfg.server)
        levels = auto_levels(capacity)
        print(
            f"sweep {','.join(map(str, levels))}: up to the server's capacity, {capacity} "
            "streams (its /healthz; a CPU build holds few)",
            file=sys.stderr,
        )
    else:
        levels = args.sweep or [args.concurrency]
    plan = [(c, args.n or c) for c in levels]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summaries: list[dict[str, Any]] = []
    with tqdm(
        total=sum(n for _, n in plan), unit="utt", file=sys.stderr, disable=args.quiet
    ) as progress:
        for index, (concurrency, n) in enumerate(plan):
            if index:
                await asyncio.sleep(args.settle)  # let the server release the previous sockets
            progress.set_postfix(concurrency=concurrency)
            summaries.append(await run_level(cfg, concurrency, n, audio, reference, progress))

    document = {
        "tool": "clients.bench",
        "schema": SCHEMA_VERSION,
        "started_at": started_at,
        "server": redact_url(build_url(cfg.server)),
        "file": str(args.file),
        "audio_s": round(len(audio) / audio_opts.format.bytes_per_second, 3),
        "audio": audio_opts.describe(),
        "pacing": pacing_label(cfg.speed),
        "stagger_s": cfg.stagger_s,
        "reference": reference,
        "levels": summaries,
    }
    save_and_print(args, document)
    return EXIT_OK if any(s["ok"] for s in summaries) else EXIT_FAILED


def auto_levels(capacity: int) -> list[int]:
    """The sweep for a server that holds `capacity` streams: the usual levels below it, then
    the capacity itself."""
    return [level for level in AUTO_LEVELS if level < capacity] + [max(1, capacity)]


async def server_capacity(server: str) -> int:
    """The connection cap the server's /healthz reports."""
    parts = urlsplit(build_url(server))
    scheme = "https" if parts.scheme == "wss" else "http"
    url = f"{scheme}://{parts.netloc}/healthz"
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            capacity = (await http.get(url)).json()["capacity"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(
            f"--sweep auto reads the capacity from {url}, which did not say it ({exc!r}): "
            "give --sweep levels, e.g. --sweep 8,32"
        ) from None
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ClientError(f"{url} reports no usable capacity: give --sweep levels")
    return capacity


def prepare_out_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)


def save_and_print(args: argparse.Namespace, document: dict[str, Any]) -> None:
    """Write JSON, CSV and PNG side by side, then print the table and the paths."""
    summaries = document["levels"]
    out_dir: Path = args.out_dir
    stem = args.name or f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "png")}
    write_json(paths["json"], document)
    write_csv(paths["csv"], summaries)
    title = f"{Path(args.file).name}, {document['pacing']}, {document['server']}"
    draw_chart(paths["png"], summaries, title)
    audio = f"{document['audio_s']} s, {document['pacing']}"
    print(f"{document['file']} ({audio}) -> {document['server']}")
    print(format_table(summaries))
    for path in paths.values():
        print(f"wrote {path}")


def sweep_levels(text: str) -> list[int] | str:
    return AUTO_SWEEP if text.strip().lower() == AUTO_SWEEP else int_list(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clients.bench",
        description="Concurrent sessions against a server; latency percentiles, JSON, CSV, chart.",
    )
    add_server_args(parser, done_timeout=60.0)
    parser.add_argument(
        "--file", type=Path, default=sample("mid.wav"), help="audio file (default samples/mid.wav)"
    )
    parser.add_argument(
        "--n", type=positive_int, default=None, help="sessions per level (default: its concurrency)"
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="sessions at once (default 8)"
    )
    parser.add_argument(
        "--sweep",
        type=sweep_levels,
        default=None,
        help="comma-separated concurrency levels, e.g. 8,32,64,100 (overrides --concurrency), "
        f"or {AUTO_SWEEP}: {','.join(map(str, AUTO_LEVELS))} up to the server's capacity "
        "(GET /healthz), and the capacity",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.05,
        help="seconds between the first wave's session starts (default 0.05)",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds of rest before each level (default 1)"
    )
    add_pacing_args(parser)
    add_audio_args(parser)
    parser.add_argument(
        "--out-dir", type=Path, default=Path("bench-results"), help="default bench-results/"
    )
    parser.add_argument("--name", default=None, help="file stem (default bench-YYYYmmdd-HHMMSS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.stagger < 0 or args.settle < 0:
        parser.error("--stagger and --settle must not be negative")
    if args.sweep == []:
        parser.error("--sweep needs at least one level")
    audio = audio_options(parser, args)
    return run_tool(parser.prog, lambda: bench(args, audio))


if __name__ == "__main__":
    sys.exit(main())
