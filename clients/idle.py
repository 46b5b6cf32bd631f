"""`python -m clients.idle`: connect, send nothing, expect close 4000 within the idle timeout.

Exit 0 only when the server closes with 4000 (`idle_timeout`) no later than the idle timeout it
announced in `session.created` plus `--grace` seconds.
"""

from __future__ import annotations

import argparse
import sys

from clients.cli import (
    EXIT_FAILED,
    EXIT_OK,
    add_server_args,
    fail,
    positive_float,
    run_tool,
    tool_api_key,
)
from clients.client import ClientTimeout, VoxtralClient
from clients.timing import now

IDLE_CLOSE_CODE = 4000


async def idle(args: argparse.Namespace, prog: str) -> int:
    client = await VoxtralClient.connect(
        args.server, api_key=tool_api_key(args.api_key), open_timeout=args.open_timeout
    )
    started = now()
    async with client:
        announced = client.session.idle_timeout_s
        if not announced:
            fail(prog, "the server announced no idle timeout (limits.idle_timeout_s is 0)")
            return EXIT_FAILED
        print(f"connected (session {client.session_id}); idle timeout {announced:g} s, waiting")
        try:
            info = await client.wait_closed(announced + args.grace)
        except ClientTimeout:
            waited = announced + args.grace
            fail(prog, f"still open after {waited:g} s (idle timeout {announced:g} s + grace)")
            return EXIT_FAILED
    elapsed = now() - started
    code_name = info.error.code if info.error else "-"
    print(f"closed {info.code} ({code_name}) after {elapsed:.2f} s; announced {announced:g} s")
    if info.code != IDLE_CLOSE_CODE:
        fail(prog, f"expected close {IDLE_CLOSE_CODE} (idle_timeout), got {info.code}")
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clients.idle",
        description="Connect, stay silent, and check the server closes with 4000 on time.",
    )
    add_server_args(parser)
    parser.add_argument(
        "--grace",
        type=positive_float,
        default=5.0,
        help="seconds allowed beyond the announced idle timeout (default 5)",
    )
    args = parser.parse_args(argv)
    return run_tool(parser.prog, lambda: idle(args, parser.prog))


if __name__ == "__main__":
    sys.exit(main())
