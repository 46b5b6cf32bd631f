"""What each benchmark stream should receive, and how what it did receive compares.

The fake vLLM's transcript is a pure function of the audio (``devtools.fake_vllm.predict_deltas``),
so every stream's deltas and done text are known in advance: anything lost, duplicated or
reordered on the way is counted exactly. The fake's token model also says which audio chunk
releases which token, which turns a delta's arrival time into a latency.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from clients.stats import summarize
from devtools.fake_vllm import predict_deltas
from proxy.vllm_wire import FRAME_BYTES, FRAME_MS


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


def expected_for_utterances(
    utterances: Sequence[tuple[int, bytes]], chunks: int, delay_ms: int
) -> Expected:
    """What a stream of back-to-back utterances must receive, in order: each is (its first
    chunk in the stream, its audio), and the stream has ``chunks`` appends in all. A token that
    comes with an utterance's final commit is released by that utterance's last append (its
    final commit goes right after it), or by the stream's final commit for the last one."""
    deltas: list[str] = []
    nonempty: list[str] = []
    triggers: list[int] = []
    for number, (first, pcm) in enumerate(utterances):
        want = expected_for(pcm, delay_ms)
        length = len(pcm) // FRAME_BYTES
        last = number == len(utterances) - 1
        deltas += want.deltas
        nonempty += want.nonempty
        triggers += [
            first + (t if t < length or last else length - 1) for t in want.nonempty_triggers
        ]
    assert utterances[-1][0] + len(utterances[-1][1]) // FRAME_BYTES == chunks
    return Expected(tuple(deltas), "".join(deltas), tuple(nonempty), tuple(triggers))


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


def summary_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """Durations in seconds summarized in milliseconds, with the percentiles of ``make bench``
    (``clients.stats``), plus the count and the maximum."""
    return {
        "count": len(values_s),
        **summarize((v * 1000 for v in values_s), ndigits=3),
        "max": round(max(values_s) * 1000, 3) if values_s else None,
    }
