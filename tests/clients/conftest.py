"""Fixtures: a runner for the tools, and a recording peer for what only the wire shows (which
kind of frame, of what size, and a server that ignores the audio format asked for)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve

from proxy.audio_format import parse_query

ROOT = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT_S = 120.0  # a hang guard only


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str


async def run_tool(
    tool: str,
    *args: str,
    api_key: str | None = None,
    package: str = "clients",
    env_file: Path | None = None,
) -> ToolRun:
    """`python -m <package>.<tool> args...` as a child process; the event loop keeps serving the
    proxy meanwhile. The key travels in VOXTRAL_API_KEY, as users are told to pass it; a .env
    in the clone is never read (`env_file` names the one to read)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VOXTRAL_API_KEY", "VOXTRAL_SERVER")}
    env["VOXTRAL_ENV_FILE"] = str(env_file or ROOT / "tests" / "no-such.env")
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


@dataclass
class Peer:
    url: str
    # Announced in session.created; None means "the format asked for in the query".
    announce: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    frames: list[bytes | dict[str, Any]] = field(default_factory=list)

    def audio(self) -> list[bytes]:
        """The audio of every frame, in order: binary frames as sent, appends decoded."""
        pieces = []
        for frame in self.frames:
            if isinstance(frame, bytes):
                pieces.append(frame)
            elif frame["type"] == "input_audio_buffer.append":
                pieces.append(base64.b64decode(frame["payload"]["audio"]))
        return pieces

    def kinds(self) -> list[str]:
        return ["binary" if isinstance(f, bytes) else str(f["type"]) for f in self.frames]

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict)]


@asynccontextmanager
async def recording_peer(announce: dict[str, Any] | None = None) -> AsyncIterator[Peer]:
    """A WebSocket peer on loopback that answers like a server taking every audio format: it
    announces the format asked for in the query (or `announce`, like an older server), records
    every frame, answers each final commit with `transcription.done` and `end` with a close."""
    peer = Peer(url="", announce=announce)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        peer.query = dict(parse_qsl(urlsplit(ws.request.path).query))
        audio = peer.announce or parse_query(peer.query).as_payload()
        created = {"type": "session.created", "payload": {"id": "s", "audio": audio}}
        await ws.send(orjson.dumps(created).decode())
        async for message in ws:
            if isinstance(message, bytes):
                peer.frames.append(message)
                continue
            event = orjson.loads(message)
            peer.frames.append(event)
            if event["type"] == "end":
                await ws.close()
            elif event["type"] == "input_audio_buffer.commit" and event["payload"].get("final"):
                done = {
                    "type": "transcription.done",
                    "request_id": event["request_id"],
                    "payload": {"text": "ok"},
                }
                await ws.send(orjson.dumps(done).decode())

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        peer.url = f"ws://127.0.0.1:{port}"
        yield peer
