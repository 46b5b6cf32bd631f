"""The one rule for the project environment's extras (scripts/lib.sh): the gpu extra stays on a
host that serves with it, whichever target syncs. Checked through the exact uv command each kind
of host would run (SYNC_DRY_RUN=1 prints it), without installing anything."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT
from tests.processes import run_in_repo

GPU_LISTED = '#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: NVIDIA H100 (UUID: GPU-0)"\n'
NO_GPU = "#!/bin/sh\nexit 9\n"
UV = '#!/bin/sh\n[ "$1" = --version ] && echo "uv 0.13.8"\n'
WITHOUT_GPU = "sync --frozen --extra clients --quiet"
WITH_GPU = "sync --frozen --extra clients --extra gpu --quiet"
# The targets that reach the sync through `env` (the others run a script that calls it).
ENV_TARGETS = ("env", "doctor", "warmup", "convo", "idle", "remote", "bench", "bench-proxy")
SYNCING_SCRIPTS = ("test.sh", "lint.sh", "main.sh")


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def sync_command(tmp_path: Path, *, gpu_listed: bool, vllm_installed: bool, device: str) -> str:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "lib.sh", project / "scripts" / "lib.sh")
    if vllm_installed:
        (project / ".venv" / "bin").mkdir(parents=True)
        executable(project / ".venv" / "bin" / "vllm", "#!/bin/sh\n")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    executable(fakes / "nvidia-smi", GPU_LISTED if gpu_listed else NO_GPU)
    executable(fakes / "uv", UV)
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "HOME": str(tmp_path), "SYNC_DRY_RUN": "1"}
    if device:
        env["VLLM_DEVICE"] = device
    result = run_in_repo(
        ["bash", "-c", ". scripts/lib.sh && sync_env"], env=env, timeout=30, cwd=project, check=True
    )
    uv, _, arguments = result.stdout.strip().partition(" ")
    assert uv == str(fakes / "uv")
    return arguments


@pytest.mark.parametrize(
    ("gpu_listed", "vllm_installed", "device", "expected"),
    [
        pytest.param(False, False, "", WITHOUT_GPU, id="cpu-host"),
        pytest.param(False, False, "cpu", WITHOUT_GPU, id="cpu-host-device-cpu"),
        pytest.param(True, False, "", WITH_GPU, id="gpu-visible"),
        pytest.param(True, False, "auto", WITH_GPU, id="gpu-visible-device-auto"),
        pytest.param(False, False, "cuda", WITH_GPU, id="device-cuda-before-the-driver"),
        # A CPU run on a GPU host (the lifecycle tests do this) must not uninstall vLLM.
        pytest.param(True, True, "cpu", WITH_GPU, id="gpu-extra-installed-device-cpu"),
        pytest.param(False, True, "", WITH_GPU, id="gpu-extra-installed-gpu-gone"),
        # Choosing the CPU on a GPU host before the gpu extra is there downloads no 8 GB.
        pytest.param(True, False, "cpu", WITHOUT_GPU, id="gpu-visible-device-cpu"),
    ],
)
def test_sync_command_per_host_kind(
    tmp_path: Path, gpu_listed: bool, vllm_installed: bool, device: str, expected: str
) -> None:
    command = sync_command(
        tmp_path, gpu_listed=gpu_listed, vllm_installed=vllm_installed, device=device
    )
    assert command == expected


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_make_targets_sync_through_the_rule(target: str) -> None:
    recipe = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "sync_env" in recipe


@pytest.mark.parametrize("script", SYNCING_SCRIPTS)
def test_scripts_sync_through_the_rule(script: str) -> None:
    assert re.search(r"^sync_env$", (ROOT / "scripts" / script).read_text(), re.MULTILINE)


def test_no_other_place_runs_uv_sync() -> None:
    for path in [ROOT / "Makefile", *sorted((ROOT / "scripts").glob("*.sh"))]:
        if path.name != "lib.sh":
            assert not re.search(r"\bsync --frozen\b", path.read_text()), path
