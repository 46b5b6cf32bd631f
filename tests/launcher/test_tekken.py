"""Patching ``audio.transcription_delay_ms`` on a tekken.json shaped like the published one."""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from launcher.tekken import TekkenError, current_delay_ms, set_transcription_delay


def published_shape() -> dict[str, Any]:
    """The structure of the real model's tekken.json, with a few entries per list (non-ASCII
    tokens included, since re-encoding must keep them)."""
    return {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s+",
            "num_vocab_tokens": 150000,
            "default_vocab_size": 131072,
            "default_num_special_tokens": 1000,
            "version": "v13",
        },
        "vocab": [
            {"rank": 0, "token_bytes": base64.b64encode(b"A").decode(), "token_str": "A"},
            {"rank": 1, "token_bytes": base64.b64encode("é".encode()).decode(), "token_str": "é"},
            {"rank": 2, "token_bytes": base64.b64encode(b"\xff").decode(), "token_str": None},
        ],
        "special_tokens": [
            {"rank": 0, "token_str": "<unk>", "is_control": True},
            {"rank": 32, "token_str": "[STREAMING_PAD]", "is_control": True},
        ],
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": None,
            "transcription_format": "streaming",
            "transcription_delay_ms": 480,
            "streaming_look_ahead_ms": 2.5,
            "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 32,
        },
    }


@pytest.fixture
def tekken_file(tmp_path: Path) -> Path:
    path = tmp_path / "tekken.json"
    # The published file is written by a different serializer; the patch must still read it.
    path.write_text(json.dumps(published_shape(), indent=2, ensure_ascii=True), encoding="utf-8")
    return path


def test_sets_the_delay_as_an_integer_and_keeps_every_other_key(tekken_file: Path) -> None:
    assert set_transcription_delay(tekken_file, 960) is True

    patched = json.loads(tekken_file.read_text(encoding="utf-8"))
    assert patched["audio"]["transcription_delay_ms"] == 960
    assert type(patched["audio"]["transcription_delay_ms"]) is int
    expected = published_shape()
    expected["audio"]["transcription_delay_ms"] = 960
    assert patched == expected
    assert list(patched) == list(expected)
    assert list(patched["audio"]) == list(expected["audio"])


def test_same_value_leaves_the_file_untouched(tekken_file: Path) -> None:
    set_transcription_delay(tekken_file, 160)
    before = tekken_file.stat()
    content = tekken_file.read_bytes()

    assert set_transcription_delay(tekken_file, 160) is False

    after = tekken_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert tekken_file.read_bytes() == content
    assert current_delay_ms(tekken_file) == 160


def test_published_default_needs_no_write(tekken_file: Path) -> None:
    assert set_transcription_delay(tekken_file, 480) is False


def test_rewrite_replaces_the_file_and_leaves_no_temp_files(tekken_file: Path) -> None:
    tekken_file.chmod(0o640)
    inode = tekken_file.stat().st_ino

    set_transcription_delay(tekken_file, 2400)

    assert tekken_file.stat().st_ino != inode  # a new file renamed over the old one
    assert tekken_file.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tekken_file.parent.iterdir()) == ["tekken.json"]


def test_failed_write_keeps_the_original(
    tekken_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tekken_file.read_bytes()

    def broken_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        set_transcription_delay(tekken_file, 800)

    assert tekken_file.read_bytes() == original
    assert sorted(p.name for p in tekken_file.parent.iterdir()) == ["tekken.json"]


def test_a_string_delay_is_replaced_by_an_integer(tekken_file: Path) -> None:
    data = published_shape()
    data["audio"]["transcription_delay_ms"] = "480"
    tekken_file.write_bytes(orjson.dumps(data))

    assert set_transcription_delay(tekken_file, 480) is True
    assert current_delay_ms(tekken_file) == 480


def test_file_without_audio_section_is_refused(tmp_path: Path) -> None:
    data = copy.deepcopy(published_shape())
    del data["audio"]
    path = tmp_path / "tekken.json"
    path.write_bytes(orjson.dumps(data))

    with pytest.raises(TekkenError, match="no 'audio' section"):
        set_transcription_delay(path, 480)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]"])
def test_unreadable_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tekken.json"
    path.write_bytes(content)
    with pytest.raises(TekkenError):
        set_transcription_delay(path, 480)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TekkenError, match="does not exist"):
        set_transcription_delay(tmp_path / "tekken.json", 480)
