"""proxy.audio_format: what is supported, parsing from session.update and the query, sizes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.audio_format import (
    NATIVE,
    AudioFormat,
    Encoding,
    UnsupportedAudioFormat,
    make_format,
    parse_audio_object,
    parse_query,
)

SUPPORTED = {
    "format": ["pcm16", "g711_ulaw", "g711_alaw"],
    "sample_rate": {
        "pcm16": {"min": 8000, "max": 48000},
        "g711_ulaw": [8000],
        "g711_alaw": [8000],
    },
    "channels": [1, 2],
}


def refusal(value: Any) -> UnsupportedAudioFormat:
    with pytest.raises(UnsupportedAudioFormat) as caught:
        parse_audio_object(value)
    return caught.value


def query_refusal(params: dict[str, str]) -> UnsupportedAudioFormat:
    with pytest.raises(UnsupportedAudioFormat) as caught:
        parse_query(params)
    return caught.value


# ---------------------------------------------------------------- the format and its sizes


def test_default_is_what_vllm_takes() -> None:
    assert AudioFormat() == NATIVE == AudioFormat(Encoding.PCM16, 16000, 1)
    assert NATIVE.is_native
    assert NATIVE.as_payload() == {"format": "pcm16", "sample_rate": 16000, "channels": 1}
    assert not AudioFormat(Encoding.PCM16, 16000, 2).is_native
    assert not AudioFormat(Encoding.PCM16, 8000, 1).is_native


@pytest.mark.parametrize(
    ("fmt", "frame", "per_second", "chunk_20ms", "chunk_80ms"),
    [
        (NATIVE, 2, 32000, 640, 2560),
        (AudioFormat(Encoding.G711_ULAW, 8000, 1), 1, 8000, 160, 640),
        (AudioFormat(Encoding.G711_ALAW, 8000, 2), 2, 16000, 320, 1280),
        (AudioFormat(Encoding.PCM16, 48000, 2), 4, 192000, 3840, 15360),
        (AudioFormat(Encoding.PCM16, 44100, 1), 2, 88200, 1764, 7056),
        (AudioFormat(Encoding.PCM16, 11025, 1), 2, 22050, 440, 1764),  # 220.5 frames: down
    ],
)
def test_sizes(
    fmt: AudioFormat, frame: int, per_second: int, chunk_20ms: int, chunk_80ms: int
) -> None:
    assert fmt.frame_bytes == frame
    assert fmt.bytes_per_second == per_second
    assert fmt.chunk_bytes(20) == chunk_20ms
    assert fmt.chunk_bytes(80) == chunk_80ms
    assert fmt.chunk_bytes(80) % fmt.frame_bytes == 0
    assert fmt.duration_ms(per_second) == 1000
    assert fmt.duration_ms(per_second * 3 // 2 - frame) == 1499


def test_audio_problem_is_none_for_whole_frames() -> None:
    stereo = AudioFormat(Encoding.PCM16, 24000, 2)
    assert stereo.audio_problem(4) is None
    assert stereo.audio_problem(4000) is None
    assert AudioFormat(Encoding.G711_ULAW, 8000, 1).audio_problem(1) is None


@pytest.mark.parametrize(
    ("fmt", "nbytes"),
    [
        (NATIVE, 1),
        (NATIVE, 2561),
        (AudioFormat(Encoding.PCM16, 24000, 2), 2),  # half a stereo frame
        (AudioFormat(Encoding.PCM16, 24000, 2), 6),
        (AudioFormat(Encoding.G711_ALAW, 8000, 2), 3),
    ],
)
def test_audio_problem_names_the_frame_size(fmt: AudioFormat, nbytes: int) -> None:
    problem = fmt.audio_problem(nbytes)
    assert problem is not None
    assert f"{fmt.frame_bytes} bytes" in problem
    assert f"{nbytes} bytes" in problem
    assert fmt.describe() in problem
    assert "send whole frames" in problem


def test_empty_audio_is_a_problem() -> None:
    problem = AudioFormat(Encoding.G711_ULAW, 8000, 1).audio_problem(0)
    assert problem is not None
    assert "empty" in problem


def test_describe() -> None:
    assert AudioFormat(Encoding.G711_ULAW, 8000, 1).describe() == "g711_ulaw 8000 Hz mono"
    assert AudioFormat(Encoding.PCM16, 44100, 2).describe() == "pcm16 44100 Hz stereo"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((Encoding.G711_ULAW, 16000, 1), "sample_rate"),
        ((Encoding.PCM16, 7999, 1), "sample_rate"),
        ((Encoding.PCM16, 16000, 3), "channels"),
    ],
)
def test_construction_validates(args: tuple[Encoding, int, int], field: str) -> None:
    with pytest.raises(UnsupportedAudioFormat) as caught:
        AudioFormat(*args)
    assert caught.value.details["field"] == field


# ---------------------------------------------------------------- session.update audio object


@pytest.mark.parametrize(
    ("audio", "expected"),
    [
        ({}, NATIVE),
        ({"format": "pcm16"}, NATIVE),
        ({"format": "g711_ulaw"}, AudioFormat(Encoding.G711_ULAW, 8000, 1)),
        ({"format": "g711_alaw", "sample_rate": 8000}, AudioFormat(Encoding.G711_ALAW, 8000, 1)),
        ({"format": "g711_ulaw", "channels": 2}, AudioFormat(Encoding.G711_ULAW, 8000, 2)),
        ({"sample_rate": 8000}, AudioFormat(Encoding.PCM16, 8000, 1)),
        ({"sample_rate": 48000, "channels": 2}, AudioFormat(Encoding.PCM16, 48000, 2)),
        ({"format": "pcm16", "sample_rate": 44100}, AudioFormat(Encoding.PCM16, 44100, 1)),
        ({"format": "pcm16", "sample_rate": 12345}, AudioFormat(Encoding.PCM16, 12345, 1)),
        ({"format": None, "sample_rate": None, "channels": None}, NATIVE),
    ],
)
def test_audio_object(audio: dict[str, Any], expected: AudioFormat) -> None:
    assert parse_audio_object(audio) == expected


@pytest.mark.parametrize(
    ("audio", "field", "value", "says"),
    [
        ({"format": "opus"}, "audio.format", None, "pcm16, g711_ulaw, g711_alaw"),
        ({"format": "PCM16"}, "audio.format", None, "pcm16, g711_ulaw, g711_alaw"),
        ({"format": 16}, "audio.format", None, "pcm16, g711_ulaw, g711_alaw"),
        ({"sample_rate": 7999}, "audio.sample_rate", 7999, "8000 to 48000"),
        ({"sample_rate": 48001}, "audio.sample_rate", 48001, "8000 to 48000"),
        ({"sample_rate": 0}, "audio.sample_rate", 0, "8000 to 48000"),
        ({"sample_rate": 16000.0}, "audio.sample_rate", None, "8000 to 48000"),
        ({"sample_rate": "16000"}, "audio.sample_rate", None, "8000 to 48000"),
        ({"sample_rate": True}, "audio.sample_rate", None, "8000 to 48000"),
        ({"format": "g711_ulaw", "sample_rate": 16000}, "audio.sample_rate", 16000, "8000 only"),
        ({"format": "g711_alaw", "sample_rate": 44100}, "audio.sample_rate", 44100, "8000 only"),
        ({"channels": 0}, "audio.channels", 0, "1 or 2"),
        ({"channels": 6}, "audio.channels", 6, "1 or 2"),
        ({"channels": "2"}, "audio.channels", None, "1 or 2"),
        ({"channels": False}, "audio.channels", None, "1 or 2"),
        ({"encoding": "pcm16"}, "audio.encoding", None, "format, sample_rate and channels"),
    ],
)
def test_audio_object_refusals(
    audio: dict[str, Any], field: str, value: int | None, says: str
) -> None:
    error = refusal(audio)
    assert says in error.message
    assert error.message == str(error)
    assert error.details["field"] == field
    assert error.details["supported"] == SUPPORTED
    assert error.details.get("value") == value


@pytest.mark.parametrize("audio", [None, "pcm16", ["pcm16", 16000, 1], 16000])
def test_audio_must_be_an_object(audio: Any) -> None:
    error = refusal(audio)
    assert "must be an object" in error.message
    assert error.details["field"] == "audio"
    assert error.details["supported"] == SUPPORTED


def test_messages_say_what_to_do() -> None:
    for error in (
        refusal({"format": "opus"}),
        refusal({"sample_rate": 96000}),
        refusal({"format": "g711_ulaw", "sample_rate": 16000}),
        refusal({"channels": 6}),
        refusal({"bits": 16}),
    ):
        what, _, todo = error.message.partition(": ")
        assert what, error.message
        assert todo, error.message


def test_unknown_field_names_are_cut_short() -> None:
    error = refusal({"x" * 1000: 1})
    assert error.details["field"] == "audio." + "x" * 32


def test_string_values_are_not_echoed() -> None:
    secret = "sk-live-0123456789"
    assert secret not in repr(refusal({"format": secret}).details)
    assert secret not in repr(query_refusal({"sample_rate": secret}).details)


# ---------------------------------------------------------------- connect query


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, NATIVE),
        ({"session_id": "abc", "api_key": "k"}, NATIVE),
        ({"audio_format": "g711_ulaw"}, AudioFormat(Encoding.G711_ULAW, 8000, 1)),
        (
            {"audio_format": "g711_ulaw", "sample_rate": "8000"},
            AudioFormat(Encoding.G711_ULAW, 8000, 1),
        ),
        ({"sample_rate": "24000"}, AudioFormat(Encoding.PCM16, 24000, 1)),
        ({"sample_rate": "08000"}, AudioFormat(Encoding.PCM16, 8000, 1)),
        ({"audio_format": "pcm16", "channels": "2"}, AudioFormat(Encoding.PCM16, 16000, 2)),
    ],
)
def test_query(params: dict[str, str], expected: AudioFormat) -> None:
    assert parse_query(params) == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"audio_format": "mp3"}, "audio_format"),
        ({"audio_format": ""}, "audio_format"),
        ({"sample_rate": "8k"}, "sample_rate"),
        ({"sample_rate": "+8000"}, "sample_rate"),
        ({"sample_rate": " 8000"}, "sample_rate"),
        ({"sample_rate": "8_000"}, "sample_rate"),
        ({"sample_rate": "\uff11\uff16\uff10\uff10\uff10"}, "sample_rate"),  # full-width
        ({"sample_rate": "1" * 5000}, "sample_rate"),
        ({"sample_rate": ""}, "sample_rate"),
        ({"audio_format": "g711_alaw", "sample_rate": "16000"}, "sample_rate"),
        ({"channels": "3"}, "channels"),
        ({"channels": "two"}, "channels"),
    ],
)
def test_query_refusals(params: dict[str, str], field: str) -> None:
    error = query_refusal(params)
    assert error.details["field"] == field
    assert error.details["supported"] == SUPPORTED
    assert field in error.message


# ---------------------------------------------------------------- every supported format


def formats() -> st.SearchStrategy[AudioFormat]:
    pcm16 = st.builds(
        AudioFormat,
        st.just(Encoding.PCM16),
        st.integers(8000, 48000),
        st.sampled_from([1, 2]),
    )
    g711 = st.builds(
        AudioFormat,
        st.sampled_from([Encoding.G711_ULAW, Encoding.G711_ALAW]),
        st.just(8000),
        st.sampled_from([1, 2]),
    )
    return pcm16 | g711


@given(formats())
def test_every_format_round_trips_through_payload_and_query(fmt: AudioFormat) -> None:
    assert parse_audio_object(fmt.as_payload()) == fmt
    assert parse_query(fmt.query_params()) == fmt
    assert make_format(fmt.encoding.value, fmt.sample_rate, fmt.channels) == fmt


@given(st.integers(-(10**6), 10**6), st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw"]))
def test_rate_is_accepted_exactly_when_supported(rate: int, encoding: str) -> None:
    supported = 8000 <= rate <= 48000 if encoding == "pcm16" else rate == 8000
    audio = {"format": encoding, "sample_rate": rate}
    if supported:
        assert parse_audio_object(audio).sample_rate == rate
    else:
        assert refusal(audio).details["value"] == rate
