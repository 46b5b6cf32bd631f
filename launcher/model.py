"""Makes the model directory ready: the real model from the hub, or the tiny dummy model.

The hub download lands as real files in ``VOXTRAL_MODEL_DIR`` (never links into a shared cache),
so patching ``tekken.json`` only ever touches this copy. A complete directory is reused without
any network access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from launcher import dummy_model
from launcher.config import LauncherConfig
from launcher.files import write_json_atomic

log = structlog.get_logger("launcher.model")

# The Mistral-format files vLLM needs; the repo's Transformers duplicates would double the size.
HUB_FILES = ("params.json", "tekken.json", "consolidated.safetensors")
CONFIG_FILES = ("params.json", "tekken.json")


class ModelError(RuntimeError):
    """The model directory cannot be made ready."""


@dataclass(frozen=True, slots=True)
class PreparedModel:
    path: Path
    source: str  # "reused", "downloaded" or "dummy"


def is_complete(model_dir: Path) -> bool:
    """params.json, tekken.json and at least one non-empty weights file."""
    if not all((model_dir / name).is_file() for name in CONFIG_FILES):
        return False
    return any(p.is_file() and p.stat().st_size > 0 for p in model_dir.glob("*.safetensors"))


def write_dummy(model_dir: Path, pattern: str) -> None:
    """Write the tiny model's two files (atomically; rewritten on every start, so they always match
    this code). Refuses a directory that holds real weights, which it would otherwise clobber."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if any(model_dir.glob("*.safetensors")):
        raise ModelError(
            f"VOXTRAL_MODEL_DIR={model_dir} holds real weights; point VOXTRAL_MODEL_ID=dummy at "
            "another directory"
        )
    write_json_atomic(model_dir / "params.json", dummy_model.params())
    write_json_atomic(model_dir / "tekken.json", dummy_model.tekken(pattern))


def download(model_id: str, model_dir: Path, token: str | None) -> None:
    """Fetch the Mistral-format files with huggingface_hub (progress bars on stderr; resumes an
    interrupted download)."""
    # Imported here: only this path needs it, and it is slow to import.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            repo_id=model_id,
            local_dir=model_dir,
            allow_patterns=list(HUB_FILES),
            token=token,
        )
    except HfHubHTTPError as exc:
        # The message is the hub's; a token is never part of it.
        raise ModelError(f"could not download {model_id}: {exc}") from None
    except OSError as exc:
        raise ModelError(f"could not download {model_id} into {model_dir}: {exc}") from None
    if not is_complete(model_dir):
        raise ModelError(
            f"{model_id} was downloaded into {model_dir} but it lacks one of {', '.join(HUB_FILES)}"
        )


def prepare_model(config: LauncherConfig) -> PreparedModel:
    model_dir = config.model_dir
    if config.is_dummy:
        pattern, pattern_source = dummy_model.find_pattern(
            dummy_model.mistral_common_data_dirs(config.vllm_bin)
        )
        write_dummy(model_dir, pattern)
        log.info("dummy model written", model_dir=str(model_dir), tekken_pattern=pattern_source)
        return PreparedModel(model_dir, "dummy")
    if is_complete(model_dir):
        log.info("model reused", model_dir=str(model_dir), model_id=config.model_id)
        return PreparedModel(model_dir, "reused")
    log.info("downloading", model_id=config.model_id, model_dir=str(model_dir), files=HUB_FILES)
    download(config.model_id, model_dir, config.hf_token)
    return PreparedModel(model_dir, "downloaded")
