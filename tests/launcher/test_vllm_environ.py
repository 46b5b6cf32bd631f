"""vLLM's environment: what passes from the launcher's, and the shipped list of vLLM's own names
against the CPU build's vllm.envs (the same 0.32.0 source as the GPU build)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from launcher.command import build_command
from launcher.config import LAUNCHER_VARIABLES, load_config
from launcher.vllm_environ import VLLM_VARIABLES, passes, vllm_environ


def test_launcher_settings_and_secrets_never_pass() -> None:
    for name in LAUNCHER_VARIABLES | {"VOXTRAL_API_KEY", "HF_TOKEN", "VLLM_API_KEY"}:
        assert not passes(name), name


def test_vllm_port_is_one_of_vllms_names_and_still_held_back() -> None:
    # The reason for LAUNCHER_VARIABLES: vLLM would read it as the base of its internal ports.
    assert "VLLM_PORT" in VLLM_VARIABLES
    assert not passes("VLLM_PORT")


@pytest.mark.parametrize("name", ["VLLM_DEVICE", "VLLM_BIN", "VLLM_SOMETHING_NEW"])
def test_vllm_names_vllm_does_not_read_are_held_back(name: str) -> None:
    assert name not in VLLM_VARIABLES
    assert not passes(name)


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_HOME",
        "LD_LIBRARY_PATH",
        "NCCL_DEBUG",
        "HF_HOME",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "OMP_NUM_THREADS",
        "XDG_CACHE_HOME",
        "VLLM_LOGGING_LEVEL",
        "VLLM_CPU_KVCACHE_SPACE",
    ],
)
def test_what_vllm_and_its_process_read_passes(name: str) -> None:
    assert passes(name)


@pytest.mark.parametrize(
    "name", ["SERVER_PORT", "WS_IDLE_TIMEOUT_S", "MAX_CONCURRENT_CONNECTIONS", "LOG_LEVEL"]
)
def test_the_proxys_settings_stay_behind(name: str) -> None:
    assert not passes(name)


def test_the_commands_own_settings_are_vllm_names_and_win() -> None:
    for gpu in (False, True):
        command = build_command(load_config({"HOME": "/h"}, detect_gpu=lambda gpu=gpu: gpu))
        assert {name for name in command.env if name.startswith("VLLM_")} <= VLLM_VARIABLES
        env = vllm_environ({"HF_HUB_OFFLINE": "0", "VLLM_PORT": "8100"}, command.env)
        assert env["HF_HUB_OFFLINE"] == "1"
        assert "VLLM_PORT" not in env


def test_the_shipped_list_is_vllms_own(cpu_vllm_env: Path) -> None:
    """The names of vllm.envs.environment_variables in the CPU build of vLLM 0.32.0."""
    script = "import json, vllm.envs as e; print(json.dumps(sorted(e.environment_variables)))"
    result = subprocess.run(
        [str(cpu_vllm_env / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    names = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(names) == VLLM_VARIABLES
