"""The compat tier's harness: the real proxy as a subprocess in front of the fake vLLM, and a
third-party client run as a script in its own environment (tests/compat/env), in a process that
shares nothing with the server.

The fake vLLM runs in the test's event loop so that a test can read the audio that reached it
(``upstream_utterances``) and predict the transcript with the fake's own ``predict_text``; the
proxy, the server under test, is a separate ``python -m proxy``.

A client script (tests/compat/clients/*.py) takes its arguments on the command line, talks to the
proxy, and prints one JSON object as its last line of stdout; ``run_client`` returns it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.fake_vllm import FakeVllm
from tests.harness import RunningProxy, proxy_subprocess

CLIENTS = Path(__file__).resolve().parent / "clients"
COMPAT_KEY = "compat-key-5b2e81"


@dataclass
class CompatStack:
    fake: FakeVllm
    proxy: RunningProxy
    lines: list[str] = field(default_factory=list)  # the proxy's output, for failure messages

    @property
    def http_url(self) -> str:
        return self.proxy.http_url

    @property
    def ws_url(self) -> str:
        return self.proxy.http_url.replace("http://", "ws://", 1)

    @property
    def key(self) -> str:
        return self.proxy.api_key


@contextlib.asynccontextmanager
async def compat_stack(
    fake_options: dict[str, Any] | None = None, **proxy_env: str
) -> AsyncIterator[CompatStack]:
    """A FakeVllm (``fake_options`` are its constructor arguments) and ``python -m proxy`` in
    front of it (``proxy_env`` adds environment variables) on free loopback ports."""
    lines: list[str] = []
    async with (
        FakeVllm(**(fake_options or {})) as fake,
        proxy_subprocess(fake.url, (COMPAT_KEY,), lines, **proxy_env) as proxy,
    ):
        yield CompatStack(fake=fake, proxy=proxy, lines=lines)


class ClientFailed(AssertionError):
    """A client script exited non-zero or printed no JSON result."""


async def run_client(
    env: Path,
    script: str,
    *args: str,
    guard_s: float = 90.0,
    stack: CompatStack | None = None,
) -> dict[str, Any]:
    """Runs ``tests/compat/clients/<script>.py`` with the env's interpreter and returns the JSON
    object it printed last. ``guard_s`` is a hang guard; ``stack``'s proxy log is added to a
    failure's message."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VOXTRAL_", "PYTHON", "OPENAI_", "MISTRAL_", "LIVEKIT_"))
    }
    process = await asyncio.create_subprocess_exec(
        str(env / "bin" / "python"),
        str(CLIENTS / f"{script}.py"),
        *args,
        cwd=CLIENTS,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(guard_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    context = f"\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-6000:]}"
    if stack is not None:
        context += "\n--- proxy\n" + "".join(stack.lines[-60:])
    if process.returncode != 0:
        raise ClientFailed(f"{script} exited with {process.returncode}{context}")
    try:
        result = json.loads(last)
    except ValueError:
        raise ClientFailed(f"{script} printed no JSON result{context}") from None
    if not isinstance(result, dict):
        raise ClientFailed(f"{script} printed {type(result).__name__}, not an object{context}")
    return result


def upstream_utterances(fake: FakeVllm) -> list[bytes]:
    """The audio of every generation the fake finished, in order: per connection, what was
    appended up to each final commit (the fake, like vLLM, hands a generation everything queued
    before its end marker)."""
    pending: dict[int, bytearray] = {}
    utterances: list[bytes] = []
    for number, event in fake.received:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            pending.setdefault(number, bytearray()).extend(base64.b64decode(event["audio"]))
        elif kind == "input_audio_buffer.commit" and event.get("final") is True:
            utterances.append(bytes(pending.pop(number, b"")))
    return utterances
