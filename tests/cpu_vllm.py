"""The CPU build of vLLM for the tests that run it (end to end) or ask it (its argument parser,
its environment variables), built by scripts/cpu_vllm_env.sh and named by
``VOXTRAL_VLLM_CPU_ENV`` (see ``tests.built_env``).
"""

from __future__ import annotations

from pathlib import Path

from tests.built_env import named_env


def cpu_vllm_env() -> Path:
    return named_env(
        "VOXTRAL_VLLM_CPU_ENV",
        "scripts/cpu_vllm_env.sh",
        "CPU vLLM env",
        "bin/vllm",
        "has no bin/vllm",
    )
