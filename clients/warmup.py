"""`python -m clients.warmup`: one utterance through a running server; prints text and timings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from clients.audio import load_audio
from clients.cli import (
    EXIT_OK,
    AudioOptions,
    add_audio_args,
    add_pacing_args,
    add_server_args,
    audio_options,
    open_session,
    pacing_label,
    run_tool,
    sample,
    speed_of,
)
from clients.client import UtteranceResult, redact_url
from clients.timing import now
from clients.wer import reference_for, word_error_rate

END_TIMEOUT_S = 10.0
# A word error rate this high means the words match nothing: what the dummy model writes.
NO_WORDS_RIGHT_WER = 0.9
NO_WORDS_RIGHT = (
    "no word right: expected from the dummy model (VOXTRAL_MODEL_ID=dummy writes random "
    "words); with the real model, check the audio and its format"
)


def build_parser(
    prog: str, description: str, *, open_timeout: float = 10.0, done_timeout: float = 30.0
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_server_args(parser, open_timeout=open_timeout, done_timeout=done_timeout)
    parser.add_argument(
        "--file", type=Path, default=sample("mid.wav"), help="audio file (default samples/mid.wav)"
    )
    add_pacing_args(parser)
    add_audio_args(parser)
    parser.add_argument("--deltas", action="store_true", help="echo deltas to stderr as they come")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


async def warmup(
    args: argparse.Namespace, audio: AudioOptions, *, default_scheme: str = "ws"
) -> int:
    # Decode first: a bad file fails before any network traffic.
    data = load_audio(args.file, audio.format)
    speed = speed_of(args)
    started = now()
    client = await open_session(
        args.server, args.api_key, args.open_timeout, audio, default_scheme=default_scheme
    )
    connect_ms = (now() - started) * 1000.0
    async with client:
        result = await client.transcribe(
            data,
            speed=speed,
            done_timeout=args.timeout,
            chunk_ms=audio.chunk_ms,
            on_delta=_echo if args.deltas else None,
        )
        if args.deltas:
            print(file=sys.stderr)
        reference = reference_for(args.file)
        report: dict[str, Any] = {
            "server": redact_url(client.url),
            "session_id": client.session_id,
            "model": client.session.model,
            "file": str(args.file),
            "chunks": -(-len(data) // audio.format.chunk_bytes(audio.chunk_ms)),
            "audio": audio.describe(),
            "pacing": pacing_label(speed),
            "connect_ms": round(connect_ms, 2),
            **result.as_dict(),
            "wer": None if reference is None else round(word_error_rate(reference, result.text), 4),
        }
        if args.json:
            print(json.dumps(report, ensure_ascii=False), flush=True)
        else:
            print_report(report, result)
        # Close the session the polite way: `end`, then the server's 1000.
        await client.end(END_TIMEOUT_S)
    return EXIT_OK


def _echo(delta: str) -> None:
    print(delta, end="", file=sys.stderr, flush=True)


def print_report(report: dict[str, Any], result: UtteranceResult) -> None:
    """Human-readable block: text first, then one figure per line."""
    t = result.timings

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f} ms"

    lines = [
        ("server", f"{report['server']} (session {report['session_id']}, {report['model']})"),
        ("text", result.text.strip()),
        ("status", result.status),
        ("audio", f"{t.audio_s:.2f} s in {report['chunks']} chunks, {report['pacing']}"),
        ("format", report["audio"]),
        ("deltas", str(len(result.deltas))),
        ("connect", f"{report['connect_ms']:.1f} ms"),
        ("ttfw", ms(t.ttfw_s)),
        ("finalize", ms(t.finalize_s)),
        ("total", "-" if t.total_s is None else f"{t.total_s:.2f} s"),
        ("rtf", "-" if t.rtf is None else f"{t.rtf:.3f}"),
    ]
    if report["wer"] is not None:
        note = f" ({NO_WORDS_RIGHT})" if report["wer"] >= NO_WORDS_RIGHT_WER else ""
        lines.append(("wer", f"{report['wer']:.3f}{note}"))
    for label, value in lines:
        print(f"{label:<9} {value}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("clients.warmup", "Send one utterance and print its text and timings.")
    args = parser.parse_args(argv)
    audio = audio_options(parser, args)
    return run_tool(parser.prog, lambda: warmup(args, audio))


if __name__ == "__main__":
    sys.exit(main())
