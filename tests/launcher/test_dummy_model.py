"""The tiny model's files carry the facts vLLM and mistral-common rely on."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from launcher import dummy_model
from launcher.model import ModelError, write_dummy

PATTERN = r"\p{L}+|\s+"


def encoder(params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = params["multimodal"]["whisper_model_args"]["encoder_args"]
    return result


def test_vocab_sizes_agree() -> None:
    params = dummy_model.params()
    tekken = dummy_model.tekken(PATTERN)
    config = tekken["config"]
    assert config["default_vocab_size"] == params["vocab_size"] == encoder(params)["vocab_size"]
    assert config["default_vocab_size"] == (
        config["default_num_special_tokens"] + config["num_vocab_tokens"]
    )
    assert len(tekken["vocab"]) == config["num_vocab_tokens"]
    assert len(tekken["special_tokens"]) <= config["default_num_special_tokens"]


def test_architecture_and_audio_framing_match_the_real_model() -> None:
    params = dummy_model.params()
    enc = encoder(params)
    assert enc["causal"] is True  # selects VoxtralRealtimeGeneration
    assert params["multimodal"]["whisper_model_args"]["downsample_args"] == {"downsample_factor": 4}
    audio_args = enc["audio_encoding_args"]
    assert audio_args["sampling_rate"] == 16000
    assert audio_args["frame_rate"] == 12.5
    assert (audio_args["num_mel_bins"], audio_args["hop_length"], audio_args["window_size"]) == (
        128,
        160,
        400,
    )
    assert audio_args["transcription_format"] == "streaming"
    assert params["ada_rms_norm_t_cond"] is True
    assert params["n_heads"] % params["n_kv_heads"] == 0


def test_tekken_audio_section_satisfies_the_streaming_rules() -> None:
    audio = dummy_model.tekken(PATTERN)["audio"]
    assert audio["transcription_delay_ms"] == 480
    assert audio["transcription_delay_ms"] % (1000 / audio["frame_rate"]) == 0
    # Look-ahead and look-back must be whole numbers of samples.
    for key in ("streaming_look_ahead_ms", "streaming_look_back_ms"):
        samples = audio[key] * audio["sampling_rate"] / 1000
        assert samples == int(samples)
    assert audio["audio_encoding_config"] == {
        "num_mel_bins": 128,
        "hop_length": 160,
        "window_size": 400,
    }


def test_special_tokens_are_unique_control_tokens_ranked_from_zero() -> None:
    specials = dummy_model.tekken(PATTERN)["special_tokens"]
    names = [s["token_str"] for s in specials]
    assert len(set(names)) == len(names) == 33
    assert [s["rank"] for s in specials] == list(range(len(specials)))
    assert all(s["is_control"] is True for s in specials)
    assert names[:3] == ["<unk>", "<s>", "</s>"]
    for needed in ("[STREAMING_PAD]", "[STREAMING_WORD]", "[BEGIN_AUDIO]", "[AUDIO]"):
        assert needed in names


def test_vocab_is_one_token_per_byte() -> None:
    tekken = dummy_model.tekken(PATTERN)
    assert tekken["config"]["version"] == "v13"
    assert tekken["config"]["pattern"] == PATTERN
    for entry in tekken["vocab"]:
        assert base64.b64decode(entry["token_bytes"]) == bytes([entry["rank"]])


def test_pattern_comes_from_a_bundled_tekken_file(tmp_path: Path) -> None:
    (tmp_path / "tekken_240911.json").write_bytes(orjson.dumps({"config": {"pattern": "X+"}}))
    (tmp_path / "tekken_240718.json").write_bytes(orjson.dumps({"config": {"pattern": "Y+"}}))
    pattern, source = dummy_model.find_pattern([tmp_path / "missing", tmp_path])
    assert pattern == "X+"  # the newest file name wins
    assert source.endswith("tekken_240911.json")


def test_pattern_falls_back_when_nothing_usable_is_found(tmp_path: Path) -> None:
    (tmp_path / "tekken_broken.json").write_bytes(b"{")
    assert dummy_model.find_pattern([tmp_path]) == (
        dummy_model.FALLBACK_PATTERN,
        "built-in fallback",
    )


def test_data_dirs_include_the_venv_of_the_vllm_binary(tmp_path: Path) -> None:
    data = tmp_path / "lib" / "python3.11" / "site-packages" / "mistral_common" / "data"
    data.mkdir(parents=True)
    assert data in dummy_model.mistral_common_data_dirs(str(tmp_path / "bin" / "vllm"))


@pytest.mark.skipif(
    not os.environ.get("VOXTRAL_VLLM_CPU_ENV"), reason="VOXTRAL_VLLM_CPU_ENV (mistral-common) unset"
)
def test_fallback_pattern_matches_the_one_mistral_common_ships() -> None:
    vllm_bin = str(Path(os.environ["VOXTRAL_VLLM_CPU_ENV"]) / "bin" / "vllm")
    pattern, source = dummy_model.find_pattern(dummy_model.mistral_common_data_dirs(vllm_bin))
    assert source != "built-in fallback"
    assert pattern == dummy_model.FALLBACK_PATTERN


def test_write_dummy_writes_both_files(tmp_path: Path) -> None:
    write_dummy(tmp_path / "m", PATTERN)
    assert orjson.loads((tmp_path / "m" / "params.json").read_bytes()) == dummy_model.params()
    assert orjson.loads((tmp_path / "m" / "tekken.json").read_bytes()) == dummy_model.tekken(
        PATTERN
    )


def test_write_dummy_refuses_a_directory_with_real_weights(tmp_path: Path) -> None:
    (tmp_path / "consolidated.safetensors").write_bytes(b"weights")
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(ModelError, match="holds real weights"):
        write_dummy(tmp_path, PATTERN)
    assert (tmp_path / "params.json").read_text() == "{}"
