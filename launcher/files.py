"""Writing the model directory's JSON files (the dummy model's, the patched ``tekken.json``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orjson


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON next to ``path`` and rename it over ``path``: a crash never leaves a
    half-written file, and the file keeps its permissions."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(data))
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            tmp.chmod(path.stat().st_mode & 0o777)
        else:
            tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
