"""Breaker news shared by every gateway process through Redis: one process finds a peer down,
every process parks that channel.

Each process's channel breakers count their own failures (flow/breaker.py). When one
opens, this process publishes it on ``{prefix}:breakers`` (pub/sub) and leaves a key
``{prefix}:breaker:{channel}`` that expires with the cooldown. Every other process trips its
breaker of that channel for the same cooldown, so a dead SMSC or webhook receiver costs the
fleet one process's threshold of failures instead of each process's. A process that starts
(or reconnects to Redis) while a cooldown runs reads the key and trips too. Half-open probing
stays per process: each one probes once after its cooldown, and a success closes only its own
breaker (the others follow at their own probe).

Redis is not needed for safety: without it every breaker still counts its own failures. Faults
are logged once per outage; the subscriber reconnects with backoff.

Examples:
    news = BreakerNews(redis, prefix="sluice")
    breaker = CircuitBreaker(10, 5.0, 120.0, on_open=news.opened_for("sms"))
    news.watch("sms", breaker)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(news.run())  # cancel to stop
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from sluice.flow.breaker import CircuitBreaker

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

log = logging.getLogger("sluice.channel")

#: Backoff of the subscriber after a Redis fault.
BACKOFF_MIN_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


class _News(msgspec.Struct, array_like=True):
    channel: str
    seconds: float
    origin: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_News).decode


class BreakerNewsStats(msgspec.Struct, frozen=True):
    """Breaker openings published to the other processes, and heard from them."""

    published: int
    heard: int


class BreakerNews:
    def __init__(
        self, redis: Redis, *, prefix: str = "sluice", timeout_seconds: float = 0.5
    ) -> None:
        self._redis = redis
        self._topic = f"{prefix}:breakers"
        self._key_prefix = f"{prefix}:breaker:"
        self._timeout = timeout_seconds
        #: This process, so that it ignores its own news.
        self._origin = int.from_bytes(os.urandom(8), "big") >> 1
        self._breakers: dict[str, CircuitBreaker] = {}
        #: Owns the publishing tasks while `run` listens (None before and after).
        self._tasks: asyncio.TaskGroup | None = None
        self._down = False
        #: Breakers opened here, and tripped by news from elsewhere (for metrics and tests).
        self.published = 0
        self.tripped = 0
        #: Set once the subscription is listening (for tests and start-up ordering).
        self.listening = asyncio.Event()

    def stats(self) -> BreakerNewsStats:
        return BreakerNewsStats(self.published, self.tripped)

    def watch(self, channel: str, breaker: CircuitBreaker) -> None:
        """Trip `breaker` when another process reports `channel`'s peer down."""
        self._breakers[channel] = breaker

    def opened_for(self, channel: str) -> Callable[[float], None]:
        """The `on_open` hook of `channel`'s breaker: tells the other processes (while `run`
        runs; a breaker that opens before or after stays this process's news)."""

        def opened(seconds: float) -> None:
            if self._tasks is None:
                log.info("breaker news: channel %s opened while not connected; not shared", channel)
                return
            self._tasks.create_task(self._publish(channel, seconds))

        return opened

    async def _publish(self, channel: str, seconds: float) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(self._key_prefix + channel, b"1", px=max(1, int(seconds * 1000)))
                    pipe.publish(self._topic, _encode(_News(channel, seconds, self._origin)))
                    await pipe.execute()
            self.published += 1
        except (RedisError, OSError, TimeoutError) as exc:
            self._fault(exc)

    async def run(self) -> None:
        """Listen for news until cancelled; reconnect after a fault. News of breakers opened
        here is published meanwhile, each in a task of this run (cancelled with it)."""
        delay = BACKOFF_MIN_SECONDS
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                while True:
                    try:
                        await self._listen()
                    except (RedisError, OSError, TimeoutError) as exc:
                        self._fault(exc)
                    self.listening.clear()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_SECONDS)
        finally:
            self._tasks = None

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self._timeout):
                await pubsub.subscribe(self._topic)
            await self._catch_up()
            if self._down:
                self._down = False
                log.warning("breaker news: Redis answers again")
            self.listening.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    self._heard(message["data"])
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    # redis-py < 8 leaves PubSub.aclose unannotated (the other aclose are typed).
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    async def _catch_up(self) -> None:
        """Trip breakers whose channel another process parked before we listened."""
        channels = list(self._breakers)
        if not channels:
            return
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.pttl(self._key_prefix + channel)
                remaining = await pipe.execute()
        for channel, ms in zip(channels, remaining, strict=True):
            if isinstance(ms, int) and ms > 0:
                self._trip(channel, ms / 1000)

    def _heard(self, data: bytes) -> None:
        try:
            news = _decode(data)
        except msgspec.DecodeError:
            log.warning("breaker news: unreadable message ignored (%d bytes)", len(data))
            return
        if news.origin != self._origin:
            self._trip(news.channel, news.seconds)

    def _trip(self, channel: str, seconds: float) -> None:
        breaker = self._breakers.get(channel)
        if breaker is not None and breaker.trip(seconds):
            self.tripped += 1
            log.warning(
                "channel %s parked for %.1f s: another process found its peer down",
                channel,
                seconds,
            )

    def _fault(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("breaker news: Redis unreachable (%s); breakers stay per process", exc)
