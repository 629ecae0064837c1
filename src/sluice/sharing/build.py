"""What the gateway processes share through Redis (`[redis]`): channel rates, breaker news and
the idempotency cache. Without `redis.url` there is nothing to share and every limit is the
process's own.

Examples:
    sharing = Sharing(config)
    bucket = sharing.bucket("sms", config.channels["sms"])       # None: a local bucket
    runner = ChannelRunner(..., bucket=bucket, on_breaker_open=sharing.breaker_opened("sms"))
    sharing.watch_breaker("sms", runner.breaker)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(sharing.run())   # cancel it, then `await sharing.close()`
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import redis.asyncio

from sluice.config import ChannelConfig, Config
from sluice.flow.breaker import CircuitBreaker
from sluice.sharing.breaker_news import BreakerNews, BreakerNewsStats
from sluice.sharing.idempotency_cache import IdempotencyCache, IdempotencyCacheStats
from sluice.sharing.rate import SharedRateStats, SharedTokenBucket


class SharingStats(msgspec.Struct, frozen=True):
    """What this process shares through Redis, as its parts tell it."""

    #: False without `redis.url`: nothing is shared, and the rest is empty.
    redis: bool
    #: The shared rates, by channel (channels with a rate), in the order of the config.
    rates: dict[str, SharedRateStats]
    news: BreakerNewsStats | None
    idempotency: IdempotencyCacheStats | None


class Sharing:
    def __init__(self, config: Config) -> None:
        settings = config.redis
        self.client: redis.asyncio.Redis | None = None
        self.buckets: dict[str, SharedTokenBucket] = {}
        self.news: BreakerNews | None = None
        self.idempotency: IdempotencyCache | None = None
        self._settings = settings
        if not settings.url:
            return
        self.client = redis.asyncio.Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout_seconds,
            socket_connect_timeout=settings.timeout_seconds,
            # RESP2, the replies the scripts and their parsing here expect, whatever redis-py
            # defaults to (RESP3 from version 8, which also costs a HELLO on every connect).
            protocol=2,
        )
        self.news = BreakerNews(
            self.client, prefix=settings.prefix, timeout_seconds=settings.timeout_seconds
        )
        self.idempotency = IdempotencyCache(
            self.client,
            prefix=settings.prefix,
            ttl_seconds=config.limits.idempotency_ttl_seconds,
            timeout_seconds=settings.timeout_seconds,
        )

    def bucket(self, name: str, channel: ChannelConfig) -> SharedTokenBucket | None:
        """The shared rate of channel `name`, or None when it has its own (no Redis, or no
        rate to share)."""
        if self.client is None or channel.rate <= 0:
            return None
        bucket = SharedTokenBucket(
            name,
            channel.rate,
            channel.bucket_burst,
            self.client,
            prefix=self._settings.prefix,
            liveness_seconds=self._settings.liveness_seconds,
            timeout_seconds=self._settings.timeout_seconds,
        )
        self.buckets[name] = bucket
        return bucket

    def stats(self) -> SharingStats:
        return SharingStats(
            self.client is not None,
            {name: bucket.stats() for name, bucket in self.buckets.items()},
            self.news.stats() if self.news is not None else None,
            self.idempotency.stats() if self.idempotency is not None else None,
        )

    def breaker_opened(self, name: str) -> Callable[[float], None] | None:
        """The `on_open` hook of channel `name`'s breaker (None without Redis)."""
        return self.news.opened_for(name) if self.news is not None else None

    def watch_breaker(self, name: str, breaker: CircuitBreaker) -> None:
        if self.news is not None:
            self.news.watch(name, breaker)

    async def run(self) -> None:
        """Keep the shared rates topped up and listen for breaker news, until cancelled."""
        if self.client is None:
            return
        async with asyncio.TaskGroup() as tg:
            for bucket in self.buckets.values():
                tg.create_task(bucket.run())
            if self.news is not None:
                tg.create_task(self.news.run())

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
