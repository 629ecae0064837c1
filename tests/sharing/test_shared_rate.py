"""A channel rate shared through Redis: leases of tokens, liveness, fallback, accuracy.

Everything runs against a real Redis: the shared one under a key prefix of the test's own, or a
private one when the test kills it. The pool's behaviour is driven by calling ``refresh`` (one
exchange with Redis) and a fake clock; only the accuracy tests, which are about real time across
processes, let ``run`` and the wall clock go, for about two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from fake_clock import FakeClock
from services import FakeRedis, PrivateRedis, RedisTarget
from sluice.sharing.rate import (
    ASK_JITTER,
    BACKOFF_MIN_SECONDS,
    LEASE_SECONDS,
    MIN_ASK_INTERVAL_SECONDS,
    SharedTokenBucket,
)

#: The goal: processes together within ±5 % of the configured rate.
RATE_TOLERANCE = 0.05
#: Timed windows: long enough that a burst is small against them, short enough for a test.
WARM_SECONDS = 0.5
WINDOW_SECONDS = 2.0
#: A spender looks at its bucket at least this often while it has nothing to take.
SPEND_POLL_SECONDS = 0.005


@contextlib.asynccontextmanager
async def clients(url: str, n: int) -> AsyncIterator[list[redis.asyncio.Redis]]:
    """`n` independent clients, as `n` processes would have."""
    made = [redis.asyncio.Redis.from_url(url) for _ in range(n)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


def prefix_of(target: RedisTarget) -> str:
    # The bucket adds ":rate:…" itself; the fixture's keys end in ":".
    return target.prefix.rstrip(":")


async def spend(bucket: SharedTokenBucket, measure_from: float, until: float) -> int:
    """Take tokens as fast as `bucket` allows until `until` (monotonic); count the tokens taken
    from `measure_from` on."""
    counted = 0
    while (now := time.monotonic()) < until:
        taken = 0
        while bucket.try_take():
            taken += 1
        if now >= measure_from:
            counted += taken
        await asyncio.sleep(min(bucket.delay_for(1), SPEND_POLL_SECONDS))
    return counted


async def starve_and_refresh(bucket: SharedTokenBucket) -> None:
    """A take that finds the pool empty, then the exchange that fills it."""
    assert not bucket.try_take()
    await bucket.refresh()


# --- the pool: leases of tokens, spent without I/O -----------------------------------------


async def test_tokens_come_in_leases_and_are_spent_without_io(redis_prefix: RedisTarget) -> None:
    rate = 2000.0
    async with clients(redis_prefix.url, 1) as (client,):
        bucket = SharedTokenBucket(
            "sms", rate, 200, client, prefix=prefix_of(redis_prefix), clock=FakeClock()
        )
        assert bucket.shared and bucket.available() == 0  # nothing before the first grant
        await starve_and_refresh(bucket)
        batch = rate * LEASE_SECONDS
        assert bucket.available() == batch
        assert bucket.exchanges == 1
        assert sum(bucket.try_take() for _ in range(int(batch) + 10)) == batch
        assert bucket.exchanges == 1  # the takes themselves never asked Redis
        assert bucket.delay_for(1) == pytest.approx(1 / rate)


async def test_asks_for_recent_demand_and_returns_what_it_no_longer_needs(
    redis_prefix: RedisTarget,
) -> None:
    clock = FakeClock()
    prefix = prefix_of(redis_prefix)
    # A slow rate, so that Redis refills little while the test runs: a batch is 10 tokens.
    rate, burst = 200.0, 10.0
    async with clients(redis_prefix.url, 2) as (one, other):
        busy = SharedTokenBucket("sms", rate, burst, one, prefix=prefix, clock=clock)
        await starve_and_refresh(busy)  # demand unknown, more than it had: a whole batch
        assert busy.available() == rate * LEASE_SECONDS == 10
        for _ in range(4):
            assert busy.try_take()
        clock.advance(0.1)  # 4 tokens in 0.1 s: 40/s, so 2 tokens cover the next 50 ms
        assert await busy.refresh() is None
        assert busy.available() == 2  # 6 were left; 4 went back to Redis

        clock.advance(5.0)  # nothing spent since: the rest goes back too
        await busy.refresh()
        assert busy.available() == 0

        idle = SharedTokenBucket("sms", rate, burst, other, prefix=prefix, clock=clock)
        await starve_and_refresh(idle)
        assert idle.available() >= 6  # what came back (and a few ms of refill)


async def test_reserve_goes_into_debt_that_the_next_grant_pays(redis_prefix: RedisTarget) -> None:
    async with clients(redis_prefix.url, 1) as (client,):
        bucket = SharedTokenBucket(
            "sms", 1000, 100, client, prefix=prefix_of(redis_prefix), clock=FakeClock()
        )
        assert bucket.reserve(5) == pytest.approx(5 / 1000)  # at this process's share
        assert bucket.available() == -5
        assert not bucket.try_take()
        await bucket.refresh()  # debt counts as starving: the debt and a full batch
        assert bucket.available() == 1000 * LEASE_SECONDS


async def test_the_redis_bucket_refills_at_the_rate_by_redis_time(
    redis_prefix: RedisTarget,
) -> None:
    rate = 1000.0
    async with clients(redis_prefix.url, 1) as (client,):
        # The local clock stands still: only Redis's clock can refill the shared bucket.
        bucket = SharedTokenBucket(
            "sms", rate, 50, client, prefix=prefix_of(redis_prefix), clock=FakeClock()
        )
        await starve_and_refresh(bucket)  # the full bucket: 50, a whole batch
        while bucket.try_take():
            pass
        started = time.monotonic()
        # What refilled since (a few ms' worth) is less than a batch: Redis is dry now.
        pause = await bucket.refresh()
        assert pause is not None and pause >= MIN_ASK_INTERVAL_SECONDS * (1 - ASK_JITTER)
        while bucket.try_take():
            pass
        assert bucket.delay_for(1) == pytest.approx(pause)  # no tokens before the next ask
        await asyncio.sleep(0.03)
        await bucket.refresh()
        elapsed = time.monotonic() - started
        # 30 ms of rate, or more if this machine was slow, but never more than a batch.
        assert 0.025 * rate <= bucket.available() <= min(50, elapsed * rate + 1)


# --- liveness -------------------------------------------------------------------------------


async def test_counts_live_processes_and_forgets_those_that_leave(
    redis_prefix: RedisTarget,
) -> None:
    prefix = prefix_of(redis_prefix)
    async with clients(redis_prefix.url, 3) as made:
        buckets = [SharedTokenBucket("sms", 900, 90, c, prefix=prefix) for c in made]
        for bucket in buckets:
            await bucket.refresh()
        await buckets[0].refresh()
        assert [b.live for b in buckets] == [3, 2, 3]  # each learns the count as it asks
        assert buckets[0].share == 300

        leaving = asyncio.create_task(buckets[2].run())
        await asyncio.sleep(0)
        leaving.cancel()  # a clean stop removes it from the live set at once
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        await buckets[0].refresh()
        assert buckets[0].live == 2

        other = SharedTokenBucket("web", 900, 90, made[0], prefix=prefix)
        await other.refresh()
        assert other.live == 1  # liveness is per shared rate


async def test_processes_that_stop_refreshing_age_out(redis_prefix: RedisTarget) -> None:
    prefix = prefix_of(redis_prefix)
    async with clients(redis_prefix.url, 2) as (one, two):
        crashed = SharedTokenBucket("sms", 900, 90, one, prefix=prefix, liveness_seconds=0.2)
        await crashed.refresh()
        alive = SharedTokenBucket("sms", 900, 90, two, prefix=prefix, liveness_seconds=0.2)
        await alive.refresh()
        assert alive.live == 2
        await asyncio.sleep(0.25)  # Redis time: the only way to let liveness lapse
        await alive.refresh()
        assert alive.live == 1


# --- the local cap set by the rate finder ---------------------------------------------------


async def test_rate_setter_lowers_a_local_cap(redis_prefix: RedisTarget) -> None:
    clock = FakeClock()
    async with clients(redis_prefix.url, 1) as (client,):
        bucket = SharedTokenBucket(
            "sms", 1000, 5, client, prefix=prefix_of(redis_prefix), clock=clock
        )
        await starve_and_refresh(bucket)
        assert bucket.available() == 50  # a batch of the shared rate

        bucket.rate = 10  # a throttled peer: AIMD halves, and halves again…
        assert bucket.rate == 10
        assert sum(bucket.try_take() for _ in range(20)) == 5  # the cap's burst, no more
        assert bucket.available() == pytest.approx(0)
        assert bucket.delay_for(1) == pytest.approx(0.1)
        clock.advance(0.1)
        assert bucket.try_take() and not bucket.try_take()

        bucket.rate = 2000  # above the global rate: the cap is gone, the grants are the limit
        assert bucket.rate == 1000
        assert sum(bucket.try_take() for _ in range(100)) == 50 - 6


# --- unlimited --------------------------------------------------------------------------------


async def test_unlimited_rate_does_no_redis_io() -> None:
    async with FakeRedis() as hole, clients(hole.url, 1) as (client,):
        bucket = SharedTokenBucket("web", 0, 10, client, clock=FakeClock())
        await asyncio.wait_for(bucket.run(), 1.0)  # nothing to do: returns at once
        assert all(bucket.try_take() for _ in range(10_000))
        assert bucket.reserve(100) == 0 and bucket.delay_for(1_000_000) == 0
        assert bucket.available() == math.inf and bucket.rate == 0
        bucket.rate = 100  # throttled: a local limit, still no Redis
        assert sum(bucket.try_take() for _ in range(20)) == 10
        assert bucket.exchanges == 0 and hole.connections == 0
    assert SharedTokenBucket("web", 0, 10, None).try_take()


def test_a_shared_rate_needs_a_client() -> None:
    with pytest.raises(ValueError, match="needs a Redis client"):
        SharedTokenBucket("sms", 100, 10, None)


# --- fallback ---------------------------------------------------------------------------------


def fallback_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sluice.channel"]


@pytest.mark.integration
async def test_falls_back_to_a_local_share_and_returns_to_shared(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.channel")
    rate, burst = 900.0, 30.0
    clock = FakeClock()
    async with clients(private_redis.url, 3) as made:
        buckets = [
            SharedTokenBucket("sms", rate, burst, c, timeout_seconds=0.5, clock=clock) for c in made
        ]
        for bucket in buckets:
            await bucket.refresh()
        for bucket in buckets:
            await starve_and_refresh(bucket)
        assert all(b.shared and b.live == 3 for b in buckets)

        await asyncio.to_thread(private_redis.kill)
        bucket = buckets[0]
        assert await asyncio.wait_for(bucket.refresh(), 2.0) == BACKOFF_MIN_SECONDS
        assert not bucket.shared and bucket.share == rate / 3
        # A local bucket at rate ÷ 3, starting full: its burst now, then 300/s.
        assert sum(bucket.try_take() for _ in range(100)) == burst
        clock.advance(0.1)
        assert sum(bucket.try_take() for _ in range(100)) == 30
        assert bucket.delay_for(1) == pytest.approx(3 / rate)
        bucket.rate = 150  # a cap below the share lowers it further, as while shared
        assert bucket.share == 150 and bucket.delay_for(1) == pytest.approx(1 / 150)
        bucket.rate = rate
        assert bucket.share == rate / 3
        assert await bucket.refresh() == 2 * BACKOFF_MIN_SECONDS  # backing off
        assert len(fallback_messages(caplog)) == 1  # said once
        assert "falls back to a local share of 300/s" in fallback_messages(caplog)[0]

        await asyncio.to_thread(private_redis.start)  # an empty Redis: no script, no bucket
        assert await bucket.refresh() is None
        assert bucket.shared and bucket.live == 1
        assert bucket.available() == rate * LEASE_SECONDS  # a fresh batch from a full bucket
        assert "Redis answers again" in fallback_messages(caplog)[1]
        assert len(fallback_messages(caplog)) == 2


async def test_a_hung_redis_times_out_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    timeout = 0.2
    async with FakeRedis() as hole, clients(hole.url, 1) as (client,):
        bucket = SharedTokenBucket("sms", 600, 60, client, timeout_seconds=timeout)
        started = time.monotonic()
        pause = await asyncio.wait_for(bucket.refresh(), 5 * timeout)
        assert time.monotonic() - started < 5 * timeout
        assert pause == BACKOFF_MIN_SECONDS
        assert not bucket.shared and bucket.live == 1  # never heard of the others
        assert bucket.try_take()  # a local share, not a stall
    assert "Redis: no answer within 0.2 s" in fallback_messages(caplog)[0]


@pytest.mark.integration
async def test_run_keeps_sending_at_the_share_while_redis_is_down(
    private_redis: PrivateRedis,
) -> None:
    rate, burst = 600.0, 60.0
    async with clients(private_redis.url, 3) as made, asyncio.TaskGroup() as tg:
        buckets = [SharedTokenBucket("sms", rate, burst, c, timeout_seconds=0.2) for c in made]
        runs = [tg.create_task(b.run()) for b in buckets]
        now = time.monotonic()
        await asyncio.gather(*(spend(b, now, now + 0.3) for b in buckets))
        assert all(b.shared and b.live == 3 for b in buckets)

        await asyncio.to_thread(private_redis.kill)
        deadline = time.monotonic() + 2.0
        while any(b.shared for b in buckets):  # each notices at its next exchange
            assert time.monotonic() < deadline, "the buckets did not notice Redis was gone"
            await asyncio.gather(*(spend(b, deadline, time.monotonic() + 0.02) for b in buckets))
        # Measured after the fallback bursts: three local shares of 200/s.
        now = time.monotonic()
        start, end = now + WARM_SECONDS / 2, now + WARM_SECONDS / 2 + 1.0
        sent = await asyncio.gather(*(spend(b, start, end) for b in buckets))
        assert sum(sent) == pytest.approx(rate, rel=RATE_TOLERANCE)

        await asyncio.to_thread(private_redis.start)
        deadline = time.monotonic() + 3 * 2.0  # the longest backoff, and then some
        while not all(b.shared for b in buckets):
            assert time.monotonic() < deadline, "the buckets did not go back to Redis"
            now = time.monotonic()
            await asyncio.gather(*(spend(b, now, now + 0.05) for b in buckets))
        for task in runs:
            task.cancel()


# --- accuracy in real time --------------------------------------------------------------------


@pytest.mark.integration
async def test_three_buckets_share_the_rate(redis_prefix: RedisTarget) -> None:
    rate = 3000.0
    prefix = prefix_of(redis_prefix)
    async with clients(redis_prefix.url, 3) as made, asyncio.TaskGroup() as tg:
        buckets = [SharedTokenBucket("sms", rate, rate / 10, c, prefix=prefix) for c in made]
        runs = [tg.create_task(b.run()) for b in buckets]
        now = time.monotonic()
        start, end = now + WARM_SECONDS, now + WARM_SECONDS + WINDOW_SECONDS
        sent = await asyncio.gather(*(spend(b, start, end) for b in buckets))
        for task in runs:
            task.cancel()
    assert sum(sent) / WINDOW_SECONDS == pytest.approx(rate, rel=RATE_TOLERANCE)
    for share in sent:  # each gets about a third; how exactly is up to who asks first
        assert share / WINDOW_SECONDS == pytest.approx(rate / 3, rel=0.25)


@pytest.mark.integration
async def test_one_process_alone_gets_the_whole_rate(redis_prefix: RedisTarget) -> None:
    rate = 3000.0
    async with clients(redis_prefix.url, 1) as (client,), asyncio.TaskGroup() as tg:
        bucket = SharedTokenBucket("sms", rate, rate / 10, client, prefix=prefix_of(redis_prefix))
        refresher = tg.create_task(bucket.run())
        now = time.monotonic()
        sent = await spend(bucket, now + WARM_SECONDS, now + WARM_SECONDS + WINDOW_SECONDS)
        refresher.cancel()
    assert sent / WINDOW_SECONDS == pytest.approx(rate, rel=RATE_TOLERANCE)
    assert bucket.live == 1
    # About one exchange per MIN_ASK_INTERVAL_SECONDS while it wants more than the rate.
    assert bucket.exchanges <= 1.5 * (WARM_SECONDS + WINDOW_SECONDS) / MIN_ASK_INTERVAL_SECONDS


# A gateway process reduced to its bucket: connect, say ready, wait for the common start time
# (wall clock, read from stdin), spend as fast as allowed, print what it took in the window.
WORKER = """
import asyncio, json, sys, time
import redis.asyncio
from sluice.sharing.rate import SharedTokenBucket

async def main(url, prefix, rate, warm, window):
    client = redis.asyncio.Redis.from_url(url)
    bucket = SharedTokenBucket("sms", rate, rate / 10, client, prefix=prefix)
    async with asyncio.TaskGroup() as tg:
        refresher = tg.create_task(bucket.run())
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start - time.time()))
        counted, live = 0, 0
        while (now := time.time()) < start + warm + window:
            taken = 0
            while bucket.try_take():
                taken += 1
            if now >= start + warm:
                counted += taken
                live = live or bucket.live  # at the start of the window: all are running
            await asyncio.sleep(min(bucket.delay_for(1), 0.005))
        refresher.cancel()
    await client.aclose()
    print(json.dumps({"sent": counted, "exchanges": bucket.exchanges, "live": live}))

asyncio.run(main(sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])))
"""


@pytest.mark.integration
def test_three_processes_share_the_rate(redis_prefix: RedisTarget) -> None:
    rate = 3000.0
    argv = [redis_prefix.url, prefix_of(redis_prefix), str(rate)]
    argv += [str(WARM_SECONDS), str(WINDOW_SECONDS)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        start = time.time() + 0.1
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start}\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs)
    results = [json.loads(out) for out in outputs]
    sent = sum(r["sent"] for r in results)
    assert sent / WINDOW_SECONDS == pytest.approx(rate, rel=RATE_TOLERANCE), results
    assert all(r["live"] == 3 for r in results), results
