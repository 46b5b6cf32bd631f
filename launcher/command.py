"""Builds the ``vllm serve`` command line and its environment from the launcher config."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config import LauncherConfig

# Polled every second (the launcher's supervisor, the proxy's monitor): its access lines would be
# nearly half of the log.
QUIET_ENDPOINTS = "/health"
# The model card's compilation setting for Voxtral realtime on GPU.
GPU_COMPILATION_CONFIG = json.dumps({"cudagraph_mode": "PIECEWISE"}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class VllmCommand:
    argv: tuple[str, ...]
    # Added to the launcher's own environment for the vLLM process.
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        """One line a shell can run, environment assignments first."""
        assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def build_command(config: LauncherConfig, model_dir: Path | None = None) -> VllmCommand:
    """The one place that decides how vLLM runs. Pure: no I/O."""
    directory = model_dir if model_dir is not None else config.model_dir
    argv = [
        config.vllm_bin,
        "serve",
        str(directory),
        "--served-model-name",
        config.served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(config.vllm_port),
        "--tokenizer-mode",
        "mistral",
        "--config-format",
        "mistral",
        "--load-format",
        "dummy" if config.is_dummy else "mistral",
        "--disable-access-log-for-endpoints",
        QUIET_ENDPOINTS,
    ]
    # The model directory is local by now; vLLM has no reason to reach the hub.
    env = {"HF_HUB_OFFLINE": "1"}

    if config.device == "cpu":
        # The CPU build: no torch.compile, one in-process executor, a KV cache sized in bytes.
        argv += [
            "--enforce-eager",
            "--distributed-executor-backend",
            "uni",
            "--kv-cache-memory-bytes",
            str(config.kv_cache_memory_bytes),
        ]
        # The model worker runs inside the engine process: fewer processes, faster start.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        if config.enforce_eager:
            argv.append("--enforce-eager")
        else:
            argv += ["--compilation-config", GPU_COMPILATION_CONFIG]
        # Named, not left to vLLM's pick: see DEFAULT_CUDA_ATTENTION_BACKEND.
        if config.attention_backend is not None:
            argv += ["--attention-backend", config.attention_backend]
        env["VLLM_DISABLE_COMPILE_CACHE"] = "1"

    if config.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if config.max_model_len is not None:
        argv += ["--max-model-len", str(config.max_model_len)]
    if config.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(config.max_num_seqs)]
    if config.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(config.max_num_batched_tokens)]
    # Last, so that an operator's flag wins over any default above (vLLM takes the last value).
    argv += config.extra_args
    return VllmCommand(tuple(argv), env)
