"""proxy.limits: rolling windows, the per-address auth failure limiter (time is passed in), and a
session's queue bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ProxyConfig
from proxy.limits import AudioAhead, AuthFailureLimiter, Refusal, RollingWindow, SessionLimits


def test_admits_up_to_the_limit_then_refuses() -> None:
    window = RollingWindow(3, 10.0)
    assert window.try_acquire(0.0) is None
    assert window.try_acquire(1.0) is None
    assert window.try_acquire(2.0) is None
    refusal = window.try_acquire(4.0)
    assert refusal == Refusal(limit=3, window_seconds=10.0, retry_in=6.0)
    assert window.count(4.0) == 3


def test_refused_events_do_not_count() -> None:
    window = RollingWindow(1, 10.0)
    assert window.try_acquire(0.0) is None
    for t in (1.0, 5.0, 9.9):
        assert window.try_acquire(t) is not None
    # Only the first (admitted) event occupies the window: free again once it expires.
    assert window.try_acquire(10.0) is None


def test_events_expire_after_the_window() -> None:
    window = RollingWindow(2, 5.0)
    assert window.try_acquire(0.0) is None
    assert window.try_acquire(3.0) is None
    assert window.try_acquire(4.99) is not None
    assert window.count(5.0) == 1
    assert window.try_acquire(5.0) is None
    assert window.try_acquire(7.0) is not None
    assert window.try_acquire(8.0) is None
    assert window.count(100.0) == 0


def test_retry_in_says_when_the_oldest_event_leaves() -> None:
    window = RollingWindow(2, 60.0)
    window.try_acquire(10.0)
    window.try_acquire(20.0)
    refusal = window.try_acquire(30.0)
    assert refusal is not None
    assert refusal.retry_in == pytest.approx(40.0)
    assert window.try_acquire(30.0 + refusal.retry_in) is None


def test_limit_and_window_are_reported() -> None:
    refusal = RollingWindow(1, 2.5)
    refusal.try_acquire(0.0)
    result = refusal.try_acquire(0.5)
    assert result is not None
    assert (result.limit, result.window_seconds) == (1, 2.5)
    assert result.retry_in == pytest.approx(2.0)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 6),
    window_seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    steps=st.lists(st.floats(0.0, 2.0, allow_nan=False), max_size=80),
)
def test_never_more_than_limit_in_any_window(
    limit: int, window_seconds: float, steps: list[float]
) -> None:
    window = RollingWindow(limit, window_seconds)
    now = 0.0
    admitted: list[float] = []
    for step in steps:
        now += step
        before = sum(1 for t in admitted if t > now - window_seconds)
        refusal = window.try_acquire(now)
        if refusal is None:
            admitted.append(now)
            # Any window ending at an admitted event holds at most `limit` admitted events.
            assert sum(1 for t in admitted if now - window_seconds < t <= now) <= limit
        else:
            # A refusal only happens when the window really is full, and says so truthfully.
            assert before == limit
            assert refusal.limit == limit
            assert refusal.window_seconds == window_seconds
            assert 0.0 <= refusal.retry_in <= window_seconds
        assert window.count(now) == sum(1 for t in admitted if t > now - window_seconds)
    # Check every window, not only those ending at an admission.
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + window_seconds) <= limit


# ---------------------------------------------------------------- AuthFailureLimiter


def test_blocks_after_limit_failures() -> None:
    limiter = AuthFailureLimiter(3, 60.0)
    for t in (0.0, 1.0, 2.0):
        assert limiter.blocked("10.0.0.1", t) is None
        limiter.record_failure("10.0.0.1", t)
    refusal = limiter.blocked("10.0.0.1", 3.0)
    assert refusal is not None
    assert refusal.limit == 3
    assert refusal.window_seconds == 60.0
    assert refusal.retry_in == pytest.approx(57.0)


def test_unknown_address_is_not_blocked() -> None:
    assert AuthFailureLimiter(1, 60.0).blocked("192.0.2.1", 0.0) is None


def test_addresses_are_independent() -> None:
    limiter = AuthFailureLimiter(2, 60.0)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("b", 0.0)
    assert limiter.blocked("a", 1.0) is not None
    assert limiter.blocked("b", 1.0) is None
    assert limiter.blocked("c", 1.0) is None


def test_block_expires_with_the_window() -> None:
    limiter = AuthFailureLimiter(2, 10.0)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("a", 4.0)
    assert limiter.blocked("a", 9.0) is not None
    # The first failure left the window: one more attempt is allowed.
    assert limiter.blocked("a", 10.0) is None
    assert limiter.blocked("a", 100.0) is None


def test_checking_while_blocked_does_not_extend_the_block() -> None:
    limiter = AuthFailureLimiter(1, 10.0)
    limiter.record_failure("a", 0.0)
    for t in (1.0, 5.0, 9.0):
        assert limiter.blocked("a", t) is not None
    assert limiter.blocked("a", 10.0) is None


def test_remembers_a_bounded_number_of_addresses() -> None:
    limiter = AuthFailureLimiter(1, 60.0, max_addresses=3)
    limiter.record_failure("first", 0.0)
    assert limiter.blocked("first", 0.1) is not None
    for address in ("x", "y", "z"):
        limiter.record_failure(address, 0.2)
    # "first" was the least recently failing address: forgotten, so no longer blocked.
    assert limiter.blocked("first", 0.3) is None
    for address in ("x", "y", "z"):
        assert limiter.blocked(address, 0.3) is not None


def test_recent_failure_keeps_an_address_remembered() -> None:
    limiter = AuthFailureLimiter(2, 60.0, max_addresses=2)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("b", 0.0)
    limiter.record_failure("a", 1.0)  # "a" is now the most recently failing address
    limiter.record_failure("c", 2.0)  # evicts "b", not "a"
    assert limiter.blocked("a", 3.0) is not None
    limiter.record_failure("b", 3.0)
    assert limiter.blocked("b", 3.0) is None  # "b" starts over with one failure


@settings(max_examples=200, deadline=None)
@given(
    max_addresses=st.integers(1, 5),
    failures=st.lists(st.integers(0, 20), max_size=60),
)
def test_memory_never_exceeds_max_addresses(max_addresses: int, failures: list[int]) -> None:
    limiter = AuthFailureLimiter(2, 60.0, max_addresses=max_addresses)
    for now, address in enumerate(failures):
        limiter.record_failure(f"198.51.100.{address}", float(now))
        assert len(limiter._by_address) <= max_addresses


@pytest.mark.parametrize(
    ("events", "nbytes", "incoming", "full"),
    [
        (0, 0, 10_000, False),  # one event alone, whatever its size
        (1, 0, 1000, False),
        (1, 1000, 1000, False),  # exactly the budget
        (1, 1000, 1001, True),
        (3, 0, 1, True),  # the event bound
        (2, 0, 1, False),
    ],
)
def test_outbound_full_on_either_bound(events: int, nbytes: int, incoming: int, full: bool) -> None:
    limits = SessionLimits.from_config(
        ProxyConfig(api_keys=("k",), outbound_queue_max=3, outbound_queue_max_bytes=2000)
    )
    assert limits.outbound_full(events, nbytes, incoming) is full


@pytest.mark.parametrize(
    ("waiting", "waiting_bytes", "incoming", "full"),
    [
        (0, 0, 1000, False),
        (1, 1000, 1000, False),  # exactly the budget
        (1, 1000, 1001, True),
        (3, 0, 0, True),  # the message bound
        (2, 0, 0, False),
    ],
)
def test_inbound_full_on_either_bound(
    waiting: int, waiting_bytes: int, incoming: int, full: bool
) -> None:
    limits = SessionLimits.from_config(
        ProxyConfig(api_keys=("k",), inbound_queue_max=3, inbound_queue_max_bytes=2000)
    )
    assert limits.inbound_full(waiting, waiting_bytes, incoming) is full


def test_audio_ahead_is_audio_minus_real_time_never_below_zero() -> None:
    ahead = AudioAhead(2.0)
    assert ahead.take(1.5, 10.0) == 0
    assert ahead.take(1.0, 10.0) == 0.5  # 2.5 s ahead of real time: wait half a second
    assert ahead.take(0.0, 10.5) == 0  # real time caught up
    assert ahead.take(1.0, 100.0) == 0  # a pause leaves nothing ahead, and no credit
    assert ahead.take(2.5, 100.0) == 1.5
