"""What the session sends up to vLLM for the utterance running there: the upstream connection's
epoch, the segment's audio (cut before vLLM's length cap), and whether vLLM owes an event.

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

    def connected(self) -> None:
        """The connection of the current epoch is open: it takes what is sent from now on."""
        self.ready = True
        self.settle()

    def begin_segment(self, utterance: Utterance, now: float) -> None:
        """Opens a vLLM generation for ``utterance`` and sends what it holds."""
        utterance.segment_bytes = 0
        utterance.phase = Phase.CLOSED if utterance.phase.client_final else Phase.OPEN
        self._send(vllm_wire.COMMIT_OPEN)
        while utterance.held and not utterance.phase.segment_committed:
            audio, pcm_bytes = utterance.held.popleft()
            self.forward_audio(utterance, audio, pcm_bytes, now)
        if utterance.phase is Phase.CLOSED:
            self.commit_final(utterance, Phase.FINALIZING, now)

    def forward_audio(self, utterance: Utterance, audio: str, pcm_bytes: int, now: float) -> None:
        limit = self.segment_max_bytes
        if limit is None or utterance.segment_bytes + pcm_bytes <= limit:
            self._send_audio(audio, pcm_bytes, now)
            utterance.segment_bytes += pcm_bytes
            return
        # This chunk crosses the segment's limit: send what fits, end the segment with a final
        # commit (its text is flushed, nothing lost) and keep the rest for the next segment.
        pcm = binascii.a2b_base64(audio)
        room = max(limit - utterance.segment_bytes, 0)
        if room:
            self._send_audio(vllm_wire.encode_audio(pcm[:room]), room, now)
            utterance.segment_bytes += room
        utterance.held.appendleft(vllm_wire.encode_audio(pcm[room:]), pcm_bytes - room)
        rolling = Phase.CLOSED_ROLLING if utterance.phase.client_final else Phase.OPEN_ROLLING
        self.commit_final(utterance, rolling, now)

    def commit_final(self, utterance: Utterance, phase: Phase, now: float) -> None:
        """Ends the running segment (vLLM flushes its text); ``phase`` says what comes next."""
        utterance.phase = phase
        self._send(vllm_wire.COMMIT_FINAL)
        self._owe(now)

    def reopen(self) -> None:
        """Replaces the upstream connection (vLLM aborts a generation when its socket closes)."""
        self.epoch += 1
        self.ready = False
        self.settle()
        self._out.append(OpenUpstream(self.epoch))

    def settle(self) -> None:
        """vLLM answered (or its connection is replaced): it owes nothing."""
        self._audio_since_event = 0
        if self.owes_since is not None:
            self.owes_since = None
            self._out.append(UpstreamSettled())

    def _send(self, text: str) -> None:
        self._out.append(SendUpstream(self.epoch, text))

    def _send_audio(self, audio: str, pcm_bytes: int, now: float) -> None:
        self._out.append(SendUpstream(self.epoch, vllm_wire.append_text(audio)))
        self._audio_since_event += pcm_bytes
        if self._audio_since_event >= self._owed_audio:
            self._owe(now)

    def _owe(self, now: float) -> None:
        if self.owes_since is None:
            self.owes_since = now
            self._out.append(UpstreamOwes(self.epoch, now))
