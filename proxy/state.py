"""What the connections of one server share: the configuration, metrics, the upstream
monitor, auth-failure limits, the token issuer, the session limits, the open relays, and
draining."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from proxy.config import ProxyConfig
from proxy.limits import AuthFailureLimiter, Refusal, SessionLimits
from proxy.memory import MemoryReleaser
from proxy.metrics import Metrics
from proxy.relay import Relay
from proxy.session.events import ClientLimits
from proxy.tokens import CLIENT_SECRET_LABEL, TokenIssuer, kind_secret, token_secret
from proxy.upstream import UpstreamMonitor
from proxy.vad_service import VadService

log = structlog.get_logger("proxy.state")


class ProxyState:
    """Everything shared by the connections of one server."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.monitor = UpstreamMonitor(
            config.upstream_health_url,
            config.served_model_name,
            on_change=self.metrics.set_upstream_state,
        )
        self.auth_failures = AuthFailureLimiter(
            config.max_auth_failures_per_window, config.auth_failure_window_s
        )
        token_key = token_secret(config.token_secret)
        self.tokens = TokenIssuer(token_key, config.token_max_ttl_s)
        # OpenAI-style client secrets (proxy.client_secrets): same secret, a key of their own.
        self.client_secrets = TokenIssuer(
            kind_secret(token_key, CLIENT_SECRET_LABEL), config.token_max_ttl_s
        )
        self.limits = SessionLimits.from_config(config)
        # What each session tells its client of its bounds.
        self.client_limits = ClientLimits(
            idle_timeout_s=config.idle_timeout_s,
            max_duration_s=config.max_duration_s,
            inbound_queue_max=config.inbound_queue_max,
            inbound_queue_max_bytes=config.inbound_queue_max_bytes,
            max_message_bytes=config.max_message_bytes,
            max_utterances_in_flight=config.max_utterances_in_flight,
            max_audio_ahead_s=config.max_audio_ahead_s,
        )
        self.memory = MemoryReleaser()
        # Slots are taken before the upstream is dialled, so admission cannot overshoot.
        self.slots_taken = 0
        self.relays: set[Relay] = set()
        self.draining = False
        # Loads the VAD model when the first session turns turn detection on.
        self.vad = VadService(metrics=self.metrics)

    @property
    def ready(self) -> bool:
        return (
            self.monitor.ready
            and not self.draining
            and self.slots_taken < self.config.max_connections
        )

    def auth_failed(self, address: str) -> Refusal | None:
        """Counts a failed attempt from ``address``; the refusal when it had already used up
        its failures (then the answer is ``rate_limited`` rather than ``unauthorized``). Only
        failures meet this limit: a valid credential is never refused for others' failures."""
        now = time.monotonic()
        blocked = self.auth_failures.blocked(address, now)
        if blocked is None:
            self.auth_failures.record_failure(address, now)
        return blocked

    async def drain(self) -> None:
        """Stops admitting, lets open utterances finish for up to the drain timeout, then
        closes every socket with ``shutting_down``."""
        self.draining = True
        self.metrics.draining.set(1)
        log.info("drain_started", connections=len(self.relays))
        for relay in list(self.relays):
            relay.wind_down()
        pending = [relay.done.wait() for relay in self.relays]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_timeout_s):
                    await asyncio.gather(*pending)
        for relay in list(self.relays):
            relay.shut()
        leftovers = [relay.done.wait() for relay in self.relays]
        if leftovers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*leftovers)
        log.info("drain_finished", connections=len(self.relays))
