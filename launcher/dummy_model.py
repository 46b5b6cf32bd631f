"""The tiny random-weight Voxtral-Realtime model: ``params.json`` and ``tekken.json`` only.

vLLM serves it with ``--load-format dummy`` (random weights of the right shapes), which is how the
whole stack runs on a machine with no GPU and no model hub. Widths, depths and the vocabulary are
shrunk; everything the audio framing depends on (16 kHz, 128 mel bins, hop 160, window 400,
12.5 Hz frames, downsample 4) and the causal encoder that selects the realtime architecture are
kept as in the real model.
"""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from proxy.config import DEFAULT_TRANSCRIPTION_DELAY_MS

VOCAB_SIZE = 320  # 64 specials + 256 single bytes
NUM_SPECIAL_TOKENS = 64
NUM_BYTE_TOKENS = 256

# mistral-common 1.13.1's SpecialTokens, in its order (the first 20 are the legacy layout). Lookups
# are by string, so ids need not match the real tokenizer; mistral-common pads the list up to
# NUM_SPECIAL_TOKENS with generated placeholders.
SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
    "[ARGS]",
    "[CALL_ID]",
    "[AUDIO]",
    "[BEGIN_AUDIO]",
    "[TRANSCRIBE]",
    "[THINK]",
    "[/THINK]",
    "[STREAMING_PAD]",
    "[STREAMING_WORD]",
    "[NEXT_AUDIO_TEXT]",
    "[REPEAT_AUDIO_TEXT]",
    "[MODEL_SETTINGS]",
    "[/MODEL_SETTINGS]",
)

# Tekken's pre-tokenizer regex, used when no tekken file of mistral-common can be found. A test
# checks it against the file shipped in the CPU vLLM env.
FALLBACK_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

AUDIO_ENCODING = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "num_mel_bins": 128,
    "hop_length": 160,
    "window_size": 400,
    "chunk_length_s": None,
    "global_log_mel_max": 1.5,
    "transcription_format": "streaming",
}


def params() -> dict[str, Any]:
    """``params.json`` of the tiny model (Mistral format)."""
    encoder = {
        "audio_encoding_args": dict(AUDIO_ENCODING),
        "dim": 128,
        "n_layers": 2,
        "head_dim": 64,
        "hidden_dim": 256,
        "n_heads": 2,
        "n_kv_heads": 2,
        "vocab_size": VOCAB_SIZE,
        "use_biases": True,
        "use_cache": False,
        "rope_theta": 1000000.0,
        "norm_eps": 1e-05,
        # A causal encoder is what makes vLLM pick VoxtralRealtimeGeneration.
        "causal": True,
        "pos_embed": "rope",
        "ffn_type": "swiglu",
        "norm_type": "rms_norm",
        "max_source_positions": None,
        "sliding_window": 750,
    }
    return {
        "dim": 128,
        "n_layers": 2,
        "head_dim": 64,
        "hidden_dim": 256,
        "n_heads": 2,
        "n_kv_heads": 1,
        "vocab_size": VOCAB_SIZE,
        "use_biases": False,
        "causal": True,
        "rope_theta": 1000000.0,
        "norm_eps": 1e-05,
        "model_parallel": 1,
        "tied_embeddings": True,
        "sliding_window": 8192,
        "model_max_length": 131072,
        "max_position_embeddings": 131072,
        "ada_rms_norm_t_cond": True,
        "ada_rms_norm_t_cond_dim": 32,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": encoder,
                "downsample_args": {"downsample_factor": 4},
            }
        },
    }


def tekken(pattern: str, delay_ms: int = DEFAULT_TRANSCRIPTION_DELAY_MS) -> dict[str, Any]:
    """``tekken.json`` of the tiny model: a byte vocabulary (one raw byte per token) plus the
    special tokens and the streaming ``audio`` section."""
    vocab = [
        {"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode("ascii"), "token_str": None}
        for i in range(NUM_BYTE_TOKENS)
    ]
    specials = [
        {"rank": rank, "token_str": token, "is_control": True}
        for rank, token in enumerate(SPECIAL_TOKENS)
    ]
    return {
        "config": {
            "pattern": pattern,
            "num_vocab_tokens": NUM_BYTE_TOKENS,
            "default_vocab_size": VOCAB_SIZE,
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
            "version": "v13",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": None,
            "transcription_format": "streaming",
            "transcription_delay_ms": delay_ms,
            "streaming_look_ahead_ms": 2.5,
            "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 32,
        },
    }


def mistral_common_data_dirs(vllm_bin: str) -> list[Path]:
    """Places where mistral-common's bundled tekken files may be: this interpreter's copy (present
    on a GPU host, where vLLM is installed in the project env) and the copy in the venv that holds
    ``vllm_bin`` (the CPU vLLM env). Only the data files are read; nothing is imported."""
    dirs: list[Path] = []
    spec = importlib.util.find_spec("mistral_common")
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "data")
    venv = Path(vllm_bin).parent.parent
    dirs.extend(sorted(venv.glob("lib/python3*/site-packages/mistral_common/data")))
    return dirs


def find_pattern(data_dirs: Iterable[Path]) -> tuple[str, str]:
    """The pre-tokenizer regex of a tekken file shipped with mistral-common, and where it came
    from; the fallback constant when none is found."""
    for data_dir in data_dirs:
        for path in sorted(data_dir.glob("tekken*.json"), reverse=True):
            try:
                pattern = orjson.loads(path.read_bytes())["config"]["pattern"]
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(pattern, str) and pattern:
                return pattern, str(path)
    return FALLBACK_PATTERN, "built-in fallback"
