"""Sets ``audio.transcription_delay_ms`` in a model's ``tekken.json``.

vLLM reads the delay once, at startup, from this file; the realtime protocol has no per-session
override. The file is rewritten atomically (temp file in the same directory, then rename), so a
crash never leaves a half-written tokenizer, and only when the value differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from launcher.files import write_json_atomic

DELAY_KEY = "transcription_delay_ms"


class TekkenError(RuntimeError):
    """The file is missing, unreadable, or has no ``audio`` section (not a realtime model)."""


def read_tekken(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise TekkenError(f"{path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise TekkenError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TekkenError(f"{path} does not hold a JSON object")
    return data


def current_delay_ms(path: Path) -> int | None:
    audio = read_tekken(path).get("audio")
    value = audio.get(DELAY_KEY) if isinstance(audio, dict) else None
    return value if isinstance(value, int) else None


def set_transcription_delay(path: Path, delay_ms: int) -> bool:
    """Set the delay (an integer, in ms); return True when the file was rewritten."""
    data = read_tekken(path)
    audio = data.get("audio")
    if not isinstance(audio, dict):
        raise TekkenError(f"{path} has no 'audio' section; is this a Voxtral realtime model?")
    current = audio.get(DELAY_KEY)
    if isinstance(current, int) and not isinstance(current, bool) and current == delay_ms:
        return False
    audio[DELAY_KEY] = int(delay_ms)
    write_json_atomic(path, data)
    return True
