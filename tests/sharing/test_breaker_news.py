"""Breaker news between processes through the real Redis: one opens, the others park."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from services import PrivateRedis, RedisTarget
from sluice.flow.breaker import BreakerState, CircuitBreaker
from sluice.sharing.breaker_news import BreakerNews


class Process:
    """One gateway process's view: a Redis client, its news, its breaker of channel `sms`."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, protocol=2
        )
        self.news = BreakerNews(self.client, prefix=prefix, timeout_seconds=0.5)
        self.now = 0.0
        self.breaker = CircuitBreaker(
            2, 5.0, 60.0, clock=lambda: self.now, on_open=self.news.opened_for("sms")
        )
        self.news.watch("sms", self.breaker)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.news.run())
        await asyncio.wait_for(self.news.listening.wait(), 5)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.aclose()

    def fail_twice(self) -> None:
        self.breaker.record_failure()
        self.breaker.record_failure()


@contextlib.asynccontextmanager
async def processes(url: str, prefix: str, count: int) -> AsyncIterator[list[Process]]:
    started = [Process(url, prefix) for _ in range(count)]
    try:
        for p in started:
            await p.start()
        yield started
    finally:
        for p in started:
            await p.stop()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for a state only visible by looking (a message crossing Redis), 10 ms a look."""
    for _ in range(int(within * 100)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within} s")


async def test_a_breaker_opened_in_one_process_parks_the_channel_in_the_others(
    redis_prefix: RedisTarget,
) -> None:
    async with processes(redis_prefix.url, redis_prefix.prefix, 3) as (a, b, c):
        a.fail_twice()
        assert a.breaker.state is BreakerState.OPEN
        await until(lambda: b.breaker.state is BreakerState.OPEN)
        await until(lambda: c.breaker.state is BreakerState.OPEN)
        assert b.breaker.retry_at() == pytest.approx(5.0)  # the cooldown of the one that saw it
        assert a.news.published == 1
        assert (a.news.tripped, b.news.tripped, c.news.tripped) == (0, 1, 1)
        # Each process probes by itself after the cooldown.
        b.now = 5.0
        assert b.breaker.allow()
        b.breaker.record_success()
        assert b.breaker.state is BreakerState.CLOSED
        assert c.breaker.state is BreakerState.OPEN  # until its own probe


async def test_a_process_that_starts_during_a_cooldown_parks_too(
    redis_prefix: RedisTarget,
) -> None:
    async with processes(redis_prefix.url, redis_prefix.prefix, 1) as (a,):
        a.fail_twice()
        await until(lambda: a.news.published == 1)
        async with processes(redis_prefix.url, redis_prefix.prefix, 1) as (late,):
            assert late.breaker.state is BreakerState.OPEN
            retry_at = late.breaker.retry_at()
            assert retry_at is not None and 4.0 < retry_at <= 5.0  # what was left of it


async def test_unreadable_news_is_ignored(redis_prefix: RedisTarget) -> None:
    async with processes(redis_prefix.url, redis_prefix.prefix, 2) as (a, b):
        await a.client.publish(f"{redis_prefix.prefix}:breakers", b"\xff garbage")
        a.fail_twice()  # real news after the garbage still arrives
        await until(lambda: b.breaker.state is BreakerState.OPEN)


@pytest.mark.integration
async def test_without_redis_breakers_stay_per_process_and_news_resumes(
    private_redis: PrivateRedis,
) -> None:
    async with processes(private_redis.url, "t", 2) as (a, b):
        await asyncio.to_thread(private_redis.kill)
        a.fail_twice()  # publishing fails quietly; the local breaker still opens
        assert a.breaker.state is BreakerState.OPEN
        await until(lambda: not b.news.listening.is_set())
        assert b.breaker.state is BreakerState.CLOSED
        await asyncio.to_thread(private_redis.start)
        await until(lambda: a.news.listening.is_set() and b.news.listening.is_set(), 15)
        a.now = 5.0  # a's probe succeeds: closed again
        assert a.breaker.allow()
        a.breaker.record_success()
        b.fail_twice()  # and now b's news reaches a again
        await until(lambda: a.news.tripped == 1)
        assert a.breaker.state is BreakerState.OPEN


async def test_a_breaker_opened_while_the_news_does_not_run_starts_no_task() -> None:
    # Publishing tasks belong to `run`; before it (or after it) a breaker's opening is only
    # this process's news, and nothing is left running without an owner.
    client = redis.asyncio.Redis()  # never connects
    news = BreakerNews(client, prefix="unused")
    before = asyncio.all_tasks()
    news.opened_for("sms")(5.0)
    assert asyncio.all_tasks() == before
    assert news.published == 0
    await client.aclose()
