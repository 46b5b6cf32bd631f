"""Rehearsal of the GPU command without a GPU: the ``vllm serve`` lines the launcher builds for
CUDA, with the default settings and with every knob set, go through vLLM 0.32.0's own ``serve``
parser, its checks of parsed arguments and its engine configuration (tests/launcher/
vllm_cli_check.py, run by the CPU build's interpreter). A flag vLLM does not know or a value it
refuses fails here, in every CI run, instead of on the first GPU host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from launcher import dummy_model
from launcher.command import build_command
from launcher.config import load_config
from launcher.model import write_dummy
from proxy.config import DEFAULT_MODEL_ID

CHECKER = Path(__file__).with_name("vllm_cli_check.py")

DEFAULTS: dict[str, str] = {}
EVERY_KNOB = {
    "VLLM_PORT": "8123",
    "VLLM_GPU_MEMORY_UTILIZATION": "0.85",
    "VLLM_MAX_MODEL_LEN": "4096",
    "VLLM_MAX_NUM_SEQS": "16",
    "VLLM_MAX_NUM_BATCHED_TOKENS": "8192",
    "VLLM_ATTENTION_BACKEND": "triton_attn",
    "VOXTRAL_SERVED_MODEL_NAME": "voxtral",
    "VLLM_EXTRA_ARGS": "--seed 7",
}
EAGER_AUTO_BACKEND = {"VLLM_ENFORCE_EAGER": "1", "VLLM_ATTENTION_BACKEND": "auto"}
# Settings the launcher lets through and vLLM must refuse: they prove the checker can fail.
UNKNOWN_BACKEND = {"VLLM_ATTENTION_BACKEND": "NO_SUCH_BACKEND"}
UNKNOWN_FLAG = {"VLLM_EXTRA_ARGS": "--no-such-flag 1"}


def gpu_argv(model_dir: Path, variables: dict[str, str]) -> list[str]:
    config = load_config({"HOME": "/home/op", **variables}, detect_gpu=lambda: True)
    return list(build_command(config, model_dir).argv[1:])


@pytest.fixture(scope="module")
def verdicts(cpu_vllm_env: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # vLLM reads the model's params.json while it builds the configuration: the tiny model has the
    # real architecture, and vLLM loads no weights here.
    model_dir = tmp_path_factory.mktemp("model")
    pattern, _ = dummy_model.find_pattern(
        dummy_model.mistral_common_data_dirs(str(cpu_vllm_env / "bin" / "vllm"))
    )
    write_dummy(model_dir, pattern)
    commands = [
        gpu_argv(model_dir, variables)
        for variables in (DEFAULTS, EVERY_KNOB, EAGER_AUTO_BACKEND, UNKNOWN_BACKEND, UNKNOWN_FLAG)
    ]
    result = subprocess.run(
        [str(cpu_vllm_env / "bin" / "python"), str(CHECKER)],
        input=json.dumps(commands),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return verdicts


def test_default_gpu_command_is_accepted(verdicts: list[dict[str, Any]]) -> None:
    verdict = verdicts[0]
    assert verdict["ok"], verdict
    assert verdict["attention_backend"] == "FLASH_ATTN"
    assert verdict["served_model_name"] == DEFAULT_MODEL_ID
    assert verdict["tokenizer_mode"] == "mistral"
    assert verdict["load_format"] == "mistral"


def test_every_knob_reaches_vllm_as_set(verdicts: list[dict[str, Any]]) -> None:
    verdict = verdicts[1]
    assert verdict["ok"], verdict
    assert verdict["attention_backend"] == "TRITON_ATTN"
    assert verdict["max_model_len"] == 4096
    assert verdict["max_num_seqs"] == 16
    assert verdict["max_num_batched_tokens"] == 8192
    assert verdict["gpu_memory_utilization"] == 0.85
    assert verdict["served_model_name"] == "voxtral"


def test_eager_mode_with_vllms_own_backend_pick_is_accepted(
    verdicts: list[dict[str, Any]],
) -> None:
    verdict = verdicts[2]
    assert verdict["ok"], verdict
    assert verdict["attention_backend"] is None


def test_what_vllm_refuses_fails_the_rehearsal(verdicts: list[dict[str, Any]]) -> None:
    unknown_backend, unknown_flag = verdicts[3], verdicts[4]
    assert not unknown_backend["ok"]
    assert "NO_SUCH_BACKEND" in unknown_backend["error"]
    assert not unknown_flag["ok"]
    assert "--no-such-flag" in unknown_flag["error"]
