"""One utterance as the session tracks it: its phase, its held audio, its text so far (on its
token clock), and the ``Done`` event it ends with."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from proxy.audio_clock import AudioClock
from proxy.audio_format import NATIVE, AudioFormat
from proxy.audio_input import UtteranceAudio
from proxy.session.actions import Outcome, UtteranceEnded
from proxy.session.events import Done, ErrorCode, TextSegment, TokenUsage
from proxy.vllm_wire import USAGE_KEYS


class Phase(Enum):
    """Where an utterance stands; each phase is one combination that can really happen.

    A *segment* is one vLLM generation. A segment closed by the proxy at vLLM's length cap
    ("rolling") ends with a final commit upstream, and the utterance goes on in a new one.
    """

    # The client sends audio; while current, its segment takes it as it comes.
    OPEN = "open"
    # The client sends audio; the running segment was closed at the cap, audio is held.
    OPEN_ROLLING = "open_rolling"
    # The client's final commit arrived; it is not current yet, so nothing was committed.
    CLOSED = "closed"
    # The client's final commit arrived; the running segment was closed at the cap and the
    # rest of the audio waits for the next one.
    CLOSED_ROLLING = "closed_rolling"
    # The final commit of the last segment went upstream: its done ends the utterance.
    FINALIZING = "finalizing"

    @property
    def client_final(self) -> bool:
        """The client's final commit arrived: no more audio will come."""
        return self in _CLIENT_FINAL

    @property
    def segment_committed(self) -> bool:
        """A final commit went upstream for the running segment."""
        return self in _SEGMENT_COMMITTED

    @property
    def rolling(self) -> bool:
        """The running segment's done starts the next segment rather than ending anything."""
        return self is Phase.OPEN_ROLLING or self is Phase.CLOSED_ROLLING


_CLIENT_FINAL = frozenset({Phase.CLOSED, Phase.CLOSED_ROLLING, Phase.FINALIZING})
_SEGMENT_COMMITTED = frozenset({Phase.OPEN_ROLLING, Phase.CLOSED_ROLLING, Phase.FINALIZING})


class HeldAudio:
    """Audio an utterance keeps until it can go upstream, oldest first: (base64 text or PCM,
    PCM bytes) chunks and their size in bytes as held here (``len`` of the held object, which is
    its size for base64 text and raw bytes alike), kept as a sum so the budget costs nothing per
    message.
    """

    __slots__ = ("_chunks", "nbytes")

    def __init__(self) -> None:
        self._chunks: deque[tuple[str | bytes, int]] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def append(self, audio: str | bytes, pcm_bytes: int) -> None:
        self._chunks.append((audio, pcm_bytes))
        self.nbytes += len(audio)

    def appendleft(self, audio: str | bytes, pcm_bytes: int) -> None:
        self._chunks.appendleft((audio, pcm_bytes))
        self.nbytes += len(audio)

    def popleft(self) -> tuple[str | bytes, int]:
        chunk = self._chunks.popleft()
        self.nbytes -= len(chunk[0])
        return chunk


@dataclass(slots=True)
class Utterance:
    request_id: str
    opened_at: float = 0.0
    # The utterance opened before this one in the session.
    previous_request_id: str | None = None
    phase: Phase = Phase.OPEN
    # The client's audio (its format is fixed for the utterance) on its way to vLLM's format.
    audio: UtteranceAudio = field(default_factory=lambda: UtteranceAudio(NATIVE))
    # Audio for vLLM not yet sent upstream.
    held: HeldAudio = field(default_factory=HeldAudio)
    segment_bytes: int = 0
    segments: int = 0
    # Its text, and where each piece of it sits in its audio.
    clock: AudioClock = field(default_factory=AudioClock)
    # Token usage summed over the utterance's vLLM generations.
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_KEYS, 0))
    first_audio_at: float | None = None
    first_delta_at: float | None = None
    final_at: float | None = None
    # Set for a turn that server VAD opened: the format the client sent (the turn's audio
    # arrives here already converted).
    turn_format: AudioFormat | None = None

    def ended(
        self, outcome: Outcome, error_code: ErrorCode | None, text: str, now: float
    ) -> UtteranceEnded:
        return UtteranceEnded(
            self.request_id,
            outcome,
            error_code,
            self.audio.client_ms,
            text,
            self.opened_at,
            self.first_audio_at,
            self.first_delta_at,
            self.final_at,
            now,
            self.audio.format if self.turn_format is None else self.turn_format,
            self.turn_format is not None,
        )

    def add_usage(self, usage: dict[str, int]) -> None:
        for name, value in usage.items():
            self.usage[name] += value

    def done(self, pause_ms: int) -> Done:
        """The ``Done`` it ends with: the text, split into segments at pauses of at least
        ``pause_ms``, vLLM's token counts and the audio as the client sent it."""
        usage = self.usage
        return Done(
            self.request_id,
            self.clock.text(),
            tuple(TextSegment(s.text, s.start_ms, s.end_ms) for s in self.clock.segments(pause_ms)),
            TokenUsage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
            self.audio.client_ms,
        )
