"""The supervisor against a real child process (a stand-in for vllm serve, not a mock)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from launcher.command import VllmCommand
from launcher.config import LAUNCHER_VARIABLES
from launcher.supervisor import Backoff, Supervisor, VllmStartError
from launcher.vllm_environ import VLLM_VARIABLES
from tests.ports import free_port

FAKE = Path(__file__).with_name("fake_serve.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_until(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll a condition about another process (no event to wait on), with a hang guard."""
    async with asyncio.timeout(limit_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


class Fake:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.child_pid_file = tmp_path / "children"

    def supervisor(self, *extra: str, timeout: float = 20.0, grace: float = 5.0) -> Supervisor:
        argv = (
            sys.executable,
            str(FAKE),
            "--port",
            str(self.port),
            "--child-pid-file",
            str(self.child_pid_file),
            *extra,
        )
        return Supervisor(
            VllmCommand(argv, {"FAKE_EXTRA": "yes"}),
            f"http://127.0.0.1:{self.port}/health",
            timeout,
            stop_grace_s=grace,
            backoff=Backoff(initial_s=0.1, maximum_s=0.5),
            environ={**os.environ, "VOXTRAL_API_KEY": "secret"},
        )

    def children(self) -> list[int]:
        if not self.child_pid_file.exists():
            return []
        return [int(line) for line in self.child_pid_file.read_text().split()]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[Fake]:
    fake = Fake(tmp_path)
    yield fake
    for pid in fake.children():  # never leave a sleeper behind, whatever the test did
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_start_waits_for_health_and_forwards_output(fake: Fake) -> None:
    supervisor = fake.supervisor()
    with capture_logs() as logs:
        await supervisor.start()
        await wait_until(lambda: any(e["event"] == "fake vllm ready" for e in logs))
        await supervisor.stop()
    lines = [e["event"] for e in logs if e.get("pid") == supervisor.pid and "log_level" in e]
    assert "fake vllm starting" in lines
    assert "extra env: yes" in lines
    # Secrets stay out of vLLM's environment, hence out of its output.
    assert "secret visible: False" in lines


async def test_stop_ends_the_whole_process_group(fake: Fake) -> None:
    supervisor = fake.supervisor()
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    (child,) = fake.children()
    assert alive(child)

    await supervisor.stop()

    assert not alive(pid)
    await wait_until(lambda: not alive(child), limit_s=5)


async def test_stop_kills_a_process_that_ignores_sigterm(fake: Fake) -> None:
    supervisor = fake.supervisor("--ignore-term", grace=0.5)
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    with capture_logs() as logs:
        await supervisor.stop()
    assert not alive(pid)
    assert any("killing" in e["event"] for e in logs)


async def test_dead_vllm_is_restarted(fake: Fake) -> None:
    supervisor = fake.supervisor()
    await supervisor.start()
    first = supervisor.pid
    assert first is not None
    supervising = asyncio.create_task(supervisor.supervise())
    try:
        os.killpg(first, signal.SIGKILL)
        await wait_until(lambda: supervisor.restarts == 1 and supervisor.pid != first)
        await wait_until(lambda: len(fake.children()) == 2)
        # The restarted one becomes healthy again: supervise() logs ready only after /health.
        second = supervisor.pid
        assert second is not None
        assert alive(second)
        assert not alive(fake.children()[0])  # the first group's straggler was killed
    finally:
        supervising.cancel()
        await asyncio.gather(supervising, return_exceptions=True)
        await supervisor.stop()


async def test_exit_during_startup_fails_fast(fake: Fake) -> None:
    supervisor = fake.supervisor("--exit-code", "3", timeout=60)
    with pytest.raises(VllmStartError, match="exited with code 3"):
        async with asyncio.timeout(20):
            await supervisor.start()


async def test_startup_deadline(fake: Fake) -> None:
    supervisor = fake.supervisor("--no-health", timeout=1.5)
    with pytest.raises(VllmStartError, match="not healthy within"):
        await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    assert not alive(pid)
    await wait_until(lambda: all(not alive(c) for c in fake.children()), limit_s=5)


async def test_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    supervisor = Supervisor(
        VllmCommand((str(tmp_path / "nope"), "serve")), "http://127.0.0.1:1/health", 5
    )
    with pytest.raises(VllmStartError, match="cannot run"):
        await supervisor.start()


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1, maximum_s=5)
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_delay() == 1


async def test_vllm_runs_with_a_clean_environment(tmp_path: Path) -> None:
    """The spawned process's own environment: no launcher setting, no secret, no VLLM_ name vLLM
    does not know; vLLM's own names and the command's settings kept."""
    dump = tmp_path / "environ.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    launcher_settings = {name: "1" for name in LAUNCHER_VARIABLES}
    supervisor = Supervisor(
        VllmCommand((sys.executable, "-c", script), {"VLLM_DISABLE_COMPILE_CACHE": "1"}),
        "http://127.0.0.1:1/health",
        5,
        environ={
            **os.environ,
            **launcher_settings,
            "VOXTRAL_API_KEY": "k",
            "HF_TOKEN": "t",
            "VLLM_NOT_A_VLLM_NAME": "x",
            "SERVER_PORT": "8000",
            "VLLM_LOGGING_LEVEL": "DEBUG",
            "CUDA_VISIBLE_DEVICES": "3",
        },
    )
    with pytest.raises(VllmStartError, match="exited with code 0"):
        await supervisor.start()
    env = json.loads(dump.read_text())
    assert not LAUNCHER_VARIABLES & env.keys()
    assert "VLLM_PORT" not in env
    for absent in ("VOXTRAL_API_KEY", "HF_TOKEN", "VLLM_NOT_A_VLLM_NAME", "SERVER_PORT"):
        assert absent not in env
    assert {name for name in env if name.startswith("VLLM_")} <= VLLM_VARIABLES
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["VLLM_DISABLE_COMPILE_CACHE"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["PATH"] == os.environ["PATH"]
