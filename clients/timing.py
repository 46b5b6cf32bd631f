"""Per-utterance timestamps and the latency figures derived from them."""

from __future__ import annotations

import time
from dataclasses import dataclass


def now() -> float:
    """The clock every timing uses: monotonic seconds."""
    return time.monotonic()


@dataclass
class UtteranceTimings:
    """Monotonic timestamps (seconds) of one utterance, plus how much audio it carried.

    Derived figures are None until the events they need have happened.
    """

    audio_s: float = 0.0
    opened: float | None = None  # opening commit sent
    first_audio: float | None = None  # first append sent
    first_word: float | None = None  # first non-empty delta received
    final_commit: float | None = None  # commit final:true sent
    done: float | None = None  # transcription.done received

    @property
    def ttfw_s(self) -> float | None:
        """Time to first word: first non-empty delta minus first audio sent."""
        if self.first_word is None or self.first_audio is None:
            return None
        return self.first_word - self.first_audio

    @property
    def finalize_s(self) -> float | None:
        """Finalization latency: `transcription.done` minus the final commit."""
        if self.done is None or self.final_commit is None:
            return None
        return self.done - self.final_commit

    @property
    def total_s(self) -> float | None:
        """First audio sent to `transcription.done`."""
        if self.done is None or self.first_audio is None:
            return None
        return self.done - self.first_audio

    @property
    def rtf(self) -> float | None:
        """Real-time factor: wall time from first audio to done, divided by the audio's length.

        When audio is paced at 1x this is at least 1 (the audio itself takes that long); with
        `--no-pace` it measures how much faster than real time the service transcribes.
        """
        total = self.total_s
        if total is None or self.audio_s <= 0:
            return None
        return total / self.audio_s

    def as_dict(self) -> dict[str, float | None]:
        """Derived figures in the units the tools print and store (ms and plain ratios)."""
        return {
            "audio_s": round(self.audio_s, 3),
            "ttfw_ms": _ms(self.ttfw_s),
            "finalize_ms": _ms(self.finalize_s),
            "total_ms": _ms(self.total_s),
            "rtf": None if self.rtf is None else round(self.rtf, 4),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)
