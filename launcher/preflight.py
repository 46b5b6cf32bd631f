"""``python -m launcher --check`` (``make doctor``): what the host lacks, found before anything is
downloaded or started, each problem in one line that says what to do.

The probes of the host (nvidia-smi, free disk, the compiler, the Python headers, the CUDA
forward-compatibility libraries, ports) are fields of ``Host``, so tests can stand in for them.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config import (
    ConfigError,
    LauncherConfig,
    load_config,
    proxy_environ,
    vllm_install_hint,
)
from launcher.model import is_complete
from proxy.config import ProxyConfig
from proxy.config import load_config as load_proxy_config

# torch 2.13.0+cu130 (the gpu extra's lock) needs CUDA 13.0, which needs driver 580 or newer unless
# CUDA's forward-compatibility libraries stand in for the driver's.
MIN_DRIVER_MAJOR = 580
# Voxtral Mini 4B needs a 16 GB GPU; such cards report a little less than 16 GiB to nvidia-smi.
MIN_GPU_MEMORY_MIB = 15 * 1024
# consolidated.safetensors, params.json and tekken.json, with some room.
MODEL_DOWNLOAD_BYTES = 9 * 10**9
NVIDIA_SMI_QUERY = (
    "nvidia-smi",
    "--query-gpu=name,driver_version,memory.total",
    "--format=csv,noheader,nounits",
)
COMPAT_LIBRARY_GLOBS = ("/usr/local/cuda*/compat",)
COMPILERS = ("cc", "gcc", "clang")


def _nvidia_smi() -> str | None:
    try:
        result = subprocess.run(
            NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _compat_libraries(environ: Mapping[str, str]) -> bool:
    """CUDA's forward-compatibility package: a libcuda in a ``compat`` directory on the loader path
    or where the package installs it."""
    candidates = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if "compat" in d]
    for pattern in COMPAT_LIBRARY_GLOBS:
        candidates += glob.glob(pattern)
    return any(glob.glob(os.path.join(d, "libcuda.so*")) for d in candidates)


def running_service(environ: Mapping[str, str]) -> dict[str, str] | None:
    """What the launcher `make up` started was started with (run/launcher.state), while the pid
    in run/launcher.pid is alive and is that launcher; None otherwise. The same rule as
    scripts/ops.sh's ``running_pid``."""
    run_dir = Path(environ.get("VOXTRAL_RUN_DIR", "").strip() or "run")
    try:
        pid = int((run_dir / "launcher.pid").read_text().strip())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = (run_dir / "launcher.state").read_text()
    except (OSError, ValueError):
        return None
    if not any(a == b"-m" and b == b"launcher" for a, b in itertools.pairwise(args)):
        return None
    values = dict(line.split("=", 1) for line in state.splitlines() if "=" in line)
    return {**values, "PID": str(pid)}


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_bytes(path: Path) -> int:
    """Free bytes on the disk that ``path`` (or its nearest existing parent) lives on."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True, slots=True)
class Host:
    nvidia_smi: Callable[[], str | None] = _nvidia_smi
    compat_libraries: Callable[[Mapping[str, str]], bool] = _compat_libraries
    which: Callable[[str], str | None] = shutil.which
    python_include: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["include"]))
    free_bytes: Callable[[Path], int] = _free_bytes
    port_free: Callable[[str, int], bool] = _port_free
    running_service: Callable[[Mapping[str, str]], dict[str, str] | None] = running_service


@dataclass(slots=True)
class Report:
    passed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, passed: str, problem: str) -> None:
        (self.passed if ok else self.problems).append(passed if ok else problem)


def _gpu(report: Report, config: LauncherConfig, host: Host, environ: Mapping[str, str]) -> None:
    output = host.nvidia_smi()
    rows = [[part.strip() for part in line.split(",")] for line in (output or "").splitlines()]
    rows = [row for row in rows if len(row) == 3]
    if not rows:
        report.problems.append(
            "no NVIDIA GPU answers `nvidia-smi`: install the NVIDIA driver "
            f"({MIN_DRIVER_MAJOR} or newer), or set VLLM_DEVICE=cpu"
        )
        return
    chosen = _visible_indices(environ)
    for index, (name, driver, memory) in enumerate(rows):
        if chosen is not None and index not in chosen:
            continue
        try:
            major = int(driver.split(".")[0])
        except ValueError:
            major = 0
        compat = major < MIN_DRIVER_MAJOR and host.compat_libraries(environ)
        report.check(
            major >= MIN_DRIVER_MAJOR or compat,
            f"GPU {index} ({name}): driver {driver}"
            + (" with CUDA forward-compatibility libraries" if compat else ""),
            f"GPU {index} ({name}): NVIDIA driver {driver} is older than {MIN_DRIVER_MAJOR}, "
            "which vLLM's CUDA 13 build needs: upgrade the driver to "
            f"{MIN_DRIVER_MAJOR} or newer, or install CUDA's forward-compatibility package "
            "(cuda-compat-13-0) and put its directory on LD_LIBRARY_PATH",
        )
        if config.is_dummy:
            continue
        mib = memory_mib(memory)
        if mib is None:  # e.g. "[N/A]" for a MIG slice: nothing to compare
            report.warnings.append(f"GPU {index} ({name}): nvidia-smi does not tell its memory")
            continue
        report.check(
            mib >= MIN_GPU_MEMORY_MIB,
            f"GPU {index} ({name}): {mib} MiB of memory",
            f"GPU {index} ({name}) has {mib} MiB of memory; Voxtral Mini 4B needs a GPU with "
            "16 GB or more: use a larger GPU (CUDA_VISIBLE_DEVICES picks which one)",
        )
    compiler = next((found for name in _compilers(environ) if (found := host.which(name))), None)
    report.check(
        compiler is not None,
        f"C compiler: {compiler}",
        "no C compiler (cc, gcc or clang) on PATH: Triton compiles small modules when vLLM "
        "starts; install gcc (apt-get install gcc)",
    )
    header = host.python_include / "Python.h"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    report.check(
        header.is_file(),
        f"Python headers: {header}",
        f"the Python headers are missing ({header}): Triton compiles against them; install "
        f"them (apt-get install python{version}-dev)",
    )


def _visible_indices(environ: Mapping[str, str]) -> set[int] | None:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to vLLM, when it names them by index (nvidia-smi
    lists every GPU of the host); None means every GPU."""
    raw = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    parts = [part.strip() for part in raw.split(",")]
    if not raw or not all(part.isdigit() for part in parts):
        return None
    return {int(part) for part in parts}


def memory_mib(memory: str) -> int | None:
    """nvidia-smi's memory.total, with or without its unit ("81920" or "81920 MiB")."""
    words = memory.split()
    try:
        return int(float(words[0])) if words else None
    except ValueError:
        return None


def _compilers(environ: Mapping[str, str]) -> Sequence[str]:
    chosen = environ.get("CC", "").strip()
    return (chosen,) if chosen else COMPILERS


def _vllm(report: Report, config: LauncherConfig, host: Host) -> None:
    found = host.which(config.vllm_bin)
    report.check(
        found is not None,
        f"vllm: {found}",
        f"vllm is not at {config.vllm_bin}: {vllm_install_hint(config.device)}",
    )


def _model(report: Report, config: LauncherConfig, host: Host) -> None:
    if config.is_dummy:
        report.passed.append("model: the tiny dummy model (nothing to download)")
        return
    if config.device == "cpu":
        on_cpu = (
            f"VOXTRAL_MODEL_ID={config.model_id} on the CPU: about 9 GB to download, and far too "
            "slow there to transcribe in real time"
        )
        if config.allow_cpu_model:
            report.warnings.append(f"{on_cpu} (VOXTRAL_ALLOW_CPU_MODEL=1)")
        else:
            report.problems.append(
                f"{on_cpu}: set VOXTRAL_MODEL_ID=dummy for the tiny test model (every part of "
                "the stack real, the words meaningless), serve from an NVIDIA GPU host, or set "
                "VOXTRAL_ALLOW_CPU_MODEL=1 to run it on the CPU anyway"
            )
            return
    if is_complete(config.model_dir):
        report.passed.append(f"model: {config.model_dir} (already downloaded)")
        return
    free = host.free_bytes(config.model_dir)
    report.check(
        free >= MODEL_DOWNLOAD_BYTES,
        f"disk: {free / 1e9:.0f} GB free for the model in {config.model_dir}",
        f"only {free / 1e9:.1f} GB free for the model in {config.model_dir}, which needs about "
        f"{MODEL_DOWNLOAD_BYTES / 1e9:.0f} GB: free some space, or set VOXTRAL_MODEL_DIR to a "
        "larger disk",
    )
    if config.hf_token:
        report.passed.append("hub token: set (used for the download)")
    else:
        report.warnings.append(
            f"no hub token: fine while {config.model_id} is public; if the hub refuses the "
            "download, set HF_TOKEN"
        )


def _ports(
    report: Report,
    config: LauncherConfig,
    proxy: ProxyConfig,
    host: Host,
    environ: Mapping[str, str],
) -> None:
    service = host.running_service(environ)
    for name, bind, port in (
        ("SERVER_PORT", proxy.bind_host, proxy.port),
        ("VLLM_PORT", "127.0.0.1", config.vllm_port),
    ):
        if host.port_free(bind, port):
            report.passed.append(f"port {port} ({name}) is free")
            continue
        if service is not None and service.get(name) == str(port):
            report.passed.append(
                f"port {port} ({name}) is held by this service, running (pid "
                f"{service['PID']}; `make status`)"
            )
            continue
        report.problems.append(
            f"port {port} ({name}) is in use: stop what listens there (`make status` shows "
            f"whether it is this service; `make down` stops it), or set {name}"
        )


def run_checks(environ: Mapping[str, str], host: Host | None = None) -> Report:
    """Every check that applies to this host and configuration."""
    host = host or Host()
    report = Report()
    try:
        config = load_config(environ)
        proxy = load_proxy_config(proxy_environ(config, environ))
    except ConfigError as exc:
        report.problems.append(str(exc))
        return report
    report.passed.append(
        f"settings: device {config.device}, delay {config.transcription_delay_ms} ms, "
        f"model {config.model_id}"
    )
    report.warnings.extend(config.warnings)
    _vllm(report, config, host)
    if config.device == "cuda":
        _gpu(report, config, host, environ)
    _model(report, config, host)
    _ports(report, config, proxy, host, environ)
    return report


def print_report(report: Report) -> int:
    for line in report.passed:
        print(f"ok: {line}")
    for line in report.warnings:
        print(f"warning: {line}")
    sys.stdout.flush()  # problems come last, also when both streams share a terminal
    for line in report.problems:
        print(f"error: {line}", file=sys.stderr)
    if report.problems:
        print(
            f"{len(report.problems)} problem(s); fix them and run `make doctor` again",
            file=sys.stderr,
        )
        return 1
    print("all checks passed")
    return 0
