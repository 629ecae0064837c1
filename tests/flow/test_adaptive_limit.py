"""Behaviour of the adaptive concurrency limit (AIMD on response time and loop lag), driven by a
fake clock: no sleeps, every interval ends when the test moves the clock past it."""

from __future__ import annotations

from typing import Any

from fake_clock import FakeClock
from sluice.flow.adaptive_limit import SHEDDING_HOLD_SECONDS, AdaptiveLimit, LimitStats

#: The interval every test uses, in seconds.
INTERVAL = 0.1


def make_limit(clock: FakeClock, **settings: Any) -> AdaptiveLimit:
    """A limit of 10 (bounds 1..100) on `clock`, fair share off unless a test turns it on."""
    options: dict[str, Any] = {
        "initial": 10,
        "minimum": 1,
        "maximum": 100,
        "interval": INTERVAL,
        "fair_share_from": 1.0,
    }
    return AdaptiveLimit(**(options | settings), clock=clock)


def acquire(limit: AdaptiveLimit, n: int, key: str = "a", urgent: bool = False) -> list[bool]:
    return [limit.try_acquire(key, urgent) for _ in range(n)]


def release(limit: AdaptiveLimit, n: int, started: float, key: str = "a") -> None:
    for _ in range(n):
        limit.release(key, started)


def end_interval(limit: AdaptiveLimit, clock: FakeClock) -> None:
    """Move past the current interval's end and let the limit notice (a lag sample of 0 s,
    which keeps the interval's mean lag at 0 only if it held no other sample)."""
    clock.advance(INTERVAL)
    limit.observe_lag(0.0)


# ---------------------------------------------------------------------------------- admission


def test_admits_up_to_the_limit_then_refuses() -> None:
    limit = make_limit(FakeClock(), initial=4)
    assert acquire(limit, 5) == [True] * 4 + [False]
    stats = limit.stats()
    assert (stats.in_flight, stats.admitted, stats.shed) == (4, 4, 1)


def test_a_release_frees_a_slot() -> None:
    limit = make_limit(FakeClock(), initial=2)
    assert acquire(limit, 3) == [True, True, False]
    limit.release("a", started=0.0)
    assert acquire(limit, 2) == [True, False]


def test_urgent_requests_pass_the_limit_up_to_the_hard_limit() -> None:
    limit = make_limit(FakeClock(), initial=4, urgent_factor=2.0)
    assert acquire(limit, 4) == [True] * 4
    assert not limit.try_acquire("a")
    assert acquire(limit, 5, urgent=True) == [True] * 4 + [False]  # hard limit: 4 * 2
    assert limit.stats().in_flight == 8


def test_urgent_request_is_not_refused_below_the_limit_when_it_passes_above_it() -> None:
    """An urgent request of a tenant over its fair share is admitted once the limit is full
    (up to the hard limit); it must not be refused while there is still room under it."""
    limit = make_limit(FakeClock(), initial=10, fair_share_from=0.5)
    assert acquire(limit, 5, key="a") == [True] * 5
    assert limit.try_acquire("b")
    assert limit.try_acquire("a", urgent=True), "refused at 6 of 10 in flight"


# ------------------------------------------------------------------------- response-time target


def test_latency_over_target_cuts_multiplicatively_at_the_end_of_the_interval() -> None:
    clock = FakeClock()
    limit = make_limit(clock, latency_target=0.5, decrease=0.8)
    assert limit.try_acquire("a")
    clock.advance(INTERVAL / 2)
    limit.release("a", started=clock.now - 0.6)
    assert limit.limit == 10  # the interval is not over yet
    end_interval(limit, clock)
    assert limit.limit == 8
    assert limit.stats().latency_ms == 600.0

    assert limit.try_acquire("a")
    limit.release("a", started=clock.now - 0.6)
    end_interval(limit, clock)
    assert limit.limit == 6  # 8 * 0.8 = 6.4: multiplicative, not 8 - 2
    assert limit.stats().decreases == 2


def test_latency_is_judged_at_its_quantile_not_by_one_outlier() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=100, maximum=100, latency_target=0.5, quantile=0.99)
    for started in [clock.now - 0.01] * 100 + [clock.now - 0.9]:
        assert limit.try_acquire("a")
        limit.release("a", started)
    end_interval(limit, clock)
    assert limit.stats().decreases == 0


def test_met_target_with_the_limit_used_raises_it_additively() -> None:
    clock = FakeClock()
    limit = make_limit(clock, increase=4.0)
    assert all(acquire(limit, 8))  # 80 % of the limit in use at once
    release(limit, 8, started=clock.now)
    end_interval(limit, clock)
    assert limit.limit == 14

    assert all(acquire(limit, 12))  # 80 % of 14 is 11.2
    release(limit, 12, started=clock.now)
    end_interval(limit, clock)
    assert limit.limit == 18  # + 4 again: additive
    assert limit.stats().increases == 2


def test_an_unused_limit_is_not_raised() -> None:
    clock = FakeClock()
    limit = make_limit(clock)
    for _ in range(50):  # many requests, but never more than 7 of 10 at once
        assert all(acquire(limit, 7))
        release(limit, 7, started=clock.now)
    end_interval(limit, clock)
    assert limit.limit == 10
    assert limit.stats().increases == 0


# ------------------------------------------------------------------------------ loop-lag target


def test_loop_lag_over_target_cuts_the_limit() -> None:
    clock = FakeClock()
    limit = make_limit(clock, lag_target=0.02, decrease=0.5)
    assert all(acquire(limit, 2))
    limit.observe_lag(0.05)
    clock.advance(INTERVAL)
    limit.observe_lag(0.05)
    assert limit.limit == 5
    assert limit.stats().loop_lag_ms == 50.0


def test_loop_lag_is_averaged_so_one_late_timer_does_not_cut() -> None:
    clock = FakeClock()
    limit = make_limit(clock, lag_target=0.02)
    assert limit.try_acquire("a")
    limit.observe_lag(0.1)
    for _ in range(8):
        limit.observe_lag(0.0)
    end_interval(limit, clock)  # mean of ten samples: 10 ms
    assert limit.stats().decreases == 0
    assert limit.stats().loop_lag_ms == 10.0


def test_loop_lag_cuts_while_refusals_are_fewer_than_admitted_times_the_ratio() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=2, lag_target=0.02, refusal_ratio=8.0, decrease=0.5)
    assert all(acquire(limit, 2))
    assert not any(acquire(limit, 15))  # 15 < 2 admitted * 8
    clock.advance(INTERVAL)
    limit.observe_lag(0.05)
    assert limit.stats().decreases == 1


def test_loop_lag_does_not_cut_when_refusals_outnumber_admitted_times_the_ratio() -> None:
    """The loop is late with refusals, which admitting less would not make cheaper: the limit
    is raised as if the target were met, since it was used."""
    clock = FakeClock()
    limit = make_limit(clock, initial=2, lag_target=0.02, refusal_ratio=8.0, increase=4.0)
    assert all(acquire(limit, 2))
    assert not any(acquire(limit, 17))  # 17 > 2 admitted * 8
    release(limit, 2, started=clock.now)
    clock.advance(INTERVAL)
    limit.observe_lag(0.05)
    stats = limit.stats()
    assert (stats.decreases, stats.increases, stats.limit) == (0, 1, 6)


def test_a_missed_latency_target_does_not_cut_when_refusals_outnumber_either() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=2, latency_target=0.5, refusal_ratio=8.0)
    assert all(acquire(limit, 2))
    assert not any(acquire(limit, 17))
    limit.release("a", started=clock.now - 0.9)
    end_interval(limit, clock)
    assert limit.stats().decreases == 0
    assert limit.limit > 2


def test_an_interval_that_answered_nothing_does_not_raise_the_limit() -> None:
    """A stalled journal: the limit is full and nothing comes back. No response time says
    the target is met, so no more is admitted into the stall."""
    clock = FakeClock()
    limit = make_limit(clock, initial=4)
    assert all(acquire(limit, 4))
    end_interval(limit, clock)
    end_interval(limit, clock)
    assert (limit.stats().increases, limit.limit) == (0, 4)


# ---------------------------------------------------------------------------------- fair share


def test_a_key_alone_may_use_the_whole_limit() -> None:
    limit = make_limit(FakeClock(), fair_share_from=0.5)
    assert acquire(limit, 11, key="a") == [True] * 10 + [False]


def test_two_keys_share_the_limit_once_half_of_it_is_in_use() -> None:
    limit = make_limit(FakeClock(), fair_share_from=0.5)
    assert all(acquire(limit, 5, key="a"))
    assert limit.try_acquire("b")  # a newcomer gets in
    assert not limit.try_acquire("a")  # a holds its equal share of 10 among 2 keys
    assert acquire(limit, 5, key="b") == [True] * 4 + [False]
    assert limit.stats().in_flight == 10


def test_a_key_that_released_everything_no_longer_counts_for_the_share() -> None:
    limit = make_limit(FakeClock(), fair_share_from=0.5)
    assert all(acquire(limit, 5, key="a"))
    assert limit.try_acquire("b")
    limit.release("b", started=0.0)
    assert all(acquire(limit, 5, key="a"))  # alone again: the whole limit


# ---------------------------------------------------------------------------------- bounds


def test_initial_limit_is_clamped_to_the_bounds() -> None:
    clock = FakeClock()
    assert make_limit(clock, initial=1, minimum=4).limit == 4
    assert make_limit(clock, initial=500, maximum=100).limit == 100


def test_cuts_stop_at_the_minimum() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=5, minimum=4, decrease=0.5, latency_target=0.5)
    for _ in range(3):
        assert limit.try_acquire("a")
        limit.release("a", started=clock.now - 1.0)
        end_interval(limit, clock)
    assert limit.limit == 4


def test_raises_stop_at_the_maximum() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=8, maximum=10, increase=4.0)
    for _ in range(3):
        n = limit.limit
        assert all(acquire(limit, n))
        release(limit, n, started=clock.now)
        end_interval(limit, clock)
    assert limit.limit == 10


# ---------------------------------------------------------------------------------- shedding


def test_shedding_holds_for_a_second_after_the_last_refusal() -> None:
    clock = FakeClock(100.0)
    limit = make_limit(clock, initial=1, maximum=1)  # held at 1, so refusals go on
    assert not limit.shedding()
    assert limit.try_acquire("a")
    assert not limit.shedding()  # admitting is not shedding
    assert not limit.try_acquire("a")
    assert limit.shedding()
    clock.now = 100.0 + SHEDDING_HOLD_SECONDS * 0.9
    assert limit.shedding()
    assert not limit.try_acquire("a")  # a new refusal renews the hold
    clock.now = 100.0 + SHEDDING_HOLD_SECONDS * 1.5
    assert limit.shedding()
    clock.now = 100.0 + SHEDDING_HOLD_SECONDS * 2.0
    assert not limit.shedding()


# ---------------------------------------------------------------------------------- stats


def test_stats_is_a_snapshot_of_the_limit() -> None:
    clock = FakeClock()
    limit = make_limit(clock, initial=2, latency_target=0.5, lag_target=0.02, decrease=0.5)
    assert acquire(limit, 3) == [True, True, False]
    limit.release("a", started=clock.now - 0.25)
    limit.observe_lag(0.004)
    clock.advance(INTERVAL)
    limit.observe_lag(0.002)  # ends the interval: p99 250 ms, mean lag 3 ms, limit used
    before = limit.stats()
    assert before == LimitStats(
        limit=6,
        in_flight=1,
        admitted=2,
        shed=1,
        shedding=True,
        latency_ms=250.0,
        loop_lag_ms=3.0,
        increases=1,
        decreases=0,
    )
    limit.release("a", started=clock.now)
    assert before.in_flight == 1  # a frozen value, not a view
    assert limit.stats().in_flight == 0
