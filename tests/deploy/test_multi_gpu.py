"""One launcher per GPU: the per-instance settings written by scripts/multi_gpu.sh keep ports
apart, pin one GPU each, agree with the HAProxy example, and drive the launcher's vLLM command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, ensure_tool
from tests.processes import run_in_repo

SCRIPT = ROOT / "scripts" / "multi_gpu.sh"
HAPROXY_CFG = DEPLOY / "haproxy" / "voxtral-stt.cfg"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def parse_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def render(tmp_path: Path, count: int) -> list[dict[str, str]]:
    result = run("render", str(tmp_path), str(count))
    assert result.returncode == 0, result.stderr
    return [parse_env(tmp_path / f"gpu{index}.env") for index in range(count)]


def test_instances_get_their_own_gpu_and_ports(tmp_path: Path) -> None:
    instances = render(tmp_path, 8)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in instances] == [str(i) for i in range(8)]
    ports = [int(env[name]) for env in instances for name in ("SERVER_PORT", "VLLM_PORT")]
    assert len(set(ports)) == len(ports)
    assert 8000 not in ports  # the balancer's port
    assert all(env["SERVER_BIND_HOST"] == "127.0.0.1" for env in instances)
    # The balancer in front of them is the one peer trusted to name the client.
    assert all(env["TRUSTED_PROXIES"] == "127.0.0.1" for env in instances)


def test_overlapping_port_ranges_are_refused(tmp_path: Path) -> None:
    result = run("render", str(tmp_path), "4", env={"MULTI_GPU_VLLM_BASE_PORT": "8012"})
    assert result.returncode != 0
    assert "overlap" in result.stderr
    assert not list(tmp_path.iterdir())


def test_haproxy_example_lists_the_rendered_instances() -> None:
    servers = re.findall(r"^\s*server \S+ 127\.0\.0\.1:(\d+)", HAPROXY_CFG.read_text(), re.M)
    result = run("upstream", str(len(servers)))
    assert result.returncode == 0, result.stderr
    assert re.findall(r"127\.0\.0\.1:(\d+)", result.stdout) == servers
    text = HAPROXY_CFG.read_text()
    assert "balance leastconn" in text
    assert "/readyz" in text
    assert "timeout tunnel" in text


def test_haproxy_accepts_the_example() -> None:
    haproxy = ensure_tool("haproxy", "haproxy")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("index", [0, 3])
def test_launcher_command_follows_the_instance(tmp_path: Path, index: int) -> None:
    """`python -m launcher --print-command` with the shared settings plus instance N's file."""
    (instance,) = [env for i, env in enumerate(render(tmp_path, 4)) if i == index]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VLLM_", "VOXTRAL_", "SERVER_", "CUDA_"))
    }
    env |= {"VOXTRAL_API_KEY": "k", "VLLM_MAX_NUM_SEQS": "16"} | instance
    result = run_in_repo([sys.executable, "-m", "launcher", "--print-command"], env=env)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[argv.index("--port") + 1] == instance["VLLM_PORT"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    # VLLM_DEVICE=cuda from the instance file: the GPU command, not the CPU one.
    assert "--compilation-config" in argv
    assert "--distributed-executor-backend" not in argv
    assert instance["CUDA_VISIBLE_DEVICES"] == str(index)
