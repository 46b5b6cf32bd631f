"""The vllm serve command line for GPU and CPU, from configuration only."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.command import build_command
from launcher.config import LauncherConfig, load_config
from proxy.config import DEFAULT_MODEL_ID
from tests.processes import ROOT


def config(gpu: bool, **variables: str) -> LauncherConfig:
    return load_config({"HOME": "/home/op", **variables}, detect_gpu=lambda: gpu)


def value_of(argv: tuple[str, ...], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


def test_gpu_defaults() -> None:
    command = build_command(config(gpu=True))
    argv = command.argv
    # The env's own vllm, beside the interpreter, by absolute path: PATH plays no part.
    assert argv[:3] == (
        str(Path(sys.executable).absolute().parent / "vllm"),
        "serve",
        "models/voxtral",
    )
    assert Path(argv[0]).is_absolute()
    assert value_of(argv, "--served-model-name") == DEFAULT_MODEL_ID
    assert value_of(argv, "--host") == "127.0.0.1"
    assert value_of(argv, "--port") == "8001"
    assert value_of(argv, "--tokenizer-mode") == "mistral"
    assert value_of(argv, "--config-format") == "mistral"
    assert value_of(argv, "--load-format") == "mistral"
    # The supervisor's and the proxy's health polls leave no access line in the log.
    assert value_of(argv, "--disable-access-log-for-endpoints") == "/health"
    assert json.loads(value_of(argv, "--compilation-config")) == {"cudagraph_mode": "PIECEWISE"}
    # Voxtral's causal encoder has no FlashInfer path; vLLM would pick FlashInfer on sm100.
    assert value_of(argv, "--attention-backend") == "FLASH_ATTN"
    assert "--enforce-eager" not in argv
    assert "--api-key" not in argv
    for absent in ("--max-num-seqs", "--gpu-memory-utilization"):
        assert absent not in argv
    # One generation of SEGMENT_MAX_S (300 s at 12.5 tokens/s, the prompt and the flush).
    assert value_of(argv, "--max-model-len") == str(3750 + 33 + 6 + 11 + 1)
    assert command.env["VLLM_DISABLE_COMPILE_CACHE"] == "1"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in command.env


def test_gpu_knobs_and_extra_args_last() -> None:
    command = build_command(
        config(
            gpu=True,
            VLLM_PORT="9001",
            VLLM_GPU_MEMORY_UTILIZATION="0.85",
            VLLM_MAX_MODEL_LEN="45000",
            VLLM_MAX_NUM_SEQS="16",
            VLLM_MAX_NUM_BATCHED_TOKENS="8192",
            VLLM_EXTRA_ARGS="--max-num-seqs 8 --seed '1'",
            VLLM_BIN="/opt/vllm/bin/vllm",
        )
    )
    argv = command.argv
    assert argv[0] == "/opt/vllm/bin/vllm"
    assert value_of(argv, "--port") == "9001"
    assert value_of(argv, "--gpu-memory-utilization") == "0.85"
    assert value_of(argv, "--max-model-len") == "45000"
    assert value_of(argv, "--max-num-batched-tokens") == "8192"
    # The operator's flags come last, so they win over the knob (vLLM keeps the last value).
    assert argv[-4:] == ("--max-num-seqs", "8", "--seed", "1")
    assert argv.count("--max-num-seqs") == 2


def test_gpu_enforce_eager_replaces_the_compilation_config() -> None:
    argv = build_command(config(gpu=True, VLLM_ENFORCE_EAGER="true")).argv
    assert "--enforce-eager" in argv
    assert "--compilation-config" not in argv


def test_attention_backend_is_overridable_or_left_to_vllm() -> None:
    assert (
        value_of(
            build_command(config(True, VLLM_ATTENTION_BACKEND="triton_attn")).argv,
            "--attention-backend",
        )
        == "TRITON_ATTN"
    )
    assert (
        "--attention-backend" not in build_command(config(True, VLLM_ATTENTION_BACKEND="auto")).argv
    )


def test_cpu_dummy_model() -> None:
    command = build_command(
        config(
            gpu=False,
            VOXTRAL_MODEL_ID="dummy",
            VOXTRAL_MODEL_DIR="/tmp/m",
            VOXTRAL_VLLM_CPU_ENV="/envs/vllm-cpu",
            VLLM_MAX_MODEL_LEN="2048",
        )
    )
    argv = command.argv
    assert argv[:3] == ("/envs/vllm-cpu/bin/vllm", "serve", "/tmp/m")
    assert value_of(argv, "--served-model-name") == DEFAULT_MODEL_ID
    assert value_of(argv, "--load-format") == "dummy"
    assert "--enforce-eager" in argv
    assert value_of(argv, "--distributed-executor-backend") == "uni"
    assert value_of(argv, "--kv-cache-memory-bytes") == str(256 * 1024 * 1024)
    assert value_of(argv, "--max-model-len") == "2048"
    assert "--compilation-config" not in argv
    assert "--attention-backend" not in argv
    assert command.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_DISABLE_COMPILE_CACHE" not in command.env
    # Set in whole GiB, it would override the byte-sized cache above.
    assert "VLLM_CPU_KVCACHE_SPACE" not in command.env


def test_cpu_kv_cache_size_is_configurable() -> None:
    argv = build_command(config(gpu=False, VLLM_KV_CACHE_MEMORY_BYTES="1073741824")).argv
    assert value_of(argv, "--kv-cache-memory-bytes") == "1073741824"


def test_explicit_model_dir_overrides_config() -> None:
    argv = build_command(config(gpu=True), Path("/srv/model")).argv
    assert argv[2] == "/srv/model"


def test_shell_line_round_trips() -> None:
    command = build_command(config(gpu=True, VLLM_EXTRA_ARGS="--x 'a b'"))
    words = shlex.split(command.shell_line())
    assignments = [w for w in words if "=" in w and not w.startswith("-")][: len(command.env)]
    assert dict(a.split("=", 1) for a in assignments) == command.env
    assert tuple(words[len(command.env) :]) == command.argv


def run_launcher(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=ROOT,
        env={"HOME": "/home/op", "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_print_command_prints_one_line_and_exits() -> None:
    result = run_launcher(
        "--print-command",
        env={"VLLM_DEVICE": "cpu", "VOXTRAL_MODEL_ID": "dummy", "VOXTRAL_VLLM_CPU_ENV": "/e"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "/e/bin/vllm serve models/voxtral" in lines[0]
    assert "--load-format dummy" in lines[0]
    assert lines[0].startswith("HF_HUB_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 ")


def test_print_command_on_cuda_names_the_envs_own_vllm() -> None:
    """The Done-when line: an absolute path to the vllm beside the interpreter, with PATH holding
    no vllm at all, and the attention backend."""
    result = run_launcher("--print-command", env={"VLLM_DEVICE": "cuda"})
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    vllm = str(Path(sys.executable).absolute().parent / "vllm")
    assert argv[argv.index("serve") - 1] == vllm
    assert "--attention-backend FLASH_ATTN" in result.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        (
            {"VLLM_DEVICE": "cpu", "VOXTRAL_TRANSCRIPTION_DELAY_MS": "500"},
            "VOXTRAL_TRANSCRIPTION_DELAY_MS",
        ),
        ({"VLLM_DEVICE": "cpu"}, "VOXTRAL_API_KEY"),
    ],
)
def test_config_errors_exit_2_with_one_line(env: dict[str, str], variable: str) -> None:
    result = run_launcher(env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {variable}")
