"""write_json_atomic: the whole file or the old one, never half of it (the rewrite of an existing
file, and a failed write, are covered through tekken.json in test_tekken.py)."""

from __future__ import annotations

from pathlib import Path

import orjson

from launcher.files import write_json_atomic


def test_new_file_is_written_readable_with_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    write_json_atomic(path, {"dim": 3, "name": "ü"})
    assert orjson.loads(path.read_bytes()) == {"dim": 3, "name": "ü"}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["params.json"]


def test_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_json_atomic(path, [1, 2])
    assert orjson.loads(path.read_bytes()) == [1, 2]
    assert path.stat().st_mode & 0o777 == 0o600
