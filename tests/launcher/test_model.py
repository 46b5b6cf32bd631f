"""Model directory: reuse without network, download through huggingface_hub, dummy model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from launcher.config import load_config
from launcher.model import HUB_FILES, ModelError, is_complete, prepare_model


def config_for(model_dir: Path, **variables: str) -> Any:
    env = {"HOME": str(model_dir), "VOXTRAL_MODEL_DIR": str(model_dir), **variables}
    return load_config(env, detect_gpu=lambda: False)


def fill(model_dir: Path, names: tuple[str, ...] = HUB_FILES) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (model_dir / name).write_bytes(b"{}" if name.endswith(".json") else b"weights")


class RecordingDownload:
    """Stands in for huggingface_hub.snapshot_download (a network call)."""

    def __init__(self, writes: tuple[str, ...] = HUB_FILES) -> None:
        self.calls: list[dict[str, Any]] = []
        self.writes = writes

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        fill(Path(kwargs["local_dir"]), self.writes)
        return str(kwargs["local_dir"])


def test_complete_directory_is_reused_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = RecordingDownload()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    fill(tmp_path)

    prepared = prepare_model(config_for(tmp_path))

    assert prepared.source == "reused"
    assert download.calls == []


@pytest.mark.parametrize(
    "present",
    [("params.json", "tekken.json"), ("tekken.json", "consolidated.safetensors"), ()],
)
def test_incomplete_directory_is_not_complete(tmp_path: Path, present: tuple[str, ...]) -> None:
    fill(tmp_path, present)
    assert not is_complete(tmp_path)


def test_empty_weights_file_is_not_complete(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / "consolidated.safetensors").write_bytes(b"")
    assert not is_complete(tmp_path)


def test_download_fetches_only_the_mistral_files_as_real_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = RecordingDownload()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    model_dir = tmp_path / "voxtral"

    prepared = prepare_model(config_for(model_dir, HF_TOKEN="hf_abc"))

    assert prepared.source == "downloaded"
    (call,) = download.calls
    assert call["repo_id"] == "mistralai/Voxtral-Mini-4B-Realtime-2602"
    assert Path(call["local_dir"]) == model_dir
    assert sorted(call["allow_patterns"]) == sorted(HUB_FILES)
    assert call["token"] == "hf_abc"


def test_download_missing_files_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", RecordingDownload(("params.json",)))
    with pytest.raises(ModelError, match="lacks one of"):
        prepare_model(config_for(tmp_path / "voxtral"))


def test_dummy_model_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    download = RecordingDownload()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    model_dir = tmp_path / "dummy"

    prepared = prepare_model(config_for(model_dir, VOXTRAL_MODEL_ID="dummy"))

    assert prepared.source == "dummy"
    assert sorted(p.name for p in model_dir.iterdir()) == ["params.json", "tekken.json"]
    assert download.calls == []
