"""When the SMSC simulator's delayed work is due: answers, receipts and retries on 1 ms ticks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: Delayed answers and receipts are grouped into ticks of this many seconds, one loop timer
#: per tick: a timer per PDU would cost more than answering it.
TICK_SECONDS = 0.001


class Timeline:
    """Callbacks due at a loop time, fired in `TICK_SECONDS` buckets: one timer per bucket.
    A callback runs at the tick nearest its time, within half a tick of it.

    Within a bucket callbacks run in the order they were scheduled, so an answer scheduled
    before its receipt for the same tick goes out first. ``after`` runs once per bucket (the
    simulator's flush: every answer of the tick in one write per connection).
    """

    __slots__ = ("_after", "_buckets", "_handles", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, after: Callable[[], None]) -> None:
        self._loop = loop
        self._after = after
        self._buckets: dict[int, list[tuple[Callable[[Any], None], Any]]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}

    def at(self, when: float, callback: Callable[[Any], None], arg: Any) -> None:
        # The nearest tick, so that answers come on average after exactly the drawn latency
        # (each within half a tick of it) rather than always up to a tick late.
        tick = round(when / TICK_SECONDS)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = []
            self._handles[tick] = self._loop.call_at(tick * TICK_SECONDS, self._fire, tick)
        bucket.append((callback, arg))

    def _fire(self, tick: int) -> None:
        del self._handles[tick]
        for callback, arg in self._buckets.pop(tick):
            callback(arg)
        self._after()

    def cancel(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._buckets.clear()
