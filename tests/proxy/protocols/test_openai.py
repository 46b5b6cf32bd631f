"""The OpenAI Realtime codec alone: frames in, typed inputs out; session events in, frames out."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from proxy.audio_format import AudioFormat, Encoding
from proxy.protocols.models import ModelNames
from proxy.protocols.openai import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_FORMAT,
    EAGERNESS_SILENCE_MS,
    OPENAI_TRANSCRIPTION_MODELS,
    OpenAICodec,
    delay_name,
)
from proxy.session.events import (
    AudioCleared,
    Cancelled,
    ClientLimits,
    Delta,
    Done,
    ErrorCase,
    ErrorCode,
    SegmentClosed,
    SessionCreated,
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
    ClearAudio,
    FinishUtterance,
    InvalidInput,
    UpdateSettings,
)
from proxy.turns import TurnOptions

SERVED = "mistralai/Voxtral-Mini-4B-Realtime-2602"
LIMITS = ClientLimits(150.0, 5400.0, 256, 8_388_608, 1_048_576)


def codec(
    *, strict: bool = False, delay_ms: int = 480, aliases: tuple[str, ...] = ()
) -> OpenAICodec:
    return OpenAICodec(
        session_id="s1",
        models=ModelNames.of(SERVED, aliases, strict=strict, vendor=OPENAI_TRANSCRIPTION_MODELS),
        transcription_delay_ms=delay_ms,
        max_message_bytes=1_048_576,
    )


def settings(
    audio: AudioFormat = DEFAULT_FORMAT, turns: TurnOptions | None = None
) -> SessionSettings:
    return SessionSettings(SERVED, 480, 500, audio, turns, LIMITS)


def frame(text: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(text)
    return data


def one(c: OpenAICodec, event: Any) -> dict[str, Any]:
    frames = c.render(event)
    assert len(frames) == 1, frames
    return frame(frames[0])


def send(c: OpenAICodec, event: dict[str, Any]) -> Any:
    return c.parse_text(orjson.dumps(event).decode())


def update(c: OpenAICodec, audio_input: dict[str, Any], **extra: Any) -> Any:
    session = {"type": "transcription", "audio": {"input": audio_input}, **extra}
    return send(c, {"type": "session.update", "event_id": "ev-u", "session": session})


def pcm_b64(ms: int, rate: int = 24_000) -> str:
    return base64.b64encode(b"\x01\x00" * (rate * ms // 1000)).decode()


# ------------------------------------------------------------------ session.update


def test_a_livekit_update_maps_format_and_server_vad_and_echoes_the_clients_words() -> None:
    c = codec()
    parsed = update(
        c,
        {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 600,
                "silence_duration_ms": 350,
            },
        },
    )
    assert isinstance(parsed, UpdateSettings)
    assert parsed.model is None
    assert parsed.audio == AudioFormat(Encoding.PCM16, 24_000)
    assert parsed.turn_detection_given
    assert parsed.turn_detection == TurnOptions(
        threshold=0.5, silence_ms=350, prefix_padding_ms=600
    )
    assert c.label(parsed) == "session.update"
    turns = parsed.turn_detection
    shown = one(c, SessionUpdated(parsed.request_id, settings(turns=turns)))
    assert shown["type"] == "session.updated"
    audio_input = shown["session"]["audio"]["input"]
    assert shown["session"]["type"] == "transcription"
    assert audio_input["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_input["transcription"] == {
        "model": "gpt-4o-mini-transcribe",
        "delay": "low",
        "language": "en",
    }
    assert audio_input["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 600,
        "silence_duration_ms": 350,
    }


def test_null_turn_detection_is_commit_mode_and_an_absent_one_changes_nothing() -> None:
    c = codec()
    off = update(c, {"turn_detection": None})
    assert isinstance(off, UpdateSettings)
    assert off.turn_detection_given
    assert off.turn_detection is None
    untouched = update(c, {"transcription": {"model": SERVED}})
    assert isinstance(untouched, UpdateSettings)
    assert not untouched.turn_detection_given


@pytest.mark.parametrize(("eagerness", "silence_ms"), sorted(EAGERNESS_SILENCE_MS.items()))
def test_semantic_vad_is_server_vad_with_the_eagerness_silence(
    eagerness: str, silence_ms: int
) -> None:
    c = codec()
    parsed = update(c, {"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}})
    assert isinstance(parsed, UpdateSettings)
    assert parsed.turn_detection == TurnOptions(silence_ms=silence_ms)
    shown = one(c, SessionUpdated(parsed.request_id, settings(turns=parsed.turn_detection)))
    assert shown["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": eagerness,
    }


def test_server_vad_fields_that_do_not_apply_are_echoed() -> None:
    c = codec()
    turn = {"type": "server_vad", "create_response": True, "idle_timeout_ms": 5000}
    parsed = update(c, {"turn_detection": turn})
    assert isinstance(parsed, UpdateSettings)
    assert parsed.turn_detection == TurnOptions()
    shown = one(c, SessionUpdated(parsed.request_id, settings(turns=parsed.turn_detection)))
    assert shown["session"]["audio"]["input"]["turn_detection"] == {
        **turn,
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"type": "audio/pcmu"}, AudioFormat(Encoding.G711_ULAW, 8000)),
        ({"type": "audio/pcma"}, AudioFormat(Encoding.G711_ALAW, 8000)),
        ({"type": "audio/pcm"}, AudioFormat(Encoding.PCM16, 24000)),
    ],
)
def test_ga_formats(given: dict[str, Any], expected: AudioFormat) -> None:
    c = codec()
    parsed = update(c, {"format": given})
    assert isinstance(parsed, UpdateSettings)
    assert parsed.audio == expected
    shown = one(c, SessionUpdated(parsed.request_id, settings(audio=expected)))
    assert shown["session"]["audio"]["input"]["format"]["type"] == given["type"]


@pytest.mark.parametrize(
    ("audio_input", "param"),
    [
        ({"format": {"type": "audio/pcm", "rate": 16000}}, "session.audio.input.format.rate"),
        ({"format": {"type": "audio/opus"}}, "session.audio.input.format.type"),
        ({"transcription": {"model": "nope"}}, "session.audio.input.transcription.model"),
        ({"transcription": {"delay": "high"}}, "session.audio.input.transcription.delay"),
        ({"turn_detection": {"type": "loud"}}, "session.audio.input.turn_detection.type"),
        (
            {"turn_detection": {"type": "server_vad", "silence_duration_ms": 0}},
            "session.audio.input.turn_detection",
        ),
        ({"volume": 3}, "session.audio.input.volume"),
    ],
)
def test_a_refused_update_is_an_openai_error_with_the_param_and_the_event_id(
    audio_input: dict[str, Any], param: str
) -> None:
    c = codec()
    parsed = update(c, audio_input)
    assert isinstance(parsed, InvalidInput)
    error = one(c, SessionError(parsed.code, parsed.request_id, details=parsed.details))
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert error["error"]["event_id"] == "ev-u"
    assert error["error"]["message"]
    assert error["error"]["code"] in ("invalid_value", "unknown_parameter")


def test_the_silence_error_names_openais_field() -> None:
    c = codec()
    parsed = update(c, {"turn_detection": {"type": "server_vad", "silence_duration_ms": 0}})
    assert isinstance(parsed, InvalidInput)
    assert "silence_duration_ms" in parsed.message


def test_a_model_error_lists_the_served_name() -> None:
    c = codec()
    parsed = update(c, {"transcription": {"model": "nope"}})
    assert isinstance(parsed, InvalidInput)
    assert SERVED in parsed.message


def test_model_names_openais_by_default_only_the_configured_when_strict() -> None:
    lenient = ModelNames.of(SERVED, ("voxtral",), strict=False, vendor=OPENAI_TRANSCRIPTION_MODELS)
    strict = ModelNames.of(SERVED, ("voxtral",), strict=True, vendor=OPENAI_TRANSCRIPTION_MODELS)
    for name in OPENAI_TRANSCRIPTION_MODELS:
        assert lenient.accepts(name)
        assert not strict.accepts(name)
    for c in (lenient, strict):
        assert c.accepts(SERVED)
        assert c.accepts("voxtral")
        assert not c.accepts("whisper-2")


def test_the_served_delay_is_accepted_by_its_name_and_no_other() -> None:
    assert delay_name(480) == "low"
    assert delay_name(560) is None
    assert isinstance(update(codec(), {"transcription": {"delay": "low"}}), UpdateSettings)
    refused = update(codec(delay_ms=560), {"transcription": {"delay": "low"}})
    assert isinstance(refused, InvalidInput)
    assert "560 ms" in refused.message


def test_a_conversation_session_is_refused() -> None:
    parsed = send(codec(), {"type": "session.update", "session": {"type": "realtime"}})
    assert isinstance(parsed, InvalidInput)
    assert parsed.details["param"] == "session.type"
    assert "transcription" in parsed.message


def test_the_beta_update_maps_the_same_and_is_answered_in_beta_shape() -> None:
    c = codec()
    parsed = send(
        c,
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "whisper-1", "language": "fr"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
            },
        },
    )
    assert isinstance(parsed, UpdateSettings)
    assert parsed.audio == AudioFormat(Encoding.G711_ULAW, 8000)
    assert parsed.turn_detection == TurnOptions(silence_ms=800)
    assert c.label(parsed) == "transcription_session.update"
    shown = one(c, SessionUpdated(parsed.request_id, settings(parsed.audio, parsed.turn_detection)))
    assert shown["type"] == "transcription_session.updated"
    assert shown["session"]["input_audio_format"] == "g711_ulaw"
    assert shown["session"]["input_audio_transcription"] == {"model": "whisper-1", "language": "fr"}


def test_an_update_refused_by_the_session_keeps_the_previous_echo() -> None:
    c = codec()
    first = update(c, {"transcription": {"model": "whisper-1"}})
    assert isinstance(first, UpdateSettings)
    error = one(
        c,
        SessionError(
            ErrorCode.INVALID_MESSAGE,
            first.request_id,
            case=ErrorCase.FORMAT_CHANGE_IN_UTTERANCE,
        ),
    )
    assert error["error"]["event_id"] == "ev-u"
    assert error["error"]["param"] == "session.audio.input.format"
    second = update(c, {})
    assert isinstance(second, UpdateSettings)
    shown = one(c, SessionUpdated(second.request_id, settings()))
    assert shown["session"]["audio"]["input"]["transcription"]["model"] == SERVED


# ------------------------------------------------------------------ audio, commit, clear


def test_append_is_audio_for_the_open_item_and_bad_base64_is_refused() -> None:
    c = codec()
    audio = pcm_b64(50)
    parsed = send(c, {"type": "input_audio_buffer.append", "audio": audio})
    assert parsed == AppendAudio(None, audio, 2400)
    bad = send(c, {"type": "input_audio_buffer.append", "audio": "!!!"})
    assert isinstance(bad, InvalidInput)
    assert bad.details["param"] == "audio"


def test_a_commit_under_100_ms_is_refused_as_openai_does() -> None:
    c = codec()
    send(c, {"type": "input_audio_buffer.append", "audio": pcm_b64(50)})
    refused = send(c, {"type": "input_audio_buffer.commit", "event_id": "ev-c"})
    assert isinstance(refused, InvalidInput)
    error = one(c, SessionError(refused.code, refused.request_id, details=refused.details))
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "ev-c"
    send(c, {"type": "input_audio_buffer.append", "audio": pcm_b64(60)})
    assert send(c, {"type": "input_audio_buffer.commit"}) == FinishUtterance(None)
    # The buffer is empty again after a commit.
    assert isinstance(send(c, {"type": "input_audio_buffer.commit"}), InvalidInput)


def test_a_commit_the_session_finds_nothing_for_is_commit_empty() -> None:
    c = codec()
    send(c, {"type": "input_audio_buffer.append", "audio": pcm_b64(200)})
    assert send(c, {"type": "input_audio_buffer.commit", "event_id": "ev-c"}) == FinishUtterance(
        None
    )
    error = one(
        c, SessionError(ErrorCode.NO_ACTIVE_REQUEST, None, case=ErrorCase.NOTHING_TO_FINISH)
    )
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "ev-c"


def test_clear_is_clear_audio_and_cleared() -> None:
    c = codec()
    send(c, {"type": "input_audio_buffer.append", "audio": pcm_b64(200)})
    assert send(c, {"type": "input_audio_buffer.clear"}) == ClearAudio()
    assert isinstance(send(c, {"type": "input_audio_buffer.commit"}), InvalidInput)
    assert one(c, AudioCleared())["type"] == "input_audio_buffer.cleared"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "invalid_json"),
        ("[]", "invalid_message"),
        ('{"type": "response.create"}', "unknown_event"),
        ('{"audio": "AAAA"}', "invalid_type"),
    ],
)
def test_frames_that_are_no_transcription_event_are_refused(text: str, code: str) -> None:
    c = codec()
    parsed = c.parse_text(text)
    assert isinstance(parsed, InvalidInput)
    error = one(c, SessionError(parsed.code, parsed.request_id, details=parsed.details))
    assert error["error"]["code"] == code


def test_a_frame_over_the_size_limit_is_refused_openai_shaped() -> None:
    c = OpenAICodec(
        session_id="s1",
        models=ModelNames.of(SERVED, (), strict=False, vendor=OPENAI_TRANSCRIPTION_MODELS),
        transcription_delay_ms=480,
        max_message_bytes=2048,
    )
    parsed = send(c, {"type": "input_audio_buffer.append", "audio": pcm_b64(100)})
    assert isinstance(parsed, InvalidInput)
    assert parsed.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "2048" in parsed.message


def test_binary_frames_are_refused() -> None:
    assert isinstance(codec().parse_binary(b"\x00\x01"), InvalidInput)


# ------------------------------------------------------------------ events


def test_one_item_id_across_a_turns_events_and_unique_event_ids() -> None:
    c = codec()
    events = [
        UtteranceOpened("turn-1", None),
        SpeechStarted("turn-1", 120),
        Delta("turn-1", " hello", 400),
        SpeechStopped("turn-1", 900),
        UtteranceCommitted("turn-1", None),
        Delta("turn-1", " world", 800),
        Done(
            "turn-1",
            " hello world",
            (TextSegment(" hello world", 0, 900),),
            TokenUsage(10, 5, 15),
            1250,
        ),
    ]
    frames = [frame(f) for e in events for f in c.render(e)]
    assert [f["type"] for f in frames] == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert len({f["item_id"] for f in frames}) == 1
    assert frames[0]["item_id"].startswith("item_")
    assert len({f["event_id"] for f in frames}) == len(frames)
    assert frames[0]["audio_start_ms"] == 120
    assert frames[2]["audio_end_ms"] == 900
    assert frames[3]["previous_item_id"] is None
    completed = frames[-1]
    assert completed["transcript"] == " hello world"
    assert completed["content_index"] == 0
    assert completed["usage"] == {"type": "duration", "seconds": 1.25}
    assert completed["segments"] == [{"text": " hello world", "start": 0.0, "end": 0.9}]


def test_committed_chains_items_and_a_new_utterance_gets_a_new_item() -> None:
    c = codec()
    first = one(c, UtteranceCommitted("item-1", None))
    one(c, Done("item-1", "", (), TokenUsage(0, 0, 0), 0))
    second = one(c, UtteranceCommitted("item-2", "item-1"))
    assert second["item_id"] != first["item_id"]
    assert second["previous_item_id"] == first["item_id"]


def test_a_failed_item_is_failed_never_error() -> None:
    c = codec()
    c.render(UtteranceOpened("item-1", None))
    failed = one(c, UtteranceFailed("item-1", ErrorCode.UPSTREAM_ERROR, "vLLM failed"))
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    assert failed["content_index"] == 0
    assert failed["error"]["type"] == "server_error"
    assert failed["error"]["message"] == "vLLM failed"


def test_cancelled_opened_and_ended_have_no_frame() -> None:
    c = codec()
    assert c.render(UtteranceOpened("item-1", None)) == ()
    assert c.render(Cancelled("item-1", "cleared")) == ()
    assert c.render(SegmentClosed("item-1", TextSegment(" hi", 0, 80))) == ()


def test_session_created_shows_the_whole_default_session() -> None:
    c = codec()
    created = one(c, SessionCreated("sess_1", settings()))
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["id"] == "sess_1"
    assert session["type"] == "transcription"
    assert session["audio"]["input"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": SERVED, "delay": "low"},
        "turn_detection": None,
        "noise_reduction": None,
    }


def test_a_query_model_is_the_echoed_model() -> None:
    c = codec()
    assert not c.name_model("gpt-9")
    assert c.name_model("gpt-realtime-whisper")
    created = one(c, SessionCreated("sess_1", settings()))
    assert created["session"]["audio"]["input"]["transcription"]["model"] == "gpt-realtime-whisper"


@pytest.mark.parametrize(
    ("code", "close", "kind"),
    [
        (None, CLOSE_NORMAL, None),
        (ErrorCode.SERVER_AT_CAPACITY, CLOSE_TRY_AGAIN_LATER, "server_error"),
        (ErrorCode.SHUTTING_DOWN, CLOSE_TRY_AGAIN_LATER, "server_error"),
        (ErrorCode.UPSTREAM_UNAVAILABLE, CLOSE_INTERNAL, "server_error"),
        (ErrorCode.UNAUTHORIZED, CLOSE_POLICY, "invalid_request_error"),
        (ErrorCode.IDLE_TIMEOUT, CLOSE_POLICY, "invalid_request_error"),
        (ErrorCode.RATE_LIMITED, CLOSE_POLICY, "invalid_request_error"),
    ],
)
def test_session_ending_errors_and_their_close_codes(
    code: ErrorCode | None, close: int, kind: str | None
) -> None:
    c = codec()
    assert c.close_code(code) == close
    if code is not None:
        error = one(c, SessionError(code, None, closes=True))
        assert error["error"]["type"] == kind
        assert error["error"]["code"] == code.value
        assert error["error"]["message"]
        assert "envelope" not in error["error"]["message"]


@pytest.mark.parametrize(
    ("case", "says"),
    [
        (ErrorCase.TURN_DETECTION_FAILED, "stopped working"),
        (ErrorCase.TURN_DETECTION_OVERLOADED, "overloaded"),
    ],
)
def test_turn_detection_going_off_is_a_server_error_that_says_to_commit(
    case: ErrorCase, says: str
) -> None:
    error = one(codec(), SessionError(ErrorCode.INTERNAL_ERROR, None, case))["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert says in error["message"]
    assert "commit the input audio buffer" in error["message"]


def test_only_a_sensible_client_event_id_is_echoed() -> None:
    c = codec()
    for event_id, echoed in (("e" * 128, "e" * 128), ("e" * 129, None), (7, None)):
        parsed = send(c, {"type": "nope", "event_id": event_id})
        error = one(c, SessionError(parsed.code, parsed.request_id, details=parsed.details))
        assert error["error"]["event_id"] == echoed
