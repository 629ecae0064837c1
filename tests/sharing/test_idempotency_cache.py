"""The Redis cache of idempotency keys: hits, conflicts, expiry, key escaping, and outages.

Everything runs against a real Redis: the shared one under a key prefix of the test's own, or a
private one when the test kills it. A Redis that accepts connections and never answers, or
answers in another protocol, is a small asyncio server started by the test. Backoff is driven
by a fake clock, so no test sleeps through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from fake_clock import FakeClock
from services import FakeRedis, PrivateRedis, RedisTarget
from sluice.journal.base import IdempotencyConflict
from sluice.sharing.idempotency_cache import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_MIN_SECONDS,
    IdempotencyCache,
)

DIGEST = bytes(range(32))
OTHER_DIGEST = bytes(range(1, 33))
#: A batch of message ids as the IdGenerator makes them: 63-bit, time-ordered.
IDS = [(123_456_789 << 22) | (7 << 12) | seq for seq in range(3)]
#: Slack for a call that must return "at once" or "within the timeout" on a loaded machine.
SLACK_SECONDS = 0.3


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    made = redis.asyncio.Redis.from_url(url, protocol=2)  # as sharing/build.py makes it
    try:
        yield made
    finally:
        await made.aclose()


@contextlib.asynccontextmanager
async def shared_cache(
    target: RedisTarget, ttl_seconds: float = 60.0
) -> AsyncIterator[IdempotencyCache]:
    """A cache on the shared Redis whose keys fall under the test's prefix."""
    async with client(target.url) as made:
        # The cache adds ":idem:…" itself; the fixture's prefix ends in ":".
        yield IdempotencyCache(made, prefix=target.prefix.rstrip(":"), ttl_seconds=ttl_seconds)


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sluice.idempotency" and r.levelno == logging.WARNING
    ]


# --- hits, misses, conflicts ------------------------------------------------------------------


async def test_a_miss_then_remember_then_a_hit(redis_prefix: RedisTarget) -> None:
    async with shared_cache(redis_prefix) as cache:
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS
        assert await cache.lookup("acme", "order-18", DIGEST) is None  # another key
        assert await cache.lookup("other", "order-17", DIGEST) is None  # another tenant
    assert (cache.hits, cache.misses, cache.errors, cache.skipped) == (1, 3, 0, 0)


async def test_a_large_batch_keeps_its_ids(redis_prefix: RedisTarget) -> None:
    ids = [(1 << 62) + 4096 * i for i in range(1000)]
    async with shared_cache(redis_prefix) as cache:
        await cache.remember("acme", "big", DIGEST, ids)
        assert await cache.lookup("acme", "big", DIGEST) == ids


async def test_a_different_digest_is_a_conflict(redis_prefix: RedisTarget) -> None:
    async with shared_cache(redis_prefix) as cache:
        await cache.remember("acme", "order-17", DIGEST, IDS)
        with pytest.raises(IdempotencyConflict, match="'order-17' was used before"):
            await cache.lookup("acme", "order-17", OTHER_DIGEST)
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS  # still there
    assert cache.hits == 2


@pytest.mark.parametrize(("remembered", "asked"), [(None, DIGEST), (DIGEST, None), (None, None)])
async def test_a_none_digest_matches_any(
    redis_prefix: RedisTarget, remembered: bytes | None, asked: bytes | None
) -> None:
    async with shared_cache(redis_prefix) as cache:
        await cache.remember("acme", "order-17", remembered, IDS)
        assert await cache.lookup("acme", "order-17", asked) == IDS


async def test_the_first_write_wins(redis_prefix: RedisTarget) -> None:
    async with shared_cache(redis_prefix) as cache:
        await cache.remember("acme", "order-17", DIGEST, IDS)
        await cache.remember("acme", "order-17", OTHER_DIGEST, [1, 2])
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS
        with pytest.raises(IdempotencyConflict):
            await cache.lookup("acme", "order-17", OTHER_DIGEST)


async def test_entries_expire_after_the_ttl(redis_prefix: RedisTarget) -> None:
    ttl = 0.2
    async with shared_cache(redis_prefix, ttl_seconds=ttl) as cache:
        written = time.monotonic()
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert 0 < await cache._redis.pttl(cache.key_for("acme", "order-17")) <= 200
        deadline = written + ttl + 2.0
        while await cache.lookup("acme", "order-17", DIGEST) is not None:
            assert time.monotonic() < deadline, "the entry did not expire"
            await asyncio.sleep(0.01)
        assert time.monotonic() - written >= ttl - 0.01  # Redis expires to the millisecond


# --- keys -------------------------------------------------------------------------------------


async def test_the_key_names_the_tenant_and_the_key(redis_prefix: RedisTarget) -> None:
    async with shared_cache(redis_prefix) as cache:
        prefix = redis_prefix.prefix.rstrip(":")
        assert cache.key_for("acme", "order-17") == f"{prefix}:idem:acme:order-17".encode()
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert await cache._redis.exists(f"{prefix}:idem:acme:order-17") == 1


#: Pairs that would share a key if tenant and key were joined with ':' as they are.
COLLIDING = [
    ("a:b", "c"),
    ("a", "b:c"),
    ("a%3Ab", "c"),
    ("a%b", "c"),
    ("a", "%3Ab:c"),
    ("", "a:b:c"),
    ("a:b:c", ""),
    ("ünï", "cödé:\U0001f600"),
    ("ünï:cödé", "\U0001f600"),
]


async def test_colons_in_tenants_and_keys_do_not_collide(redis_prefix: RedisTarget) -> None:
    async with shared_cache(redis_prefix) as cache:
        assert len({cache.key_for(t, k) for t, k in COLLIDING}) == len(COLLIDING)
        for i, (tenant, key) in enumerate(COLLIDING):
            await cache.remember(tenant, key, DIGEST, [i])
        for i, (tenant, key) in enumerate(COLLIDING):
            assert await cache.lookup(tenant, key, DIGEST) == [i]


def split_key(prefix: bytes, name: bytes) -> tuple[str, str]:
    """(tenant, key) back from a Redis key: that this exists proves `key_for` is one-to-one."""
    assert name.startswith(prefix + b":idem:")
    escaped, _, key = name[len(prefix) + 6 :].decode("utf-8", "surrogatepass").partition(":")
    return escaped.replace("%3A", ":").replace("%25", "%"), key


# Few characters, most of them the ones that matter, so that near-collisions are common.
_TRICKY = st.text(alphabet=st.sampled_from([":", "%", "3", "A", "a", "\udc80", "é"]), max_size=8)


@given(tenant=_TRICKY, key=_TRICKY | st.text(max_size=255))
def test_the_key_gives_back_the_tenant_and_the_key(tenant: str, key: str) -> None:
    cache = IdempotencyCache(redis.asyncio.Redis(), prefix="p:q", ttl_seconds=1)
    assert split_key(b"p:q", cache.key_for(tenant, key)) == (tenant, key)


# --- settings ---------------------------------------------------------------------------------


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_seconds must be > 0"):
        IdempotencyCache(redis.asyncio.Redis(), ttl_seconds=0)
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        IdempotencyCache(redis.asyncio.Redis(), ttl_seconds=1, timeout_seconds=float("nan"))
    with pytest.raises(ValueError, match="decode_responses=False"):
        IdempotencyCache(redis.asyncio.Redis(decode_responses=True), ttl_seconds=1)


# --- useless answers: Redis is up, the entry is not usable ------------------------------------


async def test_an_undecodable_value_is_a_miss(
    redis_prefix: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    async with shared_cache(redis_prefix) as cache:
        await cache._redis.set(cache.key_for("acme", "order-17"), b"\xc1 not msgpack")
        await cache._redis.set(cache.key_for("acme", "order-18"), b"\x93\x01\x02\x03")
        for _ in range(3):
            assert await cache.lookup("acme", "order-17", DIGEST) is None
        assert await cache.lookup("acme", "order-18", DIGEST) is None
        assert cache.errors == 4 and not cache.down
        assert await cache.lookup("acme", "order-19", DIGEST) is None  # others still work
    assert cache.misses == 1
    [warning] = warnings_logged(caplog)  # once, not per call
    assert "is not an entry" in warning and ":idem:acme:order-17" in warning


async def test_an_error_reply_is_a_miss_and_redis_stays_up(
    redis_prefix: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    async with shared_cache(redis_prefix) as cache:
        await cache._redis.hset(cache.key_for("acme", "order-17"), "x", "y")  # WRONGTYPE
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        await cache.remember("acme", "order-17", DIGEST, IDS)  # SET NX: not set, no error
        await cache.remember("acme", "order-18", DIGEST, IDS)
        assert await cache.lookup("acme", "order-18", DIGEST) == IDS
        assert cache.errors == 1 and not cache.down and cache.skipped == 0
    [warning] = warnings_logged(caplog)
    assert "Redis refused a command (WRONGTYPE" in warning


# --- Redis down, silent, or speaking another protocol -----------------------------------------


@pytest.mark.integration
async def test_a_killed_redis_gives_quick_misses_until_it_is_back(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    timeout, clock = 0.5, FakeClock()
    async with client(private_redis.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60, timeout_seconds=timeout, clock=clock)
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS

        await asyncio.to_thread(private_redis.kill)
        started = time.monotonic()
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        assert time.monotonic() - started < timeout
        assert cache.down and cache.errors == 1
        # While backing off, nobody asks: 100 calls at once all return at once.
        started = time.monotonic()
        answers = await asyncio.gather(
            *(cache.lookup("acme", f"k{i}", DIGEST) for i in range(100)),
            cache.remember("acme", "order-18", DIGEST, IDS),
        )
        assert answers == [None] * 101
        assert time.monotonic() - started < SLACK_SECONDS
        assert cache.skipped == 101 and cache.errors == 1

        clock.advance(BACKOFF_MIN_SECONDS)  # one probe: still refused
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        assert cache.errors == 2
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        assert cache.skipped == 102  # backing off again

        await asyncio.to_thread(private_redis.start)  # an empty Redis
        clock.advance(BACKOFF_MAX_SECONDS)
        assert await cache.lookup("acme", "order-17", DIGEST) is None  # a real miss now
        assert not cache.down and cache.misses == 1 and cache.errors == 2
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS

    unavailable, back = warnings_logged(caplog)  # one for the outage, one for the recovery
    assert "Redis unavailable (Error 111 connecting" in unavailable
    assert "Redis answers again" in back


@pytest.mark.integration
async def test_a_restart_costs_no_error(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(private_redis.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60)
        await cache.remember("acme", "order-17", DIGEST, IDS)
        # The client's pooled connection dies with the server; its next command would fail
        # with "Connection closed by server". The cache tries once more on a new one.
        await asyncio.to_thread(private_redis.restart)
        assert await cache.lookup("acme", "order-17", DIGEST) is None  # nothing kept on disk
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert await cache.lookup("acme", "order-17", DIGEST) == IDS
    assert (cache.misses, cache.errors, cache.down) == (1, 0, False)
    assert warnings_logged(caplog) == []


async def test_a_silent_redis_times_out(caplog: pytest.LogCaptureFixture) -> None:
    timeout, clock = 0.2, FakeClock()
    async with FakeRedis(answer=None) as silent, client(silent.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60, timeout_seconds=timeout, clock=clock)
        started = time.monotonic()
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        elapsed = time.monotonic() - started
        assert timeout <= elapsed < timeout + SLACK_SECONDS
        assert cache.down and cache.errors == 1

        started = time.monotonic()
        await cache.remember("acme", "order-17", DIGEST, IDS)  # skipped: no wait at all
        assert time.monotonic() - started < SLACK_SECONDS / 10
        assert cache.skipped == 1

        # After the backoff one call probes and waits; the others meanwhile do not.
        clock.advance(BACKOFF_MIN_SECONDS)
        started = time.monotonic()
        answers = await asyncio.gather(*(cache.lookup("acme", "k", DIGEST) for _ in range(10)))
        assert answers == [None] * 10
        assert timeout <= time.monotonic() - started < timeout + SLACK_SECONDS
        assert cache.errors == 2 and cache.skipped == 10
    [warning] = warnings_logged(caplog)
    assert "Redis unavailable (no answer within 0.2 s)" in warning


async def test_another_protocol_counts_as_down(caplog: pytest.LogCaptureFixture) -> None:
    http = b"HTTP/1.1 400 Bad Request\r\n\r\n"
    async with FakeRedis(answer=http) as liar, client(liar.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60)
        assert await cache.lookup("acme", "order-17", DIGEST) is None
        await cache.remember("acme", "order-17", DIGEST, IDS)
        assert cache.down and cache.errors == 1 and cache.skipped == 1
    [warning] = warnings_logged(caplog)
    assert "Protocol error" in warning


async def test_a_reply_of_the_wrong_type_is_a_miss() -> None:
    async with FakeRedis(answer=b":7\r\n") as liar, client(liar.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60)
        assert await cache.lookup("acme", "order-17", DIGEST) is None  # an int, not a value
        assert cache.errors == 1 and not cache.down


# --- cancellation -----------------------------------------------------------------------------


async def test_a_cancelled_lookup_raises_and_is_no_outage() -> None:
    async with FakeRedis(answer=None) as silent, client(silent.url) as made:
        cache = IdempotencyCache(made, ttl_seconds=60, timeout_seconds=5)
        task = asyncio.create_task(cache.lookup("acme", "order-17", DIGEST))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A caller's deadline shorter than the cache's is the caller's TimeoutError.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await cache.lookup("acme", "order-17", DIGEST)
        assert time.monotonic() - started < SLACK_SECONDS
        assert not cache.down and cache.errors == 0


class SwallowingRedis:
    """A client whose command returns normally when cancelled, as Python 3.11's wait_for
    (which redis-py sends with) does when the cancel lands just as the send completes."""

    async def get(self, name: bytes) -> bytes | None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        return None


async def test_a_cancel_swallowed_by_the_client_still_cancels() -> None:
    cache = IdempotencyCache(SwallowingRedis(), ttl_seconds=60)  # type: ignore[arg-type]
    task = asyncio.create_task(cache.lookup("acme", "order-17", DIGEST))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_commands_leave_the_client_consistent(redis_prefix: RedisTarget) -> None:
    # A command cancelled between its send and its reply must not leave that reply for the
    # next command on the connection (redis-py drops such a connection).
    rng = random.Random(17)
    async with shared_cache(redis_prefix) as cache:
        for i in range(20):
            await cache.remember("acme", f"k{i}", DIGEST, [i])
        outcomes = {"answered": 0, "cancelled": 0}
        for _ in range(200):
            i = rng.randrange(20)
            task = asyncio.create_task(cache.lookup("acme", f"k{i}", DIGEST))
            # 0 to 1 ms: about a round trip here, so cancels land before, during and after.
            await asyncio.sleep(rng.uniform(0, 0.001))
            task.cancel()
            try:
                assert await task == [i]
                outcomes["answered"] += 1
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
        assert min(outcomes.values()) > 0, outcomes
        answers = await asyncio.gather(*(cache.lookup("acme", f"k{i}", DIGEST) for i in range(20)))
        assert answers == [[i] for i in range(20)]
        assert cache.errors == 0 and not cache.down
