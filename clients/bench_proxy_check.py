"""What each benchmark stream should receive, and how what it did receive compares.

The fake vLLM's transcript is a pure function of the audio (``tests.fake_vllm.predict_deltas``),
so every stream's deltas and done text are known in advance: anything lost, duplicated or
reordered on the way is counted exactly. The fake's token model also says which audio chunk
releases which token, which turns a delta's arrival time into a latency.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fake_vllm import FRAME_BYTES, predict_deltas

FRAME_MS = 80


def delay_frames(delay_ms: int) -> int:
    return delay_ms // FRAME_MS


def trigger_index(token: int, chunks: int, delay_ms: int) -> int:
    """Index of the sent audio message that releases token ``token`` (1-based), when the audio
    goes out as ``chunks`` appends of exactly one 80 ms frame followed by the final commit.

    With j frames received the fake has released ``j - 1 - n`` tokens (n = delay / 80; the
    model's 2.5 ms look-ahead needs the start of the next frame), so token i needs append
    number i + n + 1, index i + n. Tokens beyond the audio come with the final commit, which
    is message index ``chunks``.
    """
    return min(token + delay_frames(delay_ms), chunks)


@dataclass(frozen=True, slots=True)
class Expected:
    """What one stream must receive: every delta (empty ones included, as vLLM sends them),
    the done text, and for the non-empty deltas the message index that releases each."""

    deltas: tuple[str, ...]
    text: str
    nonempty: tuple[str, ...]
    nonempty_triggers: tuple[int, ...]


def expected_for(pcm: bytes, delay_ms: int) -> Expected:
    if len(pcm) % FRAME_BYTES:
        raise ValueError("benchmark audio must be whole 80 ms frames")
    chunks = len(pcm) // FRAME_BYTES
    deltas = predict_deltas(pcm, delay_ms=delay_ms)
    pairs = [(text, trigger_index(i, chunks, delay_ms)) for i, text in enumerate(deltas, 1) if text]
    return Expected(
        deltas=tuple(deltas),
        text="".join(deltas),
        nonempty=tuple(text for text, _ in pairs),
        nonempty_triggers=tuple(trigger for _, trigger in pairs),
    )


@dataclass(frozen=True, slots=True)
class Integrity:
    lost: int
    duplicated: int
    reordered: int
    text_mismatch: bool

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.text_mismatch)


def compare(expected: Sequence[str], received: Sequence[str], *, text_ok: bool) -> Integrity:
    """Lost = expected events that never came; duplicated = events beyond what was expected
    (a repeat or a stray); reordered = events that came but out of their place."""
    missing = Counter(expected) - Counter(received)
    extra = Counter(received) - Counter(expected)
    matcher = difflib.SequenceMatcher(None, list(expected), list(received), autojunk=False)
    in_order = sum(block.size for block in matcher.get_matching_blocks())
    duplicated = sum(extra.values())
    return Integrity(
        lost=sum(missing.values()),
        duplicated=duplicated,
        reordered=max(0, len(received) - duplicated - in_order),
        text_mismatch=not text_ok,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max of durations in seconds, reported in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "count": len(values_s),
        "p50": ms(percentile(values_s, 50)),
        "p90": ms(percentile(values_s, 90)),
        "p99": ms(percentile(values_s, 99)),
        "max": ms(max(values_s) if values_s else None),
    }
