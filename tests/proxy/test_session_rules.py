"""proxy.session with the inputs and rules the envelope does not use: utterances opened by audio
(``SessionRules.open_on_audio``), finishing the open one without naming it, clearing it, and
settings frozen at the first audio. The session's typed events are read as they come out, with
no codec: these are what other protocols' codecs render."""

from __future__ import annotations

import base64

from proxy.config import ProxyConfig
from proxy.limits import SessionLimits
from proxy.session import Session
from proxy.session.actions import Action, SendClient, SendUpstream
from proxy.session.events import (
    AudioCleared,
    Cancelled,
    ClientEvent,
    Done,
    ErrorCase,
    ErrorCode,
    SessionEnded,
    SessionError,
    SessionUpdated,
    UtteranceCommitted,
    UtteranceOpened,
)
from proxy.session.inputs import (
    AppendAudio,
    ClearAudio,
    ClientInput,
    End,
    FinishUtterance,
    OpenUtterance,
    SessionRules,
    UpdateSettings,
)
from proxy.turns import TurnOptions
from proxy.vllm_wire import COMMIT_FINAL, COMMIT_OPEN, decode_event

OPENS_ON_AUDIO = SessionRules(open_on_audio=True, utterance_id_prefix="item-")
FROZEN = SessionRules(open_on_audio=True, settings_frozen_at_audio=True)
PCM = bytes(640)
LIMITS = SessionLimits.from_config(ProxyConfig(api_keys=("k",)))


class Harness:
    def __init__(self, rules: SessionRules) -> None:
        self.session = Session(
            session_id="s",
            served_model="m",
            limits=LIMITS,
            transcription_delay_ms=480,
            rules=rules,
        )
        self.now = 1.0
        self.log: list[Action] = list(self.session.on_upstream_ready(0, self.now))

    def send(self, message: ClientInput) -> list[ClientEvent]:
        self.now += 0.01
        actions = self.session.on_client(message, self.now)
        self.log.extend(actions)
        return [a.event for a in actions if isinstance(a, SendClient)]

    def audio(self) -> list[ClientEvent]:
        return self.send(AppendAudio(None, base64.b64encode(PCM).decode(), len(PCM)))

    def done(self) -> list[ClientEvent]:
        event = decode_event('{"type": "transcription.done", "text": "", "usage": {}}')
        assert event is not None
        self.now += 0.01
        actions = self.session.on_upstream_event(self.session.upstream_epoch, event, self.now)
        self.log.extend(actions)
        return [a.event for a in actions if isinstance(a, SendClient)]

    def upstream(self) -> list[str]:
        return [a.text for a in self.log if isinstance(a, SendUpstream)]


def test_audio_opens_an_utterance_named_by_the_session_and_chains_them() -> None:
    harness = Harness(OPENS_ON_AUDIO)
    assert harness.audio() == [UtteranceOpened("item-1", None)]
    assert harness.audio() == []  # the same utterance takes it
    assert harness.send(FinishUtterance(None)) == [UtteranceCommitted("item-1", None)]
    assert harness.upstream()[0] == COMMIT_OPEN
    assert harness.upstream()[-1] == COMMIT_FINAL
    # The next audio opens the next one, which waits in line behind the first.
    assert harness.audio() == [UtteranceOpened("item-2", "item-1")]
    [done] = harness.done()
    assert isinstance(done, Done)
    assert (done.request_id, done.audio_ms) == ("item-1", 40)  # two appends of 20 ms
    assert harness.send(FinishUtterance(None)) == [UtteranceCommitted("item-2", "item-1")]


def test_without_the_rule_audio_without_an_id_opens_nothing() -> None:
    harness = Harness(SessionRules())
    [refusal] = harness.audio()
    assert isinstance(refusal, SessionError)
    assert (refusal.code, refusal.case) == (
        ErrorCode.INVALID_MESSAGE,
        ErrorCase.APPEND_NEEDS_REQUEST_ID,
    )


def test_finishing_with_nothing_open_is_refused_or_gives_an_empty_done() -> None:
    harness = Harness(OPENS_ON_AUDIO)
    [refusal] = harness.send(FinishUtterance(None))
    assert isinstance(refusal, SessionError)
    assert (refusal.code, refusal.case) == (
        ErrorCode.NO_ACTIVE_REQUEST,
        ErrorCase.NOTHING_TO_FINISH,
    )
    opened = harness.send(FinishUtterance(None, empty_done=True))
    assert opened == [UtteranceOpened("item-1", None), UtteranceCommitted("item-1", None)]
    [done] = harness.done()
    assert isinstance(done, Done)
    assert (done.request_id, done.text, done.audio_ms) == ("item-1", "", 0)


def test_an_end_with_empty_done_is_answered_by_a_done_even_with_nothing_open() -> None:
    harness = Harness(FROZEN)
    harness.audio()
    harness.send(FinishUtterance(None, empty_done=True))
    # The end comes while the flushed utterance is finalizing: its empty one waits behind it.
    assert harness.send(End(empty_done=True)) == [
        UtteranceOpened("utt-2", "utt-1"),
        UtteranceCommitted("utt-2", "utt-1"),
    ]
    [first] = harness.done()
    assert isinstance(first, Done)
    assert first.request_id == "utt-1"
    [second, ended] = harness.done()
    assert isinstance(second, Done)
    assert (second.request_id, second.text, second.audio_ms) == ("utt-2", "", 0)
    assert ended == SessionEnded()
    assert harness.session.closed


def test_an_end_finishes_the_open_utterance_without_an_empty_one() -> None:
    for empty_done in (False, True):
        harness = Harness(FROZEN)
        harness.audio()
        assert harness.send(End(empty_done=empty_done)) == [UtteranceCommitted("utt-1", None)]
        [done, ended] = harness.done()
        assert isinstance(done, Done)
        assert ended == SessionEnded()


def test_a_plain_end_with_nothing_open_closes_without_a_done() -> None:
    harness = Harness(FROZEN)
    assert harness.send(End()) == [SessionEnded()]
    assert harness.session.closed


def test_clear_cancels_the_open_utterance_and_is_answered_either_way() -> None:
    harness = Harness(OPENS_ON_AUDIO)
    assert harness.send(ClearAudio()) == [AudioCleared()]
    harness.audio()
    assert harness.send(ClearAudio()) == [Cancelled("item-1", "cleared"), AudioCleared()]
    assert harness.session.in_flight == []
    assert harness.audio() == [UtteranceOpened("item-2", "item-1")]


def test_client_named_ids_are_skipped_by_the_session() -> None:
    harness = Harness(OPENS_ON_AUDIO)
    harness.send(OpenUtterance("item-1"))
    harness.send(FinishUtterance("item-1"))
    assert harness.audio() == [UtteranceOpened("item-2", "item-1")]


def test_settings_freeze_at_the_first_audio() -> None:
    harness = Harness(FROZEN)
    [updated] = harness.send(UpdateSettings("u1", segment_pause_ms=200))
    assert isinstance(updated, SessionUpdated)
    assert updated.settings.segment_pause_ms == 200
    harness.audio()
    [refusal] = harness.send(UpdateSettings("u2", segment_pause_ms=300))
    assert isinstance(refusal, SessionError)
    assert (refusal.request_id, refusal.case) == ("u2", ErrorCase.SETTINGS_FROZEN)
    assert harness.session.segment_pause_ms == 200


def test_session_created_carries_the_full_settings() -> None:
    session = Harness(OPENS_ON_AUDIO).session
    created = session.created("c0ffee123456")
    assert created.id == "c0ffee123456"  # the connection's id, as its log lines carry it
    assert created.settings == session.settings()
    assert created.settings.limits.inbound_queue_max == LIMITS.inbound_queue_max


def test_turning_turns_on_drops_audio_that_opened_an_utterance_by_itself() -> None:
    harness = Harness(OPENS_ON_AUDIO)
    harness.audio()
    events = harness.send(
        UpdateSettings("u1", turn_detection_given=True, turn_detection=TurnOptions())
    )
    assert events[0] == Cancelled("item-1", "superseded")
    assert isinstance(events[-1], SessionUpdated)
    assert events[-1].settings.turn_detection == TurnOptions()


def test_a_client_opened_utterance_still_refuses_turns() -> None:
    harness = Harness(SessionRules())
    harness.send(OpenUtterance("r1"))
    (refusal,) = harness.send(
        UpdateSettings("u1", turn_detection_given=True, turn_detection=TurnOptions())
    )
    assert isinstance(refusal, SessionError)
    assert refusal.case is ErrorCase.TURNS_NEED_NO_OPEN_UTTERANCE
