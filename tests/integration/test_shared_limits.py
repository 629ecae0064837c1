"""A channel's rate shared by several `sluice serve` processes through the real Redis: it holds
across processes, falls back to a local share when Redis dies, and recovers when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from harness import ServeProcess, gateway_config, post_batch, webhook_channel

from services import PgTarget, PrivateRedis, RedisTarget, free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

RATE = 150


@contextlib.asynccontextmanager
async def gateways(
    tmp_path: Path, pg: PgTarget, redis: RedisTarget, sink_url: str, count: int
) -> AsyncIterator[list[ServeProcess]]:
    processes = []
    for i in range(count):
        port = free_port()
        raw = gateway_config(
            {"backend": "postgres", "url": pg.url, "schema": pg.schema},
            {"web": webhook_channel(f"{sink_url}/hook", width=8, rate=RATE, burst=RATE / 10)},
            server={"listen": f"127.0.0.1:{port}", "node": i + 1},
            redis={"url": redis.url, "prefix": redis.prefix, "liveness_seconds": 2},
        )
        config = tmp_path / f"gw{i}.toml"
        config.write_text(dump_toml(raw))
        processes.append(ServeProcess(config, port, tmp_path / f"gw{i}.log"))
    try:
        await asyncio.gather(*(p.start() for p in processes))
        yield processes
    finally:
        for p in processes:
            await p.stop_quietly()


async def rate_over(sink: WebhookSink, seconds: float) -> float:
    """Messages per second the sink took over the next `seconds`."""
    before, started = len(sink.received("/hook")), time.monotonic()
    await asyncio.sleep(seconds)  # a measurement window, not a wait for an event
    return (len(sink.received("/hook")) - before) / (time.monotonic() - started)


async def metric(process: ServeProcess, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{process.port}/metrics") as resp,
    ):
        text = await resp.text()
    found = re.search(rf'^{name}\{{channel="web"\}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


async def until_metric(process: ServeProcess, name: str, value: float, within: float) -> None:
    for _ in range(int(within * 10)):
        if await metric(process, name) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} did not become {value} within {within} s")


async def queue(processes: list[ServeProcess], count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for n, start in enumerate(range(0, count, 500)):
            port = processes[n % len(processes)].port
            assert (
                await post_batch(session, port, start, min(500, count - start), f"q{n}") is not None
            )


async def test_the_rate_holds_across_three_processes(
    tmp_path: Path, pg_schema: PgTarget, redis_prefix: RedisTarget
) -> None:
    async with (
        WebhookSink(SinkOptions(latency_ms=1)) as sink,
        gateways(tmp_path, pg_schema, redis_prefix, sink.url, 3) as processes,
    ):
        await queue(processes, 2000)  # more than the test can send: every process stays busy
        await sink.wait_for(RATE, path="/hook", timeout=10)  # past the start
        measured = await rate_over(sink, 4.0)
        assert RATE * 0.8 <= measured <= RATE * 1.1, measured  # never above; none starved
        for process in processes:  # all three took part, each knowing of the others
            assert await metric(process, "sluice_channel_rate_processes") == 3
            assert await metric(process, "sluice_channel_rate_shared") == 1


async def test_redis_dies_the_rate_falls_back_to_a_share_and_recovers(
    tmp_path: Path, pg_schema: PgTarget, private_redis: PrivateRedis
) -> None:
    redis = RedisTarget(private_redis.url, "t")
    async with (
        WebhookSink(SinkOptions(latency_ms=1)) as sink,
        gateways(tmp_path, pg_schema, redis, sink.url, 2) as processes,
    ):
        await queue(processes, 3000)
        await sink.wait_for(RATE, path="/hook", timeout=10)
        shared = await rate_over(sink, 2.0)
        await asyncio.to_thread(private_redis.kill)
        for process in processes:
            await until_metric(process, "sluice_channel_rate_shared", 0, within=5)
            # Each takes rate ÷ the processes Redis counted last: the sum stays the rate.
            assert await metric(process, "sluice_channel_rate_share") == RATE / 2
        fallen_back = await rate_over(sink, 2.0)
        await asyncio.to_thread(private_redis.start)
        for process in processes:
            await until_metric(process, "sluice_channel_rate_shared", 1, within=10)
        recovered = await rate_over(sink, 2.0)
    for measured in (shared, fallen_back, recovered):
        assert RATE * 0.8 <= measured <= RATE * 1.15, (shared, fallen_back, recovered)
