"""Processes of ``devtools.bench_proxy``: the fake vLLM and the real proxy as child processes on
loopback ports, and a sampler that reads their CPU time and RSS (and the machine's CPU) from
/proc while the load runs."""

from __future__ import annotations

import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from devtools.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Our own settings win over whatever the calling shell exports for a real deployment.
_PROXY_ENV_PREFIXES = ("VOXTRAL_", "WS_", "SERVER_", "MAX_CONCURRENT_", "LOG_LEVEL")


class ProcessFailed(RuntimeError):
    """A child process did not start or become ready; the message says which and why."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _spawn(name: str, args: list[str], log_path: Path, env: dict[str, str]) -> Child:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    return Child(name, proc, log_path)


def _read_line(stream: IO[bytes], timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline().decode().strip() if ready else ""


def start_fake(log_path: Path, delay_ms: int, options: Sequence[str] = ()) -> tuple[Child, str]:
    """``python -m devtools.fake_vllm`` (with ``options``) on a free loopback port; returns it
    and its WebSocket URL."""
    args = ["-m", "devtools.fake_vllm", "--host", HOST, "--port", "0", "--delay-ms", str(delay_ms)]
    args += options
    child = _spawn("fake vLLM", args, log_path, dict(os.environ))
    assert child.proc.stdout is not None
    url = _read_line(child.proc.stdout, START_TIMEOUT_S)
    if not url.startswith("ws://"):
        stop(child)
        raise ProcessFailed(f"the fake vLLM did not start (see {log_path})")
    return child, url


@dataclass
class ProxyProcess:
    child: Child
    ws_url: str
    http_url: str
    api_key: str


def start_proxy(log_path: Path, upstream_url: str, capacity: int) -> ProxyProcess:
    """``python -m proxy`` in front of ``upstream_url`` with a fresh key, ready to serve."""
    port = free_port()
    api_key = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROXY_ENV_PREFIXES)}
    env.update(
        VOXTRAL_API_KEY=api_key,
        VOXTRAL_UPSTREAM_URL=upstream_url,
        SERVER_BIND_HOST=HOST,
        SERVER_PORT=str(port),
        MAX_CONCURRENT_CONNECTIONS=str(capacity),
    )
    child = _spawn("proxy", ["-m", "proxy"], log_path, env)
    http_url = f"http://{HOST}:{port}"
    _wait_ready(child, f"{http_url}/readyz")
    return ProxyProcess(child, f"ws://{HOST}:{port}/api/asr-streaming", http_url, api_key)


def _wait_ready(child: Child, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise ProcessFailed(f"the {child.name} exited at start (see {child.log_path})")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    stop(child)
    raise ProcessFailed(f"the {child.name} was not ready within {START_TIMEOUT_S:g} s")


def stop(child: Child) -> None:
    """SIGTERM (the proxy drains: nothing is left to drain by then), then SIGKILL if stuck."""
    stop_process(child.proc, STOP_TIMEOUT_S, STOP_TIMEOUT_S)
    if child.proc.stdout is not None:
        child.proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# /proc readings


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_BYTES


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


def wait_for_quiet(max_wait_s: float, busy_cores: float, interval_s: float = 1.0) -> float:
    """Waits (at most ``max_wait_s``) for an interval in which the whole machine used less than
    ``busy_cores`` of CPU, so that other work on a shared host skews the run less. Returns the
    cores in use during the last interval."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0 = machine_ticks()[0]
        time.sleep(interval_s)
        busy1 = machine_ticks()[0]
        cores = (busy1 - busy0) / TICKS_PER_S / interval_s
        if cores < busy_cores or time.monotonic() >= deadline:
            return cores


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    cpu_s: dict[int, float]
    rss: dict[int, int]
    machine: tuple[int, int]


class Sampler:
    """Reads the watched processes every ``interval_s`` in a thread until stopped."""

    def __init__(self, pids: list[int], interval_s: float = 0.25) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def sample(self) -> Sample:
        cpu, rss = {}, {}
        for pid in self.pids:
            try:
                cpu[pid], rss[pid] = cpu_seconds(pid), rss_bytes(pid)
            except (OSError, ValueError, IndexError):
                continue  # the process is gone; the caller notices missing readings
        reading = Sample(time.monotonic(), cpu, rss, machine_ticks())
        self.samples.append(reading)
        return reading

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_rss(self, pid: int, since: float, until: float) -> int | None:
        values = [s.rss[pid] for s in self.samples if since <= s.at <= until and pid in s.rss]
        return max(values) if values else None
