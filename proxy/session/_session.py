"""One client connection's utterance lifecycle: pure, synchronous, no sockets and no clocks.

The relay feeds this object what happened (a client message, an upstream event, the upstream
connection opening or dropping, a timer firing), each with the monotonic time ``now``, and
carries out the actions it returns, in order (see ``proxy.actions``): events to send the client,
text to send upstream, an upstream connection to (re)open, a close code, and since when vLLM
owes an answer. The lifecycle facts among them (utterance started, rolled over, ended with its
outcome) are what telemetry and metrics record. Everything the protocol promises is decided
here, so it is tested without I/O.

vLLM's realtime socket runs one generation at a time and wipes queued audio when a generation
ends, so utterances wait in a line: the head is *current* (its commit went upstream) and the
others keep their audio here until the current one's ``transcription.done`` arrives. When vLLM's
``--max-model-len`` would end a generation mid-utterance, the utterance is carried over onto a
fresh generation (a *segment*): proactively, before the cap, when the cap is known; reactively
when vLLM ends a generation by itself. Upstream connections are numbered by ``upstream_epoch``;
events of an older one are ignored.

Its other concerns are functions of it, in ``session_update``, ``session_upstream``,
``session_turns``, ``session_limits`` and ``session_end``: they act through its lifecycle
steps, never around them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from proxy import (
    session_end,
    session_limits,
    session_turns,
    session_update,
    session_upstream,
)
from proxy.actions import (
    Action,
    Outcome,
    SendClient,
    UtteranceStarted,
)
from proxy.audio_clock import DEFAULT_PAUSE_MS
from proxy.audio_convert import InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat
from proxy.audio_input import UtteranceAudio
from proxy.envelope import (
    APPEND_NEEDS_REQUEST_ID,
    NO_OPEN_TURN,
    NO_OPEN_UTTERANCE,
    NOTHING_TO_CANCEL,
    REQUEST_ID_IN_USE,
    TURN_DETECTION_FAILED,
    TURNS_OPEN_UTTERANCES,
    Append,
    Cancel,
    ClientMessage,
    CloseCode,
    Commit,
    End,
    EnvelopeError,
    ErrorCode,
    Ping,
    SessionUpdate,
    error_event,
    server_event,
)
from proxy.feed import UpstreamFeed
from proxy.limits import Admission, SessionLimits
from proxy.session_end import WindDown
from proxy.turn_stream import TurnStream
from proxy.turns import TurnOptions
from proxy.utterance import Phase, Utterance
from proxy.vad import Window


class Session:
    def __init__(
        self,
        *,
        session_id: str,
        served_model: str,
        limits: SessionLimits,
        transcription_delay_ms: int,
        segment_max_bytes: int | None = None,
        segment_pause_ms: int = DEFAULT_PAUSE_MS,
        turn_options: TurnOptions | None = None,
        audio_format: AudioFormat = NATIVE,
    ) -> None:
        self.session_id = session_id
        # The client's audio format: each utterance keeps the one in effect when it opened.
        self.audio_format = audio_format
        self.served_model = served_model
        self.limits = limits
        # The pause that splits a done's text into segments (session.update may change it).
        self.segment_pause_ms = segment_pause_ms
        self._out: list[Action] = []
        self.feed = UpstreamFeed(
            self._out,
            transcription_delay_ms=transcription_delay_ms,
            segment_max_bytes=segment_max_bytes,
        )
        # The time of the input being handled.
        self._now = 0.0
        self.open: Utterance | None = None
        self.current: Utterance | None = None
        # Utterances waiting for the upstream, in order (the open one may be last).
        self.line: deque[Utterance] = deque()
        self.winding_down: WindDown | None = None
        self.closed = False
        # Messages, and bytes of audio, waiting for vLLM when the last audio message came in
        # (for the metrics).
        self.inbound_depth = 0
        self.inbound_depth_bytes = 0
        self._admission = Admission(limits)
        # The audio stream and its turns while turn detection is on.
        self.turns: TurnStream | None = None
        if turn_options is not None:
            # Its StartVad goes out with the first flush.
            session_turns.set_turn_detection(self, turn_options)

    # ------------------------------------------------------------------ queries

    @property
    def upstream_epoch(self) -> int:
        return self.feed.epoch

    @property
    def upstream_ready(self) -> bool:
        return self.feed.ready

    @property
    def in_flight(self) -> list[Utterance]:
        """Every utterance opened and not yet ended, current first."""
        return ([self.current] if self.current else []) + list(self.line)

    @property
    def finalizing(self) -> bool:
        """Whether some utterance waits for its ``transcription.done`` (idle time is not
        counted then: the client is waiting on us)."""
        return any(u.phase.client_final for u in self.in_flight)

    @property
    def held_messages(self) -> int:
        # On every message: no list built here, unlike in_flight.
        held = sum(len(u.held) for u in self.line)
        return held + len(self.current.held) if self.current is not None else held

    @property
    def held_bytes(self) -> int:
        held = sum(u.held.nbytes for u in self.line)
        return held + self.current.held.nbytes if self.current is not None else held

    # ------------------------------------------------------------------ inputs

    def on_client(
        self,
        message: ClientMessage | EnvelopeError,
        now: float,
        backlog: int = 0,
        backlog_bytes: int = 0,
    ) -> list[Action]:
        """A client text message (parsed), at monotonic time ``now``, with ``backlog`` messages
        (``backlog_bytes`` bytes) accepted earlier and not yet written to vLLM."""
        self._now = now
        if self.closed:
            return []
        if isinstance(message, EnvelopeError):
            if message.session_id:
                self.session_id = message.session_id
            if not message.counts_toward_rate_limit or self._admit(now, message.request_id):
                self._error(
                    message.code, message.request_id, message.message, message.details or None
                )
            return self._flush()

        if message.session_id is not None:  # None: a binary frame
            self.session_id = message.session_id
        if isinstance(message, Ping):
            self._send("pong", message.request_id, message.payload)
        elif isinstance(message, End):
            session_end.wind_down(self, WindDown.END)
        elif not self._admit(now, message.request_id):
            pass
        elif isinstance(message, SessionUpdate):
            session_update.update(self, message)
        elif isinstance(message, Cancel):
            self._on_cancel(message)
        elif session_limits.backlog_full(self, backlog, backlog_bytes, message):
            pass
        elif isinstance(message, Append):
            self._on_append(message)
        elif isinstance(message, Commit):
            if message.final:
                self._on_final(message)
            else:
                self._on_open(message)
        return self._flush()

    def on_upstream_ready(self, epoch: int, now: float) -> list[Action]:
        self._now = now
        if epoch == self.upstream_epoch and not self.closed:
            self.feed.ready = True
            self.feed.settle()
            self._start_next()
        return self._flush()

    def on_upstream_lost(self, epoch: int, now: float) -> list[Action]:
        """The upstream connection closed or could not be opened."""
        self._now = now
        if epoch == self.upstream_epoch and not self.closed:
            session_end.terminate(self, ErrorCode.UPSTREAM_UNAVAILABLE, CloseCode.TRY_AGAIN_LATER)
        return self._flush()

    def on_upstream_event(self, epoch: int, event: dict[str, Any], now: float) -> list[Action]:
        """One event from vLLM (``vllm_wire.decode_event``'s result; not modified)."""
        self._now = now
        if epoch != self.upstream_epoch or self.closed:
            return self._flush()
        self.feed.settle()
        session_upstream.event(self, event)
        return self._flush()

    def on_upstream_stalled(self, epoch: int, now: float) -> list[Action]:
        """vLLM stayed silent past the timeout since it owed an event (``UpstreamOwes``): the
        current utterance ends in error and the socket is replaced."""
        self._now = now
        if epoch != self.upstream_epoch or self.closed:
            return self._flush()
        self.feed.settle()
        if self.current is not None:
            session_upstream.error(self, self.current, session_upstream.STALLED)
        return self._flush()

    def on_vad(self, windows: list[Window], now: float) -> list[Action]:
        """Scored windows of the turn stream (``StartVad``'s results), in order."""
        self._now = now
        turns = self.turns
        if turns is not None and not self.closed:
            session_turns.scored(self, turns, windows)
        return self._flush()

    def on_vad_failed(self, now: float) -> list[Action]:
        """The VAD engine stopped: the open turn is finalized and turn detection goes off."""
        self._now = now
        if self.turns is not None and not self.closed:
            self._error(ErrorCode.INTERNAL_ERROR, None, TURN_DETECTION_FAILED)
            session_turns.set_turn_detection(self, None)
        return self._flush()

    def wind_down(self, reason: WindDown, now: float) -> list[Action]:
        """Take no new utterance, finalize the open one, close once every one has ended."""
        self._now = now
        session_end.wind_down(self, reason)
        return self._flush()

    def terminate(self, code: ErrorCode, close_code: int, now: float) -> list[Action]:
        """Close now (idle timeout, a deadline, a fault): every utterance in flight ends in
        ``error`` first."""
        self._now = now
        if not self.closed:
            session_end.terminate(self, code, close_code)
        return self._flush()

    # ------------------------------------------------------------------ client messages

    def _on_open(self, message: Commit) -> None:
        request_id = message.request_id
        if self.turns is not None:
            self._error(ErrorCode.INVALID_MESSAGE, request_id, TURNS_OPEN_UTTERANCES)
            return
        if self.winding_down is not None:
            session_end.refuse_while_winding_down(self, request_id)
            return
        if self.open is not None and self.open.request_id == request_id:
            return
        if any(u.request_id == request_id for u in self.in_flight):
            self._error(ErrorCode.INVALID_MESSAGE, request_id, REQUEST_ID_IN_USE)
            return
        if self.open is not None:
            if not self._admit_cancel(request_id):
                return
            self._cancel(self.open, "superseded")
        utterance = Utterance(
            request_id, opened_at=self._now, audio=UtteranceAudio(self.audio_format)
        )
        self._out.append(UtteranceStarted(request_id, self._now))
        self.line.append(utterance)
        self.open = utterance
        self._start_next()

    def _on_append(self, message: Append) -> None:
        if self.turns is not None:
            # The request_id, if any, is not checked: the audio is the stream's.
            session_turns.stream_audio(self, message.audio)
            return
        request_id = message.request_id
        if request_id is not None:
            utterance = self._open_utterance(request_id)
        elif not message.binary:
            self._error(ErrorCode.INVALID_MESSAGE, None, APPEND_NEEDS_REQUEST_ID)
            return
        elif self.open is None:
            self._error(ErrorCode.NO_ACTIVE_REQUEST, None, NO_OPEN_UTTERANCE)
            return
        else:
            utterance = self.open  # a binary frame is for the open utterance
        if utterance is None:
            return
        try:
            upstream = utterance.audio.take(message.audio, message.nbytes)
        except InvalidAudio as exc:
            self._error(ErrorCode.INVALID_AUDIO, request_id, exc.message)
            return
        if utterance.first_audio_at is None:
            utterance.first_audio_at = self._now
        for audio, pcm_bytes in upstream:
            self._deliver(utterance, audio, pcm_bytes)

    def _deliver(self, utterance: Utterance, audio: str, pcm_bytes: int) -> None:
        """Audio for vLLM: sent up while the utterance's segment takes it, held otherwise."""
        if utterance is self.current and utterance.phase is Phase.OPEN:
            self.feed.forward_audio(utterance, audio, pcm_bytes, self._now)
        else:
            utterance.held.append(audio, pcm_bytes)

    def _on_final(self, message: Commit) -> None:
        if self.turns is not None:
            # Push-to-talk: the open turn ends now, whatever request_id the commit names.
            if not session_turns.end_open_turn(self):
                self._error(ErrorCode.NO_ACTIVE_REQUEST, message.request_id, NO_OPEN_TURN)
            return
        utterance = self._open_utterance(message.request_id)
        if utterance is not None:
            utterance.final_at = self._now
            self._finalize(utterance)
            session_end.check_wound_down(self)

    def _on_cancel(self, message: Cancel) -> None:
        utterance = next((u for u in self.in_flight if u.request_id == message.request_id), None)
        if utterance is None:
            self._error(ErrorCode.NO_ACTIVE_REQUEST, message.request_id, NOTHING_TO_CANCEL)
            return
        if self._admit_cancel(message.request_id):
            if self.turns is not None and utterance is self.open:
                self.turns.detector.end_turn()
            self._cancel(utterance, message.reason)
            self._start_next()
            session_end.check_wound_down(self)

    # ------------------------------------------------------------------ lifecycle

    def _open_utterance(self, request_id: str) -> Utterance | None:
        """The open utterance if it is ``request_id``; otherwise tells the client why not.

        An id whose final commit was already sent is "no longer open" (no_active_request) even
        while another utterance is open; any other id is a mismatch with the open one."""
        utterance = self.open
        if utterance is not None and utterance.request_id == request_id:
            return utterance  # every audio message: no search (in-flight ids are unique)
        finished_audio = any(
            u.request_id == request_id for u in self.in_flight if u.phase.client_final
        )
        if utterance is None or finished_audio:
            self._error(ErrorCode.NO_ACTIVE_REQUEST, request_id)
            return None
        self._error(
            ErrorCode.REQUEST_ID_MISMATCH,
            request_id,
            details={"open_request_id": utterance.request_id},
        )
        return None

    def _finalize(self, utterance: Utterance) -> None:
        # The resampler's tail, so the last milliseconds reach vLLM too.
        for audio, pcm_bytes in utterance.audio.flush():
            self._deliver(utterance, audio, pcm_bytes)
        self.open = None
        if utterance.phase is Phase.OPEN_ROLLING:
            utterance.phase = Phase.CLOSED_ROLLING
        elif utterance is self.current:
            self.feed.commit_final(utterance, Phase.FINALIZING, self._now)
        else:
            utterance.phase = Phase.CLOSED

    def _start_next(self) -> None:
        if self.current is None and self.upstream_ready and self.line:
            self.current = self.line.popleft()
            self.feed.begin_segment(self.current, self._now)

    def _complete(self, utterance: Utterance) -> None:
        self.current = None
        payload = utterance.done_payload(self.segment_pause_ms)
        self._send("transcription.done", utterance.request_id, payload)
        self._ended(utterance, Outcome.DONE, text=payload["text"])
        self._start_next()
        session_end.check_wound_down(self)

    def _cancel(self, utterance: Utterance, reason: str) -> None:
        self._send("cancelled", utterance.request_id, {"reason": reason})
        self._ended(utterance, Outcome.CANCELLED)
        self._detach(utterance)

    def _ended(
        self, utterance: Utterance, outcome: Outcome, code: ErrorCode | None = None, text: str = ""
    ) -> None:
        self._out.append(utterance.ended(outcome, code, text, self._now))

    def _detach(self, utterance: Utterance) -> None:
        """Forget an utterance that ended early; a running generation is stopped by closing its
        upstream connection (vLLM has no cancel event; it aborts the request on close)."""
        if self.open is utterance:
            self.open = None
        if utterance is self.current:
            self.current = None
            self.feed.reopen()
        else:
            self.line.remove(utterance)

    # ------------------------------------------------------------------ limits

    def _admit(self, now: float, request_id: str | None) -> bool:
        return session_limits.admitted(self, self._admission.message(now), request_id)

    def _admit_cancel(self, request_id: str) -> bool:
        return session_limits.admitted(self, self._admission.cancel(self._now), request_id)

    # ------------------------------------------------------------------ output

    def _send(self, kind: str, request_id: str | None, payload: dict[str, Any]) -> None:
        self._out.append(SendClient(server_event(kind, self.session_id, request_id, payload)))

    def _error(
        self,
        code: ErrorCode,
        request_id: str | None,
        message: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._out.append(
            SendClient(error_event(code, self.session_id, request_id, message, details))
        )

    def _flush(self) -> list[Action]:
        out = self._out.copy()
        self._out.clear()
        return out
