"""The utterances of one session and every step they take: the one place that changes them.

vLLM's realtime socket runs one generation at a time and wipes queued audio when a generation
ends, so utterances wait in a line: the head is *current* (its commit went upstream) and the
others keep their audio here until the current one ends. At most one is *open* (taking audio).
When vLLM's ``--max-model-len`` would end a generation mid-utterance, the utterance goes on in a
fresh generation (a *segment*).

Each step is a public method; the session and its concerns (turn detection, vLLM's events,
settings updates) call them and never change an utterance themselves. Two steps are triggered
by state rather than by an input: starting the next utterance upstream, and closing a session
that winds down once its last utterance has ended. ``after_input`` runs both, and the session
calls it once at the end of every input, so no input path can forget them (h11 re-runs its
state-triggered transitions after every event the same way).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import Enum
from typing import Any

from proxy.audio_format import AudioFormat
from proxy.audio_input import UtteranceAudio
from proxy.session._feed import UpstreamFeed
from proxy.session._utterance import Phase, Utterance
from proxy.session.actions import (
    Action,
    CloseClient,
    Outcome,
    SendClient,
    UtteranceRolledOver,
    UtteranceStarted,
)
from proxy.session.events import (
    Cancelled,
    ClientEvent,
    Delta,
    ErrorCase,
    ErrorCode,
    SegmentClosed,
    SessionEnded,
    SessionError,
    TextSegment,
    UtteranceCommitted,
    UtteranceFailed,
    UtteranceOpened,
)


class WindDown(Enum):
    """Why a session takes no new utterance and closes once the last one has ended; the value
    is the error it closes with (None: a normal close)."""

    END = None
    MAX_DURATION = ErrorCode.MAX_DURATION_REACHED
    SHUTDOWN = ErrorCode.SHUTTING_DOWN


class Lifecycle:
    def __init__(self, out: list[Action], feed: UpstreamFeed, segment_pause_ms: int) -> None:
        # Where every step's actions go, in order (the session hands them out per input).
        self.out = out
        self.feed = feed
        # The pause that splits a done's text into segments.
        self.segment_pause_ms = segment_pause_ms
        # The time of the input being handled.
        self.now = 0.0
        self.open: Utterance | None = None
        self.current: Utterance | None = None
        # Utterances waiting for the upstream, in order (the open one may be last).
        self.line: deque[Utterance] = deque()
        # Every utterance in flight (current and line) by id: messages name one without a scan.
        self.by_id: dict[str, Utterance] = {}
        self.winding_down: WindDown | None = None
        self.closed = False
        self._last_opened: str | None = None

    # ------------------------------------------------------------------ queries

    @property
    def in_flight(self) -> list[Utterance]:
        """Every utterance opened and not yet ended, current first."""
        return ([self.current] if self.current else []) + list(self.line)

    def find(self, request_id: str) -> Utterance | None:
        """The utterance in flight named ``request_id``."""
        return self.by_id.get(request_id)

    def audio_complete(self, request_id: str) -> bool:
        """Whether ``request_id`` is in flight and its client audio is complete."""
        utterance = self.by_id.get(request_id)
        return utterance is not None and utterance.phase.client_final

    @property
    def finalizing(self) -> bool:
        """Whether some utterance waits for its end with all of its audio in."""
        return any(u.phase.client_final for u in self._each())

    @property
    def held_messages(self) -> int:
        """Messages of audio held (the audio waiting for a step boundary counts as the one
        append it goes up in), and one for each utterance waiting in the line (its own state
        costs memory even when it holds no audio)."""
        # On every message: no list built here, unlike in_flight, and no sum for an empty line.
        current = len(self.current.held) if self.current is not None else 0
        current += self.feed.pending_nbytes > 0
        if not self.line:
            return current
        return current + sum(len(u.held) for u in self.line) + len(self.line)

    @property
    def held_bytes(self) -> int:
        current = (
            self.current.held.nbytes + self.current.audio.waiting_bytes
            if self.current is not None
            else 0
        )
        current += self.feed.pending_nbytes
        if not self.line:
            return current
        return current + sum(u.held.nbytes for u in self.line)

    def _each(self) -> Iterator[Utterance]:
        if self.current is not None:
            yield self.current
        yield from self.line

    # ------------------------------------------------------------------ output

    def send(self, event: ClientEvent) -> None:
        self.out.append(SendClient(event))

    def refuse(
        self,
        code: ErrorCode,
        request_id: str | None,
        case: ErrorCase | None = None,
        *,
        message: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """A session-level error that ends nothing."""
        self.send(SessionError(code, request_id, case, message, details or {}))

    # ------------------------------------------------------------------ steps

    def open_utterance(
        self, request_id: str, audio: UtteranceAudio, turn_format: AudioFormat | None = None
    ) -> Utterance:
        """Opens ``request_id`` at the end of the line (it goes upstream at the end of the input
        when the line is empty); ``turn_format``: the stream's format when turn detection
        opened it."""
        utterance = Utterance(
            request_id,
            opened_at=self.now,
            previous_request_id=self._last_opened,
            audio=audio,
            turn_format=turn_format,
        )
        self._last_opened = request_id
        self.out.append(UtteranceStarted(request_id, self.now))
        self.send(UtteranceOpened(request_id, utterance.previous_request_id))
        self.line.append(utterance)
        self.by_id[request_id] = utterance
        self.open = utterance
        return utterance

    def take_audio(self, utterance: Utterance, audio: str | bytes, nbytes: int) -> None:
        """Client audio for ``utterance``, converted to vLLM's format and delivered. Raises
        ``InvalidAudio`` (nothing taken)."""
        # Audio that cannot complete vLLM's next step yet is converted with what follows it.
        wanted = self.feed.audio_wanted(utterance) if self._streaming(utterance) else 0
        upstream = utterance.audio.take(audio, nbytes, wanted)
        if utterance.first_audio_at is None:
            utterance.first_audio_at = self.now
        for chunk, pcm_bytes in upstream:
            self.deliver(utterance, chunk, pcm_bytes)

    def deliver(self, utterance: Utterance, audio: str | bytes, pcm_bytes: int) -> None:
        """Audio for vLLM: sent up while the utterance's segment takes it, held otherwise."""
        if self._streaming(utterance):
            self.feed.forward_audio(utterance, audio, pcm_bytes, self.now)
        else:
            utterance.held.append(audio, pcm_bytes)

    def _streaming(self, utterance: Utterance) -> bool:
        """Whether the segment running upstream takes ``utterance``'s audio as it comes."""
        return utterance is self.current and utterance.phase is Phase.OPEN

    def finalize(self, utterance: Utterance) -> None:
        """The utterance's audio is complete: its last segment is committed upstream as soon as
        it runs there."""
        if utterance.final_at is None:
            utterance.final_at = self.now
        # The resampler's tail, so the last milliseconds reach vLLM too.
        for audio, pcm_bytes in utterance.audio.flush():
            self.deliver(utterance, audio, pcm_bytes)
        self.open = None
        if utterance.phase is Phase.OPEN_ROLLING:
            utterance.phase = Phase.CLOSED_ROLLING
        elif utterance is self.current:
            self.feed.commit_final(utterance, Phase.FINALIZING, self.now)
        else:
            utterance.phase = Phase.CLOSED
        self.send(UtteranceCommitted(utterance.request_id, utterance.previous_request_id))

    def model_step(self, utterance: Utterance, text: str) -> None:
        """One model step of the current utterance: its text goes to the client with where it
        sits in the audio; a step without text is counted (one tick of the token clock). A
        segment a pause has closed goes to the client first."""
        clock = utterance.clock
        if not text:
            clock.steps += 1
            self._segment_closed(utterance)
            return
        self._segment_closed(utterance)
        if utterance.first_delta_at is None:
            utterance.first_delta_at = self.now
        audio_ms = clock.add_text(text, utterance.segment_bytes)
        self.send(Delta(utterance.request_id, text, audio_ms))

    def _segment_closed(self, utterance: Utterance) -> None:
        closed = utterance.clock.close_segment(self.segment_pause_ms, utterance.segment_bytes)
        if closed is not None:
            segment = TextSegment(closed.text, closed.start_ms, closed.end_ms)
            self.send(SegmentClosed(utterance.request_id, segment))

    def segment_ended(self, utterance: Utterance, usage: dict[str, int]) -> None:
        """vLLM ended the current utterance's generation: the utterance ends, or goes on in a
        new generation when its audio is not all sent (the proxy closed the segment at the
        length cap, or vLLM reached it by itself: audio it received after stopping and before
        its done is gone, its queue wiped)."""
        utterance.add_usage(usage)
        if utterance.phase is not Phase.FINALIZING:
            # The run ends where vLLM's audio did: what waited for a step opens the next run.
            utterance.clock.end_run(utterance.segment_bytes - self.feed.pending_pcm_bytes)
            utterance.segments += 1
            self.out.append(UtteranceRolledOver(utterance.request_id))
            if not utterance.phase.client_final or utterance.held:
                self.feed.begin_segment(utterance, self.now)
                return
            # The previous segment already covered every byte: no empty generation upstream.
        self.current = None
        del self.by_id[utterance.request_id]
        done = utterance.done(self.segment_pause_ms)
        self.send(done)
        self._ended(utterance, Outcome.DONE, text=done.text)

    def cancel(self, utterance: Utterance, reason: str) -> None:
        self.send(Cancelled(utterance.request_id, reason))
        self._ended(utterance, Outcome.CANCELLED)
        self._detach(utterance)

    def fail(
        self, utterance: Utterance, code: ErrorCode, details: dict[str, Any] | None = None
    ) -> None:
        """The utterance ends in error; a generation running for it is stopped."""
        self.send(UtteranceFailed(utterance.request_id, code, details=details or {}))
        self._ended(utterance, Outcome.ERRORED, code)
        self._detach(utterance)

    def wind_down(self, reason: WindDown) -> None:
        """No new utterance from now on; the open one is finalized; the session closes once
        every one has ended (see ``after_input``)."""
        if not self.closed and self.winding_down is None:
            self.winding_down = reason
            if self.open is not None:
                self.finalize(self.open)

    def end_all(self, code: ErrorCode) -> None:
        """Closes now: every utterance in flight ends in error first."""
        if self.closed:
            return
        for utterance in self.in_flight:
            self.send(UtteranceFailed(utterance.request_id, code))
            self._ended(utterance, Outcome.ERRORED, code)
        self.send(SessionError(code, None, closes=True))
        self._close(code)

    def abandon_all(self) -> None:
        """The client left: every utterance in flight ends as abandoned, and the session is
        over with nothing left to send (a running generation stops when the relay closes the
        upstream connection)."""
        if self.closed:
            return
        for utterance in self.in_flight:
            self._ended(utterance, Outcome.ABANDONED)
        self.closed = True
        self._forget_all()

    def after_input(self) -> None:
        """The state-triggered steps, run after every input: the next utterance goes upstream
        when nothing runs there, and a session winding down closes once none is left."""
        if self.closed:
            return
        if self.current is None and self.feed.ready and self.line:
            self.current = self.line.popleft()
            self.feed.begin_segment(self.current, self.now)
        reason = self.winding_down
        if reason is not None and self.current is None and not self.line:
            if reason.value is None:
                self.send(SessionEnded())
            else:
                self.send(SessionError(reason.value, None, closes=True))
            self._close(reason.value)

    # ------------------------------------------------------------------ internals

    def _ended(
        self, utterance: Utterance, outcome: Outcome, code: ErrorCode | None = None, text: str = ""
    ) -> None:
        self.out.append(utterance.ended(outcome, code, text, self.now))

    def _detach(self, utterance: Utterance) -> None:
        """Forget an utterance that ended early; a running generation is stopped by closing its
        upstream connection (vLLM has no cancel event; it aborts the request on close)."""
        del self.by_id[utterance.request_id]
        if self.open is utterance:
            self.open = None
        if utterance is self.current:
            self.current = None
            self.feed.reopen()
        else:
            self.line.remove(utterance)

    def _close(self, error: ErrorCode | None) -> None:
        self.closed = True
        self._forget_all()
        self.out.append(CloseClient(error))

    def _forget_all(self) -> None:
        self.open = self.current = None
        self.line.clear()
        self.by_id.clear()
