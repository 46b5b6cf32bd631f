"""Turn detection: where a spoken turn starts and stops, from per-window speech probabilities.

Pure: no I/O, no model, no clock. The caller pushes each scored window in order (its end in ms
from the start of the session's audio, and its speech probability) and gets back at most one
fact per window. Speech is confirmed only after ``min_speech_ms`` of it, so a cough or a click
does not open a turn; a turn stops after ``silence_ms`` without speech. A window counts as
speech at ``threshold`` or above and as silence below ``threshold - HYSTERESIS`` (at most half
the threshold lower); one in between continues whatever it interrupts, so a probability
wavering around the threshold does not flip the state on every window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

HYSTERESIS = 0.15
# Bounds that keep a session's options meaningful; the upper ones stop a client from holding
# a turn (and its buffered audio) open for long.
_MAX_SILENCE_MS = 10_000
_MAX_PREFIX_PADDING_MS = 2_000
_MAX_MIN_SPEECH_MS = 5_000
# Room left in a request_id (at most 128 characters) for the turn's number.
_MAX_PREFIX_CHARS = 100


class TurnOptionsError(ValueError):
    """An invalid ``turn_detection`` object; the message says which field and what to send."""


@dataclass(frozen=True, slots=True)
class TurnOptions:
    threshold: float = 0.5
    silence_ms: int = 500
    prefix_padding_ms: int = 300
    min_speech_ms: int = 250
    # Turns are named ``{prefix}1``, ``{prefix}2``, ... in their events.
    request_id_prefix: str = "turn-"

    @classmethod
    def from_json(cls, raw: object) -> TurnOptions:
        """Reads a ``turn_detection`` object (each field optional; ``null``, which turns turn
        detection off, is the caller's to handle); raises ``TurnOptionsError``."""
        if not isinstance(raw, Mapping):
            raise TurnOptionsError(
                f"turn_detection {_shown(raw)} is invalid: use an object like "
                '{"type": "server_vad"}, or null to turn it off'
            )
        unknown = sorted(set(raw) - {"type", *(field.name for field in fields(cls))})
        if unknown:
            raise TurnOptionsError(
                f"turn_detection has unknown field(s) {', '.join(unknown)}: use threshold, "
                "silence_ms, prefix_padding_ms, min_speech_ms, request_id_prefix"
            )
        if raw.get("type", "server_vad") != "server_vad":
            raise TurnOptionsError(
                f'turn_detection.type {_shown(raw["type"])} is not supported: use "server_vad"'
            )
        defaults = cls()
        return cls(
            threshold=_threshold(raw.get("threshold", defaults.threshold)),
            silence_ms=_ms(raw, "silence_ms", defaults.silence_ms, 1, _MAX_SILENCE_MS),
            prefix_padding_ms=_ms(
                raw, "prefix_padding_ms", defaults.prefix_padding_ms, 0, _MAX_PREFIX_PADDING_MS
            ),
            min_speech_ms=_ms(raw, "min_speech_ms", defaults.min_speech_ms, 0, _MAX_MIN_SPEECH_MS),
            request_id_prefix=_prefix(raw.get("request_id_prefix", defaults.request_id_prefix)),
        )

    def as_payload(self) -> dict[str, Any]:
        """The ``turn_detection`` object shown in ``session.created`` and ``session.updated``."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {"type": "server_vad", **values}

    @property
    def silence_below(self) -> float:
        return self.threshold - min(HYSTERESIS, self.threshold / 2)


def _shown(value: object) -> str:
    """The client's value in an error, cut short: it may be anything and of any size."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _threshold(value: object) -> float:
    # bool is an int in Python; true/false is not a probability.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise TurnOptionsError(
            f"turn_detection.threshold {_shown(value)} is invalid: use a number between 0 and 1 "
            "(exclusive), e.g. 0.5"
        )
    return float(value)


def _prefix(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_PREFIX_CHARS:
        raise TurnOptionsError(
            f"turn_detection.request_id_prefix {_shown(value)} is invalid: use a string of 1 to "
            f'{_MAX_PREFIX_CHARS} characters, e.g. "turn-"'
        )
    return value


def _ms(raw: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TurnOptionsError(
            f"turn_detection.{name} {_shown(value)} is invalid: use a whole number of milliseconds "
            f"{low}..{high}"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed. It began at ``audio_start_ms``; the turn's audio starts at
    ``turn_start_ms`` (the prefix padding before it, never before the stream's start). Known
    once the stream has reached ``detected_ms``."""

    audio_start_ms: int
    turn_start_ms: int
    detected_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The turn's speech ended at ``audio_end_ms``: no speech since, and ``silence_ms`` of
    silence confirmed it at ``detected_ms``."""

    audio_end_ms: int
    detected_ms: int


TurnEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """One session's turn state: idle, speech being confirmed, or in a turn."""

    __slots__ = ("_candidate_ms", "_end_ms", "_in_turn", "_silence_ms", "options")

    def __init__(self, options: TurnOptions) -> None:
        self.options = options
        self._end_ms = 0
        self._in_turn = False
        # Start of unconfirmed speech (idle) or of the silence since speech (in a turn).
        self._candidate_ms: int | None = None
        self._silence_ms: int | None = None

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    @property
    def opens_at_ms(self) -> int | None:
        """Out of a turn with speech heard: where in the stream a window ending there or later
        would open a turn if the speech goes on (None when no speech is being confirmed)."""
        if self._in_turn or self._candidate_ms is None:
            return None
        return self._candidate_ms + self.options.min_speech_ms

    def push(self, window_end_ms: int, probability: float) -> TurnEvent | None:
        """One scored window, in order; returns the fact it establishes, if any."""
        if window_end_ms <= self._end_ms:
            raise ValueError(
                f"window ending at {window_end_ms} ms is not after the last one ({self._end_ms})"
            )
        start, self._end_ms = self._end_ms, window_end_ms
        options = self.options
        speech = probability >= options.threshold
        silence = probability < options.silence_below
        if not self._in_turn:
            if silence:
                self._candidate_ms = None
            elif speech and self._candidate_ms is None:
                self._candidate_ms = start
            if (
                self._candidate_ms is not None
                and window_end_ms - self._candidate_ms >= options.min_speech_ms
            ):
                audio_start = self._candidate_ms
                self._in_turn, self._candidate_ms, self._silence_ms = True, None, None
                return SpeechStarted(
                    audio_start_ms=audio_start,
                    turn_start_ms=max(0, audio_start - options.prefix_padding_ms),
                    detected_ms=window_end_ms,
                )
            return None
        if speech:
            self._silence_ms = None
        elif silence and self._silence_ms is None:
            self._silence_ms = start
        if self._silence_ms is not None and window_end_ms - self._silence_ms >= options.silence_ms:
            audio_end = self._silence_ms
            self._in_turn, self._silence_ms = False, None
            return SpeechStopped(audio_end_ms=audio_end, detected_ms=window_end_ms)
        return None

    def end_turn(self) -> None:
        """The session ended the turn itself (the client's ``commit final:true``, or a cancel):
        back to idle, so speech that goes on opens a new turn once confirmed again."""
        self._in_turn, self._candidate_ms, self._silence_ms = False, None, None
