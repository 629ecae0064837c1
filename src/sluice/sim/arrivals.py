"""Arrivals per wall-clock second over the last few minutes, as every simulator reports them.

Examples:
    >>> arrivals = ArrivalCounts(since=1000)
    >>> arrivals.add(1000, 3)
    >>> arrivals.add(1002, 1)
    >>> arrivals.series(1002)
    [3, 0, 1]
"""

from __future__ import annotations

#: Seconds of per-second arrival counts kept: five minutes covers a demo or a benchmark run in
#: two fixed lists of 300 ints.
ARRIVAL_WINDOW_SECONDS = 300


class ArrivalCounts:
    """Arrivals per wall-clock second over the last `ARRIVAL_WINDOW_SECONDS`, in a ring.

    ``counts`` and ``stamps`` (the second each slot counts) are never replaced, so a caller
    on a per-message path may keep them and count inline as `add` does.
    """

    __slots__ = ("counts", "since", "stamps")

    def __init__(self, since: int) -> None:
        self.counts = [0] * ARRIVAL_WINDOW_SECONDS
        self.stamps = [-1] * ARRIVAL_WINDOW_SECONDS
        self.since = since

    def add(self, second: int, n: int) -> None:
        slot = second % ARRIVAL_WINDOW_SECONDS
        if self.stamps[slot] != second:
            self.stamps[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += n

    def series(self, now: int) -> list[int]:
        """Counts of each second from `since` (or the window's start) to ``now``, oldest first."""
        first = max(self.since, now - ARRIVAL_WINDOW_SECONDS + 1)
        return [
            self.counts[second % ARRIVAL_WINDOW_SECONDS]
            if self.stamps[second % ARRIVAL_WINDOW_SECONDS] == second
            else 0
            for second in range(first, now + 1)
        ]
