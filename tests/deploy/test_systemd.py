"""The systemd units pass `systemd-analyze verify` and keep their stop timeout above the drain."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, ensure_tool

UNITS = DEPLOY / "systemd"
PREFIX = "/opt/yap-voxtral-stt"
ENV_DIR = "/etc/voxtral-stt"
# launcher/supervisor.py gives vLLM 15 s after SIGTERM, then waits up to 5 s for its log.
VLLM_STOP_S = 20


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return ensure_tool("systemd-analyze", "systemd")


def render(unit: Path, tmp_path: Path) -> Path:
    """The unit with the install prefix pointed at this checkout (verify needs ExecStart to exist)
    and the environment files at files that exist."""
    env_dir = tmp_path / "etc"
    env_dir.mkdir(exist_ok=True)
    (env_dir / "voxtral-stt.env").write_text("VOXTRAL_API_KEY=k\n")
    for index in range(2):
        (env_dir / f"gpu{index}.env").write_text(f"CUDA_VISIBLE_DEVICES={index}\n")
    text = unit.read_text().replace(PREFIX, str(ROOT)).replace(ENV_DIR, str(env_dir))
    rendered = tmp_path / unit.name
    rendered.write_text(text)
    return rendered


def verify(systemd_analyze: str, *units: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze, "verify", "--man=no", *units],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def settings(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_python_exists_for_the_rendered_unit() -> None:
    assert (ROOT / ".venv" / "bin" / "python").exists(), "make env first"


@pytest.mark.parametrize("name", ["voxtral-stt.service", "voxtral-stt.target"])
def test_unit_verifies_cleanly(systemd_analyze: str, tmp_path: Path, name: str) -> None:
    rendered = render(UNITS / name, tmp_path)
    result = verify(systemd_analyze, f"./{rendered.name}", cwd=tmp_path)
    # verify exits 0 on unknown keys too, so any message counts as a failure.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_template_instances_verify_cleanly(systemd_analyze: str, tmp_path: Path) -> None:
    render(UNITS / "voxtral-stt.target", tmp_path)
    template = render(UNITS / "voxtral-stt@.service", tmp_path)
    result = verify(
        systemd_analyze,
        f"./{template.name}:voxtral-stt@0.service",
        f"./{template.name}:voxtral-stt@1.service",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(systemd_analyze: str, tmp_path: Path) -> None:
    """The check above can fail: a unit whose binary is missing is rejected."""
    broken = tmp_path / "broken.service"
    broken.write_text(
        (UNITS / "voxtral-stt.service")
        .read_text()
        .replace(PREFIX, str(tmp_path / "nowhere"))
        .replace(ENV_DIR, str(tmp_path))
    )
    (tmp_path / "voxtral-stt.env").write_text("")
    result = verify(systemd_analyze, "./broken.service", cwd=tmp_path)
    assert result.returncode != 0
    assert "not executable" in result.stderr


@pytest.mark.parametrize("name", ["voxtral-stt.service", "voxtral-stt@.service"])
def test_unit_runs_the_launcher_and_outlasts_the_drain(name: str) -> None:
    unit = settings(UNITS / name)
    assert unit["ExecStart"] == [f"{PREFIX}/.venv/bin/python -m launcher"]
    assert unit["WorkingDirectory"] == [PREFIX]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillMode"] in (["mixed"], ["control-group"])
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    # The GPU stays reachable: no private /dev, and the NVIDIA devices allowed.
    assert "PrivateDevices" not in unit
    assert any("nvidia" in device for device in unit["DeviceAllow"])
    drain_default = 30  # WS_DRAIN_TIMEOUT_S
    assert seconds(unit["TimeoutStopSec"][0]) > drain_default + VLLM_STOP_S


def test_template_takes_its_gpu_settings_from_the_instance_file() -> None:
    unit = settings(UNITS / "voxtral-stt@.service")
    assert f"{ENV_DIR}/gpu%i.env" in unit["EnvironmentFile"]
    # Shared settings first, so the instance's ports and GPU win.
    assert unit["EnvironmentFile"].index(f"{ENV_DIR}/voxtral-stt.env") < unit[
        "EnvironmentFile"
    ].index(f"{ENV_DIR}/gpu%i.env")
