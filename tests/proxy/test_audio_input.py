"""``UtteranceAudio``: an utterance keeps converter state only between its first audio and its
flush, so utterances waiting in the line without audio, or after their last, cost little."""

from __future__ import annotations

import tracemalloc

from proxy.audio_format import AudioFormat, Encoding
from proxy.audio_input import UtteranceAudio

STEREO_48K = AudioFormat(Encoding.PCM16, 48_000, 2)
COUNT = 100


def traced() -> int:
    return tracemalloc.get_traced_memory()[0]


def test_converter_state_lives_from_the_first_audio_to_the_flush() -> None:
    chunk = bytes(STEREO_48K.chunk_bytes(80))
    tracemalloc.start()
    try:
        start = traced()
        audios = [UtteranceAudio(STEREO_48K) for _ in range(COUNT)]
        opened = traced() - start
        for audio in audios:
            audio.take(chunk, len(chunk))
        converting = traced() - start
        for audio in audios:
            audio.flush()
        flushed = traced() - start
    finally:
        tracemalloc.stop()
    assert opened * 4 < converting
    assert flushed * 4 < converting
    assert all(audio.client_ms == 80 for audio in audios)


def test_the_flush_drains_the_converter_once() -> None:
    audio = UtteranceAudio(STEREO_48K)
    assert audio.flush() == []  # no audio: nothing made, nothing to drain
    chunk = bytes(STEREO_48K.chunk_bytes(50))
    sent = audio.take(chunk, len(chunk))
    tail = audio.flush()
    assert sum(n for _, n in sent + tail) > 0
    assert audio.flush() == []
