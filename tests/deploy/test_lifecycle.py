"""`make up`, `make status`, `make down` for real: scripts/main.sh starts the launcher detached
(with a stand-in for the vllm executable, so no model is needed), waits until ready, refuses a
second copy; status.sh reports it; stop.sh drains and leaves no process behind. The pid file, log
and ports live in a temporary directory, so a developer's own `make up` is never touched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT
from tests.ports import free_port
from tests.processes import run_in_repo

SCRIPTS = ROOT / "scripts"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


@pytest.fixture
def project(tmp_path: Path) -> Iterator[dict[str, str]]:
    vllm = tmp_path / "vllm"
    vllm.write_text(
        f'#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m tests.deploy.fake_vllm_cli "$@"\n'
    )
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VLLM_", "VOXTRAL_", "SERVER_", "WS_", "MAX_CONCURRENT"))
    }
    env |= {
        "VOXTRAL_API_KEY": "lifecycle-key",
        "VOXTRAL_MODEL_ID": "dummy",
        "VOXTRAL_MODEL_DIR": str(tmp_path / "model"),
        "VOXTRAL_ENV_FILE": str(tmp_path / "absent.env"),
        "VOXTRAL_RUN_DIR": str(tmp_path / "run"),
        "VOXTRAL_LOG_DIR": str(tmp_path / "logs"),
        "VLLM_DEVICE": "cpu",
        "VLLM_BIN": str(vllm),
        "SERVER_BIND_HOST": "127.0.0.1",
        "SERVER_PORT": str(free_port()),
        "VLLM_PORT": str(free_port()),
        "WS_DRAIN_TIMEOUT_S": "5",
        "TAIL_LOGS": "0",
        "UP_TIMEOUT_S": "120",
    }
    yield env
    # Never leave a launcher behind, whatever the test did.
    pid_file = tmp_path / "run" / "launcher.pid"
    if pid_file.exists():
        subprocess.run([str(SCRIPTS / "stop.sh")], env=env, timeout=120, check=False)


def script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_in_repo([str(SCRIPTS / name), *args], env=env, timeout=180)


def test_up_status_down(project: dict[str, str]) -> None:
    up = script("main.sh", project)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "/readyz answers 200" in up.stderr
    pid = int(Path(project["VOXTRAL_RUN_DIR"], "launcher.pid").read_text())
    assert alive(pid)
    tree = descendants(pid)
    assert tree, "the launcher runs vLLM (here, its stand-in) as a child"
    assert os.getpgid(pid) == pid, "the launcher leads its own process group"

    status = script("status.sh", project)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"running, pid {pid}" in status.stdout
    assert "readyz       200 ready=true" in status.stdout
    assert "0 open / " in status.stdout
    assert "vllm         ready" in status.stdout

    again = script("main.sh", project)
    assert again.returncode != 0
    assert f"already running (pid {pid})" in again.stderr

    down = script("stop.sh", project)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path(project["VOXTRAL_RUN_DIR"], "launcher.pid").exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in {pid, *tree}):
        time.sleep(0.1)
    assert [p for p in {pid, *tree} if alive(p)] == []

    stopped = script("status.sh", project)
    assert stopped.returncode == 1
    assert "not running" in stopped.stdout
    log = Path(project["VOXTRAL_LOG_DIR"], "server.log").read_text()
    assert "lifecycle-key" not in log
    assert '"phase": "ready"' in log


def test_doctor_passes_beside_the_running_service_and_restart_keeps_its_model(
    project: dict[str, str],
) -> None:
    project["VOXTRAL_TRANSCRIPTION_DELAY_MS"] = "1280"  # accepted, with a warning
    up = script("main.sh", project)
    assert up.returncode == 0, up.stdout + up.stderr
    # Start-up warnings reach the console, not only the JSON log: a delay the model card does
    # not cover, and (the stand-in vLLM has no /metrics) a capacity that could not be read.
    warnings = [line for line in up.stderr.splitlines() if "] warning: " in line]
    assert any("VOXTRAL_TRANSCRIPTION_DELAY_MS=1280" in line for line in warnings), up.stderr
    assert any("stream capacity unknown" in line for line in warnings), up.stderr
    status = script("status.sh", project)
    assert "warning      VOXTRAL_TRANSCRIPTION_DELAY_MS=1280" in status.stdout, status.stdout
    run_dir = Path(project["VOXTRAL_RUN_DIR"])
    assert "VOXTRAL_MODEL_ID=dummy\n" in (run_dir / "launcher.state").read_text()

    doctor = run_in_repo([sys.executable, "-m", "launcher", "--check"], env=project, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    pid = (run_dir / "launcher.pid").read_text().strip()
    for name in ("SERVER_PORT", "VLLM_PORT"):
        assert f"({name}) is held by this service, running (pid {pid}" in doctor.stdout

    # `make restart` without VOXTRAL_MODEL_ID: the dummy again, not a 9 GB download.
    del project["VOXTRAL_MODEL_ID"]
    restart = script("main.sh", project, "--restart")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "restarting with the model the service ran: VOXTRAL_MODEL_ID=dummy" in restart.stderr
    assert "VOXTRAL_MODEL_ID=dummy\n" in (run_dir / "launcher.state").read_text()
    assert (run_dir / "launcher.pid").read_text().strip() != pid


def test_up_without_a_key_says_so(project: dict[str, str]) -> None:
    project["VOXTRAL_API_KEY"] = ""
    result = script("main.sh", project)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: VOXTRAL_API_KEY is not set")
    assert not Path(project["VOXTRAL_RUN_DIR"]).exists()


def test_up_reads_the_env_file(project: dict[str, str], tmp_path: Path) -> None:
    """The key comes from the dotenv file when the environment lacks it; a bad value there is
    reported before anything starts."""
    env_file = Path(project["VOXTRAL_ENV_FILE"])
    env_file.write_text("# settings\nVOXTRAL_API_KEY=from-file\nexport VLLM_PORT='not-a-port'\n")
    del project["VOXTRAL_API_KEY"]
    del project["VLLM_PORT"]
    result = script("main.sh", project)
    assert result.returncode == 2
    assert "VLLM_PORT='not-a-port' is invalid" in result.stderr
    assert not Path(project["VOXTRAL_RUN_DIR"], "launcher.pid").exists()


def test_nuke_needs_confirmation_and_removes_only_the_project_state(tmp_path: Path) -> None:
    """Run on a copy of the scripts, so the real checkout is never at risk."""
    clone = tmp_path / "clone"
    shutil.copytree(SCRIPTS, clone / "scripts")
    for name in (".venv", "models", "logs", "run", "proxy"):
        (clone / name).mkdir()
        (clone / name / "file").write_text("x")
    cache = tmp_path / "cache" / "yap-voxtral-stt"
    cache.mkdir(parents=True)
    (tmp_path / "cache" / "other-tool").mkdir()
    env = {**os.environ, "YAP_CACHE_DIR": str(cache), "VOXTRAL_ENV_FILE": "absent.env"}
    for name in ("VOXTRAL_RUN_DIR", "VOXTRAL_LOG_DIR"):
        env.pop(name, None)

    def nuke(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(clone / "scripts" / "stop.sh"), "--nuke"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = nuke()
    assert refused.returncode != 0
    assert "NUKE=1" in refused.stderr
    assert (clone / ".venv").exists()
    assert cache.exists()

    done = nuke(NUKE="1")
    assert done.returncode == 0, done.stderr
    left = sorted(path.name for path in clone.iterdir())
    assert left == ["proxy", "scripts"]
    assert not cache.exists()
    assert (tmp_path / "cache" / "other-tool").exists()


def test_status_shows_the_latest_stream_capacity_from_the_log(tmp_path: Path) -> None:
    """The kv-cache row of `make status` (and `make up`'s last line) come from the launcher's own
    log line; the latest one wins (vLLM restarted with other settings)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [
        '{"streams": 17, "kv_cache_tokens": 2236962, "max_model_len": 131072, '
        '"event": "stream capacity", "level": "info"}',
        '{"event": "phase", "phase": "ready"}',
        '{"streams": 25, "kv_cache_tokens": 52428, "max_model_len": 2048, '
        '"event": "stream capacity", "level": "info"}',
    ]
    (logs / "server.log").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        ["bash", "-c", ". scripts/lib.sh && . scripts/ops.sh && last_capacity"],
        cwd=ROOT,
        env={**os.environ, "VOXTRAL_LOG_DIR": str(logs)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == "25 streams of 2048 tokens fit (KV cache 52428 tokens)\n"
