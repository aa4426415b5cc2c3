"""The login throttle's pure core, on a hand-moved clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coact.relay.ratelimit import FailureWindow, LoginLimits


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_then_wait_for_the_oldest_failure_to_leave_the_window() -> None:
    clock = Ticks()
    window = FailureWindow(3, 60, clock)
    for _ in range(2):
        window.fail("a")
        clock.now += 10
    assert window.retry_after("a") == 0
    window.fail("a")  # failures at 1000, 1010, 1020
    assert window.retry_after("a") == pytest.approx(40)  # 1000 + 60 - 1020
    assert window.retry_after("b") == 0  # keys are independent
    clock.now = 1060
    assert window.retry_after("a") == 0  # the first failure has left the window
    window.fail("a")
    assert window.retry_after("a") == pytest.approx(10)


def test_reset_and_forgive() -> None:
    clock = Ticks()
    window = FailureWindow(2, 60, clock)
    window.fail("a")
    window.fail("a")
    assert window.retry_after("a") > 0
    window.forgive("a")
    assert window.retry_after("a") == 0
    window.fail("a")
    window.reset("a")
    assert window.retry_after("a") == 0
    assert len(window) == 0
    window.forgive("never-seen")  # harmless


def test_memory_is_bounded() -> None:
    clock = Ticks()
    window = FailureWindow(2, 60, clock, max_keys=3)
    for key in "abcd":
        window.fail(key)
    assert len(window) == 3
    window.fail("b")
    window.fail("b")
    window.fail("e")  # evicts the least recently failed key, c, not b
    assert window.retry_after("b") > 0


def test_expired_keys_are_dropped() -> None:
    clock = Ticks()
    window = FailureWindow(2, 60, clock)
    window.fail("a")
    clock.now += 61
    assert window.retry_after("a") == 0
    assert len(window) == 0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        FailureWindow(0, 60, Ticks())


def test_login_limits_count_account_and_address() -> None:
    clock = Ticks()
    limits = LoginLimits.create(per_account=2, per_address=3, window_s=900, clock=clock)
    limits.attempt("alice@example.com", "10.0.0.1")
    limits.attempt("alice@example.com", "10.0.0.1")
    assert limits.retry_after("alice@example.com", "10.0.0.9") == 900  # the account is throttled
    assert limits.retry_after("bob@example.com", "10.0.0.1") == 0
    limits.attempt("bob@example.com", "10.0.0.1")
    assert limits.retry_after("carol@example.com", "10.0.0.1") == 900  # now the address is
    limits.succeeded("alice@example.com", "10.0.0.1")
    assert limits.retry_after("alice@example.com", "10.0.0.2") == 0
    # Success took back only its own attempt from the address.
    assert limits.retry_after("carol@example.com", "10.0.0.1") == 0
    limits.attempt("carol@example.com", "10.0.0.1")
    assert limits.retry_after("dave@example.com", "10.0.0.1") == 900


def test_retry_after_is_rounded_up() -> None:
    clock = Ticks()
    limits = LoginLimits.create(1, 10, 60, clock)
    limits.attempt("a", "x")
    clock.now += 0.5
    assert limits.retry_after("a", "x") == 60  # 59.5 s rounds up


@given(st.lists(st.floats(min_value=0, max_value=30), max_size=40))
def test_never_more_than_limit_failures_pass_in_a_window(gaps: list[float]) -> None:
    clock = Ticks()
    window = FailureWindow(3, 60, clock)
    allowed: list[float] = []
    for gap in gaps:
        clock.now += gap
        if window.retry_after("k") == 0:
            allowed.append(clock.now)
            window.fail("k")
    for i, start in enumerate(allowed):
        assert sum(1 for t in allowed[i:] if t < start + 60) <= 3


def test_token_bucket_burst_then_rate_and_refilled_keys_are_forgotten() -> None:
    from coact.relay.ratelimit import TokenBuckets

    clock = Ticks()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)
    for _ in range(3):
        assert buckets.retry_after("u") == 0
        buckets.take("u")
    assert buckets.retry_after("u") == pytest.approx(0.5)  # one token per 0.5 s
    clock.now += 0.5
    assert buckets.retry_after("u") == 0
    buckets.take("u")
    assert buckets.retry_after("other") == 0
    clock.now += 10  # "u" is full again: the next take of another key forgets it
    buckets.take("other")
    assert len(buckets) == 1


def test_signup_limits_count_per_address_and_for_the_relay() -> None:
    from coact.relay.ratelimit import SignupLimits

    clock = Ticks()
    limits = SignupLimits.create(per_address=2, per_relay=3, window_s=60, clock=clock)
    limits.attempt("a")
    limits.attempt("a")
    assert limits.retry_after("a") == 60
    assert limits.retry_after("b") == 0
    limits.attempt("b")
    assert limits.retry_after("c") == 60  # the relay-wide window is full
    limits.withdraw("b")
    assert limits.retry_after("c") == 0
