"""One launcher process (vLLM supervised, the proxy in front) started for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.processes import stop_process
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
E2E_KEY = "e2e-key-5b81d2"
# One vLLM start takes 30-60 s on 2 cores; more when another start shares them.
READY_LIMIT_S = 300.0
STOP_LIMIT_S = 60.0
# Variables of the surrounding shell that would change what the launcher does.
INHERITED_PREFIXES = ("VLLM_", "VOXTRAL_", "SERVER_", "WS_", "HF_", "MAX_CONCURRENT")


@dataclass
class Stack:
    """One launcher process: vLLM (supervised) plus the proxy in front."""

    process: subprocess.Popen[bytes]
    log_path: Path
    server_port: int
    vllm_port: int
    api_key: str = E2E_KEY

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server_port}/api/asr-streaming"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def vllm_pid(self) -> int | None:
        """The supervised vLLM: the launcher's child that leads its own process group."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for word in (task / "children").read_text().split():
                    pid = int(word)
                    with contextlib.suppress(ProcessLookupError):
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        if os.getpgid(pid) == pid and b"vllm" in cmdline:
                            return pid
        return None

    def wait_ready(self, limit_s: float = READY_LIMIT_S) -> None:
        deadline = time.monotonic() + limit_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"launcher exited with {self.process.returncode} before it was ready:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.http_url}/readyz").status_code == 200:
                        return
                time.sleep(0.5)
        pytest.fail(f"launcher not ready within {limit_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        vllm = self.vllm_pid()
        stop_process(self.process, STOP_LIMIT_S)
        if vllm is not None:  # never leave a vLLM behind, whatever happened above
            with contextlib.suppress(ProcessLookupError):
                os.killpg(vllm, signal.SIGKILL)
        return self.process.returncode


def start_stack(tmp: Path, cpu_env: Path, **variables: str) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    server_port, vllm_port = free_port(), free_port()
    env.update(
        VOXTRAL_MODEL_ID="dummy",
        VOXTRAL_MODEL_DIR=str(tmp / "model"),
        VOXTRAL_VLLM_CPU_ENV=str(cpu_env),
        VOXTRAL_API_KEY=E2E_KEY,
        VLLM_DEVICE="cpu",
        VLLM_PORT=str(vllm_port),
        SERVER_PORT=str(server_port),
        SERVER_BIND_HOST="127.0.0.1",
        VLLM_MAX_MODEL_LEN="2048",
        WS_DRAIN_TIMEOUT_S="5",
        LOG_LEVEL="INFO",
    )
    env.update(variables)
    log_path = tmp / "launcher.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "launcher"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(process, log_path, server_port, vllm_port)
    try:
        stack.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


@contextlib.contextmanager
def running_stack(tmp: Path, cpu_env: Path, **variables: str) -> Iterator[Stack]:
    stack = start_stack(tmp, cpu_env, **variables)
    try:
        yield stack
    finally:
        code = stack.stop()
        assert code == 0, f"launcher exited with {code} on SIGTERM:\n{stack.log_tail()}"
