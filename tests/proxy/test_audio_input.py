"""``UtteranceAudio``: an utterance keeps converter state only between its first audio and its
flush, so utterances waiting in the line without audio, or after their last, cost little; and
converted audio waits until it lasts as long as what the caller wants, then comes out as it
would piece by piece. (The file header check of the first piece is in test_containers.py.)"""

from __future__ import annotations

import base64
import tracemalloc

import pytest

from proxy.audio_convert import AudioConverter, InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.audio_input import UtteranceAudio
from tests.tones import ULAW_8K, encode, tone

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


def pieces(fmt: AudioFormat, seconds: float, piece_ms: int = 20) -> list[bytes]:
    data = encode(fmt, tone(fmt.sample_rate, 440.0, seconds))
    step = fmt.chunk_bytes(piece_ms)
    return [data[i : i + step] for i in range(0, len(data), step)]


def pcm(upstream: list[tuple[str | bytes, int]]) -> bytes:
    return b"".join(a if isinstance(a, bytes) else base64.b64decode(a) for a, _ in upstream)


@pytest.mark.parametrize("fmt", [ULAW_8K, STEREO_48K], ids=str)
def test_converted_audio_waits_until_it_lasts_as_long_as_wanted(fmt: AudioFormat) -> None:
    audio = UtteranceAudio(fmt)
    parts = pieces(fmt, 0.3)
    wanted = 100 * 32  # 100 ms of vLLM's audio: five 20 ms pieces
    out = []
    for index, part in enumerate(parts[:10]):
        upstream = audio.take(part, len(part), wanted)
        # Nothing until the fifth piece, which converts all five at once.
        assert bool(upstream) == (index in (4, 9)), index
        assert audio.waiting_bytes == (len(part) * ((index + 1) % 5))
        out += upstream
    out += audio.take(parts[10], len(parts[10]))  # nothing wanted: converted at once
    assert audio.waiting_bytes == 0
    for part in parts[11:]:
        out += audio.take(part, len(part), 10**9)  # waits for the flush
    assert audio.waiting_bytes == sum(map(len, parts[11:]))
    out += audio.flush()
    assert audio.waiting_bytes == 0
    reference = AudioConverter(fmt)
    expected = [c for p in parts for c in reference.feed(p)] + reference.flush()
    assert pcm(out) == b"".join(expected)
    assert audio.client_bytes == sum(map(len, parts))


def test_base64_and_bytes_wait_together_in_order() -> None:
    audio = UtteranceAudio(ULAW_8K)
    parts = pieces(ULAW_8K, 0.1)
    out = []
    for index, part in enumerate(parts):
        data: str | bytes = base64.b64encode(part).decode() if index % 2 else part
        out += audio.take(data, len(part), 10**9)
    out += audio.flush()
    reference = AudioConverter(ULAW_8K)
    assert pcm(out) == b"".join([c for p in parts for c in reference.feed(p)] + reference.flush())


def test_native_audio_never_waits() -> None:
    audio = UtteranceAudio(NATIVE)
    piece = bytes(640)
    [(sent, size)] = audio.take(piece, len(piece), 10**9)
    assert sent is piece
    assert size == 640
    assert audio.waiting_bytes == 0


@pytest.mark.parametrize("wanted", [0, 10**9])
def test_a_partial_frame_is_refused_at_once_and_nothing_is_kept(wanted: int) -> None:
    audio = UtteranceAudio(STEREO_48K)
    whole = pieces(STEREO_48K, 0.04)
    out = audio.take(whole[0], len(whole[0]), wanted)
    with pytest.raises(InvalidAudio) as caught:
        audio.take(b"\x00" * 6, 6, wanted)  # a stereo frame and a half
    assert caught.value.message == STEREO_48K.audio_problem(6)
    assert audio.client_bytes == len(whole[0])
    assert audio.waiting_bytes == (len(whole[0]) if wanted else 0)
    out += audio.take(whole[1], len(whole[1]), wanted) + audio.flush()
    reference = AudioConverter(STEREO_48K)
    expected = [c for p in whole for c in reference.feed(p)] + reference.flush()
    assert pcm(out) == b"".join(expected)
