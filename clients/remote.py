"""`python -m clients.remote`: warmup against a remote host (wss by default, longer timeouts)."""

from __future__ import annotations

import sys

from clients.cli import audio_options, run_tool
from clients.warmup import build_parser, warmup


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "clients.remote",
        "Warmup for a remote host: a bare host:port means wss://, timeouts are longer.",
        open_timeout=30.0,
        done_timeout=120.0,
    )
    args = parser.parse_args(argv)
    audio = audio_options(parser, args)
    return run_tool(parser.prog, lambda: warmup(args, audio, default_scheme="wss"))


if __name__ == "__main__":
    sys.exit(main())
