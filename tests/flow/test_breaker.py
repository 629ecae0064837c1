"""Behaviour of the circuit breaker through its whole cycle, driven by a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_clock import FakeClock
from sluice.flow.breaker import BreakerState, CircuitBreaker


def make(
    clock: FakeClock, threshold: int = 3, cooldown: float = 1.0, max_cooldown: float = 8.0
) -> CircuitBreaker:
    return CircuitBreaker(threshold, cooldown, max_cooldown, clock=clock)


def open_breaker(breaker: CircuitBreaker, threshold: int = 3) -> None:
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_starts_closed() -> None:
    breaker = make(FakeClock())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.retry_at() is None
    assert breaker.opened_count == 0


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock(100.0)
    breaker = make(clock, threshold=3, cooldown=5)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_at() == 105.0
    assert breaker.opened_count == 1


def test_success_resets_the_failure_count() -> None:
    breaker = make(FakeClock(), threshold=3)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.opened_count == 0


def test_threshold_of_one_opens_on_first_failure() -> None:
    breaker = make(FakeClock(), threshold=1)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_full_cycle_closed_open_half_open_closed() -> None:
    clock = FakeClock()
    breaker = make(clock, cooldown=2)
    open_breaker(breaker)
    clock.advance(1.999)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.retry_at() is None
    assert breaker.allow()  # the probe
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert breaker.opened_count == 1
    # Closing starts the failure count afresh.
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_allow_moves_open_to_half_open_without_reading_state() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(1)
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_only_one_probe_at_a_time() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(1)
    assert breaker.allow()
    clock.advance(100)  # however long the probe takes
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    assert breaker.state is BreakerState.HALF_OPEN


def test_probe_failure_doubles_cooldown_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = make(clock, cooldown=1, max_cooldown=5)
    open_breaker(breaker)
    cooldowns = []
    for _ in range(5):
        retry_at = breaker.retry_at()
        assert retry_at is not None
        clock.now = retry_at
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        reopened_at = breaker.retry_at()
        assert reopened_at is not None
        cooldowns.append(reopened_at - clock.now)
    assert cooldowns == [2, 4, 5, 5, 5]
    assert breaker.opened_count == 6


def test_probe_success_resets_the_cooldown() -> None:
    clock = FakeClock()
    breaker = make(clock, cooldown=1, max_cooldown=8)
    open_breaker(breaker)
    for _ in range(3):  # cooldown grows to 8
        clock.advance(100)
        assert breaker.allow()
        breaker.record_failure()
    clock.advance(100)
    assert breaker.allow()
    breaker.record_success()
    open_breaker(breaker)
    assert breaker.retry_at() == clock.now + 1


def test_release_probe_lets_another_probe_through() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(1)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release_probe()  # e.g. the probe was cancelled before it was sent
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_release_probe_outside_half_open_changes_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.release_probe()
    assert breaker.state is BreakerState.CLOSED
    open_breaker(breaker)
    breaker.release_probe()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_late_results_while_open_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock, cooldown=4)
    open_breaker(breaker)
    clock.advance(1)
    breaker.record_failure()  # requests sent before the breaker opened
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_at() == 4
    assert breaker.opened_count == 1


def test_results_in_half_open_without_a_probe_are_ignored() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(1)
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.opened_count == 1
    assert breaker.allow()


_ops = st.lists(
    st.tuples(st.sampled_from(["allow", "success", "failure", "release"]), st.floats(0, 3)),
    max_size=200,
)


@given(ops=_ops, threshold=st.integers(1, 4))
def test_random_use_keeps_one_probe_and_bounded_cooldowns(
    ops: list[tuple[str, float]], threshold: int
) -> None:
    clock = FakeClock()
    breaker = make(clock, threshold=threshold, cooldown=0.5, max_cooldown=4)
    probe_out = False
    opened = 0
    for op, wait in ops:
        clock.advance(wait)
        before = breaker.state
        if before is not BreakerState.HALF_OPEN:
            probe_out = False
        if op == "allow":
            allowed = breaker.allow()
            if before is BreakerState.HALF_OPEN:
                assert allowed is not probe_out  # one probe at a time
                probe_out = True
            else:
                assert allowed is (before is BreakerState.CLOSED)
        elif op == "success":
            breaker.record_success()
            if before is BreakerState.HALF_OPEN and probe_out:
                assert breaker.state is BreakerState.CLOSED
        elif op == "failure":
            breaker.record_failure()
            if before is BreakerState.HALF_OPEN and probe_out:
                assert breaker.state is BreakerState.OPEN
        else:
            breaker.release_probe()
        if op != "allow":
            probe_out = False
        after = breaker.state
        if after is BreakerState.OPEN:
            retry_at = breaker.retry_at()
            assert retry_at is not None
            assert clock.now < retry_at <= clock.now + 4
            opened += before is not BreakerState.OPEN
        else:
            assert breaker.retry_at() is None
        assert breaker.opened_count == opened


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 1, 2), "failure_threshold"),
        ((1.5, 1, 2), "failure_threshold"),
        ((True, 1, 2), "failure_threshold"),
        ((3, 0, 2), "cooldown_seconds"),
        ((3, math.inf, math.inf), "cooldown_seconds"),
        ((3, math.nan, 2), "cooldown_seconds"),
        ((3, 2, 1), "max_cooldown_seconds"),
        ((3, 1, math.inf), "max_cooldown_seconds"),
    ],
)
def test_rejects_bad_arguments(args: tuple[float, float, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CircuitBreaker(*args, clock=FakeClock())  # type: ignore[arg-type]


def test_its_own_opening_is_reported_with_the_cooldown() -> None:
    clock = FakeClock()
    opened: list[float] = []
    breaker = CircuitBreaker(1, 2.0, 8.0, clock=clock, on_open=opened.append)
    breaker.record_failure()
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_failure()  # the probe failed: reopened with the cooldown doubled
    assert opened == [2.0, 4.0]


def test_trip_opens_for_news_from_elsewhere_without_reporting_it() -> None:
    clock = FakeClock()
    opened: list[float] = []
    breaker = CircuitBreaker(3, 1.0, 8.0, clock=clock, on_open=opened.append)
    breaker.record_failure()
    assert breaker.trip(5.0)
    assert (breaker.state, breaker.retry_at(), opened) == (BreakerState.OPEN, 5.0, [])
    assert not breaker.trip(2.0)  # already open: the later retry time stays
    assert breaker.retry_at() == 5.0
    assert not breaker.trip(9.0)
    assert breaker.retry_at() == 9.0
    clock.advance(9.0)
    assert breaker.allow()  # then probes like any open breaker
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # the count restarted at the trip
    assert not breaker.trip(math.nan) and not breaker.trip(0)
