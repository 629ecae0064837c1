"""A channel rate shared by every gateway process through Redis: leases of tokens.

One token bucket per channel lives in Redis (``{prefix}:rate:{name}``), refilled by a Lua script
that reads Redis's own ``TIME``, so the machines' clocks do not matter. No process asks Redis
per message: each one holds a local *pool* of tokens granted in batches, and the synchronous
calls the runner makes per message (``try_take``, ``reserve``, …) spend from that pool with no
I/O. A background coroutine (``run``) tops the pool up before it runs dry, asking for about the
next ``LEASE_SECONDS`` of the process's recent demand and never more than ``LEASE_SECONDS`` of
the whole rate.

Every exchange also records the process in ``{prefix}:rate:{name}:live`` (a sorted set scored
by Redis time) and counts the members seen within ``liveness_seconds``. When Redis does not
answer within ``timeout_seconds``, the bucket falls back to a local :class:`TokenBucket` at a
safe share of the rate (rate ÷ the last live count) and keeps asking in the background, with
backoff, until Redis answers again. Nothing on the hot path waits for Redis or sees its errors.

Examples:
    Three gateway processes configured with ``rate = 3000`` each run::

        bucket = SharedTokenBucket("sms", rate=3000, burst=300, redis=client)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bucket.run())  # cancel it to leave the live set
            ...
            if bucket.try_take():  # no I/O: spends a token granted earlier
                send(message)

    and together send 3,000 messages/s, about 1,000 each when all three are busy. An unlimited
    channel (rate 0) never talks to Redis; ``run`` returns at once:

    >>> bucket = SharedTokenBucket("web", rate=0, burst=1, redis=None)
    >>> bucket.try_take(), bucket.available()
    (True, inf)

Warning:
    Granted tokens are spent later, so the rate holds exactly over time but not in every
    window: a window of T seconds can see up to ``rate * T + burst`` (as for any token bucket)
    plus the tokens the processes were holding when it began, at most ``LEASE_SECONDS`` of the
    rate each. Batches are also why the Redis bucket holds at least ``LEASE_SECONDS`` of rate,
    even when ``burst`` is smaller: a process may spend a whole batch at once, so set the rate
    with some margin below a peer's hard limit.

    In fallback each process takes rate ÷ live, where live is the last count Redis gave: if
    Redis was down from the start, that count is 1 and every process sends at the full rate.
    The ``rate`` setter only adds a local cap (for the AIMD rate finder): a process's share of
    the global rate is the most it gets, however high the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import NoScriptError, RedisError

from sluice.flow.rate import EPSILON, TokenBucket, check_amount, check_rate

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("sluice.channel")

#: A process asks for this many seconds of its recent demand at a time, and never more than
#: this many seconds of the whole rate: 5 % of a second, so the tokens the processes hold
#: unspent stay small against what the rate lets through in a second.
LEASE_SECONDS = 0.05
#: The pool is topped up once it falls below this share of the batch asked for: with at least
#: 25 ms of demand left, a round trip to Redis (well under 1 ms on a LAN) never lets it run dry.
LOW_WATERMARK = 0.5
#: While Redis has no tokens to spare (every process wants more than its share), ask at most
#: this often: about 100 round trips/s per process, each collecting ~10 ms of refill. At low
#: rates, less often: about once per token of the process's share.
MIN_ASK_INTERVAL_SECONDS = 0.01
#: ± this share of random jitter on that pause. Whoever asks first after a refill takes it
#: all; with equal pauses, processes that once asked in a row keep doing so, and the first of
#: them gets most of the rate (measured without jitter, three processes sharing 3,000/s: one
#: got 430/s, another 1,400/s; with it, each got 930 to 1,110/s). Jitter shuffles the order.
ASK_JITTER = 0.5
#: Retry a Redis that did not answer after this long, doubling up to the maximum.
BACKOFF_MIN_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0
#: An idle process still refreshes its liveness this many times per ``liveness_seconds``.
LIVENESS_REFRESHES = 3

# The bucket and the live set in one round trip. Numbers go back as strings: Redis turns a Lua
# number into an integer, and Lua's own tostring keeps only 14 digits (100 µs of a Unix time).
_SCRIPT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, returned = tonumber(ARGV[3]), tonumber(ARGV[4])
local liveness = tonumber(ARGV[6])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
if now > stamp then tokens = tokens + (now - stamp) * rate end
tokens = math.min(burst, tokens + returned)
local granted = math.max(0, math.min(want, tokens))
tokens = tokens - granted
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'stamp', string.format('%.6f', now))
-- Once full, a bucket is the same as no bucket: let an unused one go.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - liveness)
redis.call('PEXPIRE', KEYS[2], math.ceil(liveness * 1000))
return {string.format('%.17g', granted), string.format('%.17g', wait),
        redis.call('ZCARD', KEYS[2])}
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()

# What "Redis is down" looks like: refused or dropped connections, timeouts, error replies.
_REDIS_DOWN = (RedisError, OSError, TimeoutError)


class SharedRateStats(msgspec.Struct, frozen=True):
    """What a shared rate tells of itself (for metrics)."""

    #: True while grants come from Redis; False while unlimited or fallen back.
    shared: bool
    #: Processes sharing the rate at Redis's last answer, and this process's part (messages/s).
    live: int
    share: float
    #: Round trips to Redis and tokens granted.
    exchanges: int
    granted: float


class SharedTokenBucket:
    """A :class:`TokenBucket` whose ``rate`` holds across every process sharing ``name``.

    The synchronous methods are those of :class:`TokenBucket`, with the same meaning, and do
    no I/O; ``run`` is the background task that exchanges tokens with Redis. Until its first
    grant the pool is empty, so takes fail (and ``delay_for`` says when to look again).

    ``rate`` is the global rate (0: unlimited, and Redis is never used). Setting ``rate``
    afterwards sets a local cap on top of this process's share: reading it back gives
    ``min(cap, global rate)``. ``shared`` says whether grants come from Redis now, ``live``
    how many processes shared the rate at the last answer.
    """

    def __init__(
        self,
        name: str,
        rate: float,
        burst: float,
        redis: Redis | None,
        *,
        prefix: str = "sluice",
        liveness_seconds: float = 5.0,
        timeout_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._global = check_rate("rate", rate)
        if self._global and redis is None:
            raise ValueError(f"channel {name!r}: a shared rate of {rate!r}/s needs a Redis client")
        if not (math.isfinite(liveness_seconds) and liveness_seconds > 0):
            raise ValueError(f"liveness_seconds must be > 0, got {liveness_seconds!r}")
        if not (math.isfinite(timeout_seconds) and timeout_seconds > 0):
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        self._redis = redis
        self._keys = (f"{prefix}:rate:{name}", f"{prefix}:rate:{name}:live")
        self._member = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._liveness = float(liveness_seconds)
        self._timeout = float(timeout_seconds)
        self._clock = clock
        self._cap = self._global
        #: The most a process asks for at once, and what the Redis bucket holds at least.
        self._max_batch = max(1.0, self._global * LEASE_SECONDS)
        self._shared_burst = max(float(burst), self._max_batch)
        # The local limit: the cap while shared, the safe share while Redis is down (its
        # rate is 0, i.e. no limit, while shared and uncapped).
        self._local = TokenBucket(0, burst, clock)
        self._shared = self._global > 0
        self._live = 1
        #: Tokens granted and not yet spent (negative: owed after ``reserve``).
        self._pool = 0.0
        self._low = 0.0
        self._spent = 0.0
        self._starved = False
        self._asked_at = clock()
        #: When the next exchange is due after Redis ran dry (no grant comes before).
        self._next_ask_at = 0.0
        self._backoff = BACKOFF_MIN_SECONDS
        self._need = asyncio.Event()
        #: Round trips to Redis and tokens granted, for metrics and the benchmark.
        self.exchanges = 0
        self.granted = 0.0
        self._local.rate = self._local_rate()

    # ---------------------------------------------------------------- the TokenBucket API

    @property
    def rate(self) -> float:
        """The rate enforced: the global rate, lowered by a local cap if one is set."""
        if self._global == 0:
            return self._cap
        return min(self._cap, self._global) if self._cap else self._global

    @rate.setter
    def rate(self, value: float) -> None:
        cap = check_rate("rate", value)
        if cap != self._cap:  # the runner sets it after every answer, mostly unchanged
            self._cap = cap
            self._local.rate = self._local_rate()

    @property
    def burst(self) -> float:
        """Most tokens the bucket holds (the Redis bucket holds at least a batch)."""
        return self._local.burst

    def try_take(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are available now; never goes into debt."""
        n = check_amount(n)
        if not self._shared:
            return self._local.try_take(n)
        if self._pool + EPSILON < n:
            self._starved = True
            self._need.set()
            return False
        if not self._local.try_take(n):
            return False
        self._pool -= n
        self._spent += n
        if self._pool < self._low:
            self._need.set()
        return True

    def give_back(self, n: float = 1) -> None:
        """Return ``n`` tokens taken for a send that did not happen."""
        n = check_amount(n)
        self._local.give_back(n)
        if self._shared:
            self._pool += n
            self._spent -= n

    def reserve(self, n: float = 1) -> float:
        """Take ``n`` tokens unconditionally; return the seconds to wait before using them."""
        n = check_amount(n)
        delay = self._local.reserve(n)
        if not self._shared:
            return delay
        self._pool -= n
        self._spent += n
        if self._pool < self._low:
            self._need.set()
        if self._pool < 0:
            self._starved = True
            delay = max(delay, -self._pool / self.share)
        return delay

    def delay_for(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens would be available (``inf`` above ``burst``); takes none.

        While shared this is an estimate (tokens come when Redis grants them): the shortfall
        at this process's share of the rate, and not before the next exchange is due."""
        n = check_amount(n)
        local = self._local.delay_for(n)
        if not self._shared:
            return local
        if n > self._local.burst:
            return math.inf
        short = n - self._pool
        if short <= EPSILON:
            return local
        return max(local, short / self.share, self._next_ask_at - self._clock())

    def available(self) -> float:
        """Tokens available now: negative while in debt, ``inf`` while unlimited."""
        if not self._shared:
            return self._local.available()
        return min(self._pool, self._local.available())

    # ---------------------------------------------------------------- state, for metrics

    def stats(self) -> SharedRateStats:
        return SharedRateStats(self._shared, self._live, self.share, self.exchanges, self.granted)

    @property
    def shared(self) -> bool:
        """True while grants come from Redis; False while unlimited or fallen back."""
        return self._shared

    @property
    def live(self) -> int:
        """Processes sharing the rate at Redis's last answer (1 before any)."""
        return self._live

    @property
    def share(self) -> float:
        """The rate this process can expect: the global rate ÷ live processes, capped."""
        share = self._global / self._live
        return min(share, self._cap) if self._cap else share

    # ---------------------------------------------------------------- the background task

    async def run(self) -> None:
        """Keep the pool topped up and the liveness fresh until cancelled; then leave."""
        if not self._global:
            return
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                pause = await self.refresh()
                if task.cancelling():
                    # Python 3.11's asyncio.wait_for, which redis-py sends with, returns
                    # normally when the cancel lands as the send completes: stop anyway.
                    raise asyncio.CancelledError
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
                self._need.clear()
                if self._starved or self._pool < self._low:  # spent during the exchange
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._liveness / LIVENESS_REFRESHES):
                        await self._need.wait()
        finally:
            await self._leave()

    async def refresh(self) -> float | None:
        """One exchange with Redis (or a failed one, which falls back).

        Returns how long to sleep before the next exchange, or None when the next one is due
        only once the pool runs low (or at the next liveness refresh)."""
        if not self._global:
            return None
        now = self._clock()
        elapsed = now - self._asked_at
        demand = self._spent / elapsed if elapsed > 0 else 0.0
        self._asked_at = now
        self._spent = 0.0
        if self._starved or not self._shared:
            target = self._max_batch  # demand unknown: it was more than we had
        elif demand > 0:
            target = min(self._max_batch, max(1.0, demand * LEASE_SECONDS))
        else:
            target = 0.0
        self._starved = False
        want = max(0.0, target - self._pool)
        # Tokens beyond the target go back (demand fell): held, they would only add a burst.
        returned = max(0.0, self._pool - target) if self._shared else 0.0
        self._pool -= returned
        try:
            granted, wait, live = await self._exchange(want, returned)
        except _REDIS_DOWN as exc:
            self._fall_back(exc)
            pause = self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_SECONDS)
            return pause
        self._backoff = BACKOFF_MIN_SECONDS
        self._live = max(1, live)
        if not self._shared:
            self._recover()
        self._pool += granted
        self._low = target * LOW_WATERMARK
        if granted + EPSILON < want:  # Redis ran dry: let some refill gather first
            # About a token of this process's share, but never so long that the bucket fills
            # up (and wastes refill) before anyone asks again.
            pause = max(MIN_ASK_INTERVAL_SECONDS, self._live / self._global)
            pause = min(pause, self._shared_burst / self._global / 2)
            pause = max(wait, pause * random.uniform(1 - ASK_JITTER, 1 + ASK_JITTER))
            self._next_ask_at = self._clock() + pause
            return pause
        self._next_ask_at = 0.0
        return None

    async def _exchange(self, want: float, returned: float) -> tuple[float, float, int]:
        assert self._redis is not None
        args = (self._global, self._shared_burst, want, returned, self._member, self._liveness)
        async with asyncio.timeout(self._timeout):
            self.exchanges += 1
            try:
                reply = await self._redis.evalsha(_SCRIPT_SHA, 2, *self._keys, *args)
            except NoScriptError:  # a restarted or flushed Redis: EVAL also caches it again
                reply = await self._redis.eval(_SCRIPT, 2, *self._keys, *args)
        granted = float(reply[0])
        self.granted += granted
        return granted, float(reply[1]), int(reply[2])

    def _local_rate(self) -> float:
        if not self._global:
            return self._cap
        if self._shared:  # the grants are the limit; a cap below the global rate adds one
            return self._cap if 0 < self._cap < self._global else 0.0
        share = self._global / self._live
        return min(share, self._cap) if self._cap else share

    def _fall_back(self, exc: BaseException) -> None:
        if not self._shared:
            return
        self._shared = False
        self._pool = 0.0
        self._local.rate = self._local_rate()
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self._timeout:g} s"
        else:
            why = str(exc) or type(exc).__name__
        log.warning(
            "channel %s: shared rate unavailable (Redis: %s); falls back to a local share of "
            "%.6g/s (%.6g/s ÷ %d live processes) until Redis answers",
            self.name,
            why,
            self._local.rate,
            self._global,
            self._live,
        )

    def _recover(self) -> None:
        self._shared = True
        self._pool = 0.0
        self._local.rate = self._local_rate()
        log.warning(
            "channel %s: Redis answers again; rate %.6g/s shared by %d live processes",
            self.name,
            self._global,
            self._live,
        )

    async def _leave(self) -> None:
        """Drop out of the live set, so the others' share grows at once (best effort)."""
        assert self._redis is not None
        with contextlib.suppress(*_REDIS_DOWN):
            async with asyncio.timeout(self._timeout):
                await self._redis.zrem(self._keys[1], self._member)
