"""The stage primitive: batching, bounded capacity, draining close, retries, stats, width.

Synchronisation is by events and by the order in which asyncio runs ready tasks; `wait_for`
timeouts only bound a failure so that a broken stage fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sluice.flow.stage import Stage, StageClosed

BOUND = 5.0  # seconds: only reached when the stage under test is broken


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A handler that records its batches and can hold its first call until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        if not hold_first:
            self.release.set()

    async def __call__(self, batch: list[int]) -> None:
        self.batches.append(list(batch))
        self.entered.set()
        if len(self.batches) == 1:
            await self.release.wait()

    @property
    def items(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


async def run_until_drained(stage: Stage[int], task: asyncio.Task[None]) -> None:
    stage.close()
    await asyncio.wait_for(task, BOUND)


async def test_items_queued_while_the_handler_is_busy_are_handled_together() -> None:
    handler = Recorder(hold_first=True)
    stage: Stage[int] = Stage("s", handler, capacity=100, max_batch=100)
    task = asyncio.ensure_future(stage.run())
    await stage.put(0)
    await handler.entered.wait()  # the worker holds [0]
    for i in range(1, 8):
        await stage.put(i)
    assert len(stage) == 7
    handler.release.set()
    await run_until_drained(stage, task)
    assert handler.batches == [[0], [1, 2, 3, 4, 5, 6, 7]]


async def test_batches_never_exceed_max_batch() -> None:
    handler = Recorder()
    stage: Stage[int] = Stage("s", handler, capacity=100, max_batch=3)
    for i in range(10):
        assert stage.offer(i)
    stage.close()
    await asyncio.wait_for(stage.run(), BOUND)
    assert handler.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    stats = stage.stats()
    assert (stats.processed, stats.batches, stats.dropped, stats.depth) == (10, 4, 0, 0)


async def test_offer_says_no_when_full() -> None:
    stage: Stage[int] = Stage("s", Recorder(), capacity=3)
    assert [stage.offer(i) for i in range(5)] == [True, True, True, False, False]
    assert len(stage) == 3
    assert stage.stats().depth == 3
    assert stage.stats().capacity == 3


async def test_put_waits_until_there_is_room() -> None:
    put_done_at_second_batch: list[bool] = []
    handler = Recorder(hold_first=True)

    async def watching(batch: list[int]) -> None:
        if handler.batches:  # every call after the first
            put_done_at_second_batch.append(blocked_put.done())
        await handler(batch)

    stage: Stage[int] = Stage("s", watching, capacity=2, max_batch=10)
    task = asyncio.ensure_future(stage.run())
    await stage.put(0)
    await handler.entered.wait()  # the worker holds [0]; the queue is empty
    assert stage.offer(1)
    assert stage.offer(2)
    assert not stage.offer(3)
    blocked_put = asyncio.ensure_future(stage.put(3))
    # The put runs before the worker resumes (tasks run in the order they became ready), finds
    # the stage full and waits; the worker then takes [1, 2], which wakes the put.
    handler.release.set()
    await asyncio.wait_for(blocked_put, BOUND)
    await run_until_drained(stage, task)
    assert handler.batches == [[0], [1, 2], [3]]
    assert put_done_at_second_batch[0] is False  # 3 was not queued while the stage was full


async def test_many_blocked_producers_all_get_in() -> None:
    handler = Recorder(hold_first=True)
    stage: Stage[int] = Stage("s", handler, capacity=2, max_batch=2)
    task = asyncio.ensure_future(stage.run())
    await stage.put(0)
    await handler.entered.wait()
    producers = [asyncio.ensure_future(stage.put(i)) for i in range(1, 21)]
    handler.release.set()
    await asyncio.wait_for(asyncio.gather(*producers), BOUND)
    await run_until_drained(stage, task)
    assert sorted(handler.items) == list(range(21))
    assert all(len(b) <= 2 for b in handler.batches)


async def test_close_drains_what_is_queued_then_run_returns() -> None:
    handler = Recorder()
    stage: Stage[int] = Stage("s", handler, capacity=100, max_batch=4, width=2)
    for i in range(10):
        stage.offer(i)
    stage.close()
    await asyncio.wait_for(stage.run(), BOUND)
    assert sorted(handler.items) == list(range(10))
    assert stage.stats().processed == 10
    assert len(stage) == 0


async def test_close_of_an_idle_stage_ends_every_worker() -> None:
    handler = Recorder()
    stage: Stage[int] = Stage("s", handler, capacity=10, width=3)
    task = asyncio.ensure_future(stage.run())
    await stage.put(1)
    await handler.entered.wait()
    await run_until_drained(stage, task)
    assert handler.batches == [[1]]


async def test_a_closed_stage_takes_nothing() -> None:
    stage: Stage[int] = Stage("s", Recorder(), capacity=10)
    stage.close()
    with pytest.raises(StageClosed, match="stage s is closed"):
        stage.offer(1)
    with pytest.raises(StageClosed):
        await stage.put(1)
    assert len(stage) == 0


async def test_a_producer_blocked_on_a_full_stage_hears_of_close() -> None:
    handler = Recorder(hold_first=True)
    stage: Stage[int] = Stage("s", handler, capacity=1)
    task = asyncio.ensure_future(stage.run())
    await stage.put(0)
    await handler.entered.wait()
    assert stage.offer(1)
    blocked = asyncio.ensure_future(stage.put(2))
    stage.close()
    handler.release.set()
    with pytest.raises(StageClosed):
        await asyncio.wait_for(blocked, BOUND)
    await asyncio.wait_for(task, BOUND)
    assert handler.items == [0, 1]


def failing(times: int, calls: list[list[int]]) -> Callable[[list[int]], Awaitable[None]]:
    async def handler(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) <= times:
            raise RuntimeError("peer down")

    return handler


async def test_a_failing_handler_is_retried() -> None:
    calls: list[list[int]] = []
    stage: Stage[int] = Stage("s", failing(2, calls), capacity=10, retries=3, retry_delay=0)
    stage.offer(1)
    stage.offer(2)
    stage.close()
    await asyncio.wait_for(stage.run(), BOUND)
    assert calls == [[1, 2]] * 3
    stats = stage.stats()
    assert (stats.processed, stats.batches, stats.dropped) == (2, 1, 0)


async def test_a_batch_that_keeps_failing_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[list[int]] = []
    gave_up = asyncio.Event()

    async def handler(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) <= 3:  # the first batch's three tries fail
            if len(calls) == 3:
                gave_up.set()
            raise RuntimeError("peer down")

    stage: Stage[int] = Stage("s", handler, capacity=10, retries=2, retry_delay=0)
    stage.offer(1)
    stage.offer(2)
    task = asyncio.ensure_future(stage.run())
    await asyncio.wait_for(gave_up.wait(), BOUND)
    stage.offer(3)
    await run_until_drained(stage, task)
    assert calls == [[1, 2], [1, 2], [1, 2], [3]]
    stats = stage.stats()
    assert (stats.processed, stats.batches, stats.dropped) == (1, 1, 2)
    assert "stage s dropped a batch of 2 after 3 tries" in caplog.text


async def test_stats_measure_queue_wait_and_busy_time_with_the_clock() -> None:
    clock = FakeClock()

    async def slow(batch: list[int]) -> None:
        clock.now += 2.0  # each batch takes 2 s of the fake clock

    stage: Stage[int] = Stage("timed", slow, capacity=10, max_batch=2, clock=clock)
    stage.offer(1)  # at 100
    clock.now += 1.0
    stage.offer(2)  # at 101
    stage.offer(3)  # at 101
    clock.now += 3.0  # the worker starts at 104
    stage.close()
    await asyncio.wait_for(stage.run(), BOUND)
    stats = stage.stats()
    assert stats.name == "timed"
    assert (stats.processed, stats.batches, stats.depth, stats.width) == (3, 2, 0, 1)
    # [1, 2] taken at 104 (waits 4 and 3), [3] taken at 106 (waited 5).
    assert stats.wait_seconds == pytest.approx(4 + 3 + 5)
    assert stats.max_wait_seconds == pytest.approx(5)
    assert stats.busy_seconds == pytest.approx(4)


async def test_width_runs_handlers_concurrently() -> None:
    width = 3
    in_flight = 0
    most = 0
    all_in = asyncio.Event()

    async def handler(batch: list[int]) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight == width:
            all_in.set()
        await all_in.wait()  # only returns once `width` handlers run at the same time
        in_flight -= 1

    stage: Stage[int] = Stage("wide", handler, capacity=100, width=width, max_batch=1)
    for i in range(7):
        stage.offer(i)
    task = asyncio.ensure_future(stage.run())
    await asyncio.wait_for(all_in.wait(), BOUND)
    await run_until_drained(stage, task)
    assert most == width  # never more than `width` at once
    assert stage.stats().processed == 7


@pytest.mark.parametrize(
    "kwargs", [{"capacity": 0}, {"capacity": 1, "width": 0}, {"capacity": 1, "max_batch": 0}]
)
def test_limits_must_be_positive(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="stage bad: capacity, width and max_batch must be >= 1"):
        Stage("bad", Recorder(), **kwargs)
