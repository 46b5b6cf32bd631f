"""The session's audio stream while turn detection is on: converted to 16 kHz, its recent audio
kept for the turns, and the detector that says where they are.

Part of the session (the session opens and closes the turns; this holds the stream's state).
Positions are byte offsets of the 16 kHz PCM16 stream from its first sample, so a VAD window
ending at ``t`` ms ends at byte ``t * PCM_BYTES_PER_MS``. The stream keeps only the audio a turn
may still need: what the VAD has not scored yet, and before that the prefix padding and the
speech being confirmed (``min_speech_ms``), or, in a turn, what has not gone upstream yet (a
turn's audio goes up as it arrives, up to ``MAX_TURN_LEAD_MS`` ahead of the VAD).
"""

from __future__ import annotations

from enum import Enum

from proxy.audio_convert import AudioConverter
from proxy.audio_format import AudioFormat
from proxy.containers import STREAM_RESTART, FirstAudioCheck
from proxy.turns import TurnDetector, TurnOptions
from proxy.vad import WINDOW_MS
from proxy.vllm_wire import PCM_BYTES_PER_MS

# Audio the VAD may be behind the client: past it, a client far faster than real time ends the
# session (inbound_queue_full) and an engine that cannot keep up is given up (``Backlog``);
# neither may grow the buffers here and in the VAD stream without bound.
MAX_UNSCORED_MS = 10_000
# How far a turn's audio may go upstream ahead of the VAD. A real-time client's audio is never
# held (in a turn the VAD lags it by at most a partial window, the 100 ms between rounds and a
# round: about 0.2 s on a busy machine); a client far faster than real time is held to the VAD's
# pace, so the turn it ends gets at most this much audio past the moment its end is known.
MAX_TURN_LEAD_MS = 300


class Backlog(Enum):
    """Who the VAD's backlog is blamed on once it passes ``MAX_UNSCORED_MS``."""

    # Most of it is audio the client sent ahead of real time.
    CLIENT = "client"
    # Most of it came at real-time pace, which a working engine keeps up with.
    ENGINE = "engine"


class TurnStream:
    __slots__ = (
        "_files",
        "_ring",
        "_ring_start",
        "converter",
        "detector",
        "received",
        "scored",
        "turn_count",
    )

    def __init__(self, options: TurnOptions, fmt: AudioFormat) -> None:
        self.detector = TurnDetector(options)
        self.converter = AudioConverter(fmt)
        self._files = FirstAudioCheck(fmt, STREAM_RESTART)
        # Stream bytes received (converted) and scored by the VAD.
        self.received = 0
        self.scored = 0
        self.turn_count = 0
        self._ring = bytearray()
        self._ring_start = 0

    @property
    def options(self) -> TurnOptions:
        return self.detector.options

    @property
    def unscored_ms(self) -> int:
        return (self.received - self.scored) // PCM_BYTES_PER_MS

    def backlog(self, client_lead_ms: float) -> Backlog | None:
        """Whose the unscored audio is once there is more than ``MAX_UNSCORED_MS`` of it (None
        while there is not). ``client_lead_ms``: how far the client's audio is ahead of real
        time; that much of the backlog is the client's, the rest arrived at real-time pace and
        the VAD fell behind it. The larger share is the cause."""
        unscored = self.unscored_ms
        if unscored <= MAX_UNSCORED_MS:
            return None
        return Backlog.ENGINE if unscored - client_lead_ms > client_lead_ms else Backlog.CLIENT

    @property
    def turn_end(self) -> int:
        """Where an open turn's audio ends now: all received, up to ``MAX_TURN_LEAD_MS`` past
        the VAD."""
        return min(self.received, self.scored + MAX_TURN_LEAD_MS * PCM_BYTES_PER_MS)

    @property
    def ring_bytes(self) -> int:
        return len(self._ring)

    def take(self, data: bytes) -> list[bytes]:
        """One piece of client audio, in the session's format; returns the 16 kHz chunks it
        completes (kept here too). Raises ``InvalidAudio`` (a file header at the stream's start
        included; a WAV header of the stream's format is stripped)."""
        samples = self._files.check(data)
        if data and not samples:
            return []  # a piece that was only a WAV header
        chunks = self.converter.feed(samples)
        for chunk in chunks:
            self._ring += chunk
            self.received += len(chunk)
        return chunks

    def next_request_id(self) -> str:
        self.turn_count += 1
        return f"{self.options.request_id_prefix}{self.turn_count}"

    def audio(self, start: int, end: int) -> bytes:
        """Stream bytes ``[start, end)`` (from the oldest kept if ``start`` is older: audio
        already given to a turn is not given again); nothing before ``end`` is kept."""
        start = max(start, self._ring_start)
        if end <= start:
            return b""
        piece = bytes(self._ring[start - self._ring_start : end - self._ring_start])
        self._forget(end)
        return piece

    def scored_to(self, window_end_ms: int) -> None:
        self.scored = window_end_ms * PCM_BYTES_PER_MS

    def trim_idle(self) -> None:
        """Outside a turn: keep what a turn confirmed later may still start with."""
        options = self.options
        keep_ms = options.prefix_padding_ms + options.min_speech_ms + WINDOW_MS
        self._forget(self.scored - keep_ms * PCM_BYTES_PER_MS)

    def _forget(self, before: int) -> None:
        drop = min(before, self.received) - self._ring_start
        if drop > 0:
            del self._ring[:drop]
            self._ring_start += drop
