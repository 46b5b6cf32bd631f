"""proxy.session with turn detection on: the turns the session opens and closes from the VAD's
windows, the audio each one gets, and the client's overrides. Pure: windows are given."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from proxy.audio_format import make_format
from proxy.config import ProxyConfig
from proxy.limits import SessionLimits
from proxy.protocols.envelope import EnvelopeCodec
from proxy.session import Session
from proxy.session._turn_stream import MAX_TURN_LEAD_MS, MAX_UNSCORED_MS, Backlog, TurnStream
from proxy.session.actions import (
    Action,
    CloseClient,
    FeedVad,
    SendUpstream,
    StartVad,
    StopVad,
    UtteranceEnded,
    UtteranceStarted,
    VadBehind,
)
from proxy.session.events import ErrorCode
from proxy.turns import TurnOptions
from proxy.vad import WINDOW_MS, VadFailure
from proxy.vllm_wire import COMMIT_FINAL, COMMIT_OPEN, PCM_BYTES_PER_MS, decode_event
from tests.proxy.envelope_client import (
    Append,
    Cancel,
    ClientFrame,
    ClientMessage,
    Commit,
    SessionUpdate,
    as_client_sees,
)

MODEL = "m"
SID = "s"
OPTIONS = TurnOptions()
WINDOW_BYTES = WINDOW_MS * PCM_BYTES_PER_MS


def stream_pcm(ms: int) -> bytes:
    """Audio whose every sample differs from the others (up to 4 s), so slices can be told apart."""
    return np.arange(ms * 16, dtype="<u2").tobytes()


class Harness:
    def __init__(self, options: TurnOptions | None = OPTIONS) -> None:
        self.session = Session(
            session_id=SID,
            served_model=MODEL,
            limits=SessionLimits.from_config(ProxyConfig(api_keys=("k",))),
            transcription_delay_ms=480,
            turn_options=options,
        )
        # The session's events are read as an envelope client reads them.
        self.codec = EnvelopeCodec(SID, max_message_bytes=1024 * 1024)
        self.now = 10.0
        self.log: list[Action] = []
        self.keep(self.session.on_upstream_ready(self.session.upstream_epoch, self.now))
        self.scored_ms = 0

    def keep(self, actions: list[Action]) -> list[Action]:
        seen = as_client_sees(actions, self.codec)
        self.log.extend(seen)
        return seen

    def send(self, message: ClientMessage, after_s: float = 0.01) -> list[Action]:
        """A client message ``after_s`` after the last input, through the envelope codec."""
        self.now += after_s
        frame = message.frame()
        if isinstance(frame, bytes):
            parsed = self.codec.parse_binary(frame)
        else:
            parsed = self.codec.parse_text(frame)
        return self.keep(self.session.on_client(parsed, self.now))

    def audio(
        self, pcm: bytes, request_id: str | None = None, after_s: float = 0.01
    ) -> list[Action]:
        return self.send(Append(SID, request_id, base64.b64encode(pcm).decode(), len(pcm)), after_s)

    def real_time(self, ms: int) -> list[Action]:
        """``ms`` of audio in 80 ms appends, each 80 ms after the one before (real-time pace)."""
        actions: list[Action] = []
        for _ in range(ms // 80):
            actions += self.audio(stream_pcm(80), after_s=0.08)
        return actions

    def windows(self, ms: int, probability: float) -> list[Action]:
        """``ms`` of windows (whole windows) after the last scored one."""
        count = ms // WINDOW_MS
        windows = [(self.scored_ms + (i + 1) * WINDOW_MS, probability) for i in range(count)]
        self.scored_ms += count * WINDOW_MS
        self.now += 0.01
        return self.keep(self.session.on_vad(windows, self.now))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        events = [a.event for a in self.log if isinstance(a, ClientFrame)]
        return [e for e in events if kind is None or e["type"] == kind]

    def upstream(self) -> list[dict[str, Any]]:
        return [json.loads(a.text) for a in self.log if isinstance(a, SendUpstream)]

    def upstream_audio(self) -> bytes:
        return b"".join(
            base64.b64decode(e["audio"])
            for e in self.upstream()
            if e["type"] == "input_audio_buffer.append"
        )

    def done(self) -> list[Action]:
        """vLLM's done, decoded as the relay decodes it."""
        event = decode_event('{"type": "transcription.done", "text": "", "usage": {}}')
        assert event is not None
        return self.keep(
            self.session.on_upstream_event(self.session.upstream_epoch, event, self.now)
        )


def test_turn_detection_from_the_start_asks_for_a_vad_stream_and_fed_audio_goes_to_it() -> None:
    harness = Harness()
    assert any(isinstance(a, StartVad) for a in harness.log)
    pcm = stream_pcm(400)
    actions = harness.audio(pcm)
    fed = b"".join(a.pcm for a in actions if isinstance(a, FeedVad))
    assert fed == pcm[: len(pcm) // 2560 * 2560]  # whole 80 ms pieces; the rest waits
    assert harness.upstream() == []  # nothing goes to vLLM before speech


def test_audio_that_may_open_a_turn_goes_to_the_vad_as_urgent() -> None:
    harness = Harness()

    def urgent(actions: list[Action]) -> list[bool]:
        return [a.urgent for a in actions if isinstance(a, FeedVad)]

    assert urgent(harness.audio(stream_pcm(480))) == [False]
    harness.windows(320, 0.0)
    harness.windows(128, 0.9)  # speech from 320 ms: a window ending at 570 ms or later opens
    assert urgent(harness.audio(stream_pcm(80))) == [False]  # to 560 ms: it cannot yet
    assert urgent(harness.audio(stream_pcm(80))) == [True]  # to 640 ms: it may
    harness.windows(160, 0.9)  # the turn opens
    assert harness.events("input_audio_buffer.speech_started") != []
    assert urgent(harness.audio(stream_pcm(80))) == [False]


def test_a_turn_gets_its_padding_its_speech_the_confirming_silence_and_the_lead() -> None:
    """The client is far ahead of the VAD: the turn's audio ends where the stop is known plus
    the most a turn may go ahead of the VAD."""
    harness = Harness()
    pcm = stream_pcm(3200)
    harness.audio(pcm)
    harness.windows(1024, 0.0)
    harness.windows(1024, 0.9)  # speech from 1024 ms
    started = harness.events("input_audio_buffer.speech_started")
    assert [(e["request_id"], e["payload"]) for e in started] == [
        ("turn-1", {"audio_start_ms": 1024})
    ]
    assert any(isinstance(a, UtteranceStarted) for a in harness.log)
    harness.windows(640, 0.0)  # 512 ms of silence stops it (500 rounded up to whole windows)
    stopped = harness.events("input_audio_buffer.speech_stopped")
    assert [(e["request_id"], e["payload"]) for e in stopped] == [
        ("turn-1", {"audio_end_ms": 2048})
    ]
    kinds = [e["type"] for e in harness.upstream() if e["type"] != "input_audio_buffer.append"]
    assert [json.dumps(u, separators=(",", ":")) for u in harness.upstream() if "final" in u] == [
        COMMIT_OPEN,
        COMMIT_FINAL,
    ]
    assert kinds == ["input_audio_buffer.commit"] * 2
    start = (1024 - OPTIONS.prefix_padding_ms) * PCM_BYTES_PER_MS
    end_ms = 2048 + 512 + MAX_TURN_LEAD_MS
    assert harness.upstream_audio() == pcm[start : end_ms * PCM_BYTES_PER_MS]
    harness.done()
    done = harness.events("transcription.done")
    assert [e["request_id"] for e in done] == ["turn-1"]
    assert done[0]["payload"]["audio_ms"] == end_ms - 724


def test_in_a_turn_audio_goes_upstream_as_it_arrives_before_the_vad_scores_it() -> None:
    harness = Harness()
    pcm = stream_pcm(2000)
    harness.audio(pcm[: 1280 * PCM_BYTES_PER_MS])
    harness.windows(512, 0.0)
    harness.windows(768, 0.9)  # speech from 512 ms: the turn opens at 768, the VAD is at 1280
    start = (512 - OPTIONS.prefix_padding_ms) * PCM_BYTES_PER_MS
    assert harness.upstream_audio() == pcm[start : 1280 * PCM_BYTES_PER_MS]
    piece = pcm[1280 * PCM_BYTES_PER_MS : 1360 * PCM_BYTES_PER_MS]
    actions = harness.audio(piece)
    kinds = [type(a) for a in actions if isinstance(a, SendUpstream | FeedVad)]
    assert kinds == [SendUpstream, FeedVad]  # up before the VAD has it
    assert harness.upstream_audio() == pcm[start : 1360 * PCM_BYTES_PER_MS]
    # With no score coming, the turn's audio stops at the lead past the VAD's position.
    for at_ms in range(1360, 1840, 80):
        harness.audio(pcm[at_ms * PCM_BYTES_PER_MS : (at_ms + 80) * PCM_BYTES_PER_MS])
    lead_end = (1280 + MAX_TURN_LEAD_MS) * PCM_BYTES_PER_MS
    assert harness.upstream_audio() == pcm[start:lead_end]
    harness.windows(320, 0.9)  # the VAD catches up: the rest goes
    assert harness.upstream_audio() == pcm[start : 1840 * PCM_BYTES_PER_MS]


def test_short_speech_opens_no_turn_and_the_kept_audio_stays_bounded() -> None:
    harness = Harness()
    for _ in range(10):
        harness.audio(stream_pcm(1000))
        harness.windows(96, 0.9)  # shorter than min_speech_ms
        harness.windows(904, 0.0)
    assert harness.events() == []
    assert harness.upstream() == []
    options = OPTIONS
    kept_ms = options.prefix_padding_ms + options.min_speech_ms + WINDOW_MS
    detection = harness.session.turn_detection
    assert detection is not None
    turns = detection.stream
    # What a turn may still start with, and what the VAD has not scored yet: nothing more.
    assert turns.ring_bytes == kept_ms * PCM_BYTES_PER_MS + turns.received - turns.scored


def test_push_to_talk_ends_the_turn_with_everything_received() -> None:
    harness = Harness()
    pcm = stream_pcm(2400)
    harness.audio(pcm)
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)  # the turn opens at 1024 ms; 2400 ms were received
    harness.send(Commit(SID, "any-name", True))
    assert harness.events("input_audio_buffer.speech_stopped") == []
    start = (512 - OPTIONS.prefix_padding_ms) * PCM_BYTES_PER_MS
    assert harness.upstream_audio() == pcm[start:]
    assert harness.upstream()[-1]["final"] is True
    # Speech that goes on (already sent) opens no turn with the same audio; later speech does.
    harness.windows(1376, 0.9)
    harness.done()
    assert [e["request_id"] for e in harness.events("transcription.done")] == ["turn-1"]
    assert [e["request_id"] for e in harness.events("input_audio_buffer.speech_started")] == [
        "turn-1",
        "turn-2",
    ]
    assert harness.upstream_audio() == pcm[start:]


def test_a_final_commit_without_a_turn_is_refused() -> None:
    harness = Harness()
    harness.send(Commit(SID, "r1", True))
    (error,) = harness.events("error")
    assert (error["request_id"], error["payload"]["code"]) == ("r1", "no_active_request")


def test_commit_to_open_is_refused_and_append_ids_are_not_checked() -> None:
    harness = Harness()
    harness.send(Commit(SID, "r1", False))
    (error,) = harness.events("error")
    assert error["payload"]["code"] == ErrorCode.INVALID_MESSAGE.value
    actions = harness.audio(stream_pcm(80), request_id="anything")
    assert [type(a) for a in actions] == [FeedVad]


def test_cancel_of_the_open_turn() -> None:
    harness = Harness()
    harness.audio(stream_pcm(2000))
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)
    harness.send(Cancel(SID, "turn-1", "client_request"))
    assert [e["type"] for e in harness.events()][-1] == "cancelled"
    ended = [a for a in harness.log if isinstance(a, UtteranceEnded)]
    assert [e.outcome.value for e in ended] == ["cancelled"]
    # The detector is idle again: silence stops nothing, new speech opens turn-2.
    harness.windows(640, 0.0)
    assert harness.events("input_audio_buffer.speech_stopped") == []
    harness.windows(320, 0.9)
    assert harness.events("input_audio_buffer.speech_started")[-1]["request_id"] == "turn-2"


def test_turning_it_off_ends_the_open_turn_and_closes_the_vad_stream() -> None:
    harness = Harness()
    harness.audio(stream_pcm(2000))
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)
    actions = harness.send(
        SessionUpdate(SID, "u1", None, turn_detection_given=True, turn_detection=None)
    )
    assert any(isinstance(a, StopVad) for a in actions)
    assert harness.upstream()[-1]["final"] is True
    updated = harness.events("session.updated")[-1]
    assert updated["payload"]["turn_detection"] is None
    # Appends need a request_id again.
    harness.audio(stream_pcm(80))
    assert harness.events("error")[-1]["payload"]["code"] == "invalid_message"


def test_turning_it_on_needs_no_open_utterance_and_takes_a_prefix() -> None:
    harness = Harness(options=None)
    harness.send(Commit(SID, "r1", False))
    refused = harness.send(
        SessionUpdate(SID, "u1", None, turn_detection_given=True, turn_detection=OPTIONS)
    )
    assert not any(isinstance(a, StartVad) for a in refused)
    assert harness.events()[-1]["payload"]["code"] == "invalid_message"
    harness.send(Commit(SID, "r1", True))
    options = TurnOptions(request_id_prefix="talk/")
    accepted = harness.send(
        SessionUpdate(SID, "u2", MODEL, turn_detection_given=True, turn_detection=options)
    )
    assert any(isinstance(a, StartVad) for a in accepted)
    assert harness.events()[-1]["payload"]["turn_detection"] == options.as_payload()
    harness.audio(stream_pcm(1200))
    harness.windows(1184, 0.9)
    assert harness.events("input_audio_buffer.speech_started")[-1]["request_id"] == "talk/1"


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        (VadFailure.MODEL_ERROR, ("Turn detection stopped working",)),
        (VadFailure.STEP_DEADLINE, ("Turn detection stopped working",)),
        (VadFailure.FELL_BEHIND, ("overloaded", "commits")),
    ],
)
def test_a_failed_vad_ends_turn_detection_with_an_error_saying_why(
    reason: VadFailure, says: tuple[str, ...]
) -> None:
    harness = Harness()
    harness.audio(stream_pcm(2000))
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)
    actions = harness.keep(harness.session.on_vad_failed(reason, harness.now))
    errors = harness.events("error")
    assert [(e["request_id"], e["payload"]["code"]) for e in errors] == [(None, "internal_error")]
    for words in says:
        assert words in errors[0]["payload"]["message"]
    assert any(isinstance(a, StopVad) for a in actions)
    assert not any(isinstance(a, VadBehind) for a in actions)  # the service knows already
    assert harness.upstream()[-1]["final"] is True  # the open turn is finalized
    assert harness.session.turn_detection is None
    assert not harness.session.closed


def test_a_vad_far_behind_a_client_sending_faster_than_real_time_ends_the_session() -> None:
    harness = Harness()
    for _ in range(MAX_UNSCORED_MS // 1000 + 1):
        harness.audio(stream_pcm(1000))  # a second of audio every 10 ms
    closes = [a for a in harness.log if isinstance(a, CloseClient)]
    assert [c.error for c in closes] == [ErrorCode.INBOUND_QUEUE_FULL]
    assert harness.events("error")[-1]["payload"]["code"] == "inbound_queue_full"
    assert not any(isinstance(a, VadBehind) for a in harness.log)


def test_a_vad_far_behind_real_time_audio_is_the_engines_failure_not_the_clients() -> None:
    harness = Harness()
    harness.real_time(1200)
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)  # a turn opens; then the VAD scores nothing more
    assert harness.events("input_audio_buffer.speech_started")
    # 10 960 ms received, 1 024 ms scored: 9 936 ms behind, not yet past the bound.
    before = harness.real_time(MAX_UNSCORED_MS - 240)
    assert harness.session.settings().turn_detection is not None
    assert not any(isinstance(a, VadBehind) for a in before)
    actions = harness.real_time(80)
    errors = harness.events("error")
    assert [(e["request_id"], e["payload"]["code"]) for e in errors] == [(None, "internal_error")]
    assert "overloaded" in errors[0]["payload"]["message"]
    # Turn detection goes off here first, then the engine is given up for the others.
    vad = [type(a) for a in actions if isinstance(a, (StopVad, VadBehind))]
    assert vad == [StopVad, VadBehind]
    assert harness.upstream()[-1]["final"] is True  # the open turn is finalized
    assert harness.session.turn_detection is None
    assert not harness.session.closed
    assert not any(isinstance(a, CloseClient) for a in harness.log)


@pytest.mark.parametrize(
    ("unscored_ms", "client_lead_ms", "expected"),
    [
        (MAX_UNSCORED_MS, 0, None),  # at the bound, not past it
        (MAX_UNSCORED_MS + 64, 0, Backlog.ENGINE),  # all of it came in real time
        (MAX_UNSCORED_MS + 64, 4000, Backlog.ENGINE),  # the engine is 6 s behind
        (MAX_UNSCORED_MS + 64, 6000, Backlog.CLIENT),  # the client is 6 s ahead
        (MAX_UNSCORED_MS + 64, 30_000, Backlog.CLIENT),  # the engine keeps up with a burst
    ],
)
def test_the_larger_share_of_the_backlog_is_its_cause(
    unscored_ms: int, client_lead_ms: int, expected: Backlog | None
) -> None:
    stream = TurnStream(OPTIONS, make_format("pcm16", 16000))
    stream.take(stream_pcm(unscored_ms + 640)[: (unscored_ms + 640) * PCM_BYTES_PER_MS])
    stream.scored_to(640)
    assert stream.unscored_ms == unscored_ms
    assert stream.backlog(client_lead_ms) is expected


def test_binary_frames_feed_the_stream_converted_from_the_session_format() -> None:
    harness = Harness()
    pcm = stream_pcm(160)
    native = harness.send(Append(None, None, pcm, len(pcm)))
    assert b"".join(a.pcm for a in native if isinstance(a, FeedVad)) == pcm
    ulaw = make_format("g711_ulaw", 8000)
    harness.send(SessionUpdate(SID, "u1", None, audio=ulaw))
    restarted = harness.log[-3:]
    assert [type(a) for a in restarted if not isinstance(a, ClientFrame)] == [StopVad, StartVad]
    fed = harness.send(Append(None, None, bytes(1280), 1280))  # 160 ms of μ-law at 8 kHz
    assert sum(len(a.pcm) for a in fed if isinstance(a, FeedVad)) >= 2560  # now 16 kHz PCM16


def test_a_turn_ends_filed_under_server_vad_and_the_clients_format() -> None:
    harness = Harness()
    ulaw = make_format("g711_ulaw", 8000)
    harness.send(SessionUpdate(SID, "u1", None, audio=ulaw))
    harness.audio(bytes(range(256)) * 64)  # 2 s of μ-law
    harness.windows(512, 0.0)
    harness.windows(512, 0.9)
    harness.send(Cancel(SID, "turn-1", "client_request"))
    [ended] = [a for a in harness.log if isinstance(a, UtteranceEnded)]
    # Not the 16 kHz PCM16 the turn's audio was converted to: what the client sent.
    assert (ended.server_vad, ended.audio_format) == (True, ulaw)
