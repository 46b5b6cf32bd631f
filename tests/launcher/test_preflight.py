"""The preflight (`python -m launcher --check`, `make doctor`): each host fault gives its one line
with what to do, and exit 1; a healthy host exits 0. The host is faked where it cannot be arranged
for real (a fake nvidia-smi on PATH, or a probe replaced in ``Host``); ports are really taken."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.preflight import Host, Report, memory_mib, run_checks, running_service
from tests.ports import free_port
from tests.processes import run_in_repo

L40S = "NVIDIA L40S, 580.65.06, 46068\n"


def nvidia_smi_script(answer: str) -> str:
    return f'#!/bin/sh\n[ "$1" = -L ] && {{ echo "GPU 0: x"; exit 0; }}\nprintf "{answer}"\n'


@pytest.fixture
def vllm(tmp_path: Path) -> Path:
    path = tmp_path / "env" / "bin" / "vllm"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def environ(tmp_path: Path, vllm: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "VOXTRAL_API_KEY": "k",
        "VLLM_DEVICE": "cuda",
        "VLLM_BIN": str(vllm),
        "VOXTRAL_MODEL_DIR": str(tmp_path / "models" / "voxtral"),
        "SERVER_BIND_HOST": "127.0.0.1",
        "SERVER_PORT": str(free_port()),
        "VLLM_PORT": str(free_port()),
    }


@pytest.fixture
def include(tmp_path: Path) -> Path:
    directory = tmp_path / "include"
    directory.mkdir()
    (directory / "Python.h").write_text("")
    return directory


def healthy(include: Path, answer: str = L40S) -> Host:
    return Host(
        nvidia_smi=lambda: answer,
        compat_libraries=lambda environ: False,
        which=lambda name: "/usr/bin/gcc" if name in ("cc", "gcc") else shutil.which(name),
        python_include=include,
        free_bytes=lambda path: 100 * 10**9,
    )


def only_problem(report: Report) -> str:
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def test_healthy_gpu_host_passes(environ: dict[str, str], include: Path) -> None:
    report = run_checks(environ, healthy(include))
    assert report.problems == []
    assert any("driver 580.65.06" in line for line in report.passed)


def test_driver_550_is_refused_with_both_ways_out(environ: dict[str, str], include: Path) -> None:
    problem = only_problem(run_checks(environ, healthy(include, "NVIDIA A100, 550.54.15, 81920")))
    assert "550.54.15" in problem
    assert "580" in problem
    assert "upgrade the driver" in problem
    assert "forward-compatibility" in problem


def test_driver_550_with_forward_compatibility_libraries_passes(
    environ: dict[str, str], include: Path
) -> None:
    host = dataclasses.replace(
        healthy(include, "NVIDIA A100, 550.54.15, 81920"), compat_libraries=lambda environ: True
    )
    report = run_checks(environ, host)
    assert report.problems == []
    assert any("forward-compatibility" in line for line in report.passed)


def test_too_little_gpu_memory(environ: dict[str, str], include: Path) -> None:
    problem = only_problem(run_checks(environ, healthy(include, "NVIDIA A10G-8, 580.1, 8192")))
    assert "8192 MiB" in problem
    assert "16 GB or more" in problem


def test_only_the_gpus_cuda_visible_devices_names_are_checked(
    environ: dict[str, str], include: Path
) -> None:
    two = "NVIDIA T4, 580.1, 15000\nNVIDIA L40S, 580.1, 46068\n"
    assert "GPU 0 (NVIDIA T4)" in only_problem(run_checks(environ, healthy(include, two)))
    environ["CUDA_VISIBLE_DEVICES"] = "1"
    assert run_checks(environ, healthy(include, two)).problems == []


def test_memory_with_its_unit_is_read() -> None:
    assert memory_mib("81920 MiB") == 81920
    assert memory_mib("15360") == 15360
    assert memory_mib("[N/A]") is None


def test_unknown_memory_is_a_warning_not_a_refusal(environ: dict[str, str], include: Path) -> None:
    report = run_checks(environ, healthy(include, "NVIDIA A100 MIG 3g.40gb, 580.1, [N/A]"))
    assert report.problems == []
    assert any("does not tell its memory" in line for line in report.warnings)


def test_no_gpu_answers(environ: dict[str, str], include: Path) -> None:
    host = dataclasses.replace(healthy(include), nvidia_smi=lambda: None)
    problem = only_problem(run_checks(environ, host))
    assert "install the NVIDIA driver" in problem
    assert "VLLM_DEVICE=cpu" in problem


def test_no_compiler(environ: dict[str, str], include: Path) -> None:
    host = dataclasses.replace(
        healthy(include),
        which=lambda name: None if name in ("cc", "gcc", "clang") else shutil.which(name),
    )
    problem = only_problem(run_checks(environ, host))
    assert "no C compiler" in problem
    assert "apt-get install gcc" in problem


def test_no_python_headers(environ: dict[str, str], tmp_path: Path, include: Path) -> None:
    host = dataclasses.replace(healthy(include), python_include=tmp_path / "nowhere")
    problem = only_problem(run_checks(environ, host))
    assert "Python headers are missing" in problem
    assert f"python{sys.version_info.major}.{sys.version_info.minor}-dev" in problem


def test_full_disk_when_the_model_is_still_to_download(
    environ: dict[str, str], include: Path
) -> None:
    host = dataclasses.replace(healthy(include), free_bytes=lambda path: 2 * 10**9)
    problem = only_problem(run_checks(environ, host))
    assert "only 2.0 GB free" in problem
    assert "about 9 GB" in problem
    assert "VOXTRAL_MODEL_DIR" in problem


def test_disk_is_not_checked_for_a_downloaded_model(
    environ: dict[str, str], include: Path, tmp_path: Path
) -> None:
    model = Path(environ["VOXTRAL_MODEL_DIR"])
    model.mkdir(parents=True)
    for name in ("params.json", "tekken.json", "consolidated.safetensors"):
        (model / name).write_text("x")
    host = dataclasses.replace(healthy(include), free_bytes=lambda path: 0)
    assert run_checks(environ, host).problems == []


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("variable", ["SERVER_PORT", "VLLM_PORT"])
def test_busy_port(environ: dict[str, str], include: Path, busy_port: int, variable: str) -> None:
    environ[variable] = str(busy_port)
    problem = only_problem(run_checks(environ, healthy(include)))
    assert f"port {busy_port} ({variable}) is in use" in problem
    assert f"set {variable}" in problem


def test_missing_vllm_says_how_to_install_the_gpu_extra(
    environ: dict[str, str], include: Path, tmp_path: Path
) -> None:
    environ["VLLM_BIN"] = str(tmp_path / "absent" / "vllm")
    problem = only_problem(run_checks(environ, healthy(include)))
    assert "--extra gpu" in problem


def test_bad_delay_is_one_problem(environ: dict[str, str], include: Path) -> None:
    environ["VOXTRAL_TRANSCRIPTION_DELAY_MS"] = "500"
    problem = only_problem(run_checks(environ, healthy(include)))
    assert problem.startswith("VOXTRAL_TRANSCRIPTION_DELAY_MS=500 is invalid")


def test_every_problem_is_reported_not_only_the_first(
    environ: dict[str, str], include: Path, busy_port: int
) -> None:
    environ["SERVER_PORT"] = str(busy_port)
    host = dataclasses.replace(
        healthy(include, "NVIDIA T4, 550.54.15, 15360"), free_bytes=lambda path: 0
    )
    assert len(run_checks(environ, host).problems) == 3


def check_cli(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_in_repo([sys.executable, "-m", "launcher", "--check"], env=environ)


def test_cli_refuses_driver_550_naming_580(environ: dict[str, str], tmp_path: Path) -> None:
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    smi = fakes / "nvidia-smi"
    smi.write_text(nvidia_smi_script("NVIDIA A100-SXM4-80GB, 550.54.15, 81920\\n"))
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    environ["PATH"] = f"{fakes}:/usr/bin:/bin"
    result = check_cli(environ)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert [line for line in errors if "550.54.15" in line and "580" in line], result.stderr


def test_cli_healthy_cpu_host_exits_0(environ: dict[str, str], vllm: Path) -> None:
    environ |= {
        "VLLM_DEVICE": "cpu",
        "VOXTRAL_MODEL_ID": "dummy",
        "VOXTRAL_VLLM_CPU_ENV": str(vllm.parent.parent),
    }
    del environ["VLLM_BIN"]
    result = check_cli(environ)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "all checks passed" in result.stdout


def test_the_real_model_on_cpu_is_refused_naming_the_fix(
    environ: dict[str, str], include: Path
) -> None:
    environ["VLLM_DEVICE"] = "cpu"
    problem = only_problem(run_checks(environ, healthy(include)))
    assert "mistralai/Voxtral-Mini-4B-Realtime-2602 on the CPU" in problem
    assert "9 GB" in problem
    assert "VOXTRAL_MODEL_ID=dummy" in problem
    assert "VOXTRAL_ALLOW_CPU_MODEL=1" in problem


def test_the_real_model_on_cpu_when_allowed_is_a_warning(
    environ: dict[str, str], include: Path
) -> None:
    environ |= {"VLLM_DEVICE": "cpu", "VOXTRAL_ALLOW_CPU_MODEL": "1"}
    report = run_checks(environ, healthy(include))
    assert report.problems == []
    assert any("on the CPU" in line for line in report.warnings)


def test_cli_on_a_cpu_host_with_the_real_model_exits_1_naming_the_fix(
    environ: dict[str, str], vllm: Path
) -> None:
    environ |= {"VLLM_DEVICE": "cpu", "VOXTRAL_VLLM_CPU_ENV": str(vllm.parent.parent)}
    del environ["VLLM_BIN"]
    result = check_cli(environ)
    assert result.returncode == 1
    assert "all checks passed" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "VOXTRAL_MODEL_ID=dummy" in errors[0]


@pytest.mark.parametrize("variable", ["SERVER_PORT", "VLLM_PORT"])
def test_a_port_held_by_this_running_service_is_ok(
    environ: dict[str, str], include: Path, busy_port: int, variable: str
) -> None:
    environ[variable] = str(busy_port)
    service = {variable: str(busy_port), "PID": "4242"}
    host = dataclasses.replace(healthy(include), running_service=lambda env: service)
    report = run_checks(environ, host)
    assert report.problems == []
    assert f"port {busy_port} ({variable}) is held by this service, running (pid 4242" in (
        "\n".join(report.passed)
    )
    # Another port of the same number in the state file of a service on other ports: in use.
    other = dataclasses.replace(
        healthy(include), running_service=lambda env: {variable: "1", "PID": "4242"}
    )
    assert "is in use" in only_problem(run_checks(environ, other))


def test_the_running_service_is_read_from_the_pid_and_state_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "launcher.state").write_text("SERVER_PORT=8123\nVLLM_PORT=8124\n")
    environ = {"VOXTRAL_RUN_DIR": str(run)}
    assert running_service(environ) is None  # no pid file
    # A live process whose command line runs `-m launcher` (as `make up` starts it).
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "launcher"]
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "launcher.pid").write_text(f"{sleeper.pid}\n")
        # Polled: a CI run once found no launcher there right after the start (5 s is a hang
        # guard, not a timing assertion).
        deadline = time.monotonic() + 5.0
        while (service := running_service(environ)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service == {"SERVER_PORT": "8123", "VLLM_PORT": "8124", "PID": str(sleeper.pid)}
        (run / "launcher.pid").write_text(f"{other.pid}\n")  # a recycled pid, not a launcher
        assert running_service(environ) is None
    finally:
        sleeper.kill()
        other.kill()
        sleeper.wait()
        other.wait()
    (run / "launcher.pid").write_text(f"{sleeper.pid}\n")
    assert running_service(environ) is None  # gone
