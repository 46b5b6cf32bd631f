"""The token clock: where in an utterance's audio each of vLLM's model steps sits. Pure, no I/O.

Voxtral Realtime decodes exactly one token per 80 ms frame, and vLLM sends one
``transcription.delta`` per token, empty ones included. Within one generation (a *run*), the delta
with index k (every delta counted from 0) is the model's output for the run's audio frame k, so
it sits k * 80 ms after the run's first sample. The transcription delay changes when a delta is
sent, never which frame it belongs to. A final commit adds right padding, so a run's last steps
lie past its audio: their time is clamped to the run's end. An utterance longer than one
generation goes on in the next run, whose index 0 sits where the previous run's audio ended.

How the session uses it, per utterance: ``clock.steps += 1`` for each empty delta,
``clock.add_text(delta, run_bytes)`` for each delta with text (it returns the delta's
``audio_ms``), ``clock.close_segment(pause_ms, run_bytes)`` around each step (a segment as soon
as a pause has closed it), ``clock.end_run(run_bytes)`` when a run of the utterance ends and
another follows, and ``clock.text()`` / ``clock.segments(pause_ms)`` once, at ``done``.

The emission arithmetic (how many deltas vLLM has sent after so much audio) is vLLM's clock and
lives with the rest of it in ``proxy.vllm_wire``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.vllm_wire import FRAME_BYTES, PCM_BYTES_PER_MS

DEFAULT_PAUSE_MS = 480
# What a session may ask for: from one frame (every gap splits) to a minute (nothing does).
MIN_PAUSE_MS = 80
MAX_PAUSE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    start_ms: int
    end_ms: int


class AudioClock:
    """One utterance's token clock. Positions are kept in bytes of 16 kHz PCM16 (exact) and
    given out in whole milliseconds from the utterance's first sample."""

    __slots__ = ("_base", "_open_from", "_pieces", "steps")

    def __init__(self) -> None:
        # Deltas of the current run so far, empty ones included; the session adds the empty ones.
        self.steps = 0
        # Bytes of the utterance's audio before the current run.
        self._base = 0
        # (start byte, end byte, text) of each delta with text, in order.
        self._pieces: list[tuple[int, int, str]] = []
        # The first piece of the segment not yet closed (``close_segment``); past the end when
        # none is open.
        self._open_from = 0

    def add_text(self, delta: str, run_bytes: int) -> int:
        """Records a delta with text as the current run's next step and returns its ``audio_ms``.

        ``run_bytes`` is the audio sent to the current run so far. vLLM sends a step only once
        its frame has arrived, unless the step is right padding, so clamping to it is exact."""
        end = self._base + run_bytes
        start = self._base + self.steps * FRAME_BYTES
        self.steps += 1
        start, stop = min(start, end), min(start + FRAME_BYTES, end)
        self._pieces.append((start, stop, delta))
        return start // PCM_BYTES_PER_MS

    def end_run(self, run_bytes: int) -> None:
        """The current run ended after taking ``run_bytes`` of audio; the next one starts there.
        (Audio vLLM dropped at a ``max_model_len`` cut still counts: it was spoken.)"""
        self._base += run_bytes
        self.steps = 0

    def close_segment(self, pause_ms: int, run_bytes: int) -> Segment | None:
        """The open segment, once it is known to be closed: called before a delta with text is
        recorded and after an empty one is counted, when the next text can start no earlier than
        the next step (within the ``run_bytes`` received), so at least ``pause_ms`` from the
        segment's last text closes it. ``segments`` later splits the text the same way."""
        pieces = self._pieces
        if self._open_from >= len(pieces):
            return None
        earliest = self._base + min(self.steps * FRAME_BYTES, run_bytes)
        if earliest - pieces[-1][1] < pause_ms * PCM_BYTES_PER_MS:
            return None
        segment = _segment(pieces[self._open_from :])
        self._open_from = len(pieces)
        return segment

    def text(self) -> str:
        return "".join(piece for _, _, piece in self._pieces)

    def segments(self, pause_ms: int = DEFAULT_PAUSE_MS) -> list[Segment]:
        """The text split where at least ``pause_ms`` (> 0) of audio passed between two deltas
        with text (a run of empty steps), each part timed from its first frame to its last."""
        pause = pause_ms * PCM_BYTES_PER_MS
        groups: list[list[tuple[int, int, str]]] = []
        for piece in self._pieces:
            if not groups or piece[0] - groups[-1][-1][1] >= pause:
                groups.append([])
            groups[-1].append(piece)
        return [_segment(group) for group in groups]


def _segment(pieces: list[tuple[int, int, str]]) -> Segment:
    """Pieces as one segment, timed from its first frame to its last."""
    return Segment(
        "".join(text for _, _, text in pieces),
        pieces[0][0] // PCM_BYTES_PER_MS,
        pieces[-1][1] // PCM_BYTES_PER_MS,
    )
