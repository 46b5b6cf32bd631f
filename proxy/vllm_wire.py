"""vLLM's realtime wire format and token clock: the one place that knows them.

Used by the session (what to send, when vLLM owes an answer, where to cut a segment), by the
fake vLLM (which plays the same clock) and by the proxy benchmark. Pure: no I/O.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Final

import orjson

# PCM16 mono at 16 kHz: 32 bytes of audio per millisecond.
PCM_BYTES_PER_MS: Final = 32
# One model step consumes one 80 ms frame of audio.
FRAME_MS: Final = 80
FRAME_BYTES: Final = FRAME_MS * PCM_BYTES_PER_MS
# The prompt is BOS + this many left-pad tokens + one pad token per frame of delay. BOS takes
# one frame of the padded audio stream, like a pad token does.
LEFT_PAD_FRAMES: Final = 32
BOS_FRAMES: Final = 1
PROMPT_BASE_TOKENS: Final = BOS_FRAMES + LEFT_PAD_FRAMES
# The model looks 2.5 ms past each frame: a step runs only once that much more audio is in.
LOOK_AHEAD_BYTES: Final = 80
# The most audio the proxy gathers into one append while it waits for a step boundary (2 s):
# held audio sent at once goes up in appends of this size, far below vLLM's 16 MiB message cap.
APPEND_MAX_BYTES: Final = 25 * FRAME_BYTES
# Tokens a final commit adds after the last audio frame (its flush silence, minus the delay).
FLUSH_EXTRA_TOKENS: Final = 11

APPEND_PREFIX: Final = '{"type":"input_audio_buffer.append","audio":"'
APPEND_SUFFIX: Final = '"}'
COMMIT_OPEN: Final = '{"type":"input_audio_buffer.commit","final":false}'
COMMIT_FINAL: Final = '{"type":"input_audio_buffer.commit","final":true}'
# vLLM's compact encoding of a step that produced no text (about half of its events).
EMPTY_DELTA_TEXT: Final = '{"type":"transcription.delta","delta":""}'
# The token counts of a generation's ``transcription.done``.
USAGE_KEYS: Final = ("prompt_tokens", "completion_tokens", "total_tokens")
# How much of vLLM's error text the client is shown.
ERROR_TEXT_MAX_CHARS: Final = 300


@dataclass(frozen=True, slots=True)
class TranscriptionDelta:
    """One model step's text ("" for a step that produced none)."""

    text: str


@dataclass(frozen=True, slots=True)
class TranscriptionDone:
    """vLLM ended a generation (after a final commit, or by itself at its length cap)."""

    # The counts of ``USAGE_KEYS`` vLLM gave as whole numbers.
    usage: dict[str, int]


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """vLLM's ``error`` event, or vLLM's silence past the timeout (``STALLED``)."""

    code: str
    message: str | None

    def details(self) -> dict[str, str]:
        """What the client is told of it."""
        details = {"upstream_code": self.code}
        if self.message is not None:
            details["upstream_message"] = self.message
        return details


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other event (vLLM's greeting, say): it only shows vLLM is answering."""


UpstreamEvent = TranscriptionDelta | TranscriptionDone | UpstreamError | OtherEvent

# The empty delta, shared: decoding it costs nothing but the comparison.
EMPTY_DELTA: Final = TranscriptionDelta("")
OTHER_EVENT: Final = OtherEvent()
# What a stall ends the current utterance with (as if vLLM had sent it).
STALLED: Final = UpstreamError("no_response", "vLLM sent nothing for this utterance in time.")


def append_text(audio_b64: str) -> str:
    return APPEND_PREFIX + audio_b64 + APPEND_SUFFIX


def encode_audio(pcm: bytes) -> str:
    """PCM16 16 kHz mono as the base64 an append carries."""
    return binascii.b2a_base64(pcm, newline=False).decode()


def session_update_text(model: str) -> str:
    return orjson.dumps({"type": "session.update", "model": model}).decode()


def decode_event(raw: str) -> UpstreamEvent | None:
    """One upstream text message as a typed event, or None when it is not a JSON object. The
    empty delta is recognised without parsing (``EMPTY_DELTA``)."""
    if raw == EMPTY_DELTA_TEXT:
        return EMPTY_DELTA
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "transcription.delta":
        delta = event.get("delta")
        return TranscriptionDelta(delta) if isinstance(delta, str) and delta else EMPTY_DELTA
    if kind == "transcription.done":
        usage = event.get("usage")
        counts = (
            {k: v for k in USAGE_KEYS if isinstance(v := usage.get(k), int)}
            if isinstance(usage, dict)
            else {}
        )
        return TranscriptionDone(counts)
    if kind == "error":
        text = event.get("error")
        message = text[:ERROR_TEXT_MAX_CHARS] if isinstance(text, str) else None
        return UpstreamError(str(event.get("code")), message)
    return OTHER_EVENT


def prompt_tokens(delay_ms: int) -> int:
    """vLLM's prompt for each generation (``usage.prompt_tokens``): BOS, the left padding and
    one pad token per 80 ms of delay."""
    return PROMPT_BASE_TOKENS + delay_ms // FRAME_MS


def right_pad_frames(delay_ms: int) -> int:
    """Silence frames vLLM appends after the audio at a final commit: the delay, plus 11."""
    return delay_ms // FRAME_MS + FLUSH_EXTRA_TOKENS


def steps_sent(run_bytes: int, delay_ms: int, *, final: bool) -> int:
    """How many deltas vLLM has sent in a generation that has received ``run_bytes`` of audio
    (and its final commit, if ``final``), before any ``max_model_len`` cut (see ``max_steps``).

    vLLM feeds the model [left padding][the audio][right padding, once final]; step k runs as
    soon as that stream holds ``prompt_tokens + k`` frames plus the look-ahead, and not before.
    The left padding comes with the first audio, so a generation without audio makes no step.
    With the final commit this is floor((A - 2.5 ms) / 80 ms) + 11 for A of audio, whatever the
    delay.
    """
    if not run_bytes:
        return 0
    stream = LEFT_PAD_FRAMES * FRAME_BYTES + run_bytes
    if final:
        stream += right_pad_frames(delay_ms) * FRAME_BYTES
    return max(0, (stream - LOOK_AHEAD_BYTES) // FRAME_BYTES - prompt_tokens(delay_ms) + 1)


def step_audio_bytes(step: int, delay_ms: int) -> int:
    """The audio a generation needs before its step ``step`` (from 0) runs: ``steps_sent`` of
    this much is ``step + 1``, of a sample less ``step``."""
    return (prompt_tokens(delay_ms) - LEFT_PAD_FRAMES + step) * FRAME_BYTES + LOOK_AHEAD_BYTES


def max_steps(max_model_len: int, delay_ms: int) -> int:
    """The most steps one generation makes: vLLM ends it (and sends ``done`` by itself) once
    prompt plus generated tokens reach ``max_model_len``. The next one starts with new padding
    and without the audio the cut one held."""
    return max(0, max_model_len - prompt_tokens(delay_ms))


def owed_audio_bytes(delay_ms: int) -> int:
    """Audio sent since vLLM's last event after which its silence is a stall, not a pause:
    its delay plus two frames of margin."""
    return (delay_ms // FRAME_MS + 2) * FRAME_BYTES


def generation_tokens(audio_s: float, transcription_delay_ms: int) -> int:
    """The ``max_model_len`` that holds one generation of ``audio_s`` seconds of audio and its
    flush: what ``segment_audio_limit`` takes back to those seconds."""
    frames = -(-round(audio_s * 1000) // FRAME_MS)
    return frames + prompt_tokens(transcription_delay_ms) + FLUSH_EXTRA_TOKENS + 1


def segment_limit(
    max_model_len: int | None, transcription_delay_ms: int, segment_max_s: float
) -> int | None:
    """Bytes of audio one generation takes before the proxy carries the utterance over to the
    next: ``segment_max_s`` seconds, or less if vLLM's ``max_model_len`` cuts earlier."""
    own = round(segment_max_s * 1000) // FRAME_MS * FRAME_BYTES
    if max_model_len is None:
        return own
    engine = segment_audio_limit(max_model_len, transcription_delay_ms)
    return own if engine is None else min(own, engine)


def segment_audio_limit(max_model_len: int, transcription_delay_ms: int) -> int | None:
    """Bytes of audio one generation can take and still flush before vLLM's length cap.

    A generation of A frames with a final commit produces A + 11 tokens after a prompt of
    33 + delay/80 tokens; keeping that within ``max_model_len`` means vLLM never cuts it off.
    """
    frames = max_model_len - prompt_tokens(transcription_delay_ms) - FLUSH_EXTRA_TOKENS - 1
    return frames * FRAME_BYTES if frames > 0 else None
