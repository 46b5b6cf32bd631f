"""One client connection's session: pure, synchronous, no sockets, no clocks, no wire format.

The I/O layer feeds it what happened (a client input, parsed by the connection's codec; an
upstream event; the upstream connection opening or dropping; a timer firing), each with the
monotonic time ``now``, and carries out the actions it returns, in order (``proxy.session.
actions``): typed client events for the codec to render, text for vLLM, an upstream connection
to (re)open, a close, and since when vLLM owes an answer. The lifecycle facts among them are
what telemetry and metrics record.

The session dispatches each input: its own checks (rate limits, the inbound bound, which
utterance a message names), then the lifecycle's steps (``Lifecycle``), which alone change the
utterances; turn detection, vLLM's events and settings updates are concerns that call those
steps or return a decision applied here. After every input the lifecycle takes the steps that
follow from its state (the next utterance goes upstream, a session winding down closes), then
the actions are handed out.
"""

from __future__ import annotations

from proxy.audio_clock import DEFAULT_PAUSE_MS
from proxy.audio_convert import InvalidAudio
from proxy.audio_format import NATIVE, AudioFormat
from proxy.audio_input import UtteranceAudio
from proxy.limits import AudioAhead, MessageRates, SessionLimits
from proxy.session import _update, _upstream
from proxy.session._feed import UpstreamFeed
from proxy.session._lifecycle import Lifecycle, WindDown
from proxy.session._turn_stream import Backlog
from proxy.session._turns import TurnDetection
from proxy.session._utterance import Utterance
from proxy.session.actions import Action, HoldClient, StartVad, StopVad, VadBehind
from proxy.session.events import (
    AudioCleared,
    ClientLimits,
    ErrorCase,
    ErrorCode,
    Pong,
    SessionCreated,
    SessionError,
    SessionSettings,
    SessionUpdated,
)
from proxy.session.inputs import (
    NAMED_UTTERANCES,
    AppendAudio,
    CancelUtterance,
    ClearAudio,
    ClientInput,
    End,
    FinishUtterance,
    InvalidInput,
    OpenUtterance,
    Ping,
    SessionRules,
    UpdateSettings,
)
from proxy.turns import TurnOptions
from proxy.vad import VadFailure, Window
from proxy.vllm_wire import OTHER_EVENT, STALLED, UpstreamEvent


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
        rules: SessionRules = NAMED_UTTERANCES,
        client_limits: ClientLimits | None = None,
    ) -> None:
        # The id the connection was admitted with (a protocol may show it to the client).
        self.session_id = session_id
        # The client's audio format: each utterance keeps the one in effect when it opened.
        self.audio_format = audio_format
        self.served_model = served_model
        self.transcription_delay_ms = transcription_delay_ms
        self.limits = limits
        self.rules = rules
        # What the client is told of its bounds (unknown ones as 0, meaning none).
        self.client_limits = client_limits or ClientLimits(
            0,
            0,
            limits.inbound_queue_max,
            limits.inbound_queue_max_bytes,
            0,
            limits.max_utterances_in_flight,
            limits.max_audio_ahead_s,
        )
        self._out: list[Action] = []
        self.feed = UpstreamFeed(
            self._out,
            transcription_delay_ms=transcription_delay_ms,
            segment_max_bytes=segment_max_bytes,
        )
        self._lifecycle = Lifecycle(self._out, self.feed, segment_pause_ms)
        # Messages, and bytes of audio, waiting for vLLM when the last audio message came in
        # (for the metrics).
        self.inbound_depth = 0
        self.inbound_depth_bytes = 0
        self._rates = MessageRates(limits)
        self._ahead = AudioAhead(limits.max_audio_ahead_s)
        # Whether any audio arrived yet (some protocols freeze the settings then).
        self._audio_seen = False
        # Utterances the session opened by itself on audio (``rules.open_on_audio``).
        self._opened_on_audio = 0
        # The audio stream and its turns while turn detection is on.
        self.turn_detection: TurnDetection | None = None
        if turn_options is not None:
            # Its StartVad goes out with the first actions.
            self._set_turn_detection(turn_options)

    # ------------------------------------------------------------------ queries

    @property
    def closed(self) -> bool:
        return self._lifecycle.closed

    @property
    def open(self) -> Utterance | None:
        return self._lifecycle.open

    @property
    def current(self) -> Utterance | None:
        return self._lifecycle.current

    @property
    def in_flight(self) -> list[Utterance]:
        """Every utterance opened and not yet ended, current first."""
        return self._lifecycle.in_flight

    @property
    def finalizing(self) -> bool:
        """Whether some utterance waits for its end with all of its audio in (the client is
        waiting on the server then)."""
        return self._lifecycle.finalizing

    @property
    def held_messages(self) -> int:
        return self._lifecycle.held_messages

    @property
    def held_bytes(self) -> int:
        return self._lifecycle.held_bytes

    @property
    def segment_pause_ms(self) -> int:
        return self._lifecycle.segment_pause_ms

    @property
    def upstream_epoch(self) -> int:
        return self.feed.epoch

    @property
    def upstream_ready(self) -> bool:
        return self.feed.ready

    def settings(self) -> SessionSettings:
        """The full effective settings."""
        detection = self.turn_detection
        return SessionSettings(
            self.served_model,
            self.transcription_delay_ms,
            self.segment_pause_ms,
            self.audio_format,
            detection.options if detection is not None else None,
            self.client_limits,
        )

    def created(self, created_id: str) -> SessionCreated:
        """The session's first event, sent before anything else; ``created_id`` names this
        session uniquely (the connection's id, which its log lines carry)."""
        return SessionCreated(created_id, self.settings())

    # ------------------------------------------------------------------ inputs

    def on_client(
        self,
        message: ClientInput,
        now: float,
        backlog: int = 0,
        backlog_bytes: int = 0,
    ) -> list[Action]:
        """A client input (parsed by the codec), at monotonic time ``now``, with ``backlog``
        messages (``backlog_bytes`` bytes) accepted earlier and not yet written to vLLM."""
        lifecycle = self._lifecycle
        lifecycle.now = now
        if lifecycle.closed:
            return []
        if isinstance(message, InvalidInput):
            if not message.counts_toward_rate_limit or self._within_rate(message.request_id):
                lifecycle.send(
                    SessionError(
                        message.code,
                        message.request_id,
                        message=message.message,
                        details=message.details,
                    )
                )
        elif isinstance(message, Ping):
            lifecycle.send(Pong(message.request_id, message.payload))
        elif isinstance(message, End):
            self._on_end(message)
        elif not self._within_rate(message.request_id):
            pass
        elif isinstance(message, UpdateSettings):
            self._on_update(message)
        elif isinstance(message, CancelUtterance):
            self._on_cancel(message)
        elif isinstance(message, ClearAudio):
            self._on_clear()
        elif self._backlog_full(backlog, backlog_bytes, message):
            pass
        elif isinstance(message, AppendAudio):
            self._on_append(message)
        elif isinstance(message, OpenUtterance):
            self._on_open(message.request_id)
        elif isinstance(message, FinishUtterance):
            self._on_finish(message)
        return self._flush()

    def on_upstream_ready(self, epoch: int, now: float) -> list[Action]:
        self._lifecycle.now = now
        if epoch == self.upstream_epoch and not self.closed:
            self.feed.connected()
        return self._flush()

    def on_upstream_lost(self, epoch: int, now: float) -> list[Action]:
        """The upstream connection closed or could not be opened."""
        self._lifecycle.now = now
        if epoch == self.upstream_epoch:
            self._lifecycle.end_all(ErrorCode.UPSTREAM_UNAVAILABLE)
        return self._flush()

    def on_upstream_event(self, epoch: int, event: UpstreamEvent, now: float) -> list[Action]:
        """One event from vLLM (``vllm_wire.decode_event``'s)."""
        self._lifecycle.now = now
        if epoch == self.upstream_epoch and not self.closed:
            self.feed.settle()
            _upstream.on_event(self._lifecycle, event)
        return self._flush()

    def on_upstream_stalled(self, epoch: int, now: float) -> list[Action]:
        """vLLM stayed silent past the timeout since it owed an event (``UpstreamOwes``): the
        current utterance ends in error and the socket is replaced."""
        if self.current is None:
            return self.on_upstream_event(epoch, OTHER_EVENT, now)  # it owes nothing now
        return self.on_upstream_event(epoch, STALLED, now)

    def on_vad(self, windows: list[Window], now: float) -> list[Action]:
        """Scored windows of the turn stream (``StartVad``'s results), in order."""
        self._lifecycle.now = now
        detection = self.turn_detection
        if detection is not None and not self.closed:
            detection.scored(windows)
        return self._flush()

    def on_vad_failed(self, reason: VadFailure, now: float) -> list[Action]:
        """The VAD engine failed (``reason``): the open turn is finalized and turn detection
        goes off."""
        self._lifecycle.now = now
        if self.turn_detection is not None and not self.closed:
            overloaded = reason is VadFailure.FELL_BEHIND
            self._turn_detection_failed(
                ErrorCase.TURN_DETECTION_OVERLOADED
                if overloaded
                else ErrorCase.TURN_DETECTION_FAILED
            )
        return self._flush()

    def wind_down(self, reason: WindDown, now: float) -> list[Action]:
        """Take no new utterance, finalize the open one, close once every one has ended."""
        self._lifecycle.now = now
        self._lifecycle.wind_down(reason)
        return self._flush()

    def client_left(self, now: float) -> list[Action]:
        """The client closed its connection, or its socket went: every utterance in flight is
        abandoned and the session is over (nothing is sent any more)."""
        self._lifecycle.now = now
        self._lifecycle.abandon_all()
        return self._flush()

    def terminate(self, code: ErrorCode, now: float) -> list[Action]:
        """Close now (idle timeout, a deadline, a fault): every utterance in flight ends in
        error first."""
        self._lifecycle.now = now
        self._lifecycle.end_all(code)
        return self._flush()

    # ------------------------------------------------------------------ client inputs

    def _on_open(self, request_id: str) -> None:
        lifecycle = self._lifecycle
        if self.turn_detection is not None:
            lifecycle.refuse(ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.TURNS_OPEN_UTTERANCES)
            return
        if lifecycle.winding_down is not None:
            self._refuse_while_winding_down(request_id)
            return
        utterance = lifecycle.open
        if utterance is not None and utterance.request_id == request_id:
            return
        if lifecycle.find(request_id) is not None:
            lifecycle.refuse(ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.REQUEST_ID_IN_USE)
            return
        # The open one, if any, is superseded: one ends as this one opens.
        if not self._room_for_one(request_id, superseding=utterance is not None):
            return
        if utterance is not None:
            if not self._within_cancel_rate(request_id):
                return
            lifecycle.cancel(utterance, "superseded")
        lifecycle.open_utterance(request_id, UtteranceAudio(self.audio_format))

    def _on_append(self, message: AppendAudio) -> None:
        self._audio_seen = True
        if self.turn_detection is not None:
            # The request_id, if any, is not checked: the audio is the stream's.
            self.turn_detection.stream_audio(message.audio)
            self._pace(message.nbytes)
            self._vad_backlog(self.turn_detection)
            return
        lifecycle = self._lifecycle
        request_id = message.request_id
        if request_id is not None:
            utterance = self._named_open(request_id)
        elif lifecycle.open is not None and (message.binary or self.rules.open_on_audio):
            utterance = lifecycle.open  # audio without an id is for the open utterance
        elif self.rules.open_on_audio:
            utterance = self._open_on_audio()
        elif not message.binary:
            lifecycle.refuse(ErrorCode.INVALID_MESSAGE, None, ErrorCase.APPEND_NEEDS_REQUEST_ID)
            return
        else:
            lifecycle.refuse(ErrorCode.NO_ACTIVE_REQUEST, None, ErrorCase.NO_OPEN_UTTERANCE)
            return
        if utterance is None:
            return
        try:
            lifecycle.take_audio(utterance, message.audio, message.nbytes)
        except InvalidAudio as exc:
            lifecycle.refuse(ErrorCode.INVALID_AUDIO, request_id, message=exc.message)
            return
        self._pace(message.nbytes)

    def _on_finish(self, message: FinishUtterance) -> None:
        lifecycle = self._lifecycle
        request_id = message.request_id
        if self.turn_detection is not None:
            # Push-to-talk: the open turn ends now, whatever request_id the message names.
            if not self.turn_detection.end_open_turn():
                lifecycle.refuse(ErrorCode.NO_ACTIVE_REQUEST, request_id, ErrorCase.NO_OPEN_TURN)
            return
        if request_id is not None:
            utterance = self._named_open(request_id)
        elif lifecycle.open is not None:
            utterance = lifecycle.open
        elif message.empty_done:
            utterance = self._open_on_audio()
        else:
            lifecycle.refuse(ErrorCode.NO_ACTIVE_REQUEST, None, ErrorCase.NOTHING_TO_FINISH)
            return
        if utterance is not None:
            lifecycle.finalize(utterance)

    def _on_end(self, message: End) -> None:
        lifecycle = self._lifecycle
        if message.empty_done and lifecycle.open is None and lifecycle.winding_down is None:
            utterance = self._open_on_audio()
            if utterance is not None:
                lifecycle.finalize(utterance)
        lifecycle.wind_down(WindDown.END)

    def _on_cancel(self, message: CancelUtterance) -> None:
        lifecycle = self._lifecycle
        utterance = lifecycle.find(message.request_id)
        if utterance is None:
            lifecycle.refuse(
                ErrorCode.NO_ACTIVE_REQUEST, message.request_id, ErrorCase.NOTHING_TO_CANCEL
            )
            return
        if self._within_cancel_rate(message.request_id):
            self._cancel(utterance, message.reason)

    def _on_clear(self) -> None:
        utterance = self._lifecycle.open
        if utterance is not None:
            if not self._within_cancel_rate(None):
                return
            self._cancel(utterance, "cleared")
        self._lifecycle.send(AudioCleared())

    def _cancel(self, utterance: Utterance, reason: str) -> None:
        detection = self.turn_detection
        if detection is not None and utterance is self._lifecycle.open:
            detection.turn_cancelled()
        self._lifecycle.cancel(utterance, reason)

    def _on_update(self, message: UpdateSettings) -> None:
        lifecycle = self._lifecycle
        # Where audio opens utterances by itself, the open one is only audio not yet
        # committed: turning turn detection on drops it rather than being refused (clients
        # stream audio from the start, before their session.update arrives).
        buffered = lifecycle.open if self.rules.open_on_audio else None
        refusal = _update.refusal(
            message,
            served_model=self.served_model,
            audio_format=self.audio_format,
            frozen=self.rules.settings_frozen_at_audio and self._audio_seen,
            in_flight=bool(lifecycle.in_flight),
            utterance_open=lifecycle.open is not None and buffered is None,
            turns_on=self.turn_detection is not None,
        )
        if refusal is not None:
            lifecycle.send(refusal)
            return
        turning_on = message.turn_detection is not None and self.turn_detection is None
        if buffered is not None and turning_on:
            self._cancel(buffered, "superseded")
        format_changed = message.audio is not None and message.audio != self.audio_format
        if message.audio is not None:
            self.audio_format = message.audio
        if message.segment_pause_ms is not None:
            lifecycle.segment_pause_ms = message.segment_pause_ms
        if message.turn_detection_given:
            self._set_turn_detection(message.turn_detection)
        elif format_changed and self.turn_detection is not None:
            # A new stream in the new format.
            self._set_turn_detection(self.turn_detection.options)
        lifecycle.send(SessionUpdated(message.request_id, self.settings()))

    # ------------------------------------------------------------------ helpers

    def _named_open(self, request_id: str) -> Utterance | None:
        """The open utterance if it is ``request_id``; otherwise tells the client why not.

        An id whose audio is complete is "no longer open" (no_active_request) even while
        another utterance is open; any other id is a mismatch with the open one."""
        lifecycle = self._lifecycle
        utterance = lifecycle.open
        if utterance is not None and utterance.request_id == request_id:
            return utterance  # every audio message: no search (in-flight ids are unique)
        if utterance is None or lifecycle.audio_complete(request_id):
            lifecycle.refuse(ErrorCode.NO_ACTIVE_REQUEST, request_id)
            return None
        lifecycle.refuse(
            ErrorCode.REQUEST_ID_MISMATCH,
            request_id,
            details={"open_request_id": utterance.request_id},
        )
        return None

    def _open_on_audio(self) -> Utterance | None:
        """Opens an utterance named by the session (``rules.open_on_audio``)."""
        lifecycle = self._lifecycle
        if lifecycle.winding_down is not None:
            self._refuse_while_winding_down(None)
            return None
        if not self._room_for_one(None, superseding=False):
            return None
        while True:
            self._opened_on_audio += 1
            request_id = f"{self.rules.utterance_id_prefix}{self._opened_on_audio}"
            if lifecycle.find(request_id) is None:
                return lifecycle.open_utterance(request_id, UtteranceAudio(self.audio_format))

    def _room_for_one(self, request_id: str | None, *, superseding: bool) -> bool:
        """Whether one more utterance may open (``superseding``: one ends as it opens);
        otherwise tells the client why not."""
        bound = self.limits.max_utterances_in_flight
        if len(self._lifecycle.by_id) - superseding < bound:
            return True
        self._lifecycle.refuse(
            ErrorCode.RATE_LIMITED,
            request_id,
            ErrorCase.TOO_MANY_UTTERANCES,
            details={"max_utterances_in_flight": bound},
        )
        return False

    def _refuse_while_winding_down(self, request_id: str | None) -> None:
        reason = self._lifecycle.winding_down
        assert reason is not None
        if reason.value is None:
            self._lifecycle.refuse(
                ErrorCode.INVALID_MESSAGE, request_id, ErrorCase.ENDING_AFTER_END
            )
        else:
            self._lifecycle.refuse(reason.value, request_id)

    def _vad_backlog(self, detection: TurnDetection) -> None:
        """The VAD far behind the stream: a client far faster than real time ends the session
        (inbound_queue_full); an engine behind audio that came at real-time pace is the
        server's failure, not the client's: turn detection goes off here, and the engine is
        given up for every session it serves."""
        backlog = detection.stream.backlog(self._ahead.ahead_s * 1000)
        if backlog is Backlog.CLIENT:
            self._lifecycle.end_all(ErrorCode.INBOUND_QUEUE_FULL)
        elif backlog is Backlog.ENGINE:
            self._turn_detection_failed(ErrorCase.TURN_DETECTION_OVERLOADED)
            self._out.append(VadBehind())

    def _turn_detection_failed(self, case: ErrorCase) -> None:
        """Tells the client why (no request_id), finalizes the open turn, turns detection off."""
        self._lifecycle.refuse(ErrorCode.INTERNAL_ERROR, None, case)
        self._set_turn_detection(None)

    def _set_turn_detection(self, options: TurnOptions | None) -> None:
        """Turns detection on, off, or on with new options (a new stream: its times restart)."""
        if self.turn_detection is not None:
            self.turn_detection.end_open_turn()
            self.turn_detection = None
            self._out.append(StopVad())
        if options is not None:
            self.turn_detection = TurnDetection(self._lifecycle, options, self.audio_format)
            self._out.append(StartVad())

    # ------------------------------------------------------------------ limits

    def _within_rate(self, request_id: str | None) -> bool:
        return self._verdict(self._rates.message(self._lifecycle.now), request_id)

    def _within_cancel_rate(self, request_id: str | None) -> bool:
        return self._verdict(self._rates.cancel(self._lifecycle.now), request_id)

    def _verdict(self, verdict: dict[str, object] | bool, request_id: str | None) -> bool:
        """Carries out a rate limit's verdict (``MessageRates``); whether the message goes
        on. Refused too often, the client keeps going: the session ends."""
        if verdict is True:
            return True
        if verdict is False:
            self._lifecycle.end_all(ErrorCode.RATE_LIMITED)
        else:
            self._lifecycle.refuse(ErrorCode.RATE_LIMITED, request_id, details=verdict)
        return False

    def _pace(self, nbytes: int) -> None:
        """Audio taken: past ``max_audio_ahead_s`` ahead of real time, the client is held
        until real time catches up."""
        now = self._lifecycle.now
        wait = self._ahead.take(nbytes / self.audio_format.bytes_per_second, now)
        if wait > 0:
            self._out.append(HoldClient(now + wait))

    def _backlog_full(self, backlog: int, backlog_bytes: int, message: ClientInput) -> bool:
        """Whether ``message`` comes on top of too many messages, or too many bytes of audio,
        waiting for vLLM (the I/O layer's backlog and the audio held here); the session ends
        then."""
        self.inbound_depth = depth = backlog + self.held_messages
        self.inbound_depth_bytes = depth_bytes = backlog_bytes + self.held_bytes
        incoming = len(message.audio) if isinstance(message, AppendAudio) else 0
        if not self.limits.inbound_full(depth, depth_bytes, incoming):
            return False
        self._lifecycle.end_all(ErrorCode.INBOUND_QUEUE_FULL)
        return True

    # ------------------------------------------------------------------ output

    def _flush(self) -> list[Action]:
        self._lifecycle.after_input()
        out = self._out.copy()
        self._out.clear()
        return out
