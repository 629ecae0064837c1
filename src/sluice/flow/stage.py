"""The stage primitive: a bounded queue, a fixed number of workers, a handler that takes batches.

A producer that finds the queue full waits (`put`) or is told no (`offer`): that is how
backpressure travels upstream instead of memory growing without bound. Each worker takes
everything queued up to `max_batch` and hands it to the handler at once — one transaction,
one syscall, one encode for many items.

Examples:
    stage = Stage("completions", journal_write, capacity=10_000, max_batch=1_000)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(stage.run())
        await stage.put(item)
        stage.close()          # run() returns once everything queued is handled

Warning: a handler that raises has its batch retried `retries` times, `retry_delay` apart,
and then dropped (and logged). Hand a stage only work that is safe to lose that way — for the
journal, a dropped completion leaves the message leased, and the lease sweeper requeues it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")
log = logging.getLogger("sluice.stage")


class StageStats(msgspec.Struct, frozen=True):
    name: str
    depth: int
    capacity: int
    width: int
    #: Items and batches handled since start.
    processed: int
    batches: int
    dropped: int
    #: Seconds workers spent in the handler, and the total queue wait of handled items.
    busy_seconds: float
    wait_seconds: float
    max_wait_seconds: float


class StageClosed(Exception):
    """The stage no longer takes items."""


class Stage(Generic[T]):
    def __init__(
        self,
        name: str,
        handler: Callable[[list[T]], Awaitable[None]],
        *,
        capacity: int,
        width: int = 1,
        max_batch: int = 1000,
        retries: int = 3,
        retry_delay: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or width < 1 or max_batch < 1:
            raise ValueError(f"stage {name}: capacity, width and max_batch must be >= 1")
        self.name = name
        self._handler = handler
        self._capacity = capacity
        self._width = width
        self._max_batch = max_batch
        self._retries = retries
        self._retry_delay = retry_delay
        self._clock = clock
        self._items: deque[tuple[float, T]] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False
        self._processed = 0
        self._batches = 0
        self._dropped = 0
        self._busy = 0.0
        self._wait = 0.0
        self._max_wait = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        """Queue an item if there is room; False when full."""
        if self._closed:
            raise StageClosed(f"stage {self.name} is closed")
        if len(self._items) >= self._capacity:
            return False
        self._items.append((self._clock(), item))
        self._not_empty.set()
        if len(self._items) >= self._capacity:
            self._not_full.clear()
        return True

    async def put(self, item: T) -> None:
        """Queue an item, waiting while the stage is full."""
        while not self.offer(item):
            await self._not_full.wait()

    def close(self) -> None:
        """Take no more items; workers finish what is queued, then `run` returns."""
        self._closed = True
        self._not_empty.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._width):
                tg.create_task(self._work())

    async def _work(self) -> None:
        while True:
            if not self._items:
                if self._closed:
                    return
                self._not_empty.clear()
                await self._not_empty.wait()
                continue
            now = self._clock()
            n = min(len(self._items), self._max_batch)
            batch = []
            oldest = now
            for _ in range(n):
                put_at, item = self._items.popleft()
                oldest = min(oldest, put_at)
                self._wait += now - put_at
                batch.append(item)
            self._max_wait = max(self._max_wait, now - oldest)
            if len(self._items) < self._capacity:
                self._not_full.set()
            await self._handle(batch)
            self._busy += self._clock() - now

    async def _handle(self, batch: list[T]) -> None:
        for attempt in range(self._retries + 1):
            try:
                await self._handler(batch)
            except Exception:
                if attempt == self._retries:
                    log.exception(
                        "stage %s dropped a batch of %d after %d tries",
                        self.name,
                        len(batch),
                        attempt + 1,
                    )
                    self._dropped += len(batch)
                    return
                log.warning("stage %s handler failed; retrying", self.name, exc_info=True)
                await asyncio.sleep(self._retry_delay * (attempt + 1))
            else:
                self._processed += len(batch)
                self._batches += 1
                return

    def stats(self) -> StageStats:
        return StageStats(
            self.name,
            len(self._items),
            self._capacity,
            self._width,
            self._processed,
            self._batches,
            self._dropped,
            self._busy,
            self._wait,
            self._max_wait,
        )
