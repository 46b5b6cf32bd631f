"""Argument parsing and error handling shared by the tools (`python -m clients.<tool>`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from clients.audio import TELEPHONY_FORMAT, TELEPHONY_FRAME_MS, AudioError
from clients.client import API_KEY_ENV, BINARY_DEFAULT, ClientError, VoxtralClient
from proxy.audio_format import (
    CHANNEL_COUNTS,
    CHUNK_MS,
    AudioFormat,
    Encoding,
    UnsupportedAudioFormat,
    make_format,
)

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SERVER_ENV = "VOXTRAL_SERVER"
DEFAULT_SERVER = "localhost:8000"
# The dotenv file `make up` reads (scripts/ops.sh): the tools find the key where the server does.
ENV_FILE_ENV = "VOXTRAL_ENV_FILE"
DEFAULT_ENV_FILE = ".env"
NO_API_KEY = (
    f"no API key: set {API_KEY_ENV} (in the environment or {DEFAULT_ENV_FILE}) or pass --api-key"
)

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
        help=f"API key (default: ${API_KEY_ENV}, or its line in ${ENV_FILE_ENV} or "
        f"{DEFAULT_ENV_FILE}; prefer those, argv is visible to ps)",
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


@dataclass(frozen=True)
class AudioOptions:
    """How a tool sends its audio: in which format, how much per message, and how framed."""

    format: AudioFormat
    chunk_ms: int
    binary: bool

    def describe(self) -> str:
        framing = "binary frames" if self.binary else "JSON appends"
        return f"{self.format.describe()}, {self.chunk_ms} ms {framing}"


def add_audio_args(parser: argparse.ArgumentParser) -> None:
    """--format, --sample-rate, --channels, --chunk-ms, --frames, --telephony."""
    group = parser.add_argument_group("audio sent (the file is converted to it)")
    group.add_argument(
        "--format", choices=[e.value for e in Encoding], default=None, help="default pcm16"
    )
    group.add_argument(
        "--sample-rate",
        type=positive_int,
        default=None,
        help="Hz (default 16000 for pcm16, 8000 for G.711)",
    )
    group.add_argument(
        "--channels", type=int, choices=CHANNEL_COUNTS, default=None, help="default 1"
    )
    group.add_argument(
        "--chunk-ms",
        type=positive_int,
        default=None,
        help=f"audio per message in ms (default {CHUNK_MS})",
    )
    group.add_argument(
        "--frames",
        choices=("binary", "json"),
        default=None,
        help="binary frames or base64 JSON appends "
        f"(default {'binary' if BINARY_DEFAULT else 'json'})",
    )
    group.add_argument(
        "--telephony",
        action="store_true",
        help=f"as a phone provider streams: {TELEPHONY_FORMAT.describe()} in "
        f"{TELEPHONY_FRAME_MS} ms binary frames",
    )


def audio_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AudioOptions:
    """The audio options asked for; a bad combination exits through `parser.error`."""
    flags = {
        "--format": args.format,
        "--sample-rate": args.sample_rate,
        "--channels": args.channels,
        "--chunk-ms": args.chunk_ms,
        "--frames": args.frames,
    }
    if args.telephony:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            parser.error(f"--telephony sets the audio itself: drop {', '.join(given)}")
        return AudioOptions(TELEPHONY_FORMAT, TELEPHONY_FRAME_MS, binary=True)
    try:
        fmt = make_format(
            args.format,
            args.sample_rate,
            args.channels,
            names=("--format", "--sample-rate", "--channels"),
        )
    except UnsupportedAudioFormat as exc:
        parser.error(exc.message)
    binary = BINARY_DEFAULT if args.frames is None else args.frames == "binary"
    return AudioOptions(fmt, args.chunk_ms or CHUNK_MS, binary)


def env_file_values(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a dotenv file, read as `make up` reads them (comments, blank lines,
    `export ` and one level of quotes allowed); an absent file has none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values.setdefault(key, value)
    return values


def tool_api_key(given: str | None) -> str:
    """The key a tool sends: --api-key, else VOXTRAL_API_KEY from the environment, else from the
    dotenv file (VOXTRAL_ENV_FILE, default .env); the first of a comma-separated list. Raises
    ClientError before any connection when there is none."""
    raw = given
    if raw is None:
        raw = os.environ.get(API_KEY_ENV)
    if raw is None:
        path = Path(os.environ.get(ENV_FILE_ENV) or DEFAULT_ENV_FILE)
        raw = env_file_values(path).get(API_KEY_ENV)
    key = next((part.strip() for part in (raw or "").split(",") if part.strip()), None)
    if key is None:
        raise ClientError(NO_API_KEY)
    return key


async def open_session(
    server: str,
    api_key: str | None,
    open_timeout: float,
    audio: AudioOptions,
    *,
    default_scheme: str = "ws",
) -> VoxtralClient:
    """`VoxtralClient.connect` with a tool's audio options and key (`tool_api_key`)."""
    return await VoxtralClient.connect(
        server,
        api_key=tool_api_key(api_key),
        default_scheme=default_scheme,
        open_timeout=open_timeout,
        audio_format=audio.format.encoding.value,
        sample_rate=audio.format.sample_rate,
        channels=audio.format.channels,
        binary=audio.binary,
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
