"""`python -m clients.convo`: several files as utterances over one socket, a pause between them.

By default the next utterance starts `--pause` seconds after the previous one's final commit,
without waiting for its `transcription.done` (the server queues it), as a talking user would.
`--wait` waits for each `done` first. Exits non-zero unless every utterance ends with `done`, in
the order sent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from pathlib import Path

from clients.audio import load_audio
from clients.cli import (
    EXIT_FAILED,
    EXIT_OK,
    AudioOptions,
    add_audio_args,
    add_pacing_args,
    add_server_args,
    audio_options,
    fail,
    open_session,
    run_tool,
    sample,
    speed_of,
)
from clients.client import Utterance, UtteranceResult

DEFAULT_FILES = ("short.wav", "mid.wav")


async def convo(args: argparse.Namespace, audio: AudioOptions, prog: str) -> int:
    files: list[Path] = args.file or [sample(name) for name in DEFAULT_FILES]
    clips = [load_audio(path, audio.format) for path in files]
    speed = speed_of(args)
    client = await open_session(args.server, args.api_key, args.open_timeout, audio)
    async with client:
        utterances: list[Utterance] = []
        pending: list[asyncio.Task[UtteranceResult]] = []
        for index, clip in enumerate(clips):
            if index:
                await asyncio.sleep(args.pause)
            utterance = client.stream(
                clip,
                request_id=f"convo-{index + 1}",
                speed=speed,
                done_timeout=args.timeout,
                chunk_ms=audio.chunk_ms,
            )
            utterances.append(utterance)
            pending.append(asyncio.create_task(utterance.result()))
            if args.wait:
                await pending[-1]
            else:
                await utterance.wait_sent()
        results = await asyncio.gather(*pending)
        await client.end(min(args.timeout, 10.0))
    for path, result in zip(files, results, strict=True):
        if args.json:
            print(json.dumps({"file": str(path), **result.as_dict()}, ensure_ascii=False))
        else:
            _print_result(path, result)
    order = [r.end_index for r in results]
    if any(r.status != "done" for r in results):
        fail(prog, "not every utterance ended with transcription.done")
        return EXIT_FAILED
    if any(a is None or b is None or a >= b for a, b in itertools.pairwise(order)):
        fail(prog, "transcription.done events arrived out of order")
        return EXIT_FAILED
    return EXIT_OK


def _print_result(path: Path, result: UtteranceResult) -> None:
    figures = result.timings.as_dict()
    print(f"[{result.request_id}] {path.name}: {result.text}")
    print(
        f"    audio {figures['audio_s']} s, ttfw {figures['ttfw_ms']} ms, "
        f"finalize {figures['finalize_ms']} ms, rtf {figures['rtf']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clients.convo",
        description="Send several files as utterances over one connection, with a pause between.",
    )
    add_server_args(parser)
    parser.add_argument(
        "--file",
        type=Path,
        action="append",
        help="audio file, repeat for each utterance (default samples/short.wav samples/mid.wav)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds between one utterance's final commit and the next one (default 1)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for each done before the pause and the next one"
    )
    add_pacing_args(parser)
    add_audio_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per utterance")
    args = parser.parse_args(argv)
    if args.pause < 0:
        parser.error("--pause must not be negative")
    audio = audio_options(parser, args)
    return run_tool(parser.prog, lambda: convo(args, audio, parser.prog))


if __name__ == "__main__":
    sys.exit(main())
