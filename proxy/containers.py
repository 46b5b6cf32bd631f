"""Audio files sent where raw samples belong: recognised by their header at the start of an
utterance's audio (or of the turn stream's), so that a WAV, MP3 or Ogg file is refused with a
clear `invalid_audio` instead of being transcribed as noise.

The server cannot validate raw samples (any bytes are some PCM), so only strong signatures count,
each with its header checked: `RIFF`...`WAVE` with a parsable `fmt ` chunk, `ID3` with a valid
version, `OggS` version 0, `fLaC` with its STREAMINFO block, an MP4 `ftyp` box, the EBML magic of
WebM and Matroska, and bare MPEG audio only when consecutive valid frame headers (three) sit
one computed frame length apart and agree on what a stream keeps from frame to frame. Real audio
is full of `FF` bytes (μ-law silence is `FF`, PCM16 -1 is `FF FF`), so a bare frame sync alone
proves nothing.

A WAV header describing exactly the session's format is not an error: it is stripped and the
samples after it are taken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.audio_convert import InvalidAudio
from proxy.audio_format import AudioFormat, Encoding

# WAVE format tags for the encodings the session takes.
WAVE_TAGS = {1: Encoding.PCM16, 6: Encoding.G711_ALAW, 7: Encoding.G711_ULAW}
WAVE_EXTENSIBLE = 0xFFFE
_WAVE_BITS = {Encoding.PCM16: 16, Encoding.G711_ALAW: 8, Encoding.G711_ULAW: 8}


@dataclass(frozen=True, slots=True)
class Container:
    """A recognised file header: `name` for the message; for WAV, the format its `fmt ` chunk
    describes (None when it is none the session takes) and where its samples start (None when
    the `data` chunk is not within the bytes seen)."""

    name: str
    wav_format: AudioFormat | None = None
    data_offset: int | None = None


def sniff(first: bytes) -> Container | None:
    """The container whose header `first` (an utterance's first audio) starts with, or None."""
    for check in (_wav, _id3, _ogg, _flac, _mp4, _ebml, _mpeg):
        container = check(first)
        if container is not None:
            return container
    return None


def _wav(data: bytes) -> Container | None:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, fmt, parsed = 12, None, False
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if channels < 1 or rate < 1 or bits < 1 or align < 1:
                return None
            parsed = True
            fmt = _wave_format(tag, channels, rate, bits)
        elif chunk_id == b"data":
            return Container("WAV", fmt, body) if parsed else None
        offset = body + size + (size & 1)  # chunks are padded to even sizes
    return Container("WAV", fmt) if parsed else None


def _wave_format(tag: int, channels: int, rate: int, bits: int) -> AudioFormat | None:
    encoding = WAVE_TAGS.get(tag)
    if encoding is None or _WAVE_BITS[encoding] != bits:
        return None
    try:
        return AudioFormat(encoding, rate, channels)
    except ValueError:  # a rate or channel count the server does not take
        return None


def _id3(data: bytes) -> Container | None:
    # "ID3", major version 2..4, a revision, flags, and a size of four 7-bit bytes.
    if len(data) < 10 or data[:3] != b"ID3" or data[3] not in (2, 3, 4) or data[4] == 0xFF:
        return None
    if any(byte & 0x80 for byte in data[6:10]):
        return None
    return Container("MP3 (ID3 tag)")


def _ogg(data: bytes) -> Container | None:
    # Page version 0; the header type uses only its three flag bits.
    if len(data) < 6 or data[:4] != b"OggS" or data[4] != 0 or data[5] & ~0x07:
        return None
    return Container("Ogg")


def _flac(data: bytes) -> Container | None:
    # The first metadata block is STREAMINFO (type 0), always 34 bytes long.
    if len(data) < 8 or data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        return None
    return Container("FLAC") if int.from_bytes(data[5:8], "big") == 34 else None


def _mp4(data: bytes) -> Container | None:
    if len(data) < 12 or data[4:8] != b"ftyp" or int.from_bytes(data[:4], "big") < 12:
        return None
    brand = data[8:12]
    return Container("MP4/M4A") if all(32 <= byte < 127 for byte in brand) else None


def _ebml(data: bytes) -> Container | None:
    # The EBML magic, then the header's size as a variable-length integer (never 0xFF... 0x00).
    if len(data) < 5 or data[:4] != b"\x1a\x45\xdf\xa3" or data[4] == 0:
        return None
    return Container("WebM/Matroska")


# MPEG audio frame headers: kbit/s by (version is 1, layer) and sample rates by version.
_BITRATES = {
    (1, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_BITRATES[(2, 3)] = _BITRATES[(2, 2)]
# Version bits: 0 is MPEG 2.5, 2 MPEG 2, 3 MPEG 1 (1 is reserved).
_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}


@dataclass(frozen=True, slots=True)
class _Frame:
    layer: int
    length: int
    # What stays the same from frame to frame of one stream: version, layer and CRC flag (the
    # second byte), sample rate, channel mode, and the copyright, original and emphasis bits.
    constant: tuple[int, int, int]


def _mpeg_frame(data: bytes, at: int) -> _Frame | None:
    """The MPEG audio frame header at `at`, when it is a valid one (no free format)."""
    if at + 4 > len(data):
        return None
    b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
    if data[at] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    if b3 & 3 == 2:  # reserved emphasis
        return None
    layer = 4 - layer_bits
    kbps = _BITRATES[(1 if version == 3 else 2, layer)][bitrate_index - 1]
    rate = _RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        length = (12 * kbps * 1000 // rate + padding) * 4
    else:
        per_frame = 72 if layer == 3 and version != 3 else 144
        length = per_frame * kbps * 1000 // rate + padding
    return _Frame(layer, length, (b1, rate_index, b3 & 0xCF))


# Consecutive frame headers bare MPEG audio must show: quiet PCM16 is full of `FF FF xx FF`
# (-1, then a small negative sample), which reads as a valid layer I header, and two of them
# one frame apart turn up in minutes of it; three do not.
MPEG_FRAMES = 3


def _mpeg(data: bytes) -> Container | None:
    first = _mpeg_frame(data, 0)
    if first is None:
        return None
    at = first.length
    for _ in range(MPEG_FRAMES - 1):
        frame = _mpeg_frame(data, at)
        if frame is None or frame.constant != first.constant:
            return None
        at += frame.length
    return Container("MP3" if first.layer == 3 else f"MPEG audio layer {first.layer}")


# What a client does after a refusal, by what the audio was for.
UTTERANCE_RESTART = "open a new utterance for new audio"
STREAM_RESTART = "a session.update that sets turn_detection or the audio format starts a new stream"


class FirstAudioCheck:
    """Checks the start of one utterance's audio (or one turn stream's) for a file header.

    `check(piece)` returns the piece to take: as it came, or without a WAV header that describes
    the session's own format. A file of any other kind raises `InvalidAudio`, and so does every
    later piece: the bytes after a file header are no samples of the session's format.
    `restart` tells the client how to start over (`UTTERANCE_RESTART` or `STREAM_RESTART`).
    """

    __slots__ = ("_checked", "_refusal", "format", "restart")

    def __init__(self, fmt: AudioFormat, restart: str = UTTERANCE_RESTART) -> None:
        self.format = fmt
        self.restart = restart
        self._checked = False
        self._refusal: str | None = None

    def check(self, piece: bytes) -> bytes:
        if self._refusal is not None:
            raise InvalidAudio(self._refusal)
        if self._checked or not piece:
            return piece
        self._checked = True
        container = sniff(piece)
        if container is None:
            return piece
        if container.wav_format == self.format and container.data_offset is not None:
            return piece[container.data_offset :]
        self._refusal = refusal(container, self.format, self.restart)
        raise InvalidAudio(self._refusal)


def refusal(container: Container, fmt: AudioFormat, restart: str = UTTERANCE_RESTART) -> str:
    """The `invalid_audio` message for a file sent as audio."""
    if container.wav_format is not None:
        what = f"WAV of {container.wav_format.describe()}"
        fix = (
            f"send its samples without the header in the session's format ({fmt.describe()}), "
            "or first set the session's audio to the file's format (session.update or the "
            "connect query)"
        )
    else:
        what = container.name
        fix = f"decode it first (ffmpeg, libsndfile) and send raw {fmt.describe()} samples"
    return (
        f"This audio is a file ({what}), not raw samples: {fix}. The rest of this audio is "
        f"refused too: {restart}."
    )
