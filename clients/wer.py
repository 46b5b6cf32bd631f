"""Reference transcripts (samples/transcripts.json) and word error rate through jiwer."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

TRANSCRIPTS_FILE = "transcripts.json"


@functools.cache
def _normalizer() -> Any:
    """Case, punctuation and hyphenation are not recognition errors: compare words only."""
    import jiwer  # loads in about a second: only when a WER is actually computed

    return jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.SubstituteRegexes({r"[-\u2010-\u2015]": " "}),
            jiwer.RemovePunctuation(),  # type: ignore[no-untyped-call]
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )


def reference_for(audio: str | Path) -> str | None:
    """The reference transcript of `audio`, from transcripts.json in the same folder, if any."""
    path = Path(audio)
    table = path.parent / TRANSCRIPTS_FILE
    if not table.is_file():
        return None
    try:
        entries = json.loads(table.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    entry = entries.get(path.name) if isinstance(entries, dict) else None
    if isinstance(entry, dict):
        entry = entry.get("text")
    return entry if isinstance(entry, str) and entry.strip() else None


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference` after normalization (1.0 for an empty hypothesis)."""
    if not re.search(r"\w", hypothesis):
        return 1.0
    import jiwer

    normalize = _normalizer()
    return float(
        jiwer.wer(
            reference, hypothesis, reference_transform=normalize, hypothesis_transform=normalize
        )
    )
