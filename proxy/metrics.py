"""Prometheus metrics, all under the ``voxtral_proxy_`` prefix, on a registry of their own.

Labels are small closed sets (reasons, codes, outcomes, types): never a key, session id or
request id.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.audio_format import AudioFormat
from proxy.session.actions import Outcome
from proxy.session.inputs import AppendAudio, ClientInput
from proxy.vad import VadFailure

PREFIX = "voxtral_proxy"
UPSTREAM_STATES = ("ready", "starting", "down")
STARTED, ROLLED_OVER = "started", "rolled_over"
UTTERANCE_LABELS = (STARTED, *Outcome, ROLLED_OVER)
# The audio_format label: the encoding and the rate, the rate named only when it is a common one
# (any whole rate from 8 to 48 kHz is accepted: the label set must stay small).
LABELLED_RATES = frozenset((8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000))
TURN_MODES = {False: "client", True: "server_vad"}
# The client close codes counted as sent (the protocol's own range); others count as "other".
CLIENT_CODES_KEPT = (1000, 1015)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# A VAD step's inference: a few ms for a round, up to about 0.4 s for a second of audio of 300
# streams, and the step deadline (3 s) past which the engine fails.
VAD_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_open = Gauge(
            f"{PREFIX}_connections_open",
            "Client WebSockets open now, by protocol.",
            ["protocol"],
            registry=r,
        )
        self.connections_total = Counter(
            f"{PREFIX}_connections",
            "Client WebSockets accepted into a session, by protocol.",
            ["protocol"],
            registry=r,
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals",
            "Connections refused before a session, by reason.",
            ["reason"],
            registry=r,
        )
        self.closes = Counter(
            f"{PREFIX}_closes",
            "Sessions closed, by who closed (server, client) and close code (a client's: "
            "1000-1015 as sent, none without a close frame or code, other beyond).",
            ["by", "code"],
            registry=r,
        )
        self.client_held_seconds = Counter(
            f"{PREFIX}_client_held_seconds",
            "Seconds the proxy stopped reading a client whose audio ran too far ahead of real "
            "time.",
            registry=r,
        )
        self.utterances = Counter(
            f"{PREFIX}_utterances",
            "Utterances by outcome (started, done, cancelled, errored, rolled_over).",
            ["outcome"],
            registry=r,
        )
        self.utterance_counters = {
            str(label): self.utterances.labels(label) for label in UTTERANCE_LABELS
        }
        self.client_messages = Counter(
            f"{PREFIX}_client_messages",
            "Client messages received, by protocol and type (the protocol's; refused ones as "
            "invalid, binary audio frames as binary).",
            ["protocol", "type"],
            registry=r,
        )
        # Children are looked up once each: ``labels()`` costs more than the increment itself.
        self._client_message_counters: dict[tuple[str, str], Any] = {}
        self.upstream_state = Gauge(
            f"{PREFIX}_upstream_state",
            "1 for vLLM's current state (ready, starting, down).",
            ["state"],
            registry=r,
        )
        self.upstream_reconnects = Counter(
            f"{PREFIX}_upstream_reconnects",
            "Upstream connections reopened (cancel, barge-in, upstream error).",
            registry=r,
        )
        self.draining = Gauge(f"{PREFIX}_draining", "1 while the server drains.", registry=r)
        self.audio_seconds = Counter(
            f"{PREFIX}_audio_seconds",
            "Seconds of client audio in appends and binary frames.",
            registry=r,
        )
        self.time_to_first_word = Histogram(
            f"{PREFIX}_time_to_first_word_seconds",
            "From an utterance's first audio to its first non-empty delta, by the client's "
            "audio format and who opened the utterance (client commit or server VAD).",
            ["audio_format", "turn_detection"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.finalization_latency = Histogram(
            f"{PREFIX}_finalization_latency_seconds",
            "From an utterance's final commit to its transcription.done.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inbound_queue_high_water = Gauge(
            f"{PREFIX}_inbound_queue_high_water",
            "Most client messages ever waiting for vLLM on one connection.",
            registry=r,
        )
        self.inbound_bytes_high_water = Gauge(
            f"{PREFIX}_inbound_bytes_high_water",
            "Most bytes of client audio ever waiting for vLLM on one connection.",
            registry=r,
        )
        self.vad_engine_failures = Counter(
            f"{PREFIX}_vad_engine_failures",
            "Turn-detection VAD engines given up, by reason (model_error: its model raised; "
            "step_deadline: a step hung past the deadline; fell_behind: it fell behind the "
            "real-time audio of its sessions).",
            ["reason"],
            registry=r,
        )
        for reason in VadFailure:
            self.vad_engine_failures.labels(reason.value)
        self.vad_step_seconds = Histogram(
            f"{PREFIX}_vad_step_seconds",
            "Inference time of each turn-detection VAD step (one batch for every session).",
            buckets=VAD_STEP_BUCKETS,
            registry=r,
        )
        self._inbound_high_water = 0
        self._inbound_bytes_high_water = 0
        self.set_upstream_state("starting")

    def set_upstream_state(self, state: str) -> None:
        for name in UPSTREAM_STATES:
            self.upstream_state.labels(name).set(1 if name == state else 0)

    def count_client_message(
        self, protocol: str, label: str, message: ClientInput, audio_format: AudioFormat
    ) -> None:
        """One client frame of ``protocol``, by its codec's ``label``; audio is in the
        session's ``audio_format``."""
        key = (protocol, label)
        counter = self._client_message_counters.get(key)
        if counter is None:
            counter = self._client_message_counters[key] = self.client_messages.labels(*key)
        counter.inc()
        if isinstance(message, AppendAudio):
            self.audio_seconds.inc(message.nbytes / audio_format.bytes_per_second)

    def count_close(self, by: str, code: int | None) -> None:
        """A session closed ``by`` the server or the client, with ``code`` (None: the client
        sent no close frame, or one without a code)."""
        if code is None:
            label = "none"
        elif by == "client" and not CLIENT_CODES_KEPT[0] <= code <= CLIENT_CODES_KEPT[1]:
            label = "other"  # a client chooses its codes: the label set stays small
        else:
            label = str(code)
        self.closes.labels(by, label).inc()

    def note_inbound_depth(self, depth: int, nbytes: int) -> None:
        if depth > self._inbound_high_water:
            self._inbound_high_water = depth
            self.inbound_queue_high_water.set(depth)
        if nbytes > self._inbound_bytes_high_water:
            self._inbound_bytes_high_water = nbytes
            self.inbound_bytes_high_water.set(nbytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def format_label(fmt: AudioFormat) -> str:
    """The audio_format label of `fmt`, e.g. ``g711_ulaw_8000`` or ``pcm16_other``."""
    rate = str(fmt.sample_rate) if fmt.sample_rate in LABELLED_RATES else "other"
    return f"{fmt.encoding.value}_{rate}"
