"""Send slots of one channel, handed out by priority: the `width` limit and the urgent reserve.

A channel claims a little ahead of what it can send (so the next claim's commit overlaps the
current sends); claimed messages then queue here for a slot. Waiters are served by priority
and then by arrival, so an urgent message claimed after a prefetched bulk batch still goes
first, and lower lanes never hold more than `width - reserve` slots.

Examples:
    slots = PrioritySlots(width=10, reserve=1)
    await slots.acquire(Priority.BULK)
    ...
    slots.release(Priority.BULK)

Warning: waiting is not bounded here; the runner bounds it by claiming at most
`width + prefetch` messages.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from sluice.model import Priority

_URGENT = int(Priority.URGENT)


class PrioritySlots:
    def __init__(self, width: int, reserve: int) -> None:
        if width < 1 or not 0 <= reserve < width:
            raise ValueError(
                f"slots: need width >= 1 and 0 <= reserve < width, got {width}, {reserve}"
            )
        self.width = width
        self.reserve = reserve
        self.in_use = 0
        self.in_use_non_urgent = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def _can_take(self, priority: int) -> bool:
        if self.in_use >= self.width:
            return False
        return priority == _URGENT or self.in_use_non_urgent < self.width - self.reserve

    def _take(self, priority: int) -> None:
        self.in_use += 1
        if priority != _URGENT:
            self.in_use_non_urgent += 1

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiters if not f.done())

    def try_acquire(self, priority: int) -> bool:
        """Take a slot if one is free now and nobody waits for one."""
        if not self._waiters and self._can_take(priority):
            self._take(priority)
            return True
        return False

    async def acquire(self, priority: int) -> None:
        if not self._waiters and self._can_take(priority):
            self._take(priority)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(priority)  # granted just as we were cancelled: give it back
            raise

    def release(self, priority: int) -> None:
        self.in_use -= 1
        if priority != _URGENT:
            self.in_use_non_urgent -= 1
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            priority, _, future = waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(waiters)
                continue
            if not self._can_take(priority):
                return
            heapq.heappop(waiters)
            self._take(priority)
            future.set_result(None)
