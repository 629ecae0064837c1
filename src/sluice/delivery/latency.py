"""Send latencies of one channel, counted into buckets as they happen and read at scrape time.

A prometheus_client Histogram takes a lock for every observation; a channel runner observes
every answer on its hot path, so it counts into plain bucket lists instead (about 0.2 µs an
observation) and shows them as a frozen `LatencyStats` in its `stats()`.

Examples:
    >>> histogram = LatencyHistogram((0.01, 0.1))
    >>> for seconds in (0.005, 0.01, 0.05, 3.0):
    ...     histogram.observe(seconds)
    >>> histogram.stats().counts, histogram.stats().observations
    ((2, 1, 1), 4)
"""

from __future__ import annotations

import bisect

import msgspec

#: Upper bounds (seconds) of the send-latency buckets.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LatencyStats(msgspec.Struct, frozen=True):
    """Observations per bucket (upper bound inclusive; one more, the last, for +Inf) and the
    sum of the observed seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def observations(self) -> int:
        return sum(self.counts)


class LatencyHistogram:
    """Observations counted per bucket, with their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = SEND_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def stats(self) -> LatencyStats:
        return LatencyStats(self.bounds, tuple(self.counts), self.total)
