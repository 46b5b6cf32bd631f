"""The Mistral realtime transcription codec alone: frames in, typed inputs out; session events
in, frames out."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson
import pytest

from proxy.audio_format import NATIVE, AudioFormat, Encoding
from proxy.config import ProxyConfig
from proxy.protocols.mistral import (
    ENCODINGS,
    ERROR_CODES,
    MISTRAL_MODELS,
    SETTINGS_FROZEN_CODE,
    MistralCodec,
    close_code,
    codec_for,
    model_names,
)
from proxy.session.events import (
    AudioCleared,
    Cancelled,
    ClientLimits,
    Delta,
    Done,
    ErrorCase,
    ErrorCode,
    Pong,
    SegmentClosed,
    SessionCreated,
    SessionEnded,
    SessionError,
    SessionSettings,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TextSegment,
    TokenUsage,
    UtteranceCommitted,
    UtteranceFailed,
    UtteranceOpened,
)
from proxy.session.inputs import (
    AppendAudio,
    End,
    FinishUtterance,
    InvalidInput,
    UpdateSettings,
)

SERVED = "mistralai/Voxtral-Mini-4B-Realtime-2602"
LIMITS = ClientLimits(150.0, 5400.0, 256, 8_388_608, 1_048_576)
CONFIG = ProxyConfig(api_keys=("k",), served_model_name=SERVED)


def codec(**overrides: Any) -> MistralCodec:
    return codec_for(dataclasses.replace(CONFIG, **overrides), "conn-1")


def settings(audio: AudioFormat = NATIVE) -> SessionSettings:
    return SessionSettings(SERVED, 480, 600, audio, None, LIMITS)


def frames(c: MistralCodec, event: Any) -> list[dict[str, Any]]:
    return [orjson.loads(text) for text in c.render(event)]


def one(c: MistralCodec, event: Any) -> dict[str, Any]:
    (frame,) = frames(c, event)
    return frame


def update(c: MistralCodec, **session: Any) -> UpdateSettings | InvalidInput:
    parsed = c.parse_text(orjson.dumps({"type": "session.update", "session": session}).decode())
    assert isinstance(parsed, UpdateSettings | InvalidInput)
    return parsed


def refused(c: MistralCodec, **session: Any) -> InvalidInput:
    parsed = update(c, **session)
    assert isinstance(parsed, InvalidInput), parsed
    return parsed


def created(c: MistralCodec) -> dict[str, Any]:
    return one(c, SessionCreated("sess_abc", settings()))


# -- model names ---------------------------------------------------------------------------


def test_mistrals_names_and_the_aliases_are_accepted_besides_the_served_one() -> None:
    names = model_names(dataclasses.replace(CONFIG, model_aliases=("mine",)))
    for name in (SERVED, "mine", *MISTRAL_MODELS):
        assert names.accepts(name)
    assert not names.accepts("voxtral-mini-transcribe-realtime-3")


def test_strict_names_drop_mistrals_own() -> None:
    names = model_names(
        dataclasses.replace(CONFIG, model_aliases=("mine",), strict_model_names=True)
    )
    assert names.accepts("mine")
    assert not names.accepts(MISTRAL_MODELS[0])
    assert names.listed() == f"{SERVED}, mine"


def test_the_name_connected_with_is_the_sessions_model() -> None:
    c = codec()
    assert c.name_model(MISTRAL_MODELS[1])
    assert created(c)["session"]["model"] == MISTRAL_MODELS[1]
    assert not c.name_model("whisper-1")
    assert created(c)["session"]["model"] == MISTRAL_MODELS[1]


# -- client events -------------------------------------------------------------------------


def test_append_flush_and_end() -> None:
    c = codec()
    audio = base64.b64encode(b"\x01\x00" * 160).decode()
    parsed = c.parse_text(orjson.dumps({"type": "input_audio.append", "audio": audio}).decode())
    assert parsed == AppendAudio(None, audio, 320)
    assert c.label(parsed) == "input_audio.append"
    flush = c.parse_text('{"type": "input_audio.flush"}')
    assert flush == FinishUtterance(None, empty_done=True)
    assert c.label(flush) == "input_audio.flush"
    end = c.parse_text('{"type": "input_audio.end"}')
    assert end == End(empty_done=True)
    assert c.label(end) == "input_audio.end"


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("not json", ErrorCode.INVALID_JSON, "not valid JSON"),
        ("[1]", ErrorCode.INVALID_MESSAGE, "JSON object"),
        ('{"type": "input_audio.append"}', ErrorCode.INVALID_MESSAGE, "needs audio"),
        ('{"type": "input_audio.append", "audio": "a$=="}', ErrorCode.INVALID_AUDIO, "base64"),
        ('{"type": "input_audio_buffer.commit"}', ErrorCode.UNKNOWN_TYPE, "input_audio.flush"),
        ('{"audio": "AAAA"}', ErrorCode.UNKNOWN_TYPE, "input_audio.end"),
        ('{"type": "session.update"}', ErrorCode.INVALID_MESSAGE, "needs session"),
    ],
)
def test_bad_frames_are_refused_saying_what_to_send(
    frame: str, code: ErrorCode, words: str
) -> None:
    c = codec()
    parsed = c.parse_text(frame)
    assert isinstance(parsed, InvalidInput)
    assert parsed.code is code
    assert words in parsed.message
    assert c.label(parsed) == "invalid"


def test_binary_frames_and_oversized_frames_are_refused() -> None:
    c = codec(max_message_bytes=1024)
    binary = c.parse_binary(b"\x00\x01")
    assert isinstance(binary, InvalidInput)
    assert "input_audio.append" in binary.message
    large = c.parse_text('{"type": "input_audio.append", "audio": "' + "A" * 2000 + '"}')
    assert isinstance(large, InvalidInput)
    assert large.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "1024" in large.message


@pytest.mark.parametrize(
    ("name", "rate", "expected"),
    [
        ("pcm_s16le", 16_000, AudioFormat(Encoding.PCM16, 16_000)),
        ("pcm_s16le", 8_000, AudioFormat(Encoding.PCM16, 8_000)),
        ("pcm_s16le", 48_000, AudioFormat(Encoding.PCM16, 48_000)),
        ("pcm_mulaw", 8_000, AudioFormat(Encoding.G711_ULAW, 8_000)),
        ("pcm_alaw", 8_000, AudioFormat(Encoding.G711_ALAW, 8_000)),
    ],
)
def test_audio_formats(name: str, rate: int, expected: AudioFormat) -> None:
    parsed = update(codec(), audio_format={"encoding": name, "sample_rate": rate})
    assert isinstance(parsed, UpdateSettings)
    assert parsed.audio == expected


@pytest.mark.parametrize(
    ("audio_format", "words"),
    [
        ({"encoding": "pcm_f32le", "sample_rate": 16_000}, "pcm_s16le, pcm_mulaw, pcm_alaw"),
        ({"encoding": "pcm_s16le", "sample_rate": 96_000}, "8000 to 48000"),
        ({"encoding": "pcm_s16le", "sample_rate": True}, "8000 to 48000"),
        ({"encoding": "pcm_s16le"}, "8000 to 48000"),
        ({"encoding": "pcm_mulaw", "sample_rate": 16_000}, "8000 only"),
        ({"encoding": "pcm_s16le", "sample_rate": 16_000, "channels": 2}, "channels"),
        ("pcm_s16le", "an object"),
    ],
)
def test_unsupported_formats_are_refused(audio_format: object, words: str) -> None:
    refusal = refused(codec(), audio_format=audio_format)
    assert refusal.code is ErrorCode.UNSUPPORTED_AUDIO_FORMAT
    assert words in refusal.message


def test_the_served_delay_is_accepted_and_another_refused() -> None:
    assert isinstance(update(codec(), target_streaming_delay_ms=480), UpdateSettings)
    refusal = refused(codec(), target_streaming_delay_ms=960)
    assert refusal.code is ErrorCode.INVALID_MESSAGE
    assert "target_streaming_delay_ms=960 is not served" in refusal.message
    assert "send 480 or leave it out" in refusal.message


def test_settings_asking_for_nothing_are_accepted() -> None:
    parsed = update(
        codec(), diarize=False, context_bias=[], speaker_references={}, turn_detection=None
    )
    assert parsed == UpdateSettings("update-1")


@pytest.mark.parametrize(
    ("session", "words"),
    [
        ({"diarize": True}, "diarize is not available"),
        ({"context_bias": ["Voxtral"]}, "context_bias is not available"),
        ({"speaker_references": {"a": "b"}}, "speaker_references is not available"),
        ({"turn_detection": {"min_silence_ms": 500}}, "send input_audio.flush"),
        ({"language": 3}, "string or null"),
        ({"temperature": 0}, "session.temperature is not a setting"),
    ],
)
def test_settings_this_server_cannot_honour_are_refused(
    session: dict[str, Any], words: str
) -> None:
    refusal = refused(codec(), **session)
    assert refusal.code is ErrorCode.INVALID_MESSAGE
    assert words in refusal.message


# -- server events -------------------------------------------------------------------------


def test_session_created_carries_what_the_sdk_requires() -> None:
    session = created(codec())["session"]
    assert session == {
        "request_id": "sess_abc",
        "model": SERVED,
        "audio_format": {"encoding": "pcm_s16le", "sample_rate": 16_000},
        "target_streaming_delay_ms": 480,
        "language": None,
        "diarize": False,
        "turn_detection": None,
    }


def test_session_updated_shows_the_new_format_and_the_language_given() -> None:
    c = codec()
    created(c)
    parsed = update(c, audio_format={"encoding": "pcm_mulaw", "sample_rate": 8000}, language="fr")
    assert isinstance(parsed, UpdateSettings)
    assert parsed.audio is not None
    frame = one(c, SessionUpdated(parsed.request_id, settings(parsed.audio)))
    assert frame["type"] == "session.updated"
    assert frame["session"]["request_id"] == "sess_abc"
    assert frame["session"]["audio_format"] == {"encoding": "pcm_mulaw", "sample_rate": 8000}
    assert frame["session"]["language"] == "fr"


def test_a_refused_update_leaves_the_language_as_it_was() -> None:
    c = codec()
    created(c)
    parsed = update(c, language="fr")
    assert isinstance(parsed, UpdateSettings)
    frame = one(
        c, SessionError(ErrorCode.INVALID_MESSAGE, parsed.request_id, ErrorCase.SETTINGS_FROZEN)
    )
    assert frame["error"]["code"] == SETTINGS_FROZEN_CODE
    assert "fixed from the first audio chunk" in frame["error"]["message"]
    later = update(c)
    assert isinstance(later, UpdateSettings)
    assert one(c, SessionUpdated(later.request_id, settings()))["session"]["language"] is None


def test_delta_and_done_with_its_segments_first() -> None:
    c = codec()
    c.name_model(MISTRAL_MODELS[0])
    assert frames(c, Delta("utt-1", " hello", 400)) == [
        {"type": "transcription.text.delta", "text": " hello"}
    ]
    done = Done(
        "utt-1",
        " hello there",
        (TextSegment(" hello", 0, 560), TextSegment(" there", 1840, 2400)),
        TokenUsage(40, 30, 70),
        audio_ms=2_600,
    )
    first, second, last = frames(c, done)
    assert first == {"type": "transcription.segment", "text": " hello", "start": 0.0, "end": 0.56}
    assert second == {"type": "transcription.segment", "text": " there", "start": 1.84, "end": 2.4}
    assert last == {
        "type": "transcription.done",
        "model": MISTRAL_MODELS[0],
        "text": " hello there",
        "usage": {
            "prompt_tokens": 40,
            "completion_tokens": 30,
            "total_tokens": 70,
            "prompt_audio_seconds": 3,
        },
        "language": None,
        "segments": [
            {"text": " hello", "start": 0.0, "end": 0.56, "type": "transcription_segment"},
            {"text": " there", "start": 1.84, "end": 2.4, "type": "transcription_segment"},
        ],
    }


def test_an_empty_done_has_no_segments_and_whole_zero_seconds() -> None:
    (frame,) = frames(codec(), Done("utt-2", "", (), TokenUsage(0, 0, 0), audio_ms=0))
    assert frame["text"] == ""
    assert frame["segments"] == []
    assert frame["usage"]["prompt_audio_seconds"] == 0


def test_errors_carry_integer_codes() -> None:
    c = codec()
    failed = one(c, UtteranceFailed("utt-1", ErrorCode.UPSTREAM_ERROR))
    assert failed == {
        "type": "error",
        "error": {
            "message": "The transcription engine failed on this audio: send it again.",
            "code": 4501,
        },
    }
    worded = one(c, SessionError(ErrorCode.INVALID_MESSAGE, None, message="Say it right."))
    assert worded["error"] == {"message": "Say it right.", "code": 4101}
    limited = one(c, SessionError(ErrorCode.RATE_LIMITED, None, details={"retry_in": 2.5}))
    assert limited["error"]["code"] == 4008
    assert "Retry in 2.5 s" in limited["error"]["message"]
    ending = one(c, SessionError(ErrorCode.INVALID_MESSAGE, None, ErrorCase.ENDING_AFTER_END))
    assert "after input_audio.end" in ending["error"]["message"]


def test_every_error_code_has_an_integer_and_a_message() -> None:
    assert set(ERROR_CODES) == set(ErrorCode)
    assert len(set(ERROR_CODES.values())) == len(ERROR_CODES)
    for code in ErrorCode:
        frame = one(codec(), SessionError(code, None))
        assert type(frame["error"]["code"]) is int
        assert frame["error"]["message"]


def test_the_envelopes_close_codes_are_the_error_codes_of_the_same_conditions() -> None:
    for code in (
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.SERVER_AT_CAPACITY,
        ErrorCode.MAX_DURATION_REACHED,
        ErrorCode.INBOUND_QUEUE_FULL,
        ErrorCode.RATE_LIMITED,
    ):
        assert ERROR_CODES[code] == close_code(code)
    assert close_code(None) == 1000
    assert close_code(ErrorCode.UNSUPPORTED_MODEL) == 1008


@pytest.mark.parametrize(
    "event",
    [
        UtteranceOpened("utt-1", None),
        UtteranceCommitted("utt-1", None),
        SpeechStarted("utt-1", 0),
        SpeechStopped("utt-1", 500),
        Cancelled("utt-1", "superseded"),
        AudioCleared(),
        Pong(None, {}),
        SessionEnded(),
    ],
)
def test_events_without_a_word_in_mistrals_protocol_send_nothing(event: Any) -> None:
    assert codec().render(event) == ()


def test_every_encoding_name_round_trips() -> None:
    for name, encoding in ENCODINGS.items():
        rate = 16_000 if encoding is Encoding.PCM16 else 8_000
        c = codec()
        created(c)
        frame = one(c, SessionUpdated(None, settings(AudioFormat(encoding, rate))))
        assert frame["session"]["audio_format"] == {"encoding": name, "sample_rate": rate}


def test_a_segment_closed_by_a_pause_is_sent_at_once_and_not_again_with_the_done() -> None:
    c = codec()
    first = TextSegment(" hello", 0, 560)
    assert frames(c, SegmentClosed("utt-1", first)) == [
        {"type": "transcription.segment", "text": " hello", "start": 0.0, "end": 0.56}
    ]
    done = Done(
        "utt-1",
        " hello there",
        (first, TextSegment(" there", 1840, 2400)),
        TokenUsage(40, 30, 70),
        audio_ms=2_600,
    )
    rest, last = frames(c, done)
    assert rest == {"type": "transcription.segment", "text": " there", "start": 1.84, "end": 2.4}
    assert [s["text"] for s in last["segments"]] == [" hello", " there"]
    # The next utterance starts counting afresh: its done sends all of its segments.
    again = frames(c, dataclasses.replace(done, request_id="utt-2"))
    assert [f["type"] for f in again] == [*["transcription.segment"] * 2, "transcription.done"]


def test_too_many_utterances_in_flight_says_to_wait_for_a_done() -> None:
    frame = one(
        codec(),
        SessionError(
            ErrorCode.RATE_LIMITED,
            None,
            ErrorCase.TOO_MANY_UTTERANCES,
            details={"max_utterances_in_flight": 16},
        ),
    )
    assert frame["error"]["code"] == 4008
    assert "wait for a done" in frame["error"]["message"]
