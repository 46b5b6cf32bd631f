"""proxy.protocols.envelope: parsing client frames strictly into the session's inputs, and
rendering the session's events as envelope frames."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audio_format import AudioFormat, Encoding, supported_formats
from proxy.protocols.envelope import (
    DEFAULT_MESSAGES,
    PING_PAYLOAD_MAX_BYTES,
    CloseCode,
    EnvelopeCodec,
    audio_bytes,
    frame_too_large,
    parse_binary_frame,
    parse_client_message,
    parse_text_frame,
)
from proxy.session.events import (
    AudioCleared,
    Cancelled,
    ClientEvent,
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
    CancelUtterance,
    ClearAudio,
    ClientInput,
    End,
    FinishUtterance,
    InvalidInput,
    OpenUtterance,
    Ping,
    UpdateSettings,
)
from proxy.turns import TurnOptions

SID = "sess-1"
RID = "req-1"
PCM = bytes(range(256)) * 4  # 1024 bytes, an even number
AUDIO = base64.b64encode(PCM).decode()
Parsed = tuple[str | None, ClientInput]


def parse(message: Any) -> Parsed:
    """A message's valid session_id and its input."""
    return parse_client_message(json.dumps(message))


@dataclass(frozen=True)
class Refused:
    """A refusal, with the session_id the codec read from the message."""

    session_id: str | None
    refusal: InvalidInput

    def __getattr__(self, name: str) -> Any:
        return getattr(self.refusal, name)


def refused(result: Parsed) -> Refused | None:
    session_id, message = result
    return Refused(session_id, message) if isinstance(message, InvalidInput) else None


def error_of(message: Any) -> Refused:
    result = refused(parse(message))
    assert result is not None, message
    return result


def envelope(kind: str, payload: Any = None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": kind, "session_id": SID, "request_id": RID}
    if payload is not None:
        message["payload"] = payload
    message.update(fields)
    return message


# ---------------------------------------------------------------- well-formed messages


def test_session_update() -> None:
    assert parse(envelope("session.update", {"model": "m"})) == (SID, UpdateSettings(RID, "m"))
    without_id = {"type": "session.update", "session_id": SID, "payload": {"model": "m"}}
    assert parse(without_id) == (SID, UpdateSettings(None, "m"))


def test_session_update_with_an_audio_format() -> None:
    ulaw = AudioFormat(Encoding.G711_ULAW, 8000, 1)
    audio = {"format": "g711_ulaw"}
    assert parse(envelope("session.update", {"audio": audio})) == (
        SID,
        UpdateSettings(RID, None, audio=ulaw),
    )
    both = parse(envelope("session.update", {"model": "m", "audio": ulaw.as_payload()}))
    assert both == (SID, UpdateSettings(RID, "m", audio=ulaw))


@pytest.mark.parametrize(
    ("audio", "field"),
    [
        ({"format": "flac"}, "audio.format"),
        ({"sample_rate": 7999}, "audio.sample_rate"),
        (1, "audio"),
    ],
)
def test_session_update_with_an_unsupported_format(audio: Any, field: str) -> None:
    error = error_of(envelope("session.update", {"audio": audio}))
    assert error.code is ErrorCode.UNSUPPORTED_AUDIO_FORMAT
    assert (error.session_id, error.request_id) == (SID, RID)
    assert error.details["field"] == field
    assert error.details["supported"] == supported_formats()
    assert error.message


@pytest.mark.parametrize("payload", [{}, {"model": 5}, {"model": None, "audio": None}])
def test_session_update_needs_a_model_or_an_audio_format(payload: dict[str, Any]) -> None:
    assert error_of(envelope("session.update", payload)).code is ErrorCode.INVALID_MESSAGE


def test_a_binary_frame_is_an_append_for_the_open_utterance() -> None:
    append = EnvelopeCodec(SID, 1024).parse_binary(b"\x01\x02\x03")
    assert append == AppendAudio(None, b"\x01\x02\x03", 3)
    assert isinstance(append, AppendAudio)
    assert append.binary


def test_frames_over_the_limit_are_refused_whole_and_the_rest_parsed() -> None:
    ping = orjson.dumps({"type": "ping", "session_id": SID}).decode()
    assert parse_text_frame(ping, len(ping)) == (SID, Ping(None, {}))
    _, too_large = parse_text_frame(ping, len(ping) - 1)
    assert isinstance(too_large, InvalidInput)
    assert too_large.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert too_large.details == {"max_message_bytes": len(ping) - 1}
    assert parse_binary_frame(b"\x01\x02", 2) == AppendAudio(None, b"\x01\x02", 2)
    too_large = parse_binary_frame(b"\x01\x02\x03", 2)
    assert isinstance(too_large, InvalidInput)
    assert too_large.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert too_large.details == {"max_message_bytes": 2}


def test_commit_defaults_to_not_final() -> None:
    assert parse(envelope("input_audio_buffer.commit")) == (SID, OpenUtterance(RID))
    assert parse(envelope("input_audio_buffer.commit", {})) == (SID, OpenUtterance(RID))
    assert parse(envelope("input_audio_buffer.commit", {"final": False})) == (
        SID,
        OpenUtterance(RID),
    )


def test_final_commit() -> None:
    assert parse(envelope("input_audio_buffer.commit", {"final": True})) == (
        SID,
        FinishUtterance(RID),
    )


def test_append_keeps_the_audio_and_counts_bytes() -> None:
    result = parse(envelope("input_audio_buffer.append", {"audio": AUDIO}))
    assert result == (SID, AppendAudio(RID, AUDIO, len(PCM)))


def test_cancel_default_and_given_reason() -> None:
    assert parse(envelope("cancel")) == (SID, CancelUtterance(RID, "client_request"))
    assert parse(envelope("cancel", {"reason": "user stop"})) == (
        SID,
        CancelUtterance(RID, "user stop"),
    )
    assert parse(envelope("cancel", {"reason": "r" * 256})) == (
        SID,
        CancelUtterance(RID, "r" * 256),
    )


def test_ping_echoes_any_payload_object() -> None:
    payload = {"n": 1, "nested": {"list": [1, "a", None]}, "f": 1.5}
    assert parse(envelope("ping", payload)) == (SID, Ping(RID, payload))
    assert parse({"type": "ping", "session_id": SID}) == (SID, Ping(None, {}))
    # A null payload is read as none at all (the fuzz test of the proxy relies on it).
    assert parse({"type": "ping", "session_id": SID, "payload": None}) == (SID, Ping(None, {}))


def test_ping_payload_up_to_the_cap_is_echoed_and_beyond_it_refused() -> None:
    # {"p":"..."} is 8 bytes of JSON around the padding.
    fits = {"p": "x" * (PING_PAYLOAD_MAX_BYTES - 8)}
    assert parse(envelope("ping", fits)) == (SID, Ping(RID, fits))
    error = error_of(envelope("ping", {"p": "x" * (PING_PAYLOAD_MAX_BYTES - 7)}))
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert error.request_id == RID
    assert error.details == {"max_ping_payload_bytes": PING_PAYLOAD_MAX_BYTES}
    assert str(PING_PAYLOAD_MAX_BYTES) in error.message
    # Unlike any other ping refusal: a client flooding big pings meets the rate limit.
    assert error.counts_toward_rate_limit


def test_a_megabyte_ping_is_refused() -> None:
    """Issue 16 finding 5: pings of 1 MB were echoed, piling up pongs for a client that never
    reads them."""
    error = error_of(envelope("ping", {"pad": "x" * 1_000_000}))
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_end() -> None:
    assert parse({"type": "end", "session_id": SID}) == (SID, End(None))
    assert parse(envelope("end")) == (SID, End(RID))


def test_unknown_extra_keys_are_ignored() -> None:
    message = envelope("input_audio_buffer.commit", {"final": True, "extra": 1}, extra={"x": 1})
    message["another"] = [1, 2]
    assert parse(message) == (SID, FinishUtterance(RID))
    ping = envelope("ping", {"a": 1}, version=2)
    assert parse(ping) == (SID, Ping(RID, {"a": 1}))


def test_null_request_id_means_absent_where_optional() -> None:
    assert parse(envelope("ping", request_id=None)) == (SID, Ping(None, {}))


@pytest.mark.parametrize("length", [1, 64, 128])
def test_id_lengths_accepted(length: int) -> None:
    ident = "x" * length
    message = {"type": "cancel", "session_id": ident, "request_id": ident}
    assert parse(message) == (ident, CancelUtterance(ident, "client_request"))


def test_non_ascii_ids_count_characters() -> None:
    ident = "é" * 128  # 256 bytes in UTF-8, but 128 characters
    assert parse({"type": "end", "session_id": ident}) == (ident, End(None))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "text", ["", " ", "{", "not json", "{'type': 'ping'}", '{"type":"ping"} x', "NaN", "[1,]"]
)
def test_not_json(text: str) -> None:
    result = refused(parse_client_message(text))
    assert result is not None
    assert result.code is ErrorCode.INVALID_JSON
    assert result.session_id is None
    assert result.request_id is None


@pytest.mark.parametrize("value", [[], [1], "ping", 1, 1.5, None, True])
def test_json_but_not_an_object(value: Any) -> None:
    assert error_of(value).code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("kind", [None, 1, [], {}, True])
def test_type_must_be_a_string(kind: Any) -> None:
    message: dict[str, Any] = {"session_id": SID, "request_id": RID}
    if kind is not None:
        message["type"] = kind
    error = error_of(message)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert (error.session_id, error.request_id) == (SID, RID)


@pytest.mark.parametrize("kind", ["", "PING", "input_audio_buffer.clear", "session.create", "x"])
def test_unknown_type(kind: str) -> None:
    error = error_of(envelope(kind))
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert (error.session_id, error.request_id) == (SID, RID)
    assert error.details == {"type": kind}


def test_unknown_type_detail_is_bounded() -> None:
    error = error_of(envelope("z" * 5000))
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert len(error.details["type"]) <= 128


KINDS = [
    "session.update",
    "input_audio_buffer.commit",
    "input_audio_buffer.append",
    "cancel",
    "ping",
    "end",
]
VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "session.update": {"model": "m"},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.append": {"audio": AUDIO},
    "cancel": {},
    "ping": {},
    "end": {},
}
BAD_IDS: list[Any] = ["", "x" * 129, 5, 1.5, [], {}, True]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("session_id", [*BAD_IDS, None, "missing"])
def test_session_id_is_required_on_every_message(kind: str, session_id: Any) -> None:
    message = envelope(kind, VALID_PAYLOADS[kind])
    if session_id == "missing":
        del message["session_id"]
    else:
        message["session_id"] = session_id
    error = error_of(message)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.session_id is None
    assert error.request_id == RID


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("request_id", BAD_IDS)
def test_request_id_when_present_must_be_valid(kind: str, request_id: Any) -> None:
    error = error_of(envelope(kind, VALID_PAYLOADS[kind], request_id=request_id))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.session_id == SID
    assert error.request_id is None


@pytest.mark.parametrize("kind", ["input_audio_buffer.commit", "cancel"])
@pytest.mark.parametrize("absent", ["missing", None])
def test_request_id_required_on_commit_and_cancel(kind: str, absent: Any) -> None:
    message = envelope(kind, VALID_PAYLOADS[kind])
    if absent == "missing":
        del message["request_id"]
    else:
        message["request_id"] = None
    error = error_of(message)
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert (error.session_id, error.request_id) == (SID, None)


@pytest.mark.parametrize("absent", ["missing", None])
def test_an_append_may_omit_request_id(absent: Any) -> None:
    # The session refuses it unless turn detection is on (the audio then goes to its stream).
    message = envelope("input_audio_buffer.append", VALID_PAYLOADS["input_audio_buffer.append"])
    if absent == "missing":
        del message["request_id"]
    else:
        message["request_id"] = None
    _, parsed = parse(message)
    assert isinstance(parsed, AppendAudio)
    assert parsed.request_id is None


def test_session_update_reads_turn_detection() -> None:
    _, on = parse(envelope("session.update", {"turn_detection": {"silence_ms": 700}}))
    assert isinstance(on, UpdateSettings)
    assert (on.model, on.turn_detection_given) == (None, True)
    assert on.turn_detection == TurnOptions(silence_ms=700)
    _, off = parse(envelope("session.update", {"model": "m", "turn_detection": None}))
    assert isinstance(off, UpdateSettings)
    assert (off.model, off.turn_detection_given, off.turn_detection) == ("m", True, None)
    _, untouched = parse(envelope("session.update", {"model": "m"}))
    assert isinstance(untouched, UpdateSettings)
    assert untouched.turn_detection_given is False


def test_session_update_refuses_bad_turn_detection_with_the_field_named() -> None:
    error = error_of(envelope("session.update", {"turn_detection": {"threshold": 2}}))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "turn_detection.threshold 2 is invalid" in error.message
    nothing = error_of(envelope("session.update", {}))
    assert "payload.model" in nothing.message
    assert "turn_detection" in nothing.message


@pytest.mark.parametrize("kind", ["session.update", "ping", "end"])
def test_request_id_optional_elsewhere(kind: str) -> None:
    message = envelope(kind, VALID_PAYLOADS[kind])
    del message["request_id"]
    assert refused(parse(message)) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("payload", [[], [1], "x", 1, 0, True, False, 2.5])
def test_payload_must_be_an_object(kind: str, payload: Any) -> None:
    error = error_of(envelope(kind, payload))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert (error.session_id, error.request_id) == (SID, RID)


@pytest.mark.parametrize("final", [1, 0, "true", "false", None, [], {}])
def test_final_must_be_boolean(final: Any) -> None:
    error = error_of(envelope("input_audio_buffer.commit", {"final": final}))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == RID


@pytest.mark.parametrize("payload", [{}, {"audio": None}, {"audio": 5}, {"audio": ["AAAA"]}])
def test_append_needs_an_audio_string(payload: dict[str, Any]) -> None:
    error = error_of(envelope("input_audio_buffer.append", payload))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == RID


# Not strict base64. (Whole sample frames depend on the session's format: checked there.)
INVALID_AUDIO = [
    "AAA",  # missing padding
    "AA",  # missing padding
    "AA=",  # short padding
    "AAA==",  # excess padding
    "AAAA=",  # padding without need
    "=AAA",  # padding first
    "AA==AA==",  # data after padding
    "AAAAAA-_",  # URL-safe alphabet
    "AAA*",  # outside the alphabet
    " AAAAAA=",  # leading space
    "AAAAAAA= ",  # trailing space
    "AAAA\nAAAA",  # newline inside
    "AAAA AAAA",  # space inside
    "AAAA\tAAAA",  # tab inside
    "AAAAAAAA\n",  # trailing newline (what some encoders add)
    "====",  # only padding
    "A===",  # three padding characters
    "AA=A",  # padding inside the last quantum
    "AAAAAA=A",  # padding inside, not at the end
    "ÀAAA",  # non-ASCII
]


@pytest.mark.parametrize("audio", INVALID_AUDIO)
def test_invalid_audio(audio: str) -> None:
    error = error_of(envelope("input_audio_buffer.append", {"audio": audio}))
    assert error.code is ErrorCode.INVALID_AUDIO
    assert (error.session_id, error.request_id) == (SID, RID)
    assert audio_bytes(audio) is None


@pytest.mark.parametrize(
    ("audio", "size"),
    [("", 0), ("AA==", 1), ("AAA=", 2), ("+/+/", 3), ("AAAAAA==", 4), ("AAAAAAAA", 6)],
)
def test_valid_audio_sizes(audio: str, size: int) -> None:
    assert audio_bytes(audio) == len(base64.b64decode(audio)) == size
    result = parse(envelope("input_audio_buffer.append", {"audio": audio}))
    assert result == (SID, AppendAudio(RID, audio, size))


@pytest.mark.parametrize("reason", ["", "r" * 257, 5, None, ["x"], {}])
def test_cancel_reason_must_be_short_text(reason: Any) -> None:
    error = error_of(envelope("cancel", {"reason": reason}))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert error.request_id == RID


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"model": None},
        {"model": 1},
        {"model": ["m"]},
        {"segment_pause_ms": None},
        {"model": 1, "segment_pause_ms": 480},
    ],
)
def test_session_update_needs_a_model_string_or_a_pause(payload: dict[str, Any]) -> None:
    error = error_of(envelope("session.update", payload))
    assert error.code is ErrorCode.INVALID_MESSAGE


def test_session_update_segment_pause() -> None:
    assert parse(envelope("session.update", {"segment_pause_ms": 80})) == (
        SID,
        UpdateSettings(RID, None, 80),
    )
    both = {"model": "m", "segment_pause_ms": 60000}
    assert parse(envelope("session.update", both)) == (SID, UpdateSettings(RID, "m", 60000))


@pytest.mark.parametrize("pause", [79, 60001, 0, -480, 480.0, "480", True, [480]])
def test_session_update_segment_pause_must_be_whole_ms_in_range(pause: Any) -> None:
    error = error_of(envelope("session.update", {"model": "m", "segment_pause_ms": pause}))
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert "segment_pause_ms" in error.message


@pytest.mark.parametrize("kind", KINDS)
def test_only_ping_and_end_refusals_skip_the_rate_limit(kind: str) -> None:
    error = error_of(envelope(kind, [1]))
    assert error.counts_toward_rate_limit is (kind not in ("ping", "end"))


def test_refusals_carry_a_sentence() -> None:
    for message in (envelope("x"), envelope("cancel", {"reason": ""}), [1], {"type": 1}):
        error = error_of(message)
        assert error.message.strip()
        assert error.message.endswith(".")


# ---------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(KINDS),
    st.text(min_size=1, max_size=130),
    st.just(AUDIO),
    st.sampled_from(["AAAA", "AAA=", "", "AA==", "QUJD", "QUI="]),
)
envelopes = st.dictionaries(
    st.sampled_from(["type", "session_id", "request_id", "payload", "extra"]),
    st.one_of(
        field_values,
        st.dictionaries(
            st.sampled_from(["model", "final", "audio", "reason", "other"]), field_values
        ),
    ),
)
ERROR_CODES_FROM_PARSING = {
    ErrorCode.INVALID_JSON,
    ErrorCode.INVALID_MESSAGE,
    ErrorCode.UNKNOWN_TYPE,
    ErrorCode.INVALID_AUDIO,
    # session.update's payload.audio that names no supported format (a string, say).
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
}


def _check_result(result: Parsed, source: Any) -> None:
    session_id, message = result
    if session_id is not None:
        assert isinstance(source, dict)
        assert session_id == source.get("session_id")
        assert 1 <= len(session_id) <= 128
    if isinstance(message, InvalidInput):
        assert message.code in ERROR_CODES_FROM_PARSING
        if message.request_id is not None:
            assert isinstance(source, dict)
            assert message.request_id == source.get("request_id")
        return
    assert isinstance(source, dict)
    assert session_id is not None
    if isinstance(message, AppendAudio):
        assert isinstance(message.audio, str)
        assert audio_bytes(message.audio) is not None
        assert message.nbytes == len(base64.b64decode(message.audio))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_parsing_arbitrary_text_never_raises(text: str) -> None:
    _, message = parse_client_message(text)
    assert isinstance(
        message,
        InvalidInput
        | UpdateSettings
        | OpenUtterance
        | FinishUtterance
        | AppendAudio
        | CancelUtterance
        | Ping
        | End,
    )


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_parsing_arbitrary_json_never_raises(value: Any) -> None:
    # json.dumps, not orjson: it also writes integers beyond 64 bits.
    _check_result(parse_client_message(json.dumps(value)), value)


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_parsing_envelope_shaped_json_never_raises(message: dict[str, Any]) -> None:
    _check_result(parse_client_message(json.dumps(message)), message)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_base64_audio_is_parsed_with_its_size(pcm: bytes) -> None:
    audio = base64.b64encode(pcm).decode()
    result = parse(envelope("input_audio_buffer.append", {"audio": audio}))
    assert result == (SID, AppendAudio(RID, audio, len(pcm)))
    assert isinstance(result[1], AppendAudio)
    assert not result[1].binary


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n"))
def test_audio_bytes_agrees_with_strict_base64(audio: str) -> None:
    try:
        expected: bytes | None = base64.b64decode(audio, validate=True)
    except ValueError:
        expected = None
    if expected is not None and base64.b64encode(expected).decode() != audio:
        expected = None  # non-canonical leftovers are not strict base64 either
    size = audio_bytes(audio)
    if size is not None:
        # Whatever is accepted a strict decoder reads, to exactly that many bytes.
        assert size == len(base64.b64decode(audio, validate=True))
        assert "\n" not in audio
        assert " " not in audio
        assert "-" not in audio
        assert "_" not in audio
        assert len(audio) % 4 == 0
    if expected is not None:
        assert size == len(expected)


# ---------------------------------------------------------------- frame size


@pytest.mark.parametrize(
    ("text", "limit", "too_large"),
    [
        ("a" * 1024, 1024, False),
        ("a" * 1025, 1024, True),
        ("é" * 512, 1024, False),  # 1024 bytes
        ("é" * 513, 1024, True),  # 1026 bytes, only 513 characters
        ("😀" * 256, 1024, False),  # 4 bytes each
        ("😀" * 257, 1024, True),
        ("", 1024, False),
    ],
)
def test_frame_too_large_counts_utf8_bytes(text: str, limit: int, too_large: bool) -> None:
    assert frame_too_large(text, limit) is too_large


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(1, 1200))
def test_frame_too_large_matches_encoded_size(text: str, limit: int) -> None:
    assert frame_too_large(text, limit) == (len(text.encode("utf-8", "surrogatepass")) > limit)


# ---------------------------------------------------------------- server events

TURNS = TurnOptions()
SETTINGS = SessionSettings(
    "m", 480, 480, AudioFormat(), TURNS, ClientLimits(150.0, 5400.5, 256, 1024, 2048, 16, 30.0)
)


def frames(codec: EnvelopeCodec, event: ClientEvent) -> list[dict[str, Any]]:
    return [orjson.loads(text) for text in codec.render(event)]


def only_frame(event: ClientEvent, session_id: str = "s") -> dict[str, Any]:
    [frame] = frames(EnvelopeCodec(session_id, 1024), event)
    return frame


def test_every_frame_is_the_envelope_with_the_latest_client_session_id() -> None:
    codec = EnvelopeCodec("server-sid", 1024)
    pong = Pong("r", {"a": 1})
    assert frames(codec, pong) == [
        {"type": "pong", "session_id": "server-sid", "request_id": "r", "payload": {"a": 1}}
    ]
    codec.parse_text(json.dumps({"type": "ping", "session_id": "client-sid"}))
    assert frames(codec, pong)[0]["session_id"] == "client-sid"
    codec.parse_text(json.dumps({"type": "ping", "session_id": ""}))  # invalid: not taken
    codec.parse_binary(b"\x00\x00")  # no session_id at all
    assert frames(codec, pong)[0]["session_id"] == "client-sid"


def test_session_created_and_updated_carry_the_settings() -> None:
    created = only_frame(SessionCreated("sess_1", SETTINGS))
    assert created == {
        "type": "session.created",
        "session_id": "s",
        "request_id": None,
        "payload": {
            "id": "sess_1",
            "model": "m",
            "transcription_delay_ms": 480,
            "segment_pause_ms": 480,
            "audio": AudioFormat().as_payload(),
            "turn_detection": TURNS.as_payload(),
            "limits": {
                "idle_timeout_s": 150,
                "max_duration_s": 5400.5,
                "inbound_queue_max": 256,
                "inbound_queue_max_bytes": 1024,
                "max_message_bytes": 2048,
                "max_utterances_in_flight": 16,
                "max_audio_ahead_s": 30,
            },
        },
    }
    assert isinstance(created["payload"]["limits"]["idle_timeout_s"], int)
    updated = only_frame(SessionUpdated("u", SETTINGS))
    assert (updated["type"], updated["request_id"]) == ("session.updated", "u")
    assert updated["payload"] == {
        "model": "m",
        "segment_pause_ms": 480,
        "audio": AudioFormat().as_payload(),
        "turn_detection": TURNS.as_payload(),
    }


def test_utterance_events() -> None:
    delta = only_frame(Delta("r", " hi", 160))
    assert delta == {
        "type": "transcription.delta",
        "session_id": "s",
        "request_id": "r",
        "payload": {"delta": " hi", "audio_ms": 160},
    }
    done = only_frame(
        Done(
            "r",
            "a b",
            (TextSegment("a", 0, 80), TextSegment(" b", 640, 720)),
            TokenUsage(39, 5, 44),
            1500,
        )
    )
    assert done["payload"] == {
        "text": "a b",
        "segments": [
            {"text": "a", "start_ms": 0, "end_ms": 80},
            {"text": " b", "start_ms": 640, "end_ms": 720},
        ],
        "usage": {
            "prompt_tokens": 39,
            "completion_tokens": 5,
            "total_tokens": 44,
            "audio_seconds": 1.5,
        },
        "audio_ms": 1500,
    }
    assert only_frame(Cancelled("r", "superseded"))["payload"] == {"reason": "superseded"}
    started = only_frame(SpeechStarted("turn-1", 300))
    assert (started["type"], started["payload"]) == (
        "input_audio_buffer.speech_started",
        {"audio_start_ms": 300},
    )
    stopped = only_frame(SpeechStopped("turn-1", 900))
    assert (stopped["type"], stopped["payload"]) == (
        "input_audio_buffer.speech_stopped",
        {"audio_end_ms": 900},
    )
    ended = only_frame(SessionEnded())
    assert (ended["type"], ended["request_id"], ended["payload"]) == ("session.ended", None, {})


def test_events_without_an_envelope_word_send_nothing() -> None:
    codec = EnvelopeCodec("s", 1024)
    for event in (
        UtteranceOpened("r", None),
        UtteranceCommitted("r", "q"),
        AudioCleared(),
        SegmentClosed("r", TextSegment(" hi", 0, 80)),
    ):
        assert codec.render(event) == ()


def test_error_defaults() -> None:
    assert only_frame(SessionError(ErrorCode.NO_ACTIVE_REQUEST, None)) == {
        "type": "error",
        "session_id": "s",
        "request_id": None,
        "payload": {
            "code": "no_active_request",
            "message": DEFAULT_MESSAGES[ErrorCode.NO_ACTIVE_REQUEST],
            "details": {},
        },
    }
    failed = only_frame(UtteranceFailed("r", ErrorCode.UPSTREAM_ERROR, details={"x": "1"}))
    assert failed["request_id"] == "r"
    assert failed["payload"] == {
        "code": "upstream_error",
        "message": DEFAULT_MESSAGES[ErrorCode.UPSTREAM_ERROR],
        "details": {"x": "1"},
    }


def test_error_message_and_details() -> None:
    event = SessionError(ErrorCode.RATE_LIMITED, "r", message="Slow down.", details={"limit": 3})
    frame = only_frame(event)
    assert frame["payload"] == {
        "code": "rate_limited",
        "message": "Slow down.",
        "details": {"limit": 3},
    }
    assert frame["request_id"] == "r"


def test_every_error_case_is_worded() -> None:
    for case in ErrorCase:
        details = {"model": "served/model"}
        message = only_frame(SessionError(ErrorCode.INVALID_MESSAGE, None, case, details=details))
        text = message["payload"]["message"]
        assert text.endswith(".")
    model = only_frame(
        SessionError(
            ErrorCode.UNSUPPORTED_MODEL,
            "u",
            ErrorCase.MODEL_NOT_SERVED,
            details={"model": "served/model"},
        )
    )
    assert "'served/model'" in model["payload"]["message"]
    assert model["payload"]["details"] == {"model": "served/model"}


def test_labels_are_the_message_types() -> None:
    codec = EnvelopeCodec("s", 1024)
    assert codec.label(OpenUtterance("r")) == "input_audio_buffer.commit"
    assert codec.label(FinishUtterance("r")) == "input_audio_buffer.commit"
    assert codec.label(AppendAudio("r", "AAAA", 3)) == "input_audio_buffer.append"
    assert codec.label(AppendAudio(None, b"\x00\x00", 2)) == "binary"
    assert codec.label(InvalidInput(ErrorCode.INVALID_JSON, "x")) == "invalid"
    assert codec.label(ClearAudio()) == "invalid"


def test_every_error_code_has_a_default_sentence() -> None:
    protocol_codes = {
        "unauthorized",
        "server_at_capacity",
        "idle_timeout",
        "max_duration_reached",
        "inbound_queue_full",
        "rate_limited",
        "payload_too_large",
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "unsupported_model",
        "no_active_request",
        "request_id_mismatch",
        "invalid_audio",
        "upstream_error",
        "upstream_unavailable",
        "shutting_down",
        "internal_error",
    }
    # Every code of the contract exists (the server may add codes of its own).
    assert protocol_codes <= {code.value for code in ErrorCode}
    for code in ErrorCode:
        message = DEFAULT_MESSAGES[code]
        assert message.endswith(".")
        assert message[0].isupper()


def test_close_codes_match_the_protocol() -> None:
    assert CloseCode.NORMAL == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.INTERNAL_ERROR == 1011
    assert CloseCode.TRY_AGAIN_LATER == 1013
    assert CloseCode.IDLE_TIMEOUT == 4000
    assert CloseCode.UNAUTHORIZED == 4001
    assert CloseCode.AT_CAPACITY == 4002
    assert CloseCode.MAX_DURATION == 4003
    assert CloseCode.INBOUND_QUEUE_FULL == 4004
    assert CloseCode.RATE_LIMITED == 4008


def test_close_codes_of_the_errors() -> None:
    codec = EnvelopeCodec("s", 1024)
    assert codec.close_code(None) == CloseCode.NORMAL
    assert codec.close_code(ErrorCode.SHUTTING_DOWN) == CloseCode.GOING_AWAY
    assert codec.close_code(ErrorCode.INTERNAL_ERROR) == CloseCode.INTERNAL_ERROR
    assert codec.close_code(ErrorCode.UPSTREAM_UNAVAILABLE) == CloseCode.TRY_AGAIN_LATER
    assert codec.close_code(ErrorCode.IDLE_TIMEOUT) == CloseCode.IDLE_TIMEOUT
    assert codec.close_code(ErrorCode.UNAUTHORIZED) == CloseCode.UNAUTHORIZED
    assert codec.close_code(ErrorCode.SERVER_AT_CAPACITY) == CloseCode.AT_CAPACITY
    assert codec.close_code(ErrorCode.MAX_DURATION_REACHED) == CloseCode.MAX_DURATION
    assert codec.close_code(ErrorCode.INBOUND_QUEUE_FULL) == CloseCode.INBOUND_QUEUE_FULL
    assert codec.close_code(ErrorCode.RATE_LIMITED) == CloseCode.RATE_LIMITED
    assert codec.close_code(ErrorCode.SLOW_CONSUMER) == CloseCode.POLICY_VIOLATION
    assert codec.close_code(ErrorCode.UNSUPPORTED_AUDIO_FORMAT) == CloseCode.POLICY_VIOLATION
