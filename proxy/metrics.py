"""Prometheus metrics, all under the ``voxtral_proxy_`` prefix, on a registry of their own.

Labels are small closed sets (reasons, codes, outcomes, types): never a key, session id or
request id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

PREFIX = "voxtral_proxy"
UPSTREAM_STATES = ("ready", "starting", "down")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_open = Gauge(
            f"{PREFIX}_connections_open", "Client WebSockets open now.", registry=r
        )
        self.connections_total = Counter(
            f"{PREFIX}_connections", "Client WebSockets accepted into a session.", registry=r
        )
        self.refusals = Counter(
            f"{PREFIX}_refusals",
            "Connections refused before a session, by reason.",
            ["reason"],
            registry=r,
        )
        self.closes = Counter(
            f"{PREFIX}_closes",
            "Sessions closed by the server, by close code.",
            ["code"],
            registry=r,
        )
        self.utterances = Counter(
            f"{PREFIX}_utterances",
            "Utterances by outcome (started, done, cancelled, errored, rolled_over).",
            ["outcome"],
            registry=r,
        )
        self.client_messages = Counter(
            f"{PREFIX}_client_messages",
            "Client messages received, by type.",
            ["type"],
            registry=r,
        )
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
        self.set_upstream_state("starting")

    def set_upstream_state(self, state: str) -> None:
        for name in UPSTREAM_STATES:
            self.upstream_state.labels(name).set(1 if name == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
