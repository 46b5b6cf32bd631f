"""What the session sends up to vLLM for the utterance running there: the upstream connection's
epoch, the segment's audio (cut before vLLM's length cap), and whether vLLM owes an event.

Audio goes up on vLLM's step boundaries: a model step runs only once its whole frame (and the
look-ahead) is in (``vllm_wire.steps_sent``), so audio that completes no step waits here and goes
up in one append with the piece that completes one. No step runs later for it, and a client's
20 ms frames cost one message per 80 ms step instead of four.

Part of the session (it appends to the session's action list); kept apart because it is the
part that speaks vLLM's wire format.
"""

from __future__ import annotations

import binascii

from proxy import vllm_wire
from proxy.session._utterance import Phase, Utterance
from proxy.session.actions import Action, OpenUpstream, SendUpstream, UpstreamOwes, UpstreamSettled


class UpstreamFeed:
    def __init__(
        self, out: list[Action], *, transcription_delay_ms: int, segment_max_bytes: int | None
    ) -> None:
        self._out = out
        self.segment_max_bytes = segment_max_bytes
        # Counts upstream connections: the one the session talks to; older ones are ignored.
        self.epoch = 0
        self.ready = False
        # Since when vLLM owes an event (None: it owes nothing), and the audio sent since its
        # last one; past ``_owed_audio`` its silence is a stall rather than a pause.
        self.owes_since: float | None = None
        self._audio_since_event = 0
        self._owed_audio = vllm_wire.owed_audio_bytes(transcription_delay_ms)
        self._delay_ms = transcription_delay_ms
        # The running segment's audio that completes no step yet: its pieces (base64 text or
        # PCM), their PCM bytes, and their size as held here (for the session's byte budget).
        self._pending: list[str | bytes] = []
        self.pending_pcm_bytes = 0
        self.pending_nbytes = 0
        # The segment's audio (``Utterance.segment_bytes``) at which its next step can run.
        self._next_step_at = 0

    def connected(self) -> None:
        """The connection of the current epoch is open: it takes what is sent from now on."""
        self.ready = True
        self.settle()

    def begin_segment(self, utterance: Utterance, now: float) -> None:
        """Opens a vLLM generation for ``utterance`` and sends what it holds. Audio still
        waiting for a step when vLLM ended the last generation by itself (at its length cap)
        never reached it: it opens this one."""
        utterance.segment_bytes = self.pending_pcm_bytes
        utterance.phase = Phase.CLOSED if utterance.phase.client_final else Phase.OPEN
        self._next_step_at = vllm_wire.step_audio_bytes(0, self._delay_ms)
        self._send(vllm_wire.COMMIT_OPEN)
        while utterance.held and not utterance.phase.segment_committed:
            audio, pcm_bytes = utterance.held.popleft()
            self._take(utterance, audio, pcm_bytes, now)
        if utterance.phase is Phase.CLOSED:
            self.commit_final(utterance, Phase.FINALIZING, now)
        else:
            self._send_due(utterance, now)  # what it held, in as few appends as it takes

    def forward_audio(
        self, utterance: Utterance, audio: str | bytes, pcm_bytes: int, now: float
    ) -> None:
        """Audio for the running segment: it goes up with the piece that completes a step."""
        self._take(utterance, audio, pcm_bytes, now)
        self._send_due(utterance, now)

    def audio_wanted(self, utterance: Utterance) -> int:
        """The audio the running segment still needs before its next step can run."""
        return max(self._next_step_at - utterance.segment_bytes, 0)

    def commit_final(self, utterance: Utterance, phase: Phase, now: float) -> None:
        """Ends the running segment (vLLM flushes its text); ``phase`` says what comes next."""
        utterance.phase = phase
        self._send_pending(utterance, now)
        self._send(vllm_wire.COMMIT_FINAL)
        self._owe(now)

    def reopen(self) -> None:
        """Replaces the upstream connection (vLLM aborts a generation when its socket closes)."""
        self.epoch += 1
        self.ready = False
        self._clear_pending()  # the aborted generation's audio goes nowhere
        self.settle()
        self._out.append(OpenUpstream(self.epoch))

    def settle(self) -> None:
        """vLLM answered (or its connection is replaced): it owes nothing."""
        self._audio_since_event = 0
        if self.owes_since is not None:
            self.owes_since = None
            self._out.append(UpstreamSettled())

    def _take(self, utterance: Utterance, audio: str | bytes, pcm_bytes: int, now: float) -> None:
        limit = self.segment_max_bytes
        if limit is None or utterance.segment_bytes + pcm_bytes <= limit:
            self._add_pending(audio, pcm_bytes)
            utterance.segment_bytes += pcm_bytes
            if self.pending_pcm_bytes >= vllm_wire.APPEND_MAX_BYTES:
                self._send_pending(utterance, now)
            return
        # This chunk crosses the segment's limit: send what fits, end the segment with a final
        # commit (its text is flushed, nothing lost) and keep the rest for the next segment.
        pcm = audio if isinstance(audio, bytes) else binascii.a2b_base64(audio)
        room = max(limit - utterance.segment_bytes, 0)
        if room:
            self._add_pending(pcm[:room], room)
            utterance.segment_bytes += room
        utterance.held.appendleft(pcm[room:], pcm_bytes - room)
        rolling = Phase.CLOSED_ROLLING if utterance.phase.client_final else Phase.OPEN_ROLLING
        self.commit_final(utterance, rolling, now)

    def _send_due(self, utterance: Utterance, now: float) -> None:
        """Sends the waiting audio once it completes one of the running segment's steps."""
        if self._pending and utterance.segment_bytes >= self._next_step_at:
            self._send_pending(utterance, now)

    def _send(self, text: str) -> None:
        self._out.append(SendUpstream(self.epoch, text))

    def _add_pending(self, audio: str | bytes, pcm_bytes: int) -> None:
        self._pending.append(audio)
        self.pending_pcm_bytes += pcm_bytes
        self.pending_nbytes += len(audio)

    def _clear_pending(self) -> None:
        self._pending.clear()
        self.pending_pcm_bytes = self.pending_nbytes = 0

    def _send_pending(self, utterance: Utterance, now: float) -> None:
        pending = self._pending
        if not pending:
            return
        first = pending[0]
        if len(pending) == 1 and isinstance(first, str):
            audio = first  # a JSON append's base64 goes up as it came, never re-encoded
        else:
            pcm = b"".join(p if isinstance(p, bytes) else binascii.a2b_base64(p) for p in pending)
            audio = vllm_wire.encode_audio(pcm)
        pcm_bytes = self.pending_pcm_bytes
        self._clear_pending()
        self._send_audio(audio, pcm_bytes, now)
        sent = utterance.segment_bytes
        self._next_step_at = vllm_wire.step_audio_bytes(
            vllm_wire.steps_sent(sent, self._delay_ms, final=False), self._delay_ms
        )

    def _send_audio(self, audio: str, pcm_bytes: int, now: float) -> None:
        self._out.append(SendUpstream(self.epoch, vllm_wire.append_text(audio)))
        self._audio_since_event += pcm_bytes
        if self._audio_since_event >= self._owed_audio:
            self._owe(now)

    def _owe(self, now: float) -> None:
        if self.owes_since is None:
            self.owes_since = now
            self._out.append(UpstreamOwes(self.epoch, now))
