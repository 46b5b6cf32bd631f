"""Argument parsing and error handling shared by the tools (`python -m clients.<tool>`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from clients.audio import AudioError
from clients.client import ClientError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SERVER_ENV = "VOXTRAL_SERVER"
DEFAULT_SERVER = "localhost:8000"

EXIT_OK = 0
EXIT_FAILED = 1  # the tool ran but the check or run failed
EXIT_ERROR = 2  # bad input, unreachable server, protocol error


def sample(name: str) -> Path:
    """Path of a bundled sample (samples/<name>), independent of the working directory."""
    return SAMPLES_DIR / name


def add_server_args(
    parser: argparse.ArgumentParser,
    *,
    open_timeout: float = 10.0,
    done_timeout: float = 30.0,
) -> None:
    """--server, --api-key, --open-timeout, --timeout."""
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_SERVER),
        help=f"host:port or ws[s]:// URL (default ${SERVER_ENV} or {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key (default: $VOXTRAL_API_KEY; prefer the variable, argv is visible to ps)",
    )
    parser.add_argument(
        "--open-timeout",
        type=positive_float,
        default=open_timeout,
        help=f"seconds to wait for the handshake and session.created (default {open_timeout:g})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=done_timeout,
        help=f"seconds to wait for transcription.done after the final commit "
        f"(default {done_timeout:g})",
    )


def add_pacing_args(parser: argparse.ArgumentParser) -> None:
    """--speed X / --no-pace."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--speed",
        type=positive_float,
        default=1.0,
        help="send audio X times faster than real time (default 1)",
    )
    group.add_argument(
        "--no-pace", action="store_true", help="send audio as fast as possible, unpaced"
    )


def speed_of(args: argparse.Namespace) -> float | None:
    """The pacing speed the arguments ask for; None means unpaced."""
    return None if args.no_pace else float(args.speed)


def pacing_label(speed: float | None) -> str:
    return "unpaced" if speed is None else f"paced {speed:g}x"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """'8,32,64' -> [8, 32, 64]."""
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()]


def run_tool(prog: str, main: Callable[[], Awaitable[int]]) -> int:
    """Run an async tool body; expected failures become one line on stderr and a non-zero code."""
    try:
        return asyncio.run(_call(main))
    except (ClientError, AudioError) as exc:
        fail(prog, str(exc))
        return EXIT_ERROR
    except OSError as exc:  # e.g. an output folder that cannot be written
        fail(prog, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_ERROR
    except KeyboardInterrupt:
        fail(prog, "interrupted")
        return 130


async def _call(main: Callable[[], Awaitable[int]]) -> int:
    return await main()


def fail(prog: str, message: str) -> None:
    """Print `prog: error: message` as one line on stderr."""
    one_line = " ".join(message.split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
