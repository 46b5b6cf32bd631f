"""proxy.session: the pure per-connection lifecycle, driven message by message.

No sockets and no clocks: the test feeds client messages (with ``now``), upstream events and
upstream open/loss notices, and checks the actions the session returns.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audio_convert import AudioConverter
from proxy.audio_format import NATIVE, AudioFormat
from proxy.config import ProxyConfig
from proxy.limits import SessionLimits
from proxy.protocols.envelope import CASE_MESSAGES, CLOSE_CODES, EnvelopeCodec
from proxy.session import Session, WindDown
from proxy.session._utterance import Utterance
from proxy.session.actions import (
    Action,
    CloseClient,
    HoldClient,
    OpenUpstream,
    Outcome,
    SendUpstream,
    UpstreamOwes,
    UpstreamSettled,
    UtteranceEnded,
    UtteranceRolledOver,
    UtteranceStarted,
)
from proxy.session.events import ErrorCase, ErrorCode
from proxy.session.inputs import (
    AppendAudio,
    ClientInput,
    FinishUtterance,
    InvalidInput,
    SessionRules,
)
from proxy.turns import TurnOptions
from proxy.vllm_wire import (
    APPEND_MAX_BYTES,
    FRAME_BYTES,
    UpstreamEvent,
    decode_event,
    step_audio_bytes,
    steps_sent,
)
from tests.proxy.envelope_client import (
    Append,
    Cancel,
    ClientFrame,
    ClientMessage,
    Commit,
    End,
    Ping,
    SessionUpdate,
    as_client_sees,
    binary_append,
)
from tests.tones import ULAW_8K

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
SERVER_SID = "sess_0123456789abcdef"
SID = "client-session"
USAGE = {"prompt_tokens": 39, "completion_tokens": 5, "total_tokens": 44}
DELAY_MS = 480
# The audio vLLM's first step waits for at this delay (2.5 ms past 7 frames): less of it is held
# in the session until more comes or the final commit.
FIRST_STEP_BYTES = step_audio_bytes(0, DELAY_MS)


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


def pcm_of(size: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) % 256 for i in range(size))


class Harness:
    """A session plus a clock and convenience inputs; every returned action is also logged."""

    def __init__(
        self,
        *,
        segment_max_bytes: int | None = None,
        ready: bool = True,
        audio_format: AudioFormat = NATIVE,
        **limits: Any,
    ) -> None:
        self.session = Session(
            session_id=SERVER_SID,
            served_model=MODEL,
            limits=SessionLimits.from_config(ProxyConfig(api_keys=("k",), **limits)),
            transcription_delay_ms=DELAY_MS,
            segment_max_bytes=segment_max_bytes,
            audio_format=audio_format,
        )
        # The session's events are read as an envelope client reads them.
        self.codec = EnvelopeCodec(SERVER_SID, max_message_bytes=1024 * 1024)
        self.now = 100.0
        self.log: list[Action] = []
        if ready:
            self.ready()

    def _keep(self, actions: list[Action]) -> list[Action]:
        seen = as_client_sees(actions, self.codec)
        self.log.extend(seen)
        return seen

    # client side
    def send(
        self,
        message: ClientMessage | ClientInput | str,
        backlog: int = 0,
        backlog_bytes: int = 0,
    ) -> list[Action]:
        """A client message (as the client sends it, through the codec: a test message or a
        raw text frame), or an input as a codec would give it."""
        self.now += 0.01
        parsed: ClientInput
        if isinstance(message, str):
            parsed = self.codec.parse_text(message)
        elif isinstance(message, ClientMessage):
            frame = message.frame()
            if isinstance(frame, bytes):
                parsed = self.codec.parse_binary(frame)
            else:
                parsed = self.codec.parse_text(frame)
        else:
            parsed = message
        return self._keep(self.session.on_client(parsed, self.now, backlog, backlog_bytes))

    def raw(self, text: str, backlog: int = 0) -> list[Action]:
        return self.send(text, backlog)

    def commit(self, rid: str, *, final: bool = False, backlog: int = 0) -> list[Action]:
        return self.send(Commit(SID, rid, final), backlog)

    def append(
        self, rid: str, pcm: bytes, backlog: int = 0, backlog_bytes: int = 0
    ) -> list[Action]:
        return self.send(Append(SID, rid, b64(pcm), len(pcm)), backlog, backlog_bytes)

    def binary(self, data: bytes, backlog: int = 0) -> list[Action]:
        return self.send(binary_append(data), backlog)

    def cancel(self, rid: str, reason: str = "client_request") -> list[Action]:
        return self.send(Cancel(SID, rid, reason))

    def b_behind_finalizing_a(self) -> None:
        """Utterance A finalizes (it runs upstream until its done) and B opens behind it, so
        B's audio is held in the session."""
        self.commit("A")
        self.commit("A", final=True)
        self.commit("B")

    def facts(self, kind: type) -> list[Any]:
        """The lifecycle facts of one kind the session emitted so far."""
        return [a for a in self.log if isinstance(a, kind)]

    def outcomes(self) -> Counter[Outcome]:
        return Counter(fact.outcome for fact in self.facts(UtteranceEnded))

    # upstream side
    def gen(self, generation: int | None) -> int:
        return self.session.upstream_epoch if generation is None else generation

    def ready(self, generation: int | None = None) -> list[Action]:
        return self._keep(self.session.on_upstream_ready(self.gen(generation), self.now))

    def event(self, event: dict[str, Any], generation: int | None = None) -> list[Action]:
        """One event from vLLM, decoded as the relay decodes it."""
        decoded: UpstreamEvent | None = decode_event(json.dumps(event))
        assert decoded is not None
        epoch = self.gen(generation)
        return self._keep(self.session.on_upstream_event(epoch, decoded, self.now))

    def delta(self, text: str, generation: int | None = None) -> list[Action]:
        return self.event({"type": "transcription.delta", "delta": text}, generation)

    def done(
        self, usage: dict[str, Any] | None = None, generation: int | None = None, text: str = ""
    ) -> list[Action]:
        event = {"type": "transcription.done", "text": text, "usage": usage or dict(USAGE)}
        return self.event(event, generation)

    def upstream_error(
        self, code: str = "processing_error", generation: int | None = None
    ) -> list[Action]:
        event = {"type": "error", "error": "engine failed", "code": code}
        return self.event(event, generation)

    def lost(self, generation: int | None = None) -> list[Action]:
        return self._keep(self.session.on_upstream_lost(self.gen(generation), self.now))

    def stalled(self, generation: int | None = None) -> list[Action]:
        return self._keep(self.session.on_upstream_stalled(self.gen(generation), self.now))

    def wind_down(self, reason: WindDown) -> list[Action]:
        return self._keep(self.session.wind_down(reason, self.now))

    def terminate(self, code: ErrorCode) -> list[Action]:
        return self._keep(self.session.terminate(code, self.now))

    def client_left(self) -> list[Action]:
        return self._keep(self.session.client_left(self.now))


# Facts for telemetry and the relay's timers, left out of ``summary`` (tested on their own).
NOT_SUMMARIZED = (
    UtteranceStarted,
    UtteranceRolledOver,
    UtteranceEnded,
    UpstreamOwes,
    UpstreamSettled,
)


def wire(actions: list[Action]) -> list[Action]:
    """The actions that reach a socket (events, upstream text, reopen, close)."""
    return [a for a in actions if not isinstance(a, NOT_SUMMARIZED)]


def summary(actions: list[Action]) -> list[tuple[Any, ...]]:
    """A readable digest of actions: client events, upstream messages, reopen, close."""
    out: list[tuple[Any, ...]] = []
    for action in actions:
        if isinstance(action, NOT_SUMMARIZED):
            continue
        if isinstance(action, ClientFrame):
            event = action.event
            kind, rid, payload = event["type"], event["request_id"], event["payload"]
            if kind == "error":
                out.append(("error", rid, payload["code"]))
            elif kind == "transcription.delta":
                out.append(("delta", rid, payload["delta"]))
            elif kind == "transcription.done":
                out.append(("done", rid, payload["text"]))
            elif kind == "cancelled":
                out.append(("cancelled", rid, payload["reason"]))
            else:
                out.append((kind, rid))
        elif isinstance(action, SendUpstream):
            message = json.loads(action.text)
            if message["type"] == "input_audio_buffer.commit":
                out.append(("final" if message["final"] else "open", action.epoch))
            else:
                assert message["type"] == "input_audio_buffer.append"
                audio = base64.b64decode(message["audio"], validate=True)
                out.append(("append", action.epoch, len(audio)))
        elif isinstance(action, OpenUpstream):
            out.append(("reopen", action.epoch))
        elif isinstance(action, HoldClient):
            out.append(("hold",))
        else:
            out.append(("close", CLOSE_CODES[action.error]))
    return out


def client_events(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, ClientFrame)]


def upstream(actions: list[Action]) -> list[SendUpstream]:
    return [a for a in actions if isinstance(a, SendUpstream)]


def upstream_pcm(actions: list[Action]) -> bytes:
    pcm = b""
    for action in upstream(actions):
        message = json.loads(action.text)
        if message["type"] == "input_audio_buffer.append":
            pcm += base64.b64decode(message["audio"], validate=True)
    return pcm


def only_event(actions: list[Action]) -> dict[str, Any]:
    events = client_events(actions)
    assert len(events) == 1, summary(actions)
    return events[0]


# ====================================================================== simple messages


def test_nothing_happens_before_the_client_speaks() -> None:
    harness = Harness()
    assert harness.log == []
    assert harness.codec.session_id == SERVER_SID


def test_ping_answered_with_same_payload_and_request_id() -> None:
    harness = Harness()
    event = only_event(harness.send(Ping(SID, "p1", {"t": 1, "x": [1, 2]})))
    assert event == {
        "type": "pong",
        "session_id": SID,
        "request_id": "p1",
        "payload": {"t": 1, "x": [1, 2]},
    }
    assert only_event(harness.send(Ping(SID, None, {})))["request_id"] is None


def test_session_update_same_model() -> None:
    harness = Harness()
    event = only_event(harness.send(SessionUpdate(SID, "u1", MODEL)))
    assert event == {
        "type": "session.updated",
        "session_id": SID,
        "request_id": "u1",
        "payload": {
            "model": MODEL,
            "segment_pause_ms": 480,
            "audio": NATIVE.as_payload(),
            "turn_detection": None,
        },
    }


def test_session_update_other_model() -> None:
    harness = Harness()
    event = only_event(harness.send(SessionUpdate(SID, "u1", "other/model")))
    assert event["type"] == "error"
    assert event["request_id"] == "u1"
    assert event["payload"]["code"] == "unsupported_model"
    assert event["payload"]["message"]


def test_envelope_error_is_answered_and_connection_stays() -> None:
    harness = Harness()
    actions = harness.raw('{"type":"input_audio_buffer.append","session_id":"s9","request_id":"r"}')
    event = only_event(actions)
    assert (event["type"], event["session_id"], event["request_id"]) == ("error", "s9", "r")
    assert event["payload"]["code"] == "invalid_message"
    assert summary(harness.raw("{nope")) == [("error", None, "invalid_json")]
    assert summary(harness.raw('{"type":"x","session_id":"s9"}')) == [
        ("error", None, "unknown_type")
    ]
    audio = '{"type":"input_audio_buffer.append","session_id":"s9","request_id":"r",'
    assert summary(harness.raw(audio + '"payload":{"audio":"AAA"}}')) == [
        ("error", "r", "invalid_audio")
    ]
    assert not harness.session.closed
    assert summary(harness.send(Ping(SID, None, {}))) == [("pong", None)]


def test_frame_level_refusals_keep_the_connection() -> None:
    harness = Harness()
    harness.commit("A")
    too_large = InvalidInput(
        ErrorCode.PAYLOAD_TOO_LARGE, "Too large.", details={"max_message_bytes": 1024}
    )
    event = only_event(harness.send(too_large))
    assert event["payload"] == {
        "code": "payload_too_large",
        "message": "Too large.",
        "details": {"max_message_bytes": 1024},
    }
    invalid = InvalidInput(ErrorCode.INVALID_MESSAGE, "Not an envelope.")
    assert summary(harness.send(invalid)) == [("error", None, "invalid_message")]
    assert not harness.session.closed
    assert summary(harness.append("A", pcm_of(FIRST_STEP_BYTES))) == [
        ("append", 0, FIRST_STEP_BYTES)
    ]


def test_connection_level_events_before_the_client_spoke_use_the_server_session_id() -> None:
    harness = Harness()
    event = only_event(harness.upstream_error("model_not_found"))
    assert event["session_id"] == SERVER_SID
    closing = client_events(harness.lost())
    assert [e["session_id"] for e in closing] == [SERVER_SID]


def test_events_echo_the_latest_client_session_id() -> None:
    harness = Harness()
    assert only_event(harness.send(Ping("first", None, {})))["session_id"] == "first"
    assert only_event(harness.send(Ping("second", None, {})))["session_id"] == "second"
    harness.commit("r1")
    harness.send(Commit("third", "r1", True))
    assert only_event(harness.delta("hi"))["session_id"] == "third"


def test_error_for_invalid_message_echoes_its_session_id() -> None:
    harness = Harness()
    event = only_event(harness.raw('{"type":"cancel","session_id":"mine"}'))
    assert event["session_id"] == "mine"
    assert event["payload"]["code"] == "invalid_message"


# ====================================================================== one utterance


def test_full_utterance() -> None:
    harness = Harness()
    chunk1, chunk2 = pcm_of(3200, 1), pcm_of(1600, 2)
    assert summary(harness.commit("r1")) == [("open", 0)]
    # Less than vLLM's first step: it waits for the final commit.
    assert summary(harness.append("r1", chunk1)) == []
    assert summary(harness.append("r1", chunk2)) == []
    assert summary(harness.commit("r1", final=True)) == [("append", 0, 4800), ("final", 0)]
    assert summary(harness.delta("")) == []
    assert summary(harness.delta(" hello")) == [("delta", "r1", " hello")]
    assert summary(harness.delta("")) == []
    assert summary(harness.delta(" world")) == [("delta", "r1", " world")]
    done = only_event(harness.done(USAGE, text=" hello world"))
    # Step 1 sits at 80 ms; step 3 (right padding) is clamped to the audio's end, 150 ms.
    deltas = [e for e in client_events(harness.log) if e["type"] == "transcription.delta"]
    assert [e["payload"]["audio_ms"] for e in deltas] == [80, 150]
    assert done == {
        "type": "transcription.done",
        "session_id": SID,
        "request_id": "r1",
        "payload": {
            "text": " hello world",
            "segments": [{"text": " hello world", "start_ms": 80, "end_ms": 150}],
            "usage": {**USAGE, "audio_seconds": 0.15},
            "audio_ms": (3200 + 1600) // 32,
        },
    }
    assert upstream_pcm(harness.log) == chunk1 + chunk2
    assert harness.session.in_flight == []
    assert len(harness.facts(UtteranceStarted)) == harness.outcomes()[Outcome.DONE] == 1


def test_appended_audio_is_forwarded_verbatim() -> None:
    harness = Harness()
    harness.commit("r1")
    audio = b64(pcm_of(FIRST_STEP_BYTES))
    [action] = harness.send(Append(SID, "r1", audio, FIRST_STEP_BYTES))
    assert isinstance(action, SendUpstream)
    assert json.loads(action.text) == {"type": "input_audio_buffer.append", "audio": audio}


def test_upstream_messages_are_vllm_commits() -> None:
    harness = Harness()
    [open_action] = wire(harness.commit("r1"))
    [final_action] = wire(harness.commit("r1", final=True))
    assert isinstance(open_action, SendUpstream)
    assert isinstance(final_action, SendUpstream)
    assert json.loads(open_action.text) == {"type": "input_audio_buffer.commit", "final": False}
    assert json.loads(final_action.text) == {"type": "input_audio_buffer.commit", "final": True}


def test_done_text_is_the_forwarded_deltas_not_vllms_text() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.delta("a")
    harness.delta("")
    harness.delta("b")
    harness.commit("r1", final=True)
    harness.event({"type": "transcription.delta", "delta": None})
    harness.event({"type": "transcription.delta"})
    harness.delta("c")
    done = only_event(harness.done(text="something else"))
    assert done["payload"]["text"] == "abc"


def test_done_without_audio() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    done = only_event(harness.done({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))
    assert done["payload"] == {
        "text": "",
        "segments": [],
        "usage": {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "audio_seconds": 0,
        },
        "audio_ms": 0,
    }


def test_done_usage_tolerates_missing_fields() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    event = {"type": "transcription.done", "text": "", "usage": {"prompt_tokens": 7}}
    done = only_event(harness.event(event))
    assert done["payload"]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 0,
        "total_tokens": 0,
        "audio_seconds": 0,
    }


def test_commit_same_open_id_again_has_no_effect() -> None:
    harness = Harness()
    harness.commit("r1")
    assert harness.commit("r1") == []
    harness.append("r1", pcm_of(64))
    assert harness.commit("r1") == []
    assert summary(harness.commit("r1", final=True)) == [("append", 0, 64), ("final", 0)]


def test_commit_before_upstream_ready_waits() -> None:
    harness = Harness(ready=False)
    assert wire(harness.commit("r1")) == []
    assert harness.append("r1", pcm_of(FIRST_STEP_BYTES)) == []
    assert summary(harness.ready()) == [("open", 0), ("append", 0, FIRST_STEP_BYTES)]


def test_stale_ready_is_ignored() -> None:
    harness = Harness(ready=False)
    harness.commit("r1")
    assert harness.ready(generation=5) == []
    assert summary(harness.ready()) == [("open", 0)]


# ====================================================================== wrong ids


def test_append_with_nothing_open() -> None:
    harness = Harness()
    assert summary(harness.append("r1", pcm_of(64))) == [("error", "r1", "no_active_request")]


def test_append_for_another_id_is_a_mismatch_and_dropped() -> None:
    harness = Harness()
    harness.commit("open-one")
    actions = harness.append("other", pcm_of(64))
    event = only_event(actions)
    assert event["request_id"] == "other"
    assert event["payload"]["code"] == "request_id_mismatch"
    assert upstream(actions) == []
    assert harness.session.open is not None
    assert harness.session.open.audio.client_bytes == 0


def test_final_commit_for_another_id_is_a_mismatch() -> None:
    harness = Harness()
    harness.commit("open-one")
    assert summary(harness.commit("other", final=True)) == [
        ("error", "other", "request_id_mismatch")
    ]
    assert harness.session.open is not None


def test_final_commit_with_nothing_open() -> None:
    harness = Harness()
    assert summary(harness.commit("r1", final=True)) == [("error", "r1", "no_active_request")]


def test_append_and_final_after_final_commit() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    assert summary(harness.append("r1", pcm_of(64))) == [("error", "r1", "no_active_request")]
    assert summary(harness.commit("r1", final=True)) == [("error", "r1", "no_active_request")]
    assert upstream_pcm(harness.log) == b""


def test_reopening_a_finalizing_id_is_refused() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    assert summary(harness.commit("r1")) == [("error", "r1", "invalid_message")]
    # The finalizing utterance is untouched and still completes.
    assert summary(harness.done()) == [("done", "r1", "")]


def test_reopening_a_queued_id_is_refused() -> None:
    harness = Harness()
    harness.commit("a")
    harness.commit("a", final=True)
    harness.commit("b")
    harness.commit("b", final=True)
    assert summary(harness.commit("b")) == [("error", "b", "invalid_message")]


def test_id_may_be_reused_after_done() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    harness.done()
    assert summary(harness.commit("r1")) == [("open", 0)]


# ====================================================================== queueing


def test_second_utterance_waits_behind_finalizing_one_with_its_audio() -> None:
    harness = Harness()
    a1, b1, b2 = pcm_of(320, 1), pcm_of(640, 2), pcm_of(FIRST_STEP_BYTES, 3)
    harness.commit("A")
    harness.append("A", a1)
    harness.commit("A", final=True)
    # B opens at once for the client, but nothing of it goes upstream yet.
    assert wire(harness.commit("B")) == []
    assert harness.append("B", b1) == []
    assert harness.append("B", b2) == []
    assert harness.session.held_messages == 3  # two appends, and B waiting in the line
    assert summary(harness.delta("a")) == [("delta", "A", "a")]
    # A's done releases B's audio, in order, on the same upstream connection: in one append,
    # as it completes vLLM's first step.
    actions = harness.done()
    assert summary(actions) == [
        ("done", "A", "a"),
        ("open", 0),
        ("append", 0, 640 + FIRST_STEP_BYTES),
    ]
    assert upstream_pcm(actions) == b1 + b2
    assert harness.session.held_messages == 0
    # B is now current: its audio waits only for the step it completes (or the final commit).
    assert summary(harness.append("B", pcm_of(64))) == []
    assert summary(harness.commit("B", final=True)) == [("append", 0, 64), ("final", 0)]
    assert summary(harness.delta("b")) == [("delta", "B", "b")]
    assert summary(harness.done()) == [("done", "B", "b")]


def test_queued_utterance_finalized_before_its_turn() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", pcm_of(64))
    assert harness.commit("B", final=True) == []
    assert summary(harness.done()) == [
        ("done", "A", ""),
        ("open", 0),
        ("append", 0, 64),
        ("final", 0),
    ]


def test_back_to_back_utterances_come_back_complete_and_in_order() -> None:
    harness = Harness()
    audio = {rid: [pcm_of(320, i), pcm_of(640, i + 10)] for i, rid in enumerate("ABC")}
    for rid in "ABC":
        harness.commit(rid)
        for chunk in audio[rid]:
            harness.append(rid, chunk)
        harness.commit(rid, final=True)
    # A's two appends complete no step: they go up as one with its final commit.
    assert summary(upstream(harness.log)) == [
        ("open", 0),
        ("append", 0, 960),
        ("final", 0),
    ]
    assert harness.session.finalizing
    dones = []
    for rid in "ABC":
        harness.delta(f"<{rid}>")
        dones += [e for e in client_events(harness.done()) if e["type"] == "transcription.done"]
    assert [(e["request_id"], e["payload"]["text"]) for e in dones] == [
        ("A", "<A>"),
        ("B", "<B>"),
        ("C", "<C>"),
    ]
    assert [e["payload"]["audio_ms"] for e in dones] == [30, 30, 30]
    assert upstream_pcm(harness.log) == b"".join(b"".join(audio[r]) for r in "ABC")
    # Each utterance went upstream as open, its audio, final; one after the other.
    kinds = [s[0] for s in summary(upstream(harness.log))]
    assert kinds == ["open", "append", "final"] * 3
    assert not harness.session.finalizing


# ====================================================================== barge-in


def test_barge_in_cancels_the_open_utterance() -> None:
    harness = Harness()
    harness.commit("S")
    harness.append("S", pcm_of(64))
    harness.delta("s")
    actions = harness.commit("R")
    assert summary(actions) == [("cancelled", "S", "superseded"), ("reopen", 1)]
    # S's generation is gone: its late events are ignored.
    assert harness.delta("late", generation=0) == []
    assert harness.done(generation=0) == []
    # R waits for the fresh upstream connection, audio held.
    assert harness.append("R", pcm_of(128)) == []
    assert summary(harness.ready()) == [("open", 1)]
    assert summary(harness.commit("R", final=True)) == [("append", 1, 128), ("final", 1)]
    harness.delta("r")
    assert summary(harness.done()) == [("done", "R", "r")]
    assert harness.outcomes()[Outcome.CANCELLED] == 1


def test_barge_in_on_a_queued_open_utterance_keeps_the_finalizing_one() -> None:
    harness = Harness()
    harness.commit("T")
    harness.commit("T", final=True)
    harness.commit("S")
    harness.append("S", pcm_of(64))
    assert summary(harness.commit("R")) == [("cancelled", "S", "superseded")]
    assert summary(harness.delta("t")) == [("delta", "T", "t")]
    harness.append("R", pcm_of(32))
    assert summary(harness.done()) == [("done", "T", "t"), ("open", 0)]
    assert summary(harness.commit("R", final=True)) == [("append", 0, 32), ("final", 0)]
    # S's audio never went upstream.
    assert len(upstream_pcm(harness.log)) == 32


def test_barge_in_counts_against_the_cancel_limit() -> None:
    harness = Harness(max_cancels_per_window=1, cancel_window_s=60.0)
    harness.commit("A")
    harness.commit("B")  # barge-in: one cancel used
    harness.ready()
    actions = harness.commit("C")
    event = only_event(actions)
    assert event["payload"]["code"] == "rate_limited"
    assert event["payload"]["details"]["kind"] == "cancels"
    assert event["request_id"] == "C"
    # The refused barge-in changed nothing: B is still open.
    assert harness.session.open is not None
    assert harness.session.open.request_id == "B"


# ====================================================================== cancel


def test_cancel_open_current_utterance() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.append("r1", pcm_of(64))
    harness.delta("x")
    actions = harness.cancel("r1", "user pressed stop")
    assert summary(actions) == [("cancelled", "r1", "user pressed stop"), ("reopen", 1)]
    assert harness.delta("y", generation=0) == []
    assert harness.done(generation=0) == []
    assert harness.upstream_error(generation=0) == []
    assert harness.session.open is None
    assert summary(harness.append("r1", pcm_of(64))) == [("error", "r1", "no_active_request")]


def test_cancel_default_reason_is_echoed() -> None:
    harness = Harness()
    harness.commit("r1")
    event = client_events(harness.send(Cancel(SID, "r1", "client_request")))[0]
    assert event == {
        "type": "cancelled",
        "session_id": SID,
        "request_id": "r1",
        "payload": {"reason": "client_request"},
    }


def test_cancel_via_envelope_default_reason() -> None:
    harness = Harness()
    harness.commit("r1")
    actions = harness.raw('{"type":"cancel","session_id":"s","request_id":"r1"}')
    assert summary(actions)[0] == ("cancelled", "r1", "client_request")


def test_cancel_finalizing_utterance() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    harness.delta("partial")
    assert summary(harness.cancel("r1")) == [("cancelled", "r1", "client_request"), ("reopen", 1)]
    assert harness.delta("more", generation=0) == []
    assert harness.done(generation=0) == []
    assert harness.session.in_flight == []


def test_cancel_current_lets_the_next_one_run_on_the_fresh_connection() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", pcm_of(FIRST_STEP_BYTES))
    assert summary(harness.cancel("A")) == [("cancelled", "A", "client_request"), ("reopen", 1)]
    assert summary(harness.ready()) == [("open", 1), ("append", 1, FIRST_STEP_BYTES)]


def test_cancel_queued_utterance_drops_its_audio_without_touching_upstream() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", pcm_of(64))
    harness.commit("B", final=True)
    harness.commit("C")
    harness.append("C", pcm_of(FIRST_STEP_BYTES))
    assert summary(harness.cancel("B", "nope")) == [("cancelled", "B", "nope")]
    assert summary(harness.done()) == [
        ("done", "A", ""),
        ("open", 0),
        ("append", 0, FIRST_STEP_BYTES),
    ]
    assert len(upstream_pcm(harness.log)) == FIRST_STEP_BYTES


def test_cancel_unknown_id() -> None:
    harness = Harness()
    assert summary(harness.cancel("ghost")) == [("error", "ghost", "no_active_request")]
    harness.commit("r1")
    assert summary(harness.cancel("ghost")) == [("error", "ghost", "no_active_request")]


def test_cancel_after_done() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    harness.done()
    assert summary(harness.cancel("r1")) == [("error", "r1", "no_active_request")]


def test_cancel_twice() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.cancel("r1")
    assert summary(harness.cancel("r1")) == [("error", "r1", "no_active_request")]


# ====================================================================== upstream errors


def test_vllm_error_ends_the_running_utterance() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.delta("x")
    actions = harness.event(
        {"type": "error", "error": "something broke", "code": "processing_error"}
    )
    assert summary(actions) == [("error", "r1", "upstream_error"), ("reopen", 1)]
    details = client_events(actions)[0]["payload"]["details"]
    assert details["upstream_code"] == "processing_error"
    assert details["upstream_message"] == "something broke"
    # The old generation's events are ignored afterwards.
    assert harness.delta("late", generation=0) == []
    assert harness.done(generation=0) == []
    assert harness.session.in_flight == []
    assert harness.outcomes()[Outcome.ERRORED] == 1
    # The utterance ended: the client cannot keep sending audio for it.
    assert summary(harness.append("r1", pcm_of(64))) == [("error", "r1", "no_active_request")]


def test_vllm_error_while_finalizing_then_next_in_line_runs() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", pcm_of(FIRST_STEP_BYTES))
    assert summary(harness.upstream_error("boom")) == [
        ("error", "A", "upstream_error"),
        ("reopen", 1),
    ]
    assert summary(harness.ready()) == [("open", 1), ("append", 1, FIRST_STEP_BYTES)]


def test_vllm_error_with_nothing_running_is_connection_level() -> None:
    harness = Harness()
    actions = harness.upstream_error("model_not_found")
    event = only_event(actions)
    assert event["request_id"] is None
    assert event["payload"]["code"] == "upstream_error"
    assert event["payload"]["details"]["upstream_code"] == "model_not_found"
    assert not harness.session.closed


def test_stale_vllm_error_is_ignored() -> None:
    harness = Harness()
    harness.commit("A")
    harness.cancel("A")
    assert harness.upstream_error(generation=0) == []


def test_upstream_message_is_bounded() -> None:
    harness = Harness()
    harness.commit("r1")
    event = {"type": "error", "error": "x" * 5000, "code": "processing_error"}
    details = client_events(harness.event(event))[0]["payload"]["details"]
    assert len(details["upstream_message"]) <= 300


def test_unknown_upstream_event_types_are_ignored() -> None:
    harness = Harness()
    harness.commit("r1")
    assert harness.event({"type": "session.created", "id": "sess-1"}) == []
    assert harness.event({"type": "something.new"}) == []
    assert harness.event({}) == []


def test_stalled_upstream_ends_the_running_utterance() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    actions = harness.stalled(0)
    assert summary(actions) == [("error", "A", "upstream_error"), ("reopen", 1)]
    assert client_events(actions)[0]["payload"]["details"]["upstream_code"] == "no_response"
    assert harness.done(generation=0) == []
    assert summary(harness.ready()) == [("open", 1)]


def test_stall_of_an_old_upstream_or_with_nothing_running_is_ignored() -> None:
    harness = Harness()
    assert harness.stalled(0) == []
    harness.commit("A")
    harness.cancel("A")
    assert harness.stalled(0) == []
    assert not harness.session.closed


# ====================================================================== upstream lost


def test_upstream_lost_errors_every_utterance_then_closes_1013() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.commit("B", final=True)
    harness.commit("C")
    actions = harness.lost()
    assert summary(actions) == [
        ("error", "A", "upstream_unavailable"),
        ("error", "B", "upstream_unavailable"),
        ("error", "C", "upstream_unavailable"),
        ("error", None, "upstream_unavailable"),
        ("close", 1013),
    ]
    assert harness.session.closed
    assert harness.delta("x") == []
    assert harness.done() == []
    assert harness.send(Ping(SID, None, {})) == []
    assert harness.commit("D") == []
    assert harness.lost() == []
    assert harness.ready() == []
    assert harness.terminate(ErrorCode.INTERNAL_ERROR) == []
    assert harness.wind_down(WindDown.END) == []


def test_upstream_lost_with_nothing_in_flight() -> None:
    harness = Harness()
    assert summary(harness.lost()) == [("error", None, "upstream_unavailable"), ("close", 1013)]


def test_losing_an_old_upstream_is_ignored() -> None:
    harness = Harness()
    harness.commit("A")
    harness.cancel("A")  # generation 1 requested
    assert harness.lost(generation=0) == []
    assert not harness.session.closed


def test_failed_reopen_is_upstream_lost() -> None:
    harness = Harness()
    harness.commit("A")
    harness.commit("B")  # barge-in: reopen generation 1, B waits
    assert summary(harness.lost(generation=1)) == [
        ("error", "B", "upstream_unavailable"),
        ("error", None, "upstream_unavailable"),
        ("close", 1013),
    ]


# ====================================================================== wind down


def test_end_with_nothing_in_flight() -> None:
    harness = Harness()
    actions = harness.send(End(SID, None))
    assert summary(actions) == [("session.ended", None), ("close", 1000)]
    assert client_events(actions)[0]["payload"] == {}
    assert client_events(actions)[0]["session_id"] == SID


def test_end_finalizes_the_open_utterance_and_waits_for_every_done() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", pcm_of(64))
    assert harness.send(End(SID, "e")) == []  # B is queued: its final goes up with it later
    assert summary(harness.commit("C")) == [("error", "C", "invalid_message")]
    harness.delta("a")
    assert summary(harness.done()) == [
        ("done", "A", "a"),
        ("open", 0),
        ("append", 0, 64),
        ("final", 0),
    ]
    harness.delta("b")
    assert summary(harness.done()) == [
        ("done", "B", "b"),
        ("session.ended", None),
        ("close", 1000),
    ]


def test_end_sends_the_final_commit_of_the_current_utterance() -> None:
    harness = Harness()
    harness.commit("A")
    harness.append("A", pcm_of(64))
    assert summary(harness.send(End(SID, None))) == [("append", 0, 64), ("final", 0)]
    assert summary(harness.done()) == [("done", "A", ""), ("session.ended", None), ("close", 1000)]


def test_end_then_append_is_no_active_request() -> None:
    harness = Harness()
    harness.commit("A")
    harness.send(End(SID, None))
    assert summary(harness.append("A", pcm_of(64))) == [("error", "A", "no_active_request")]


def test_cancel_during_end_can_complete_the_wind_down() -> None:
    harness = Harness()
    harness.commit("A")
    harness.send(End(SID, None))
    assert summary(harness.cancel("A")) == [
        ("cancelled", "A", "client_request"),
        ("reopen", 1),
        ("session.ended", None),
        ("close", 1000),
    ]


def test_second_end_is_harmless() -> None:
    harness = Harness()
    harness.commit("A")
    harness.send(End(SID, None))
    assert harness.send(End(SID, None)) == []
    assert summary(harness.done()) == [("done", "A", ""), ("session.ended", None), ("close", 1000)]


@pytest.mark.parametrize(
    ("reason", "code", "close"),
    [
        (WindDown.MAX_DURATION, "max_duration_reached", 4003),
        (WindDown.SHUTDOWN, "shutting_down", 1001),
    ],
)
def test_wind_down_finalizes_delivers_then_closes(reason: WindDown, code: str, close: int) -> None:
    harness = Harness()
    harness.commit("A")
    harness.append("A", pcm_of(64))
    actions = harness.wind_down(reason)
    assert summary(actions) == [("append", 0, 64), ("final", 0)]
    # No new utterances meanwhile; the reply names why.
    assert summary(harness.commit("B")) == [("error", "B", code)]
    assert summary(harness.delta("a")) == [("delta", "A", "a")]
    assert summary(harness.done()) == [("done", "A", "a"), ("error", None, code), ("close", close)]


@pytest.mark.parametrize(
    ("reason", "code", "close"),
    [
        (WindDown.MAX_DURATION, "max_duration_reached", 4003),
        (WindDown.SHUTDOWN, "shutting_down", 1001),
        (WindDown.END, None, 1000),
    ],
)
def test_wind_down_with_nothing_in_flight_closes_at_once(
    reason: WindDown, code: str | None, close: int
) -> None:
    harness = Harness()
    expected: list[tuple[Any, ...]] = (
        [("session.ended", None)] if code is None else [("error", None, code)]
    )
    assert summary(harness.wind_down(reason)) == [*expected, ("close", close)]


def test_wind_down_deadline_then_terminate() -> None:
    harness = Harness()
    harness.commit("A")
    harness.wind_down(WindDown.MAX_DURATION)
    actions = harness.terminate(ErrorCode.MAX_DURATION_REACHED)
    assert summary(actions) == [
        ("error", "A", "max_duration_reached"),
        ("error", None, "max_duration_reached"),
        ("close", 4003),
    ]


def test_terminate_errors_every_utterance_then_closes() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    actions = harness.terminate(ErrorCode.IDLE_TIMEOUT)
    assert summary(actions) == [
        ("error", "A", "idle_timeout"),
        ("error", "B", "idle_timeout"),
        ("error", None, "idle_timeout"),
        ("close", 4000),
    ]
    assert harness.terminate(ErrorCode.IDLE_TIMEOUT) == []
    assert harness.done(generation=0) == []


def test_terminate_with_nothing_in_flight() -> None:
    harness = Harness()
    assert summary(harness.terminate(ErrorCode.SHUTTING_DOWN)) == [
        ("error", None, "shutting_down"),
        ("close", 1001),
    ]


def test_finalizing_flag() -> None:
    harness = Harness()
    assert not harness.session.finalizing
    harness.commit("A")
    assert not harness.session.finalizing
    harness.commit("A", final=True)
    assert harness.session.finalizing
    harness.done()
    assert not harness.session.finalizing


# ====================================================================== inbound backlog


def test_backlog_just_under_the_limit_is_fine() -> None:
    harness = Harness(inbound_queue_max=4)
    assert summary(harness.commit("A", backlog=3)) == [("open", 0)]
    step = pcm_of(FIRST_STEP_BYTES)
    assert summary(harness.append("A", step, backlog=3)) == [("append", 0, FIRST_STEP_BYTES)]


def test_backlog_over_the_limit_closes_4004() -> None:
    harness = Harness(inbound_queue_max=4)
    harness.commit("A")
    actions = harness.append("A", pcm_of(2), backlog=4)
    assert summary(actions) == [
        ("error", "A", "inbound_queue_full"),
        ("error", None, "inbound_queue_full"),
        ("close", 4004),
    ]


def test_held_audio_counts_toward_the_backlog() -> None:
    harness = Harness(inbound_queue_max=4)
    harness.b_behind_finalizing_a()
    for _ in range(3):
        assert harness.append("B", pcm_of(2)) == []
    assert harness.session.held_messages == 4  # three appends, and B waiting in the line
    assert summary(harness.append("B", pcm_of(2))) == [
        ("error", "A", "inbound_queue_full"),
        ("error", "B", "inbound_queue_full"),
        ("error", None, "inbound_queue_full"),
        ("close", 4004),
    ]


def test_inbound_depth_is_the_backlog_plus_held_audio_at_the_last_audio_message() -> None:
    harness = Harness(inbound_queue_max=100)
    harness.commit("A", backlog=7)
    assert harness.session.inbound_depth == 7
    harness.commit("A", final=True)
    harness.commit("B")
    for _ in range(3):
        harness.append("B", pcm_of(2), backlog=2)
    # Two appends held before the third, and B waiting in the line.
    assert harness.session.inbound_depth == 2 + 2 + 1
    harness.send(Ping(SID, "p1", {}), backlog=50)  # not an audio message: not measured
    assert harness.session.inbound_depth == 5


def test_default_backlog_limit_is_256() -> None:
    harness = Harness()
    harness.commit("A", backlog=255)
    assert not harness.session.closed
    harness.append("A", pcm_of(2), backlog=256)
    assert harness.session.closed
    assert harness.log[-1] == CloseClient(ErrorCode.INBOUND_QUEUE_FULL)


# ====================================================================== byte budgets

# 3000 bytes of PCM are 4000 characters of base64: what the proxy holds of each chunk.
CHUNK = pcm_of(3000)
HELD = len(b64(CHUNK))


def test_held_audio_is_counted_in_bytes_as_held() -> None:
    harness = Harness()
    harness.commit("A")
    harness.commit("A", final=True)  # A finalizes: B's audio waits here
    harness.commit("B")
    for count in range(1, 4):
        harness.append("B", CHUNK)
        assert harness.session.held_bytes == count * HELD
    # B runs upstream: its audio completes no step of vLLM's, so it is still held, as the one
    # append it will go up in.
    assert summary(harness.done()) == [("done", "A", ""), ("open", 0)]
    assert harness.session.held_bytes == 3 * HELD
    assert harness.session.held_messages == 1
    assert summary(harness.commit("B", final=True)) == [("append", 0, 3 * len(CHUNK)), ("final", 0)]
    assert harness.session.held_bytes == 0
    assert harness.session.held_messages == 0


def test_held_audio_released_at_once_goes_up_in_appends_of_at_most_two_seconds() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    second = pcm_of(32_000)
    for _ in range(3):
        harness.append("B", second)
    # Each append carries at most APPEND_MAX_BYTES; the rest completes a step too, so it goes.
    assert APPEND_MAX_BYTES == 64_000
    assert summary(harness.done()) == [
        ("done", "A", ""),
        ("open", 0),
        ("append", 0, 64_000),
        ("append", 0, 32_000),
    ]


def test_binary_frames_are_held_as_the_bytes_they_came_in() -> None:
    """A binary frame's raw PCM is held as it came (it is base64-encoded only when it goes to
    vLLM): 3000 bytes held for each 3000 received, where a JSON append holds its 4000 of text."""
    budget = 2 * len(CHUNK)
    harness = Harness(inbound_queue_max_bytes=budget)
    harness.b_behind_finalizing_a()
    for count in range(1, 3):
        assert harness.binary(CHUNK) == []
        assert harness.session.held_bytes == count * len(CHUNK)
    assert summary(harness.binary(CHUNK))[-1] == ("close", 4004)


def test_held_audio_past_the_byte_budget_closes_4004_below_the_message_bound() -> None:
    harness = Harness(inbound_queue_max_bytes=3 * HELD)
    harness.b_behind_finalizing_a()
    for _ in range(3):
        assert harness.append("B", CHUNK) == []  # exactly the budget is allowed
    assert summary(harness.append("B", CHUNK)) == [
        ("error", "A", "inbound_queue_full"),
        ("error", "B", "inbound_queue_full"),
        ("error", None, "inbound_queue_full"),
        ("close", 4004),
    ]
    assert harness.session.inbound_depth == 3 + 1  # and B: far from the 256 messages


def test_bytes_waiting_in_the_relay_count_toward_the_byte_budget() -> None:
    step = pcm_of(FIRST_STEP_BYTES)  # it goes up at once: nothing stays held here
    held = len(b64(step))
    budget = 10 * held
    harness = Harness(inbound_queue_max_bytes=budget)
    harness.commit("A")
    assert summary(harness.append("A", step, backlog=1, backlog_bytes=budget - held)) == [
        ("append", 0, len(step))
    ]
    actions = harness.append("A", step, backlog=1, backlog_bytes=budget - held + 1)
    assert summary(actions)[-1] == ("close", 4004)


def test_inbound_depth_bytes_is_what_waited_before_the_last_audio_message() -> None:
    harness = Harness()
    harness.b_behind_finalizing_a()
    harness.append("B", CHUNK, backlog=1, backlog_bytes=500)
    harness.append("B", CHUNK, backlog=1, backlog_bytes=500)
    assert harness.session.inbound_depth_bytes == 500 + HELD


def test_three_minutes_held_behind_a_finalizing_utterance_fit_the_default_budget() -> None:
    """Normal use never trips the defaults: three minutes of audio in one-second chunks (180
    messages, 7.7 MB of base64) wait while the previous utterance finalizes."""
    harness = Harness()
    harness.b_behind_finalizing_a()
    second = pcm_of(32_000)
    for _ in range(180):
        harness.now += 1.0  # at real-time pace
        assert harness.append("B", second) == []
    assert not harness.session.closed
    assert harness.session.held_bytes == 180 * len(b64(second))


# ====================================================================== utterances in flight


def test_utterances_in_flight_are_bounded_and_the_refusal_names_the_bound() -> None:
    harness = Harness(max_utterances_in_flight=2)
    harness.b_behind_finalizing_a()
    # At the bound, an open that supersedes the open one keeps the count: it goes through.
    assert summary(harness.commit("C")) == [("cancelled", "B", "superseded")]
    harness.commit("C", final=True)
    [refusal] = client_events(harness.commit("D"))
    assert (refusal["type"], refusal["request_id"]) == ("error", "D")
    assert refusal["payload"]["code"] == "rate_limited"
    assert refusal["payload"]["details"] == {"max_utterances_in_flight": 2}
    assert "limits.max_utterances_in_flight" in refusal["payload"]["message"]
    assert not harness.session.closed
    harness.done()  # A ends: room for one
    assert client_events(harness.commit("D")) == []
    assert [u.request_id for u in harness.session.in_flight] == ["C", "D"]


def test_session_opened_utterances_are_bounded_too() -> None:
    """With ``open_on_audio`` (OpenAI, Mistral) an append or an empty finish that would open
    one more is refused the same way."""
    harness = Harness(max_utterances_in_flight=1)
    harness.session.rules = SessionRules(open_on_audio=True)
    harness.send(AppendAudio(None, b64(pcm_of(320)), 320))
    harness.send(FinishUtterance(None))
    [refusal] = client_events(harness.send(AppendAudio(None, b64(pcm_of(320)), 320)))
    assert refusal["payload"]["details"] == {"max_utterances_in_flight": 1}
    [refusal] = client_events(harness.send(FinishUtterance(None, empty_done=True)))
    assert refusal["payload"]["details"] == {"max_utterances_in_flight": 1}


def test_cancelling_a_queued_utterance_frees_its_place_and_its_id() -> None:
    harness = Harness(max_utterances_in_flight=2)
    harness.b_behind_finalizing_a()
    harness.cancel("B")
    assert client_events(harness.commit("B")) == []
    assert [u.request_id for u in harness.session.in_flight] == ["A", "B"]


# ====================================================================== the client leaves


def test_a_client_leaving_abandons_every_utterance_and_sends_nothing() -> None:
    harness = Harness()
    harness.commit("A")
    harness.append("A", pcm_of(640))
    harness.commit("A", final=True)
    harness.commit("B")
    actions = harness.client_left()
    assert summary(actions) == []  # nothing for a client that is gone, no close of ours
    assert harness.outcomes() == Counter({Outcome.ABANDONED: 2})
    assert [fact.error_code for fact in harness.facts(UtteranceEnded)] == [None, None]
    assert harness.session.closed
    # The upstream socket the relay closes next is no upstream failure.
    assert harness.lost() == []
    assert harness.outcomes() == Counter({Outcome.ABANDONED: 2})


def test_a_client_leaving_after_the_session_closed_changes_nothing() -> None:
    harness = Harness()
    harness.commit("A")
    harness.terminate(ErrorCode.IDLE_TIMEOUT)
    assert harness.client_left() == []
    assert harness.outcomes() == Counter({Outcome.ERRORED: 1})


# ====================================================================== audio ahead of real time


def holds(actions: list[Action]) -> list[float]:
    return [action.until for action in actions if isinstance(action, HoldClient)]


def test_audio_past_the_bound_ahead_of_real_time_holds_the_client_until_it_catches_up() -> None:
    harness = Harness(max_audio_ahead_s=1.0)
    harness.commit("A")
    half = pcm_of(16_000)  # 0.5 s
    assert holds(harness.append("A", half)) == []
    assert holds(harness.append("A", half)) == []  # 0.99 s ahead: within
    actions = harness.append("A", half)  # 1.48 s ahead
    assert [round(until - harness.now, 6) for until in holds(actions)] == [0.48]
    assert summary(actions) == [("append", 0, len(half)), ("hold",)]  # taken, then held


def test_audio_at_real_time_is_never_held_and_a_pause_earns_no_burst() -> None:
    harness = Harness(max_audio_ahead_s=1.0)
    harness.commit("A")
    chunk = pcm_of(FRAME_BYTES)  # 80 ms
    for _ in range(100):
        harness.now += 0.07  # with the harness's 0.01 per message: real time
        assert holds(harness.append("A", chunk)) == []
    harness.now += 60.0  # a long pause, then 2 s at once: held as if it had not paused
    [until] = holds(harness.append("A", pcm_of(64_000)))
    assert round(until - harness.now, 6) == 1.0


def test_audio_for_turn_detection_is_paced_too() -> None:
    session = Session(
        session_id=SERVER_SID,
        served_model=MODEL,
        limits=SessionLimits.from_config(ProxyConfig(api_keys=("k",), max_audio_ahead_s=1.0)),
        transcription_delay_ms=DELAY_MS,
        turn_options=TurnOptions(),
    )
    session.on_upstream_ready(session.upstream_epoch, 1.0)
    two_seconds = pcm_of(64_000)
    actions = session.on_client(AppendAudio(None, two_seconds, len(two_seconds)), 1.0)
    assert holds(actions) == [2.0]


# ====================================================================== rate limits


def test_message_rate_limit_refuses_with_details_and_drops() -> None:
    harness = Harness(max_messages_per_window=3, message_window_s=10.0)
    harness.commit("A")  # 1
    harness.append("A", pcm_of(2))  # 2
    harness.append("A", pcm_of(2))  # 3
    actions = harness.append("A", pcm_of(2))
    event = only_event(actions)
    assert event["type"] == "error"
    assert event["request_id"] == "A"
    assert event["payload"]["code"] == "rate_limited"
    details = event["payload"]["details"]
    assert details["kind"] == "messages"
    assert details["limit"] == 3
    assert details["window_seconds"] == 10.0
    assert 9.9 < details["retry_in"] <= 10.0
    assert upstream(actions) == []
    assert harness.session.open is not None
    assert harness.session.open.audio.client_bytes == 4
    # Once the window has passed, messages are accepted again.
    harness.now += 10.0
    # The two appends taken go up with this one, which completes vLLM's first step.
    step = pcm_of(FIRST_STEP_BYTES)
    assert summary(harness.append("A", step)) == [("append", 0, 4 + FIRST_STEP_BYTES)]


def test_ping_and_end_are_not_rate_limited() -> None:
    harness = Harness(max_messages_per_window=1, message_window_s=10.0)
    harness.commit("A")
    for _ in range(50):
        assert summary(harness.send(Ping(SID, None, {}))) == [("pong", None)]
    harness.raw('{"type":"ping","session_id":"s","payload":[]}')  # invalid ping: not counted
    assert not harness.session.closed
    assert summary(harness.send(End(SID, None))) == [("final", 0)]


def test_every_other_message_counts_toward_the_limit() -> None:
    for message in (
        SessionUpdate(SID, None, MODEL),
        Cancel(SID, "ghost", "x"),
        Commit(SID, "ghost", True),
        Append(SID, "ghost", "AAA=", 2),
        "{bad json",
    ):
        harness = Harness(max_messages_per_window=1, message_window_s=10.0)
        harness.send(message)
        event = only_event(harness.commit("A"))
        assert event["payload"]["code"] == "rate_limited", message


def test_repeated_refusals_close_4008() -> None:
    harness = Harness(max_messages_per_window=1, message_window_s=60.0)
    harness.commit("A")
    for _ in range(32):
        assert summary(harness.append("A", pcm_of(2))) == [("error", "A", "rate_limited")]
    assert not harness.session.closed
    assert summary(harness.append("A", pcm_of(2))) == [
        ("error", "A", "rate_limited"),
        ("error", None, "rate_limited"),
        ("close", 4008),
    ]


def test_refusals_spread_over_time_do_not_close() -> None:
    harness = Harness(max_messages_per_window=1, message_window_s=1.0)
    harness.commit("A")
    for _ in range(100):
        harness.now += 0.5
        harness.append("A", pcm_of(2))
    assert not harness.session.closed


def test_cancel_rate_limit() -> None:
    harness = Harness(max_cancels_per_window=2, cancel_window_s=30.0)
    for rid in ("a", "b"):
        harness.commit(rid)
        harness.cancel(rid)
        harness.ready()
    harness.commit("c")
    actions = harness.cancel("c")
    event = only_event(actions)
    assert event["request_id"] == "c"
    assert event["payload"]["code"] == "rate_limited"
    assert event["payload"]["details"]["kind"] == "cancels"
    assert event["payload"]["details"]["limit"] == 2
    assert event["payload"]["details"]["window_seconds"] == 30.0
    assert event["payload"]["details"]["retry_in"] > 0
    # The refused cancel had no effect.
    assert harness.session.open is not None
    assert harness.session.open.request_id == "c"
    harness.now += 31.0
    assert summary(harness.cancel("c"))[0] == ("cancelled", "c", "client_request")


# ====================================================================== rollover


def test_proactive_rollover_splits_the_crossing_chunk() -> None:
    harness = Harness(segment_max_bytes=4000)
    chunks = [pcm_of(2560, i) for i in range(4)]
    harness.commit("R")
    # Segments this short complete no step of vLLM's: their audio goes up with their final.
    assert summary(harness.append("R", chunks[0])) == []
    # 2560 + 2560 > 4000: 1440 bytes fit, the segment ends with a final commit, the rest is held.
    assert summary(harness.append("R", chunks[1])) == [("append", 0, 4000), ("final", 0)]
    assert harness.append("R", chunks[2]) == []  # held while the segment ends
    harness.delta("one")
    # The segment's done is not the utterance's done: the next segment starts with held audio.
    usage1 = {"prompt_tokens": 39, "completion_tokens": 3, "total_tokens": 42}
    assert summary(harness.done(usage1)) == [("open", 0)]
    # 3680 + 2560 > 4000 again: 320 bytes fit, the second segment ends.
    assert summary(harness.append("R", chunks[3])) == [("append", 0, 4000), ("final", 0)]
    assert harness.commit("R", final=True) == []  # a final commit is already upstream
    harness.delta("two")
    usage2 = {"prompt_tokens": 39, "completion_tokens": 4, "total_tokens": 43}
    assert summary(harness.done(usage2)) == [("open", 0), ("append", 0, 2240), ("final", 0)]
    harness.delta("three")
    usage3 = {"prompt_tokens": 39, "completion_tokens": 1, "total_tokens": 40}
    done = only_event(harness.done(usage3))
    assert done["request_id"] == "R"
    # Each segment's first step sits where the audio before it ended: 0, 4000 and 8000 bytes.
    assert done["payload"] == {
        "text": "onetwothree",
        "segments": [{"text": "onetwothree", "start_ms": 0, "end_ms": 320}],
        "usage": {
            "prompt_tokens": 117,
            "completion_tokens": 8,
            "total_tokens": 125,
            "audio_seconds": 0.32,
        },
        "audio_ms": 4 * 2560 // 32,
    }
    assert upstream_pcm(harness.log) == b"".join(chunks)
    assert len(harness.facts(UtteranceRolledOver)) == 2
    # Every generation segment stayed within the limit.
    assert _segments(harness.log) == [4000, 4000, 2240]


def _segments(actions: list[Action]) -> list[int]:
    """Bytes sent upstream per generation segment (open ... final)."""
    sizes: list[int] = []
    for item in summary(upstream(actions)):
        if item[0] == "open":
            sizes.append(0)
        elif item[0] == "append":
            sizes[-1] += item[2]
    return sizes


def test_rollover_when_a_chunk_fills_the_segment_exactly() -> None:
    harness = Harness(segment_max_bytes=4096)
    harness.commit("R")
    assert summary(harness.append("R", pcm_of(4096))) == []
    # Nothing fits any more: the next chunk is held whole and the segment ends.
    assert summary(harness.append("R", pcm_of(64, 3))) == [("append", 0, 4096), ("final", 0)]
    assert summary(harness.done()) == [("open", 0)]
    assert summary(harness.commit("R", final=True)) == [("append", 0, 64), ("final", 0)]
    assert upstream_pcm(harness.log) == pcm_of(4096) + pcm_of(64, 3)


def test_rollover_with_a_chunk_spanning_several_segments() -> None:
    harness = Harness(segment_max_bytes=1000)
    pcm = pcm_of(3000, 9)
    harness.commit("R")
    harness.append("R", pcm)
    harness.commit("R", final=True)
    finished = []
    for _ in range(10):
        finished += [e for e in client_events(harness.done()) if e["type"] == "transcription.done"]
        if finished:
            break
    assert len(finished) == 1
    assert finished[0]["payload"]["audio_ms"] == 3000 // 32
    assert upstream_pcm(harness.log) == pcm
    assert _segments(harness.log) == [1000, 1000, 1000]


def test_final_exactly_at_the_end_of_a_rolled_segment_needs_no_empty_generation() -> None:
    harness = Harness(segment_max_bytes=1000)
    harness.commit("R")
    harness.append("R", pcm_of(1000))
    harness.append("R", pcm_of(500))  # crosses: 0 fit, segment ends, 500 held
    harness.commit("R", final=True)
    assert summary(harness.done()) == [("open", 0), ("append", 0, 500), ("final", 0)]
    assert [s[0] for s in summary(harness.done())] == ["done"]


def test_queued_utterance_rolls_over_when_released() -> None:
    harness = Harness(segment_max_bytes=2000)
    harness.b_behind_finalizing_a()
    chunks = [pcm_of(1500, i) for i in range(3)]
    for chunk in chunks:
        harness.append("B", chunk)
    harness.commit("B", final=True)
    assert summary(harness.done()) == [
        ("done", "A", ""),
        ("open", 0),
        ("append", 0, 2000),
        ("final", 0),
    ]
    harness.delta("x")
    assert summary(harness.done()) == [("open", 0), ("append", 0, 2000), ("final", 0)]
    harness.delta("y")
    assert summary(harness.done()) == [("open", 0), ("append", 0, 500), ("final", 0)]
    assert summary(harness.done()) == [("done", "B", "xy")]
    assert upstream_pcm(harness.log) == b"".join(chunks)


def test_reactive_rollover_when_vllm_ends_a_generation_by_itself() -> None:
    harness = Harness()
    harness.commit("R")
    harness.append("R", pcm_of(640))
    harness.delta("first")
    # vLLM hit --max-model-len: done without any final commit.
    actions = harness.done({"prompt_tokens": 39, "completion_tokens": 89, "total_tokens": 128})
    assert summary(actions) == [("open", 0)]
    # The first 640 bytes completed no step: vLLM never had them, the next generation does.
    assert summary(harness.append("R", pcm_of(640))) == []
    harness.delta(" second")
    assert summary(harness.commit("R", final=True)) == [("append", 0, 1280), ("final", 0)]
    done = only_event(
        harness.done({"prompt_tokens": 39, "completion_tokens": 2, "total_tokens": 41})
    )
    assert done["payload"] == {
        "text": "first second",
        "segments": [{"text": "first second", "start_ms": 0, "end_ms": 40}],
        "usage": {
            "prompt_tokens": 78,
            "completion_tokens": 91,
            "total_tokens": 169,
            "audio_seconds": 0.04,
        },
        "audio_ms": 1280 // 32,
    }
    assert len(harness.facts(UtteranceRolledOver)) == 1


def test_reactive_rollover_carries_the_audio_vllm_never_had_into_the_next_segment() -> None:
    harness = Harness(segment_max_bytes=1000)
    harness.commit("R")
    harness.append("R", pcm_of(800))
    harness.done()  # vLLM stopped early by itself, before a step took the 800 bytes
    # They count toward the new segment's limit: 200 bytes more fit, then it ends.
    assert summary(harness.append("R", pcm_of(400, 5))) == [("append", 0, 1000), ("final", 0)]
    assert upstream_pcm(harness.log) == pcm_of(800) + pcm_of(400, 5)[:200]


# ====================================================================== times


def delta_times(actions: list[Action]) -> list[tuple[str, int]]:
    return [
        (e["payload"]["delta"], e["payload"]["audio_ms"])
        for e in client_events(actions)
        if e["type"] == "transcription.delta"
    ]


@pytest.mark.parametrize("delay_ms", [80, 480, 2400])
def test_each_delta_sits_at_its_step_whatever_the_delay(delay_ms: int) -> None:
    """vLLM's deltas as it sends them (a step once its audio is in, the flush at the final
    commit); every third has text. Step k sits at k * 80 ms, the flush clamped to the end."""
    harness = Harness()
    audio = 4000 * 32 + 640  # 4.02 s: a partial last frame
    harness.commit("r1")
    steps = 0

    def vllm_sends(count: int) -> None:
        nonlocal steps
        while steps < count:
            harness.delta(f" w{steps}" if steps % 3 == 0 else "")
            steps += 1

    for sent in range(FRAME_BYTES, audio + FRAME_BYTES, FRAME_BYTES):
        harness.append("r1", pcm_of(min(sent, audio) - (sent - FRAME_BYTES)))
        vllm_sends(steps_sent(min(sent, audio), delay_ms, final=False))
    harness.commit("r1", final=True)
    vllm_sends(steps_sent(audio, delay_ms, final=True))
    done = only_event(harness.done())
    assert steps == 4020 // 80 + 11
    expected = [(f" w{k}", min(k * 80, 4020)) for k in range(0, steps, 3)]
    assert delta_times(harness.log) == expected
    assert done["payload"]["segments"] == [
        {"text": "".join(t for t, _ in expected), "start_ms": 0, "end_ms": 4020}
    ]


def test_a_rolled_segment_counts_from_where_the_previous_one_ended() -> None:
    harness = Harness(segment_max_bytes=10 * FRAME_BYTES)
    harness.commit("R")
    harness.append("R", pcm_of(12 * FRAME_BYTES))  # 10 frames go up, 2 wait for the next segment
    for _ in range(3):
        harness.delta("")
    harness.delta("a")  # step 3 of segment 1: 240 ms
    harness.delta("")
    harness.done()
    harness.commit("R", final=True)
    harness.delta("")
    harness.delta("")
    harness.delta("b")  # step 2 of segment 2, which starts at 800 ms: 960 ms
    harness.delta("c")  # step 3 lies past the 2 frames segment 2 has: clamped to 960 ms
    done = only_event(harness.done())
    assert delta_times(harness.log) == [("a", 240), ("b", 960), ("c", 960)]
    assert done["payload"]["segments"] == [
        {"text": "a", "start_ms": 240, "end_ms": 320},
        {"text": "bc", "start_ms": 960, "end_ms": 960},
    ]
    assert done["payload"]["usage"]["audio_seconds"] == 0.96


def test_audio_vllm_dropped_at_its_cut_still_moves_the_clock() -> None:
    harness = Harness()
    harness.commit("R")
    assert upstream(harness.append("R", pcm_of(FIRST_STEP_BYTES)))
    harness.delta("")
    harness.delta("x")  # 80 ms
    harness.done()  # vLLM's own cut: it dropped the frames it had not stepped through
    harness.append("R", pcm_of(FRAME_BYTES))
    harness.delta("y")  # the new generation's step 0, at the audio after what went up before
    harness.commit("R", final=True)
    harness.done()
    assert delta_times(harness.log) == [("x", 80), ("y", FIRST_STEP_BYTES // 32)]


def test_session_update_sets_the_pause_of_the_next_dones() -> None:
    def segments(pause_ms: int | None) -> list[str]:
        harness = Harness()
        if pause_ms is not None:
            event = only_event(harness.send(SessionUpdate(SID, "u1", None, pause_ms)))
            assert event["payload"] == {
                "model": MODEL,
                "segment_pause_ms": pause_ms,
                "audio": NATIVE.as_payload(),
                "turn_detection": None,
            }
        harness.commit("r1")
        harness.append("r1", pcm_of(10 * FRAME_BYTES))
        for text in ["a", "", "b", "", "", "", "", "", "", "c"]:
            harness.delta(text)
        harness.commit("r1", final=True)
        done = only_event(harness.done())
        return [s["text"] for s in done["payload"]["segments"]]

    # Gaps of 80 ms (a..b) and 480 ms (b..c).
    assert segments(None) == ["ab", "c"]
    assert segments(80) == ["a", "b", "c"]
    assert segments(560) == ["abc"]


def test_a_refused_model_leaves_the_pause_as_it_was() -> None:
    harness = Harness()
    assert only_event(harness.send(SessionUpdate(SID, "u1", "other", 80)))["type"] == "error"
    assert harness.session.segment_pause_ms == 480


# ====================================================================== the invariant

ENDING_CODES = {
    "upstream_error",
    "upstream_unavailable",
    "inbound_queue_full",
    "idle_timeout",
    "internal_error",
}
# These also answer single messages; they end an utterance only when the connection closes.
CLOSING_CODES = {"rate_limited", "max_duration_reached", "shutting_down"}


class Checker:
    """Runs every step of a session and checks what the protocol promises about utterances."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.session = harness.session
        self.endings: dict[int, int] = {}
        self.seen: list[Utterance] = []
        self.ready_epochs = {0} if harness.session.upstream_ready else set()
        self.epoch = harness.session.upstream_epoch
        self.closed_steps = 0

    def step(self, run: Callable[[], list[Action]], *, readying: int | None = None) -> list[Action]:
        session = self.session
        before = {id(u): u for u in session.in_flight}
        current = session.current
        was_closed = session.closed
        actions = run()
        if was_closed:
            assert actions == []
            return actions
        if readying is not None and readying == self.epoch:
            self.ready_epochs.add(readying)
        after = {id(u): u for u in session.in_flight}
        for key, utterance in after.items():
            if key not in self.endings:
                self.endings[key] = 0
                self.seen.append(utterance)
        ended = [u for key, u in before.items() if key not in after]
        closes = [a for a in actions if isinstance(a, CloseClient)]
        assert len(closes) <= 1
        if closes:
            assert actions[-1] is closes[0]
            assert session.closed
            assert after == {}
        else:
            assert not session.closed

        def ending(event: dict[str, Any]) -> bool:
            if event["request_id"] is None:
                return False
            if event["type"] in ("transcription.done", "cancelled"):
                return True
            if event["type"] != "error":
                return False
            code = event["payload"]["code"]
            return code in ENDING_CODES or (bool(closes) and code in CLOSING_CODES)

        events = client_events(actions)
        endings = Counter(e["request_id"] for e in events if ending(e))
        ended_ids = Counter(u.request_id for u in ended)
        # Every utterance that left the line got exactly one ending, and nothing else did.
        assert endings == ended_ids, (summary(actions), [u.request_id for u in ended])
        for utterance in ended:
            self.endings[id(utterance)] += 1
            assert self.endings[id(utterance)] == 1
        for event in events:
            assert isinstance(event["session_id"], str)
            if event["type"] == "transcription.delta":
                # Deltas only for the utterance running upstream, which has not ended.
                assert current is not None
                assert event["request_id"] == current.request_id
                assert id(current) in after
                assert event["payload"]["delta"] != ""
            if event["type"] in ("transcription.done", "cancelled"):
                assert event["request_id"] in ended_ids
        for action in actions:
            if isinstance(action, OpenUpstream):
                assert action.epoch == self.epoch + 1
                self.epoch = action.epoch
            elif isinstance(action, SendUpstream):
                assert action.epoch == self.epoch
                assert self.epoch in self.ready_epochs
        if closes:
            # The connection-level error (or session.ended) directly precedes the close.
            last = client_events(actions)[-1]
            assert last["request_id"] is None
            assert last["type"] in ("error", "session.ended")
            self.closed_steps += 1
        # The lifecycle facts agree with what the client saw.
        assert len(self.harness.facts(UtteranceStarted)) == len(self.seen)
        ended_facts = [a for a in actions if isinstance(a, UtteranceEnded)]
        assert Counter(f.request_id for f in ended_facts) == ended_ids
        assert len(self.harness.facts(UtteranceEnded)) == sum(self.endings.values())
        return actions

    def finish(self) -> None:
        if not self.session.closed:
            self.step(lambda: self.harness.terminate(ErrorCode.INTERNAL_ERROR))
        assert self.session.in_flight == []
        assert all(count == 1 for count in self.endings.values())


RIDS = ["a", "b", "c", "d"]
chaos_ops = st.one_of(
    st.tuples(st.just("commit"), st.sampled_from(RIDS), st.booleans()),
    st.tuples(st.just("append"), st.sampled_from(RIDS), st.sampled_from([2, 4, 6, 64])),
    st.tuples(st.just("cancel"), st.sampled_from(RIDS), st.sampled_from(["client_request", "x"])),
    st.tuples(
        st.just("client"), st.sampled_from(["ping", "update", "bad_model", "invalid", "end"])
    ),
    st.tuples(st.just("delta"), st.sampled_from(["", "w", " v"]), st.sampled_from([0, 0, 0, -1])),
    st.tuples(st.just("done"), st.sampled_from([0, 0, 0, -1])),
    st.tuples(st.just("uerror"), st.sampled_from([0, -1])),
    st.tuples(st.just("ready"), st.sampled_from([0, 0, 0, -1])),
    st.tuples(st.just("lost"), st.sampled_from([-1, -1, 0])),
    st.tuples(st.just("stall"), st.sampled_from([0, -1])),
    st.tuples(st.just("wind"), st.sampled_from(list(WindDown))),
    st.tuples(
        st.just("terminate"), st.sampled_from([ErrorCode.IDLE_TIMEOUT, ErrorCode.SHUTTING_DOWN])
    ),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 10.0])),
    st.tuples(st.just("backlog"), st.sampled_from(RIDS)),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(chaos_ops, max_size=80),
    segment_max_bytes=st.sampled_from([None, 4, 10]),
    start_ready=st.booleans(),
)
def test_random_sequences_keep_the_utterance_invariants(
    ops: list[tuple[Any, ...]], segment_max_bytes: int | None, start_ready: bool
) -> None:
    harness = Harness(
        segment_max_bytes=segment_max_bytes,
        ready=start_ready,
        inbound_queue_max=6,
        max_messages_per_window=25,
        message_window_s=5.0,
        max_cancels_per_window=3,
        cancel_window_s=5.0,
    )
    checker = Checker(harness)
    session = harness.session
    for op in ops:
        kind = op[0]
        gen = session.upstream_epoch
        if kind == "commit":
            checker.step(lambda op=op: harness.commit(op[1], final=op[2]))
        elif kind == "append":
            checker.step(lambda op=op: harness.append(op[1], pcm_of(op[2])))
        elif kind == "cancel":
            checker.step(lambda op=op: harness.cancel(op[1], op[2]))
        elif kind == "client":
            message: ClientMessage | str = {
                "ping": Ping(SID, None, {}),
                "update": SessionUpdate(SID, "u", MODEL),
                "bad_model": SessionUpdate(SID, "u", "other"),
                "invalid": "[]",
                "end": End(SID, None),
            }[op[1]]
            checker.step(lambda message=message: harness.send(message))
        elif kind == "delta":
            checker.step(lambda op=op, gen=gen: harness.delta(op[1], generation=gen + op[2]))
        elif kind == "done":
            checker.step(lambda op=op, gen=gen: harness.done(generation=gen + op[1]))
        elif kind == "uerror":
            checker.step(lambda op=op, gen=gen: harness.upstream_error(generation=gen + op[1]))
        elif kind == "ready":
            checker.step(
                lambda op=op, gen=gen: harness.ready(generation=gen + op[1]), readying=gen + op[1]
            )
        elif kind == "stall":
            checker.step(lambda op=op, gen=gen: harness.stalled(generation=gen + op[1]))
        elif kind == "lost":
            checker.step(lambda op=op, gen=gen: harness.lost(generation=gen + op[1]))
        elif kind == "wind":
            checker.step(lambda op=op: harness.wind_down(op[1]))
        elif kind == "terminate":
            checker.step(lambda op=op: harness.terminate(op[1]))
        elif kind == "tick":
            harness.now += op[1]
        else:
            checker.step(lambda op=op: harness.append(op[1], pcm_of(2), backlog=6))
    checker.finish()


# ====================================================================== faithful upstream


class FakeGeneration:
    """One upstream connection, behaving like vLLM: one generation at a time, a delta per audio
    chunk (its hex, so the transcript spells the audio), an empty delta now and then, and
    ``done`` after a final commit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = False
        self.segment = 0
        self.outbox: list[dict[str, Any]] = []
        self.completion = 0

    def receive(self, text: str) -> None:
        message = json.loads(text)
        if message["type"] == "input_audio_buffer.commit" and not message["final"]:
            assert not self.active, "a new generation was opened while one runs"
            self.active, self.segment, self.completion = True, 0, 0
        elif message["type"] == "input_audio_buffer.append":
            assert set(message) == {"type", "audio"}
            assert self.active, "audio sent outside a generation"
            pcm = base64.b64decode(message["audio"], validate=True)
            assert pcm
            assert len(pcm) % 2 == 0
            self.segment += len(pcm)
            if self.limit is not None:
                assert self.segment <= self.limit
            self.completion += 2
            self.outbox.append({"type": "transcription.delta", "delta": ""})
            self.outbox.append({"type": "transcription.delta", "delta": pcm.hex()})
        else:
            assert message == {"type": "input_audio_buffer.commit", "final": True}
            assert self.active, "final commit without a generation"
            self.active = False
            usage = {"prompt_tokens": 39, "completion_tokens": self.completion}
            usage["total_tokens"] = 39 + self.completion
            self.outbox.append({"type": "transcription.done", "text": "", "usage": usage})


faithful_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.just(b"")),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=7)),
        st.tuples(st.just("final"), st.just(b"")),
        st.tuples(st.just("cancel"), st.binary(min_size=1, max_size=1)),
        st.tuples(st.just("deliver"), st.just(b"")),
        st.tuples(st.just("deliver"), st.just(b"")),
        st.tuples(st.just("stale"), st.just(b"")),
        st.tuples(st.just("ready"), st.just(b"")),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(ops=faithful_ops, segment_max_bytes=st.sampled_from([None, 4, 6, 10, 2560]))
def test_with_a_faithful_upstream_every_done_spells_exactly_its_audio(
    ops: list[tuple[str, bytes]], segment_max_bytes: int | None
) -> None:
    harness = Harness(segment_max_bytes=segment_max_bytes, ready=False)
    checker = Checker(harness)
    session = harness.session
    fakes = {0: FakeGeneration(segment_max_bytes)}
    readied: set[int] = set()
    sent_pcm: dict[str, bytes] = {}
    opened: list[str] = []
    cancelled: set[str] = set()

    def run(actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, OpenUpstream):
                fakes[action.epoch] = FakeGeneration(segment_max_bytes)
            elif isinstance(action, SendUpstream):
                fakes[action.epoch].receive(action.text)
        for event in client_events(actions):
            if event["type"] == "cancelled":
                cancelled.add(event["request_id"])
        return actions

    def ready() -> None:
        gen = session.upstream_epoch
        if gen not in readied:
            readied.add(gen)
            run(checker.step(lambda: harness.ready(gen), readying=gen))

    def deliver(gen: int) -> bool:
        outbox = fakes[gen].outbox
        if not outbox:
            return False
        event = outbox.pop(0)
        run(checker.step(lambda: harness.event(event, gen)))
        return True

    for kind, data in ops:
        if kind == "open":
            rid = f"u{len(opened)}"
            opened.append(rid)
            sent_pcm[rid] = b""
            run(checker.step(lambda rid=rid: harness.commit(rid)))
        elif kind == "append" and session.open is not None:
            rid = session.open.request_id
            pcm = data if len(data) % 2 == 0 else data + b"\x00"
            sent_pcm[rid] += pcm
            run(checker.step(lambda rid=rid, pcm=pcm: harness.append(rid, pcm)))
        elif kind == "final" and session.open is not None:
            rid = session.open.request_id
            run(checker.step(lambda rid=rid: harness.commit(rid, final=True)))
        elif kind == "cancel" and opened:
            rid = opened[data[0] % len(opened)]
            run(checker.step(lambda rid=rid: harness.cancel(rid)))
        elif kind == "deliver":
            deliver(session.upstream_epoch)
        elif kind == "stale" and session.upstream_epoch > 0:
            deliver(session.upstream_epoch - 1)
        elif kind == "ready":
            ready()

    # Finish: close the open utterance and let the upstream answer everything.
    if session.open is not None:
        rid = session.open.request_id
        run(checker.step(lambda rid=rid: harness.commit(rid, final=True)))
    for _ in range(10_000):
        ready()
        if not deliver(session.upstream_epoch):
            break
    assert session.in_flight == []
    assert not session.closed

    dones = [e for e in client_events(harness.log) if e["type"] == "transcription.done"]
    finished = [e["request_id"] for e in dones]
    # Every utterance ended in done or cancelled, and the dones came in opening order.
    assert sorted(finished + sorted(cancelled)) == sorted(opened)
    assert finished == [rid for rid in opened if rid in finished]
    for event in dones:
        rid = event["request_id"]
        # The transcript spells the audio: every byte reached vLLM once, in order, across
        # however many segments the utterance took.
        assert event["payload"]["text"] == sent_pcm[rid].hex()
        assert event["payload"]["audio_ms"] == len(sent_pcm[rid]) // 32
        usage = event["payload"]["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    checker.finish()


# ====================================================================== lifecycle facts


def test_a_done_utterance_is_started_and_ended_with_its_sizes_and_times() -> None:
    harness = Harness()
    [started] = [a for a in harness.commit("r1") if isinstance(a, UtteranceStarted)]
    assert started == UtteranceStarted("r1", harness.now)
    opened_at = harness.now
    harness.append("r1", pcm_of(3200))
    first_audio_at = harness.now
    harness.append("r1", pcm_of(1600))
    harness.now += 0.5
    harness.delta(" hi")
    first_delta_at = harness.now
    harness.commit("r1", final=True)
    final_at = harness.now
    harness.delta(" there")
    harness.now += 0.25
    [ended] = [a for a in harness.done() if isinstance(a, UtteranceEnded)]
    assert ended == UtteranceEnded(
        "r1",
        Outcome.DONE,
        None,
        150,  # ms: 4800 bytes of 16 kHz PCM16
        " hi there",
        opened_at,
        first_audio_at,
        first_delta_at,
        final_at,
        harness.now,
    )


def test_cancelled_and_errored_utterances_end_with_their_outcome() -> None:
    harness = Harness()
    harness.commit("A")
    harness.append("A", pcm_of(64))
    harness.cancel("A")
    harness.ready()
    harness.commit("B")
    harness.terminate(ErrorCode.IDLE_TIMEOUT)
    ended = [(f.request_id, f.outcome, f.error_code, f.audio_ms, f.text) for f in
             harness.facts(UtteranceEnded)]  # fmt: skip
    assert ended == [
        ("A", Outcome.CANCELLED, None, 2, ""),
        ("B", Outcome.ERRORED, ErrorCode.IDLE_TIMEOUT, 0, ""),
    ]


def test_a_rollover_is_reported_once_per_new_segment() -> None:
    harness = Harness(segment_max_bytes=4)
    harness.commit("R")
    harness.append("R", pcm_of(6))
    assert harness.facts(UtteranceRolledOver) == []
    harness.done()
    assert harness.facts(UtteranceRolledOver) == [UtteranceRolledOver("R")]


def test_vllm_owes_an_event_after_its_delay_worth_of_audio_until_it_answers() -> None:
    harness = Harness()
    owed = (DELAY_MS // 80 + 2) * FRAME_BYTES
    harness.commit("r1")
    # Under the delay plus margin, vLLM's silence is only its delay.
    actions = harness.append("r1", pcm_of(owed - 2))
    assert [a for a in actions if isinstance(a, UpstreamOwes)] == []
    # Owed from the append that takes the audio sent past it (it completes a step, so it goes).
    actions = harness.append("r1", pcm_of(FRAME_BYTES))
    assert [a for a in actions if isinstance(a, UpstreamOwes)] == [UpstreamOwes(0, harness.now)]
    assert harness.session.feed.owes_since == harness.now
    # Owed once: more audio does not restart the clock.
    more = harness.append("r1", pcm_of(FRAME_BYTES))
    assert upstream(more)
    assert [a for a in more if isinstance(a, UpstreamOwes)] == []
    assert UpstreamSettled() in harness.delta("")
    assert harness.session.feed.owes_since is None
    # Any event settles the debt; the count of audio starts again from there.
    assert [a for a in harness.append("r1", pcm_of(owed - 2)) if isinstance(a, UpstreamOwes)] == []


def test_a_final_commit_makes_vllm_owe_its_done_and_a_reopen_settles() -> None:
    harness = Harness()
    harness.commit("r1")
    actions = harness.commit("r1", final=True)
    assert actions[-1] == UpstreamOwes(0, harness.now)
    # A stall of an older connection changes nothing.
    harness.commit("r2")
    assert wire(harness.stalled(5)) == []
    actions = harness.stalled()
    assert UpstreamSettled() in actions
    assert summary(actions) == [("error", "r1", "upstream_error"), ("reopen", 1)]
    assert harness.session.feed.owes_since is None


def test_a_cancel_that_reopens_settles_what_vllm_owed() -> None:
    harness = Harness()
    harness.commit("r1")
    harness.commit("r1", final=True)
    actions = harness.cancel("r1")
    assert actions[-2:] == [UpstreamSettled(), OpenUpstream(1)]


# ====================================================================== audio formats and binary


def commits(actions: list[Action]) -> list[bool]:
    """The final flags of the commits sent upstream, in order."""
    return [
        json.loads(a.text)["final"]
        for a in upstream(actions)
        if json.loads(a.text)["type"] == "input_audio_buffer.commit"
    ]


def test_a_binary_frame_is_audio_for_the_open_utterance() -> None:
    harness = Harness()
    harness.commit("r1")
    actions = harness.binary(pcm_of(640))
    assert client_events(actions) == []
    harness.append("r1", pcm_of(320, seed=1))
    final = harness.commit("r1", final=True)
    assert upstream_pcm(actions + final) == pcm_of(640) + pcm_of(320, seed=1)
    done = only_event(harness.done())
    assert done["payload"]["audio_ms"] == 30
    assert harness.codec.session_id == SID  # a binary frame carries no session_id


def test_a_binary_frame_with_nothing_open_is_refused() -> None:
    harness = Harness()
    event = only_event(harness.binary(pcm_of(64)))
    assert (event["session_id"], event["request_id"]) == (SERVER_SID, None)
    assert event["payload"]["code"] == "no_active_request"
    assert event["payload"]["message"] == CASE_MESSAGES[ErrorCase.NO_OPEN_UTTERANCE]
    harness.commit("r1")
    harness.commit("r1", final=True)
    # Finalizing is not open: the frame has nowhere to go.
    assert summary(harness.binary(pcm_of(64))) == [("error", None, "no_active_request")]


@pytest.mark.parametrize("size", [0, 1, 63])
def test_native_audio_must_be_whole_samples(size: int) -> None:
    harness = Harness()
    harness.commit("r1")
    assert summary(harness.append("r1", pcm_of(size))) == [("error", "r1", "invalid_audio")]
    actions = harness.binary(pcm_of(size))
    assert summary(actions) == [("error", None, "invalid_audio")]
    assert harness.session.open is not None
    assert harness.session.open.audio.client_bytes == 0


def test_converted_audio_goes_up_with_the_piece_that_completes_a_step_then_the_tail() -> None:
    harness = Harness(audio_format=ULAW_8K)
    harness.commit("r1")
    pieces = [pcm_of(160, seed=i) for i in range(45)]  # 45 x 20 ms of 8 kHz mu-law
    reference = AudioConverter(ULAW_8K)
    converted = sent_upstream = 0
    sent: list[Action] = []
    for index, piece in enumerate(pieces):
        actions = harness.append("r1", piece) if index % 2 else harness.binary(piece)
        converted += sum(map(len, reference.feed(piece)))
        # The 20 ms piece that completes one of vLLM's steps takes up all that waited for it,
        # in one append; the others go nowhere yet.
        completes = steps_sent(converted, DELAY_MS, final=False) > steps_sent(
            sent_upstream, DELAY_MS, final=False
        )
        assert len(upstream(actions)) == completes, index
        if completes:
            assert len(upstream_pcm(actions)) == converted - sent_upstream
            sent_upstream = converted
        elif index == 0:
            # The piece waits unconverted (it cannot complete a step), counted as held.
            assert harness.session.held_bytes == len(piece)
        sent += actions
    # 900 ms: vLLM's first step after 562.5 ms, then one per 80 ms.
    assert len(upstream(sent)) == steps_sent(converted, DELAY_MS, final=False) == 5
    # The final commit sends what waited and the converter's tail, in one append, before it.
    final = harness.commit("r1", final=True)
    tail = sum(map(len, reference.flush()))
    assert summary(final) == [("append", 0, converted - sent_upstream + tail), ("final", 0)]
    whole = AudioConverter(ULAW_8K)
    assert upstream_pcm(sent + final) == b"".join(
        [c for p in pieces for c in whole.feed(p)] + whole.flush()
    )
    done = only_event(harness.done())
    assert done["payload"]["audio_ms"] == 900


def test_a_queued_utterance_holds_its_converted_audio_and_tail() -> None:
    harness = Harness(audio_format=ULAW_8K)
    harness.commit("A")
    harness.commit("A", final=True)  # A waits for its done: B queues behind it
    harness.commit("B")
    pieces = [pcm_of(160, seed=i) for i in range(5)]
    held = [action for piece in pieces for action in harness.binary(piece)]
    held += harness.commit("B", final=True)
    assert upstream(held) == []
    reference = AudioConverter(ULAW_8K)
    expected = [c for p in pieces for c in reference.feed(p)] + reference.flush()
    released = harness.done()
    assert upstream_pcm(released) == b"".join(expected)
    assert commits(released) == [False, True]


def test_the_audio_format_changes_between_utterances_only() -> None:
    harness = Harness()
    update = SessionUpdate(SID, "u1", None, audio=ULAW_8K)
    harness.commit("r1")
    refused = only_event(harness.send(update))
    assert refused["payload"]["code"] == "invalid_message"
    assert refused["payload"]["message"] == CASE_MESSAGES[ErrorCase.FORMAT_CHANGE_IN_UTTERANCE]
    harness.commit("r1", final=True)
    assert only_event(harness.send(update))["payload"]["code"] == "invalid_message"
    harness.done()
    updated = only_event(harness.send(update))
    assert updated["payload"]["audio"] == ULAW_8K.as_payload()
    assert harness.session.audio_format == ULAW_8K
    harness.commit("r2")
    harness.binary(pcm_of(160))
    harness.commit("r2", final=True)
    assert only_event(harness.done())["payload"]["audio_ms"] == 20


def test_a_refused_update_changes_nothing() -> None:
    harness = Harness()
    event = only_event(harness.send(SessionUpdate(SID, "u1", "other/model", audio=ULAW_8K)))
    assert event["payload"]["code"] == "unsupported_model"
    assert harness.session.audio_format == NATIVE


def test_each_utterance_keeps_the_format_it_opened_with() -> None:
    harness = Harness(audio_format=ULAW_8K)
    harness.commit("r1")
    assert harness.session.open is not None
    assert harness.session.open.audio.format == ULAW_8K
    # One odd byte is a whole mu-law sample, not a partial PCM16 one.
    assert summary(harness.binary(pcm_of(1))) == []
