"""Fixtures: the fake vLLM and the real proxy in front of it, plus a runner for the tools."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT_S = 120.0  # a hang guard only


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str


async def run_tool(
    tool: str, *args: str, api_key: str | None = None, package: str = "clients"
) -> ToolRun:
    """`python -m <package>.<tool> args...` as a child process; the event loop keeps serving the
    proxy meanwhile. The key travels in VOXTRAL_API_KEY, as users are told to pass it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOXTRAL_API_KEY", "VOXTRAL_SERVER")}
    if api_key is not None:
        env["VOXTRAL_API_KEY"] = api_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"{package}.{tool}",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TOOL_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return ToolRun(proc.returncode, out.decode(), err.decode())
