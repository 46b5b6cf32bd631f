"""Rolling-window rate limits. Pure: the caller passes the current time (monotonic seconds)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Any

from proxy.config import ProxyConfig

# After this many refused messages within the message window the connection is closed.
RATE_REFUSALS_BEFORE_CLOSE = 32


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """One connection's bounds: the ``ProxyConfig`` fields of the same names."""

    inbound_queue_max: int
    inbound_queue_max_bytes: int
    max_utterances_in_flight: int
    max_audio_ahead_s: float
    outbound_queue_max: int
    outbound_queue_max_bytes: int
    max_messages_per_window: int
    message_window_s: float
    max_cancels_per_window: int
    cancel_window_s: float

    @classmethod
    def from_config(cls, config: ProxyConfig) -> SessionLimits:
        return cls(**{item.name: getattr(config, item.name) for item in fields(cls)})

    def inbound_full(self, waiting: int, waiting_bytes: int, incoming: int) -> bool:
        """Whether a message of ``incoming`` bytes of audio comes on top of too many messages,
        or too many bytes, waiting for vLLM (``waiting`` messages of ``waiting_bytes`` bytes)."""
        return (
            waiting >= self.inbound_queue_max
            or waiting_bytes + incoming > self.inbound_queue_max_bytes
        )

    def outbound_full(self, events: int, nbytes: int, incoming: int) -> bool:
        """Whether one more event of ``incoming`` bytes would pass the outbound bounds, with
        ``events`` events of ``nbytes`` bytes already waiting for the client (the relay's
        count): then the client stopped reading. An event alone never does, whatever its size.
        """
        return events >= self.outbound_queue_max or (
            events > 0 and nbytes + incoming > self.outbound_queue_max_bytes
        )


class AudioAhead:
    """How far one connection's audio runs ahead of real time, against ``bound_s``: each piece
    adds its duration and real time takes it away, never below zero (a pause earns no credit
    to burst later). Real-time streaming stays one chunk ahead."""

    __slots__ = ("_at", "ahead_s", "bound_s")

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.ahead_s = 0.0
        self._at: float | None = None

    def take(self, seconds: float, now: float) -> float:
        """Counts ``seconds`` of audio arriving at ``now``; returns how long the client must
        wait before it may send more (0 while within the bound)."""
        if self._at is not None:
            self.ahead_s = max(0.0, self.ahead_s - (now - self._at))
        self._at = now
        self.ahead_s += seconds
        return max(0.0, self.ahead_s - self.bound_s)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an event was refused and when the next one would be accepted."""

    limit: int
    window_seconds: float
    retry_in: float

    def details(self, kind: str) -> dict[str, Any]:
        """The ``rate_limited`` error's details: which limit, and when to retry."""
        return {
            "kind": kind,
            "limit": self.limit,
            "window_seconds": self.window_seconds,
            "retry_in": self.retry_in,
        }


def auth_failure_details(refusal: Refusal) -> dict[str, Any]:
    """The ``rate_limited`` details of a refused auth attempt."""
    return refusal.details("auth_failures")


class RollingWindow:
    """At most ``limit`` events in any ``window_seconds``; refused events do not count."""

    __slots__ = ("_times", "limit", "window_seconds")

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_seconds
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()

    def try_acquire(self, now: float) -> Refusal | None:
        """Counts one event at ``now``, or returns the refusal when the window is full."""
        self._expire(now)
        if len(self._times) >= self.limit:
            retry_in = round(self._times[0] + self.window_seconds - now, 3)
            return Refusal(self.limit, self.window_seconds, max(retry_in, 0.0))
        self._times.append(now)
        return None

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)


class AuthFailureLimiter:
    """Failed auth attempts per client address.

    Remembers at most ``max_addresses`` addresses (least recently failing forgotten first) so
    that a scan from many addresses cannot grow memory without bound.
    """

    def __init__(self, limit: int, window_seconds: float, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._by_address: OrderedDict[str, RollingWindow] = OrderedDict()

    def blocked(self, address: str, now: float) -> Refusal | None:
        """The refusal when ``address`` already used up its failures in the window."""
        window = self._by_address.get(address)
        if window is None or window.count(now) < self.limit:
            return None
        return window.try_acquire(now)

    def record_failure(self, address: str, now: float) -> None:
        window = self._by_address.pop(address, None)
        if window is None:
            window = RollingWindow(self.limit, self.window_seconds)
        window.try_acquire(now)
        self._by_address[address] = window
        while len(self._by_address) > self.max_addresses:
            self._by_address.popitem(last=False)


class MessageRates:
    """One connection's message and cancel rates. Each check returns True (within the rate),
    the details of a ``rate_limited`` refusal, or False once refusals keep coming (close)."""

    def __init__(self, limits: SessionLimits) -> None:
        self._messages = RollingWindow(limits.max_messages_per_window, limits.message_window_s)
        self._cancels = RollingWindow(limits.max_cancels_per_window, limits.cancel_window_s)
        self._refusals = RollingWindow(RATE_REFUSALS_BEFORE_CLOSE, limits.message_window_s)

    def message(self, now: float) -> dict[str, Any] | bool:
        return self._check(self._messages, "messages", now)

    def cancel(self, now: float) -> dict[str, Any] | bool:
        return self._check(self._cancels, "cancels", now)

    def _check(self, window: RollingWindow, kind: str, now: float) -> dict[str, Any] | bool:
        refusal = window.try_acquire(now)
        if refusal is None:
            return True
        if self._refusals.try_acquire(now) is not None:
            return False
        return refusal.details(kind)
