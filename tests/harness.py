"""Test harness: the real proxy served by uvicorn in the test's event loop, and a small client.

Nothing of the proxy is replaced: ``serve_proxy`` runs ``ProxyServer`` on a free loopback port
in front of whatever upstream URL the test gives (normally ``devtools.fake_vllm.FakeVllm``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import os
import re
import resource
import signal
import sys
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devtools.fake_vllm import FakeVllm
from proxy.config import ProxyConfig
from proxy.server import ProxyServer

TEST_KEY = "test-key-7f3a9c"
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
FRAME_BYTES = 2560  # 80 ms of 16 kHz mono PCM16


@dataclass
class RunningProxy:
    ws_url: str
    http_url: str
    api_key: str
    config: ProxyConfig
    server: ProxyServer
    pid: int | None = None  # the proxy's process, when it runs in one of its own


@contextlib.asynccontextmanager
async def serve_proxy(upstream_url: str, **overrides: Any) -> AsyncIterator[RunningProxy]:
    """Serves the proxy on 127.0.0.1 with a free port; ``overrides`` are ProxyConfig fields."""
    base = ProxyConfig(
        api_keys=(TEST_KEY,),
        upstream_url=upstream_url,
        bind_host="127.0.0.1",
        port=0,
        drain_timeout_s=2.0,
    )
    config = dataclasses.replace(base, **overrides)
    server = ProxyServer(config, handle_signals=False)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    port = server.port
    try:
        yield RunningProxy(
            ws_url=f"ws://127.0.0.1:{port}/api/asr-streaming",
            http_url=f"http://127.0.0.1:{port}",
            api_key=config.api_keys[0],
            config=config,
            server=server,
        )
    finally:
        server.begin_shutdown()
        async with asyncio.timeout(config.drain_timeout_s + 15):
            await task


@contextlib.asynccontextmanager
async def fake_and_proxy(
    fake_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[FakeVllm, RunningProxy]]:
    """A FakeVllm (``fake_options`` are its constructor arguments) with the proxy in front."""
    async with (
        FakeVllm(**(fake_options or {})) as fake,
        serve_proxy(fake.url, **overrides) as proxy,
    ):
        yield fake, proxy


async def wait_for(condition: Callable[[], bool], guard_s: float = 10.0) -> None:
    """Polls ``condition`` (for state that has no event to wait on); ``guard_s`` is a hang guard."""
    async with asyncio.timeout(guard_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def upstream_commits(fake: FakeVllm, *, final: bool) -> int:
    """How many commits (final or opening) the fake has received, over all its connections."""
    return sum(
        1
        for _, event in fake.received
        if event.get("type") == "input_audio_buffer.commit" and event.get("final") is final
    )


async def finalizing_held(fake: FakeVllm, client: Client, request_id: str, pcm: bytes) -> None:
    """Sends a whole utterance while the fake vLLM holds its answers back (until
    ``fake.resume()``); returns once the final commit reached vLLM: the utterance is
    finalizing, its done owed."""
    fake.hang()
    await client.utterance(request_id, pcm)
    await wait_for(lambda: upstream_commits(fake, final=True) == 1)


def load_pcm(name: str = "short.wav") -> bytes:
    with wave.open(str(SAMPLES / name), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


def chunks(pcm: bytes, size: int = FRAME_BYTES) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


class Client:
    """A thin envelope client over one WebSocket, for tests."""

    def __init__(self, connection: ClientConnection, session_id: str = "s1") -> None:
        self.ws = connection
        self.session_id = session_id

    async def send(
        self, kind: str, request_id: str | None = None, payload: dict[str, Any] | None = None
    ) -> None:
        message: dict[str, Any] = {"type": kind, "session_id": self.session_id}
        if request_id is not None:
            message["request_id"] = request_id
        if payload is not None:
            message["payload"] = payload
        await self.ws.send(orjson.dumps(message).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def open(self, request_id: str) -> None:
        await self.send("input_audio_buffer.commit", request_id, {"final": False})

    async def append(self, request_id: str, pcm: bytes) -> None:
        await self.send("input_audio_buffer.append", request_id, {"audio": b64(pcm)})

    async def final(self, request_id: str) -> None:
        await self.send("input_audio_buffer.commit", request_id, {"final": True})

    async def utterance(self, request_id: str, pcm: bytes, *, final: bool = True) -> None:
        await self.open(request_id)
        for piece in chunks(pcm):
            await self.append(request_id, piece)
        if final:
            await self.final(request_id)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            event: dict[str, Any] = orjson.loads(await self.ws.recv())
        return event

    async def recv_until(
        self,
        kind: str,
        request_id: str | None = None,
        timeout: float = 20.0,  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``kind`` (for ``request_id``)."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv(timeout)
                events.append(event)
                if event["type"] == kind and (
                    request_id is None or event["request_id"] == request_id
                ):
                    return events

    async def recv_all_until_closed(
        self,
        timeout: float = 20.0,  # noqa: ASYNC109
    ) -> tuple[list[dict[str, Any]], int]:
        """Every event until the server closes; returns them and the close code."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            try:
                while True:
                    events.append(orjson.loads(await self.ws.recv()))
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                return events, code


@contextlib.asynccontextmanager
async def connected(
    proxy: RunningProxy,
    *,
    key: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    session_id: str = "s1",
    expect_created: bool = True,
) -> AsyncIterator[Client]:
    """Connects with the key in X-API-Key (unless ``headers`` or ``query`` carry auth)."""
    all_headers = dict(headers or {})
    if key is None and headers is None and "api_key=" not in query:
        key = proxy.api_key
    if key is not None:
        all_headers["X-API-Key"] = key
    url = proxy.ws_url + (f"?{query}" if query else "")
    async with connect(url, additional_headers=all_headers, max_size=None) as ws:
        client = Client(ws, session_id)
        if expect_created:
            created = await client.recv()
            assert created["type"] == "session.created", created
        yield client


def of_request(events: list[dict[str, Any]], request_id: str | None) -> list[dict[str, Any]]:
    return [e for e in events if e["request_id"] == request_id]


def assert_error(event: dict[str, Any], code: str, request_id: str | None = None) -> dict[str, Any]:
    """Checks one ``error`` event (shape, code, request_id) and returns its payload."""
    assert event["type"] == "error", event
    assert event["request_id"] == request_id, event
    payload: dict[str, Any] = event["payload"]
    assert payload["code"] == code, event
    assert isinstance(payload["message"], str), event
    assert payload["message"], event
    assert isinstance(payload["details"], dict), event
    return payload


def texts(events: list[dict[str, Any]], request_id: str) -> list[str]:
    return [
        e["payload"]["delta"]
        for e in events
        if e["type"] == "transcription.delta" and e["request_id"] == request_id
    ]


_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@contextlib.asynccontextmanager
async def proxy_subprocess(
    upstream_url: str,
    keys: tuple[str, ...],
    lines: list[str],
    *,
    nofile: int | None = None,
    **env: str,
) -> AsyncIterator[RunningProxy]:
    """Runs ``python -m proxy`` on a free port (``env`` adds variables), collecting its output
    lines into ``lines``; ``nofile`` lowers its file-handle limit."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("VOXTRAL_")}
    environ.update(
        VOXTRAL_API_KEY=",".join(keys),
        VOXTRAL_UPSTREAM_URL=upstream_url,
        SERVER_BIND_HOST="127.0.0.1",
        SERVER_PORT="0",
        WS_DRAIN_TIMEOUT_S="2",
    )
    environ.update(env)

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        cwd=ROOT,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=limit_files,
    )
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def collect() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            found = _RUNNING.search(line)
            if found and not port.done():
                port.set_result(int(found.group(1)))

    collector = asyncio.create_task(collect())
    try:
        async with asyncio.timeout(30):
            waiters: list[asyncio.Future[Any]] = [port, collector]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        assert port.done(), "".join(lines)  # the process ended before serving
        number = port.result()
        config = ProxyConfig(api_keys=keys, upstream_url=upstream_url, port=number)
        yield RunningProxy(
            ws_url=f"ws://127.0.0.1:{number}/api/asr-streaming",
            http_url=f"http://127.0.0.1:{number}",
            api_key=keys[0],
            config=config,
            server=None,  # type: ignore[arg-type]  # it runs in its own process
            pid=process.pid,
        )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
            await collector


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        value = json.loads(line)  # every line must be one JSON object
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed
