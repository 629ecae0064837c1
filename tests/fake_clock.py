"""A clock that moves only when a test moves it, for the injectable `clock` parameters."""

from __future__ import annotations


class FakeClock:
    """Seconds, as `time.monotonic` gives them; starts at `now`.

    Examples:
        clock = FakeClock()
        bucket = TokenBucket(rate=10, burst=5, clock=clock)
        clock.advance(0.5)
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
