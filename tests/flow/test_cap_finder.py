"""The cap finder settles just under a peer's hard cap and stays there."""

from __future__ import annotations

import pytest

from fake_clock import FakeClock
from sluice.flow.cap_finder import CapFinder


def simulate(finder: CapFinder, clock: FakeClock, cap: float, seconds: float) -> list[int]:
    """Send at the finder's rate (1,000/s while unlimited) to a peer with a token bucket of
    `cap`/s and a tenth of a second of burst; return the throttles seen in each second."""
    tokens, burst = cap / 10, cap / 10
    end = clock.now + seconds
    throttles = [0] * int(seconds + 1)
    start = clock.now
    while clock.now < end:
        step = 1 / (finder.rate or 1000.0)
        clock.now += step
        tokens = min(burst, tokens + step * cap)
        if tokens >= 1:
            tokens -= 1
            finder.on_success()
        else:
            throttles[int(clock.now - start)] += 1
            finder.on_throttle()
    return throttles


def test_unlimited_until_the_first_throttle() -> None:
    finder = CapFinder(start=200, clock=FakeClock(1000.0))
    assert finder.rate == 0.0
    assert finder.on_success() == 0.0


@pytest.mark.parametrize("cap", [100, 70, 30, 140, 500])
def test_settles_under_the_cap_and_stops_being_throttled(cap: int) -> None:
    clock = FakeClock(1000.0)
    finder = CapFinder(start=200, clock=clock)
    throttles = simulate(finder, clock, cap, seconds=30)
    assert sum(throttles[-20:]) == 0, throttles
    assert 0.9 * cap <= finder.rate <= cap


def test_without_a_saturated_second_it_slows_down_and_keeps_looking() -> None:
    clock = FakeClock(1000.0)
    finder = CapFinder(start=200, clock=clock)
    clock.now = 1000.2  # no full second of history yet
    assert finder.on_throttle() == pytest.approx(170)
    assert finder.cap is None


def test_reprobes_after_a_quiet_spell() -> None:
    clock = FakeClock(1000.0)
    finder = CapFinder(start=200, reprobe_seconds=30, step=0.05, clock=clock)
    simulate(finder, clock, 100, seconds=10)
    settled = finder.rate
    assert finder.cap is not None
    clock.now += 31
    assert finder.on_success() == pytest.approx(settled * 1.05, rel=0.01)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CapFinder(start=0)
