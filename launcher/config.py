"""Launcher configuration: read from the environment once, validated, into a typed object.

A bad value raises ``ConfigError`` with one line naming the variable, so ``python -m launcher``
can stop before anything is downloaded or started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy.config import (
    AUTO,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MODEL_ID,
    DEFAULT_TRANSCRIPTION_DELAY_MS,
    DEFAULT_UPSTREAM_PORT,
    ConfigError,
    parse_flag,
    parse_number,
    read_setting,
    realtime_url,
    validate_transcription_delay_ms,
)
from proxy.vllm_wire import generation_tokens

__all__ = [
    "DUMMY_MODEL_ID",
    "LAUNCHER_VARIABLES",
    "ConfigError",
    "Device",
    "LauncherConfig",
    "default_cpu_env",
    "gpu_visible",
    "load_config",
    "vllm_install_hint",
]

Device = Literal["cpu", "cuda"]

# Serves a tiny random-weight model with the Voxtral-Realtime architecture (no download, no GPU).
DUMMY_MODEL_ID = "dummy"
# Delays the model card does not cover: they pass validation but are untested.
UNTESTED_DELAY_MS = range(1280, 2321)
# Room for the tiny model's KV cache on CPU; VLLM_CPU_KVCACHE_SPACE would override it, in whole GiB.
DEFAULT_CPU_KV_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_STARTUP_TIMEOUT_S = {"cpu": 300.0, "cuda": 1800.0}
CPU_VLLM_VERSION = "0.32.0"
# Voxtral's causal audio encoder runs only on the FlashAttention, Triton, CPU, ROCm and AITER
# attention backends (vLLM 0.32.0, whisper_causal.py raises NotImplementedError otherwise). vLLM
# picks FlashAttention by itself on A100/L40S/H100, but FlashInfer on B200 (sm100) and with an FP8
# KV cache, so the launcher names the backend instead of trusting the pick.
DEFAULT_CUDA_ATTENTION_BACKEND = "FLASH_ATTN"

# The launcher's own settings. Some share vLLM's VLLM_ prefix (VLLM_PORT is even one of vLLM's own
# variables, the base of its internal ports), so none of them may reach vLLM's environment.
LAUNCHER_VARIABLES = frozenset(
    {
        "VLLM_DEVICE",
        "VLLM_BIN",
        "VLLM_PORT",
        "VLLM_STARTUP_TIMEOUT_S",
        "VLLM_GPU_MEMORY_UTILIZATION",
        "VLLM_MAX_MODEL_LEN",
        "VLLM_MAX_NUM_SEQS",
        "VLLM_MAX_NUM_BATCHED_TOKENS",
        "VLLM_ENFORCE_EAGER",
        "VLLM_KV_CACHE_MEMORY_BYTES",
        "VLLM_ATTENTION_BACKEND",
        "VLLM_EXTRA_ARGS",
    }
)


@dataclass(frozen=True, slots=True)
class LauncherConfig:
    model_id: str
    model_dir: Path
    served_model_name: str
    transcription_delay_ms: int
    device: Device
    vllm_bin: str
    vllm_port: int
    startup_timeout_s: float
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False
    kv_cache_memory_bytes: int = DEFAULT_CPU_KV_CACHE_BYTES
    # None lets vLLM pick (only on CUDA; the CPU build has one backend).
    attention_backend: str | None = DEFAULT_CUDA_ATTENTION_BACKEND
    extra_args: tuple[str, ...] = ()
    # Kept out of repr so a logged config never shows the token.
    hf_token: str | None = field(default=None, repr=False)
    max_concurrent_connections: int | None = None
    # MAX_CONCURRENT_CONNECTIONS=auto: the cap becomes the streams vLLM's KV cache holds, once
    # vLLM is ready.
    connections_auto: bool = False
    # VOXTRAL_ALLOW_CPU_MODEL=1: the real model on CPU is what the operator means, not a slip.
    allow_cpu_model: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def is_dummy(self) -> bool:
        return self.model_id == DUMMY_MODEL_ID

    @property
    def upstream_url(self) -> str:
        return realtime_url(self.vllm_port)

    @property
    def vllm_url(self) -> str:
        return f"http://127.0.0.1:{self.vllm_port}"

    @property
    def health_url(self) -> str:
        return f"{self.vllm_url}/health"


def gpu_visible() -> bool:
    """True when an NVIDIA GPU is visible to this process."""
    if Path("/dev/nvidia0").exists():
        return True
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def default_cpu_env(environ: Mapping[str, str]) -> Path:
    """Where scripts/cpu_vllm_env.sh caches the CPU build of vLLM (same rule as scripts/lib.sh)."""
    cache = environ.get("YAP_CACHE_DIR", "").strip()
    if cache:
        return Path(cache) / f"vllm-cpu-{CPU_VLLM_VERSION}"
    xdg = environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path(environ.get("HOME", str(Path.home()))) / ".cache"
    return base / "yap-voxtral-stt" / f"vllm-cpu-{CPU_VLLM_VERSION}"


def _device(environ: Mapping[str, str], detect_gpu: Callable[[], bool]) -> Device:
    raw = environ.get("VLLM_DEVICE", "").strip().lower()
    if raw in ("", "auto"):
        return "cuda" if detect_gpu() else "cpu"
    if raw == "cpu":
        return "cpu"
    if raw in ("cuda", "gpu"):
        return "cuda"
    raise ConfigError(f"VLLM_DEVICE={raw!r} is invalid: use cpu, cuda or auto")


def _delay(environ: Mapping[str, str]) -> tuple[int, tuple[str, ...]]:
    value = parse_number(environ, "VOXTRAL_TRANSCRIPTION_DELAY_MS", int, -(2**31))
    delay = validate_transcription_delay_ms(
        DEFAULT_TRANSCRIPTION_DELAY_MS if value is None else value
    )
    if delay in UNTESTED_DELAY_MS:
        return delay, (
            f"VOXTRAL_TRANSCRIPTION_DELAY_MS={delay} is outside the delays the model card covers "
            "(80..1200 and 2400); it is accepted but untested",
        )
    return delay, ()


def _vllm_bin(environ: Mapping[str, str], device: Device) -> str:
    explicit = environ.get("VLLM_BIN", "").strip()
    if explicit:
        return explicit
    if device == "cpu":
        cpu_env = environ.get("VOXTRAL_VLLM_CPU_ENV", "").strip()
        root = Path(cpu_env) if cpu_env else default_cpu_env(environ)
        return str(root / "bin" / "vllm")
    # The GPU build is the gpu extra of the launcher's own environment. Not resolved through PATH:
    # systemd, Docker and `make up` do not put .venv/bin on it. sys.executable is not resolved
    # either: .venv/bin/python is a link to the base interpreter, and vllm sits beside the link.
    return str(Path(sys.executable).absolute().parent / "vllm")


def vllm_install_hint(device: Device) -> str:
    """What to do when the vllm executable is missing."""
    if device == "cuda":
        return (
            "install the gpu extra into this environment (`make up` does on a GPU host; by hand: "
            "uv sync --frozen --extra clients --extra gpu), or set VLLM_BIN to a vllm executable"
        )
    return (
        "build the CPU vLLM env with scripts/cpu_vllm_env.sh (`make up` does), or set "
        "VOXTRAL_VLLM_CPU_ENV or VLLM_BIN"
    )


def _attention_backend(environ: Mapping[str, str]) -> str | None:
    raw = environ.get("VLLM_ATTENTION_BACKEND", "").strip()
    if not raw:
        return DEFAULT_CUDA_ATTENTION_BACKEND
    if raw.lower() == AUTO:
        return None
    if not raw.replace("_", "").isalnum():
        raise ConfigError(
            f"VLLM_ATTENTION_BACKEND={raw!r} is invalid: use a vLLM backend name such as "
            f"{DEFAULT_CUDA_ATTENTION_BACKEND}, or auto to let vLLM pick"
        )
    return raw.upper()


def _extra_args(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get("VLLM_EXTRA_ARGS", "")
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(f"VLLM_EXTRA_ARGS cannot be split like a shell line: {exc}") from None


def _max_connections(
    environ: Mapping[str, str], max_num_seqs: int | None, auto: bool
) -> tuple[int | None, tuple[str, ...]]:
    """The proxy's connection cap, kept at or below vLLM's sequence cap so that no socket waits
    unseen in vLLM's queue. With ``auto`` this is only the cap until vLLM's KV cache is known."""
    explicit = None if auto else parse_number(environ, "MAX_CONCURRENT_CONNECTIONS", int, 1)
    if explicit is None:
        if max_num_seqs is None:
            return (DEFAULT_MAX_CONNECTIONS if auto else None), ()
        return min(DEFAULT_MAX_CONNECTIONS, max_num_seqs), ()
    if max_num_seqs is not None and explicit > max_num_seqs:
        return explicit, (
            f"MAX_CONCURRENT_CONNECTIONS={explicit} exceeds VLLM_MAX_NUM_SEQS={max_num_seqs}: "
            "connections beyond it wait silently for an engine slot",
        )
    return explicit, ()


def load_config(
    environ: Mapping[str, str] | None = None, detect_gpu: Callable[[], bool] = gpu_visible
) -> LauncherConfig:
    env = os.environ if environ is None else environ
    model_id = env.get("VOXTRAL_MODEL_ID", "").strip() or DEFAULT_MODEL_ID
    # The dummy model keeps the production name so that clients need no change.
    served_default = DEFAULT_MODEL_ID if model_id == DUMMY_MODEL_ID else model_id
    served_model_name = env.get("VOXTRAL_SERVED_MODEL_NAME", "").strip() or served_default
    model_dir = Path(env.get("VOXTRAL_MODEL_DIR", "").strip() or "models/voxtral")

    delay, delay_warnings = _delay(env)
    device = _device(env, detect_gpu)
    port = parse_number(env, "VLLM_PORT", int, 1, 65535) or DEFAULT_UPSTREAM_PORT
    max_num_seqs = parse_number(env, "VLLM_MAX_NUM_SEQS", int, 1)
    # Under the launcher the cap follows what vLLM's KV cache holds unless a number is given
    # (`python -m proxy` alone cannot see the cache and keeps a number).
    connections_auto = env.get("MAX_CONCURRENT_CONNECTIONS", "").strip().lower() in ("", AUTO)
    max_connections, connection_warnings = _max_connections(env, max_num_seqs, connections_auto)
    gpu_memory_utilization = parse_number(env, "VLLM_GPU_MEMORY_UTILIZATION", float, 0.01, 1.0)
    startup_timeout_s = (
        parse_number(env, "VLLM_STARTUP_TIMEOUT_S", float, 1.0) or DEFAULT_STARTUP_TIMEOUT_S[device]
    )
    kv_cache_bytes = parse_number(env, "VLLM_KV_CACHE_MEMORY_BYTES", int, 1)

    return LauncherConfig(
        model_id=model_id,
        model_dir=model_dir,
        served_model_name=served_model_name,
        transcription_delay_ms=delay,
        device=device,
        vllm_bin=_vllm_bin(env, device),
        vllm_port=port,
        startup_timeout_s=startup_timeout_s,
        gpu_memory_utilization=gpu_memory_utilization,
        # One generation of SEGMENT_MAX_S (the proxy carries longer utterances over), so vLLM
        # counts its streams at the length they can really reach.
        max_model_len=parse_number(env, "VLLM_MAX_MODEL_LEN", int, 1)
        or generation_tokens(read_setting(env, "segment_max_s"), delay),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=parse_number(env, "VLLM_MAX_NUM_BATCHED_TOKENS", int, 1),
        enforce_eager=parse_flag(env, "VLLM_ENFORCE_EAGER", False),
        kv_cache_memory_bytes=kv_cache_bytes or DEFAULT_CPU_KV_CACHE_BYTES,
        attention_backend=_attention_backend(env),
        extra_args=_extra_args(env),
        hf_token=env.get("HF_TOKEN", "").strip() or None,
        max_concurrent_connections=max_connections,
        connections_auto=connections_auto,
        allow_cpu_model=parse_flag(env, "VOXTRAL_ALLOW_CPU_MODEL", False),
        warnings=delay_warnings + connection_warnings,
    )


def proxy_environ(config: LauncherConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the in-process proxy reads: the launcher's own, pointed at the supervised
    vLLM, with the served name and connection cap the launcher decided."""
    env = dict(environ)
    env["VOXTRAL_UPSTREAM_URL"] = config.upstream_url
    env["VOXTRAL_SERVED_MODEL_NAME"] = config.served_model_name
    env["VOXTRAL_TRANSCRIPTION_DELAY_MS"] = str(config.transcription_delay_ms)
    if config.max_concurrent_connections is not None:
        env["MAX_CONCURRENT_CONNECTIONS"] = str(config.max_concurrent_connections)
    return env
