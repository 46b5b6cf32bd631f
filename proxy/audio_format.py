"""The audio format a client sends: what is supported, parsing, validation and byte sizes.

Pure functions, standard library only: the Python clients import this module too, so both sides
share one definition of the formats, their limits and the query parameter names. A format given
in a `session.update` `audio` object or in the connect query is complete: a field left out takes
its default (pcm16; 16000 Hz for pcm16 and 8000 Hz for G.711; 1 channel), never the session's
previous value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard


class Encoding(StrEnum):
    """The wire's `format` values."""

    PCM16 = "pcm16"  # signed 16-bit little-endian
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"


# vLLM's model step, and so the natural piece of audio on the wire: 80 ms.
CHUNK_MS = 80
PCM16_MIN_RATE = 8_000
PCM16_MAX_RATE = 48_000
G711_RATE = 8_000  # G.711 is defined at 8 kHz only
CHANNEL_COUNTS = (1, 2)  # stereo is mixed down to mono
DEFAULT_RATES = {
    Encoding.PCM16: 16_000,
    Encoding.G711_ULAW: G711_RATE,
    Encoding.G711_ALAW: G711_RATE,
}

# The `session.update` `audio` object's fields, and the same three as connect query parameters.
FORMAT_FIELD, RATE_FIELD, CHANNELS_FIELD = "format", "sample_rate", "channels"
QUERY_FORMAT, QUERY_RATE, QUERY_CHANNELS = "audio_format", "sample_rate", "channels"

_FIELDS: tuple[str, str, str] = (FORMAT_FIELD, RATE_FIELD, CHANNELS_FIELD)
_ENCODING_VALUES = frozenset(e.value for e in Encoding)
_ENCODINGS = ", ".join(e.value for e in Encoding)
# A query value longer than this is no sample rate or channel count (and int() is not fed a
# thousand digits).
_MAX_DIGITS = 6


class UnsupportedAudioFormat(ValueError):
    """A format the service does not take: `message` says what to send instead, `details` lists
    what is supported (the `unsupported_audio_format` error's payload)."""

    def __init__(self, message: str, field: str, value: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = {"field": field, "supported": supported_formats()}
        # Numbers are echoed to help the client; strings are not (they could hold anything).
        if isinstance(value, int) and not isinstance(value, bool):
            self.details["value"] = value


def supported_formats() -> dict[str, Any]:
    """What the service takes, as listed in `unsupported_audio_format` details."""
    return {
        FORMAT_FIELD: [e.value for e in Encoding],
        RATE_FIELD: {
            Encoding.PCM16.value: {"min": PCM16_MIN_RATE, "max": PCM16_MAX_RATE},
            Encoding.G711_ULAW.value: [G711_RATE],
            Encoding.G711_ALAW.value: [G711_RATE],
        },
        CHANNELS_FIELD: list(CHANNEL_COUNTS),
    }


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_rate(encoding: Encoding, rate: object, name: str) -> int:
    if encoding is Encoding.PCM16:
        if _is_int(rate) and PCM16_MIN_RATE <= rate <= PCM16_MAX_RATE:
            return rate
        raise UnsupportedAudioFormat(
            f"pcm16 audio takes {name} {PCM16_MIN_RATE} to {PCM16_MAX_RATE} (a whole number "
            f"of Hz): resample to a rate in that range.",
            name,
            rate,
        )
    if _is_int(rate) and rate == G711_RATE:
        return rate
    raise UnsupportedAudioFormat(
        f"{encoding.value} audio takes {name} {G711_RATE} only: send it at {G711_RATE} Hz, or "
        f"send pcm16 at its own rate.",
        name,
        rate,
    )


def _checked_channels(channels: object, name: str) -> int:
    if _is_int(channels) and channels in CHANNEL_COUNTS:
        return channels
    raise UnsupportedAudioFormat(
        f"{name} must be 1 or 2 (stereo is mixed down to mono): mix the audio down first.",
        name,
        channels,
    )


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A supported format (construction validates): `encoding` is the wire's `format`."""

    encoding: Encoding = Encoding.PCM16
    sample_rate: int = DEFAULT_RATES[Encoding.PCM16]
    channels: int = 1

    def __post_init__(self) -> None:
        _checked_rate(self.encoding, self.sample_rate, RATE_FIELD)
        _checked_channels(self.channels, CHANNELS_FIELD)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of one channel."""
        return 2 if self.encoding is Encoding.PCM16 else 1

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (a sample of every channel): audio comes in multiples."""
        return self.sample_bytes * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.frame_bytes * self.sample_rate

    @property
    def is_native(self) -> bool:
        """Whether this is what vLLM takes (PCM16, 16 kHz, mono), so no conversion is needed."""
        return self == NATIVE

    def duration_ms(self, nbytes: int) -> int:
        """Whole milliseconds of audio in `nbytes` bytes (sum the bytes first, then convert)."""
        return nbytes * 1000 // self.bytes_per_second

    def chunk_bytes(self, ms: int) -> int:
        """The size of `ms` milliseconds of audio, rounded down to whole frames."""
        return self.sample_rate * ms // 1000 * self.frame_bytes

    def audio_problem(self, nbytes: int) -> str | None:
        """Why `nbytes` bytes cannot be one piece of audio in this format (for `invalid_audio`),
        or None when they can: a piece is non-empty and made of whole sample frames."""
        if nbytes == 0:
            return "Audio must not be empty: send at least one sample frame."
        if nbytes % self.frame_bytes:
            return (
                f"Audio in {self.describe()} comes in whole sample frames of {self.frame_bytes} "
                f"bytes; this piece has {nbytes} bytes: send whole frames."
            )
        return None

    def describe(self) -> str:
        """A short human form, e.g. `g711_ulaw 8000 Hz mono`."""
        layout = "mono" if self.channels == 1 else "stereo"
        return f"{self.encoding.value} {self.sample_rate} Hz {layout}"

    def as_payload(self) -> dict[str, Any]:
        """The `audio` object shown in `session.created` and `session.updated`."""
        return {
            FORMAT_FIELD: self.encoding.value,
            RATE_FIELD: self.sample_rate,
            CHANNELS_FIELD: self.channels,
        }

    def query_params(self) -> dict[str, str]:
        """The connect query parameters that ask for this format."""
        return {
            QUERY_FORMAT: self.encoding.value,
            QUERY_RATE: str(self.sample_rate),
            QUERY_CHANNELS: str(self.channels),
        }


NATIVE = AudioFormat()  # what vLLM takes, and the default for every session


def make_format(
    encoding: object,
    sample_rate: object = None,
    channels: object = None,
    *,
    names: tuple[str, str, str] = _FIELDS,
) -> AudioFormat:
    """An `AudioFormat` from loosely typed values (None means the default); errors call the
    three values by `names` (a caller's own option names)."""
    return _build(encoding, sample_rate, channels, names)


def parse_audio_object(value: object) -> AudioFormat:
    """The format in a `session.update` payload's `audio` object."""
    if not isinstance(value, dict):
        raise UnsupportedAudioFormat(
            'audio must be an object such as {"format": "pcm16", "sample_rate": 16000, '
            '"channels": 1}.',
            "audio",
        )
    unknown = sorted(str(key)[:32] for key in value if key not in _FIELDS)
    if unknown:
        raise UnsupportedAudioFormat(
            f"audio has unknown field {unknown[0]!r}: use only format, sample_rate and channels.",
            f"audio.{unknown[0]}",
        )
    names = ("audio.format", "audio.sample_rate", "audio.channels")
    return _build(value.get(FORMAT_FIELD), value.get(RATE_FIELD), value.get(CHANNELS_FIELD), names)


def parse_query(params: Mapping[str, str]) -> AudioFormat:
    """The format asked for in the connect query (`audio_format`, `sample_rate`, `channels`);
    the default when none of them is given."""
    rate = params.get(QUERY_RATE)
    channels = params.get(QUERY_CHANNELS)
    return _build(
        params.get(QUERY_FORMAT),
        None if rate is None else _query_int(rate),
        None if channels is None else _query_int(channels),
        (QUERY_FORMAT, QUERY_RATE, QUERY_CHANNELS),
    )


def _build(
    encoding: object, sample_rate: object, channels: object, names: tuple[str, str, str]
) -> AudioFormat:
    format_name, rate_name, channels_name = names
    if encoding is None:
        encoding = Encoding.PCM16
    if not isinstance(encoding, str) or encoding not in _ENCODING_VALUES:
        raise UnsupportedAudioFormat(
            f"Unsupported audio format: set {format_name} to one of {_ENCODINGS}.", format_name
        )
    kind = Encoding(encoding)
    rate = _checked_rate(
        kind, DEFAULT_RATES[kind] if sample_rate is None else sample_rate, rate_name
    )
    count = _checked_channels(1 if channels is None else channels, channels_name)
    return AudioFormat(kind, rate, count)


def _query_int(text: str) -> int | str:
    """A query value as an int when it is plain decimal digits; as given otherwise (refused by
    the range checks with the field's own message)."""
    if text.isascii() and text.isdecimal() and len(text) <= _MAX_DIGITS:
        return int(text)
    return text
