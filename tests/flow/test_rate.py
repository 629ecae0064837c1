"""Behaviour of the token bucket and the AIMD rate finder, driven by a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_clock import FakeClock
from sluice.flow.rate import AdaptiveRate, TokenBucket

TOLERANCE = 1e-6


# --- TokenBucket ---------------------------------------------------------------------------


def test_starts_full_and_allows_one_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, clock=FakeClock())
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert bucket.try_take(5)
    clock.advance(1000)
    assert bucket.available() == 5
    assert bucket.try_take(5)
    assert not bucket.try_take()


def test_steady_rate_after_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=10, clock=clock)
    sent = 0
    for _ in range(10_000):  # 10 s in 1 ms steps, always trying to send
        while bucket.try_take():
            sent += 1
        clock.advance(0.001)
    # burst at the start, then 100/s for 10 s (the last step's refill is not spent).
    assert 10 + 1000 - 1 <= sent <= 10 + 1000


def test_fractional_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.try_take(0.5)
    assert bucket.try_take(0.5)
    assert not bucket.try_take(0.5)
    clock.advance(0.5)
    assert bucket.try_take(0.5)


def test_try_take_of_nothing_always_succeeds() -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=FakeClock())
    assert bucket.try_take(1)
    assert bucket.try_take(0)


def test_reserve_goes_into_debt_and_queues_fifo() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert bucket.available() == -2
    assert not bucket.try_take()  # debt is owed to earlier reservations first
    clock.advance(0.5)
    assert bucket.available() == -1
    assert bucket.reserve() == 1.0  # queues behind the two still waiting


def test_debt_is_paid_off_by_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    assert bucket.reserve(3) == 0.5
    assert bucket.delay_for() == 0.75
    clock.advance(0.5)
    assert bucket.available() == 0
    clock.advance(0.25)
    assert bucket.try_take()


def test_reserve_more_than_burst_waits_for_the_excess() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert bucket.reserve(25) == 2.0
    clock.advance(2.0)
    assert bucket.available() == 0


def test_delay_for_does_not_take() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert bucket.delay_for(5) == 0.0
    assert bucket.available() == 5
    assert bucket.try_take(5)
    assert bucket.delay_for(2) == pytest.approx(0.2)
    assert bucket.delay_for(2) == pytest.approx(0.2)
    assert bucket.available() == 0


def test_more_than_burst_is_never_available() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert bucket.delay_for(6) == math.inf
    clock.advance(1000)
    assert not bucket.try_take(6)
    assert bucket.available() == 5


@given(
    rate=st.floats(0.01, 10_000),
    burst=st.floats(1, 1000),
    taken=st.floats(0, 1),
    wanted=st.floats(0, 1),
)
def test_waiting_delay_for_is_always_enough(
    rate: float, burst: float, taken: float, wanted: float
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    bucket.reserve(taken * burst)
    n = wanted * burst
    clock.advance(bucket.delay_for(n))
    assert bucket.try_take(n)


def test_rate_change_keeps_tokens_accrued_so_far() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    assert bucket.try_take(10)
    clock.advance(0.5)  # 5 tokens at the old rate
    bucket.rate = 1
    assert bucket.rate == 1
    assert bucket.available() == 5
    clock.advance(1)
    assert bucket.available() == 6


def test_rate_change_keeps_debt_and_repays_at_new_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock)
    bucket.reserve(11)  # 10 tokens of debt
    clock.advance(0.5)  # 5 repaid at 10/s
    bucket.rate = 1
    assert bucket.available() == pytest.approx(-5)
    assert bucket.delay_for() == pytest.approx(6)


def test_unlimited_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=0, burst=1, clock=clock)
    assert all(bucket.try_take(1000) for _ in range(100))
    assert bucket.reserve(1e9) == 0.0
    assert bucket.delay_for(1e9) == 0.0
    assert bucket.available() == math.inf


def test_leaving_unlimited_starts_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=5, burst=3, clock=clock)
    bucket.reserve(10)
    bucket.rate = 0
    assert bucket.try_take(100)
    bucket.rate = 5
    assert bucket.available() == 3


def test_clock_stepping_back_adds_nothing() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.try_take()
    clock.now = 50.0
    assert bucket.available() == 0
    clock.now = 50.5
    assert bucket.available() == 0.5


@pytest.mark.parametrize(
    ("rate", "burst", "name"),
    [
        (-1, 1, "rate"),
        (math.nan, 1, "rate"),
        (math.inf, 1, "rate"),
        (1, 0, "burst"),
        (1, -1, "burst"),
        (1, math.inf, "burst"),
    ],
)
def test_bucket_rejects_bad_arguments(rate: float, burst: float, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TokenBucket(rate=rate, burst=burst, clock=FakeClock())


def test_bucket_rejects_bad_amounts_and_rates() -> None:
    bucket = TokenBucket(rate=1, burst=1, clock=FakeClock())
    for method in (bucket.try_take, bucket.reserve, bucket.delay_for):
        with pytest.raises(ValueError, match="n must be"):
            method(-1)
        with pytest.raises(ValueError, match="n must be"):
            method(math.nan)
    with pytest.raises(ValueError, match="rate"):
        bucket.rate = -1
    assert bucket.available() == 1


# Each step: wait some time, then either reserve n or try to take n.
_steps = st.lists(
    st.tuples(st.floats(0, 2), st.floats(0.01, 1), st.booleans()), min_size=1, max_size=60
)


@given(rate=st.floats(0.1, 1000), burst=st.floats(1, 100), steps=_steps)
def test_reserve_never_lets_more_through_than_burst_plus_rate(
    rate: float, burst: float, steps: list[tuple[float, float, bool]]
) -> None:
    """From a full bucket, what is used by time T never exceeds burst + rate * T.

    ``n`` is a fraction of the burst (the bucket is meant for that), which lets us check the
    stronger form too: any window [a, b] sees at most burst + rate * (b - a).
    """
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    used: list[tuple[float, float]] = []  # (time the tokens are used, amount)
    last_reserved_use = 0.0
    for wait, fraction, use_reserve in steps:
        clock.advance(wait / rate)  # waits on the scale of one token's refill time
        n = fraction * burst
        if use_reserve:
            at = clock.now + bucket.reserve(n)
            assert at >= last_reserved_use - TOLERANCE  # FIFO: never ahead of earlier ones
            last_reserved_use = at
            used.append((at, n))
        elif bucket.try_take(n):
            used.append((clock.now, n))

    used.sort()
    times = [t for t, _ in used]
    amounts = [n for _, n in used]
    for j, end in enumerate(times):
        # Everything used up to and including time `end`, counted from the full start.
        through = sum(n for t, n in used if t <= end)
        assert through <= burst + rate * end + TOLERANCE * (1 + through)
        for i in range(j + 1):
            window = sum(amounts[k] for k in range(len(times)) if times[i] <= times[k] <= end)
            slack = TOLERANCE * (1 + window)
            assert window <= burst + rate * (end - times[i]) + slack


# --- AdaptiveRate --------------------------------------------------------------------------


def test_adaptive_starts_at_ceiling() -> None:
    adaptive = AdaptiveRate(ceiling=100, clock=FakeClock())
    assert adaptive.rate == 100


def test_throttles_halve_once_per_cooldown() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, cooldown=1.0, clock=clock)
    assert adaptive.on_throttle() == 50
    for _ in range(50):  # a window full of throttled answers counts once
        clock.advance(0.01)
        assert adaptive.on_throttle() == 50
    clock.now = 1.0
    assert adaptive.on_throttle() == 25
    clock.now = 1.5
    assert adaptive.on_throttle() == 25


def test_custom_decrease() -> None:
    adaptive = AdaptiveRate(ceiling=100, decrease=0.8, clock=FakeClock())
    assert adaptive.on_throttle() == pytest.approx(80)


def test_never_below_floor() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, floor=10, cooldown=1, clock=clock)
    rates = []
    for _ in range(10):
        rates.append(adaptive.on_throttle())
        clock.advance(1)
    assert rates[:4] == [50, 25, 12.5, 10]
    assert set(rates[3:]) == {10}


def test_success_grows_by_increase_per_second_up_to_ceiling() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, increase=10, clock=clock)
    adaptive.on_throttle()  # 50
    for _ in range(20):  # 2 s of successes every 100 ms
        clock.advance(0.1)
        adaptive.on_success()
    assert adaptive.rate == pytest.approx(70)
    for _ in range(100):
        clock.advance(0.1)
        assert adaptive.on_success() <= 100
    assert adaptive.rate == 100


def test_default_increase_is_a_twentieth_of_ceiling_per_second() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, clock=clock)
    adaptive.on_throttle()
    clock.advance(1)
    assert adaptive.on_success() == pytest.approx(55)


def test_time_spent_throttled_is_not_success() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, increase=10, cooldown=1, clock=clock)
    adaptive.on_throttle()  # 50 at t=0
    clock.now = 0.9
    adaptive.on_throttle()  # ignored for the rate, but not a success
    clock.now = 1.0
    assert adaptive.on_success() == pytest.approx(51)


def test_success_at_the_ceiling_stays_there() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=100, clock=clock)
    clock.advance(60)
    assert adaptive.on_success() == 100


def test_unlimited_until_first_throttle_then_starts_from_start() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(ceiling=0, start=200, cooldown=1, clock=clock)
    assert adaptive.rate == 0
    clock.advance(10)
    assert adaptive.on_success() == 0
    assert adaptive.on_throttle() == 200
    assert adaptive.on_throttle() == 200  # same cooldown window
    clock.advance(1)
    assert adaptive.on_throttle() == 100
    clock.advance(1)
    assert adaptive.on_success() == pytest.approx(110)  # default increase: start / 20
    clock.advance(100)
    assert adaptive.on_success() == pytest.approx(1110)  # no ceiling, never back to 0


@given(
    events=st.lists(st.tuples(st.floats(0, 5), st.booleans()), max_size=100),
    ceiling=st.floats(1, 10_000),
    floor_fraction=st.floats(0.001, 1),
)
def test_rate_always_between_floor_and_ceiling(
    events: list[tuple[float, bool]], ceiling: float, floor_fraction: float
) -> None:
    clock = FakeClock()
    floor = ceiling * floor_fraction
    adaptive = AdaptiveRate(ceiling=ceiling, floor=floor, clock=clock)
    for wait, throttled in events:
        clock.advance(wait)
        rate = adaptive.on_throttle() if throttled else adaptive.on_success()
        assert rate == adaptive.rate
        assert floor <= rate <= ceiling


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ceiling": -1}, "ceiling"),
        ({"ceiling": math.nan}, "ceiling"),
        ({"ceiling": 10, "floor": 0}, "floor"),
        ({"ceiling": 10, "floor": 11}, "floor"),
        ({"ceiling": 10, "increase": 0}, "increase"),
        ({"ceiling": 10, "decrease": 1}, "decrease"),
        ({"ceiling": 10, "decrease": 0}, "decrease"),
        ({"ceiling": 10, "cooldown": -1}, "cooldown"),
        ({"ceiling": 10, "start": 5}, "start"),
        ({"ceiling": 0}, "start"),
        ({"ceiling": 0, "start": 0.5}, "start"),
    ],
)
def test_adaptive_rejects_bad_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptiveRate(clock=FakeClock(), **kwargs)
