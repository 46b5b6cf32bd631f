"""`make up` on a simulated NVIDIA host, up to the moment `vllm serve` is executed.

The host: a fake `nvidia-smi` on PATH (one L40S, driver 580), no VLLM_BIN, no .venv/bin on PATH, and
a copy of the project whose .venv is the real one (its interpreter and packages, by links) with a
stand-in `vllm` beside the interpreter that records how it was run and exits. A fake `uv` records
the sync command instead of installing the 8 GB gpu extra. Everything else is real: scripts/
main.sh, the preflight, the launcher's model step, its command and its supervisor."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from launcher.config import LAUNCHER_VARIABLES
from tests.deploy.conftest import ROOT
from tests.ports import free_port

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA L40S (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  --query-gpu=*) echo "NVIDIA L40S, 580.65.06, 46068" ;;
  *) exit 1 ;;
esac
"""
UV = """#!/bin/sh
if [ "$1" = --version ]; then echo "uv 0.13.8"; exit 0; fi
echo "$*" >> "{record}"
"""
# Stands in for vllm: writes its argv and environment, then exits like a vLLM that failed.
VLLM = """#!{python}
import json, os, sys
with open({record!r}, "w") as handle:
    json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, handle)
sys.exit(3)
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def project_copy(tmp_path: Path) -> Path:
    """The scripts and packages of this clone, with a .venv of links to the real one's
    interpreter and packages: vllm beside that interpreter is then the only vllm there is."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "scripts", project / "scripts")
    for name in ("launcher", "proxy", "clients", "pyproject.toml", "uv.lock"):
        (project / name).symlink_to(ROOT / name)
    venv = project / ".venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(ROOT / ".venv" / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(ROOT / ".venv" / "lib")
    (venv / "bin" / "python").symlink_to(Path(sys.executable).resolve())
    return project


def complete_model(model_dir: Path) -> None:
    """A downloaded model as far as the launcher looks: it is reused, and vLLM never reads it."""
    model_dir.mkdir()
    (model_dir / "params.json").write_bytes(orjson.dumps({"dim": 1}))
    (model_dir / "tekken.json").write_bytes(orjson.dumps({"audio": {}}))
    (model_dir / "consolidated.safetensors").write_bytes(b"\0" * 16)


@pytest.fixture(scope="module")
def gpu_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path, Path]:
    """One `make up` on the simulated host, shared by the tests that read what it did."""
    tmp_path = tmp_path_factory.mktemp("gpu-host")
    project = project_copy(tmp_path)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    uv_record = tmp_path / "uv.txt"
    vllm_record = tmp_path / "vllm.json"
    executable(fakes / "nvidia-smi", NVIDIA_SMI)
    executable(fakes / "uv", UV.format(record=uv_record))
    vllm = project / ".venv" / "bin" / "vllm"
    executable(vllm, VLLM.format(python=sys.executable, record=str(vllm_record)))
    complete_model(tmp_path / "model")
    env = {
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PATH": f"{fakes}:/usr/local/bin:/usr/bin:/bin",
        "VOXTRAL_API_KEY": "gpu-host-key",
        "VOXTRAL_MODEL_DIR": str(tmp_path / "model"),
        "VOXTRAL_ENV_FILE": str(tmp_path / "absent.env"),
        "VOXTRAL_RUN_DIR": str(tmp_path / "run"),
        "VOXTRAL_LOG_DIR": str(tmp_path / "logs"),
        "SERVER_BIND_HOST": "127.0.0.1",
        "SERVER_PORT": str(free_port()),
        "VLLM_PORT": str(free_port()),
        "VLLM_STARTUP_TIMEOUT_S": "60",
        "UP_TIMEOUT_S": "120",
        "TAIL_LOGS": "0",
    }
    result = subprocess.run(
        ["bash", str(project / "scripts" / "main.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, uv_record, vllm_record, vllm


def test_make_up_runs_the_envs_own_vllm_with_the_gpu_command(
    gpu_up: tuple[subprocess.CompletedProcess[str], Path, Path, Path],
) -> None:
    result, _, vllm_record, vllm = gpu_up
    assert vllm_record.exists(), f"vllm was never executed; main.sh said:\n{result.stderr[-3000:]}"
    ran: dict[str, Any] = json.loads(vllm_record.read_text())
    argv = ran["argv"]
    assert argv[0] == str(vllm)
    assert argv[1] == "serve"
    assert argv[argv.index("--attention-backend") + 1] == "FLASH_ATTN"
    assert json.loads(argv[argv.index("--compilation-config") + 1]) == {
        "cudagraph_mode": "PIECEWISE"
    }
    assert "--enforce-eager" not in argv
    # The stand-in failed like a broken vLLM would, and `make up` said so.
    assert result.returncode != 0
    assert "make up failed" in result.stderr


def test_vllms_environment_holds_no_launcher_setting(
    gpu_up: tuple[subprocess.CompletedProcess[str], Path, Path, Path],
) -> None:
    _, _, vllm_record, _ = gpu_up
    env: dict[str, str] = json.loads(vllm_record.read_text())["env"]
    assert not LAUNCHER_VARIABLES & env.keys()
    assert "VOXTRAL_API_KEY" not in env
    assert env["VLLM_DISABLE_COMPILE_CACHE"] == "1"


def test_the_env_sync_keeps_the_gpu_extra(
    gpu_up: tuple[subprocess.CompletedProcess[str], Path, Path, Path],
) -> None:
    _, uv_record, _, _ = gpu_up
    assert uv_record.read_text().splitlines() == [
        "sync --frozen --extra clients --extra gpu --quiet"
    ]
