"""Runs ``vllm serve`` as a supervised child: its own process group, output forwarded into the
launcher's log, readiness by ``/health`` with a deadline, restart with backoff when it dies, and a
clean stop of the whole group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import structlog

from launcher.command import VllmCommand
from launcher.vllm_environ import vllm_environ

log = structlog.get_logger("launcher.supervisor")
vllm_log = structlog.get_logger("vllm")

HEALTH_POLL_S = 1.0
# A run that stayed up this long counts as healthy: the next crash starts the backoff afresh.
STABLE_RUN_S = 60.0
OUTPUT_LINE_LIMIT = 1 << 20
PR_SET_PDEATHSIG = 1


class VllmStartError(RuntimeError):
    """vLLM exited or did not become healthy before the deadline."""


@dataclass(slots=True)
class Backoff:
    """Exponential restart delay: initial, doubled per failure, capped."""

    initial_s: float = 1.0
    maximum_s: float = 30.0
    _next_s: float = 0.0

    def next_delay(self) -> float:
        delay = self._next_s or self.initial_s
        self._next_s = min(delay * 2, self.maximum_s)
        return delay

    def reset(self) -> None:
        self._next_s = 0.0


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher is killed outright, vLLM gets SIGTERM
    instead of living on as an orphan that holds the port and the GPU."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    def __init__(
        self,
        command: VllmCommand,
        health_url: str,
        startup_timeout_s: float,
        *,
        stop_grace_s: float = 15.0,
        backoff: Backoff | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._command = command
        self._health_url = health_url
        self._startup_timeout_s = startup_timeout_s
        self._stop_grace_s = stop_grace_s
        self._backoff = backoff or Backoff()
        self._environ = os.environ if environ is None else environ
        self._process: asyncio.subprocess.Process | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self._healthy_since: float | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Spawn vLLM and wait until ``/health`` answers 200. On failure the process group is
        stopped and ``VllmStartError`` raised."""
        await self._spawn()
        try:
            await self._wait_healthy()
        except VllmStartError:
            await self.stop()
            raise
        self._healthy_since = time.monotonic()

    async def supervise(self) -> None:
        """Restart vLLM whenever it dies, with backoff, until cancelled."""
        while True:
            process = self._process
            if process is None:
                raise RuntimeError("supervise() called before start()")
            returncode = await process.wait()
            stable = (
                self._healthy_since is not None
                and time.monotonic() - self._healthy_since >= STABLE_RUN_S
            )
            self._healthy_since = None
            if stable:
                self._backoff.reset()
            await self._kill_group(process.pid, signal.SIGKILL)  # stragglers hold the port
            delay = self._backoff.next_delay()
            log.error("vllm exited; restarting", returncode=returncode, restart_in_s=delay)
            await asyncio.sleep(delay)
            self.restarts += 1
            log.info("phase", phase="loading", restart=self.restarts)
            try:
                await self.start()
            except VllmStartError as exc:
                log.error("vllm restart failed", error=str(exc))
                continue
            log.info("phase", phase="ready", restart=self.restarts, pid=self.pid)

    async def stop(self) -> None:
        """SIGTERM vLLM's whole process group; SIGKILL it if it outlives the grace period."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            log.info("stopping vllm", pid=process.pid)
            await self._kill_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace_s)
            except TimeoutError:
                log.warning("vllm ignored SIGTERM; killing it", grace_s=self._stop_grace_s)
        # Whatever is left of the group (leader or children) goes now.
        await self._kill_group(process.pid, signal.SIGKILL)
        await process.wait()
        if self._forwarder is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._forwarder, 5.0)
        log.info("vllm stopped", returncode=process.returncode)

    async def _spawn(self) -> None:
        argv = self._command.argv
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=vllm_environ(self._environ, self._command.env),
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=OUTPUT_LINE_LIMIT,
            )
        except OSError as exc:
            raise VllmStartError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        self._process = process
        self._forwarder = asyncio.create_task(self._forward_output(process))
        log.info("vllm started", pid=process.pid)

    async def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what is buffered
                raw = await stream.read(OUTPUT_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                vllm_log.info(line, pid=process.pid)

    async def _wait_healthy(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if process.returncode is not None:
                    raise VllmStartError(
                        f"vllm exited with code {process.returncode} before it was ready "
                        "(its output is in the log above)"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(self._health_url)
                    if response.status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise VllmStartError(
                        f"vllm was not healthy within {self._startup_timeout_s:.0f} s "
                        "(raise VLLM_STARTUP_TIMEOUT_S if it is still loading)"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), HEALTH_POLL_S)

    @staticmethod
    async def _kill_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        await asyncio.sleep(0)
