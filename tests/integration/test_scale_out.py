"""Many `sluice serve` processes on one PostgreSQL journal: a worker killed with SIGKILL, the
database server restarted under load. Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from harness import (
    KEY,
    ServeProcess,
    eventually,
    gateway_config,
    post_batch,
    webhook_channel,
)

from services import PgTarget, PrivatePostgres, free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

WIDTH = 8
#: Short leases, so that a dead worker's messages come back within seconds; a journal that
#: gives up on an unreachable server after a second (the default is 30).
FAST_LEASES = {
    "lease_seconds": 1.5,
    "heartbeat_seconds": 0.3,
    "sweep_seconds": 0.3,
    "reconnect_seconds": 1.0,
}


def _config(tmp_path: Path, name: str, pg: PgTarget, sink_url: str, port: int, node: int) -> Path:
    raw = gateway_config(
        {"backend": "postgres", "url": pg.url, "schema": pg.schema, **FAST_LEASES},
        {"web": webhook_channel(f"{sink_url}/hook", width=WIDTH)},
        server={"listen": f"127.0.0.1:{port}", "node": node},
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(raw))
    return path


@contextlib.asynccontextmanager
async def gateways(
    tmp_path: Path, pg: PgTarget, sink_url: str, count: int
) -> AsyncIterator[list[ServeProcess]]:
    processes = []
    for i in range(count):
        port = free_port()
        config = _config(tmp_path, f"worker{i}", pg, sink_url, port, node=i + 1)
        processes.append(ServeProcess(config, port, tmp_path / f"worker{i}.log"))
    try:
        await asyncio.gather(*(p.start() for p in processes))
        yield processes
    finally:
        for p in processes:
            await p.stop_quietly()


async def _states(pg: PgTarget) -> dict[int, int]:
    conn = await asyncpg.connect(pg.url, server_settings={"search_path": pg.schema})
    try:
        rows = await conn.fetch("SELECT state, count(*) FROM messages GROUP BY state")
    finally:
        await conn.close()
    return {state: n for state, n in rows}


async def test_sigkill_one_of_three_workers_the_others_finish_its_work(
    tmp_path: Path, pg_schema: PgTarget
) -> None:
    total = 3000
    async with (
        WebhookSink(SinkOptions(latency_ms=5)) as sink,
        gateways(tmp_path, pg_schema, sink.url, 3) as workers,
    ):
        acked: list[str] = []
        async with aiohttp.ClientSession() as session:
            for n, start in enumerate(range(0, total, 500)):
                ids = await post_batch(session, workers[n % 3].port, start, 500, f"batch-{n}")
                assert ids is not None
                acked += ids
        await sink.wait_for(total // 4, path="/hook")
        victim = workers[1]
        await victim.kill()
        assert len(set(sink.received("/hook"))) < total, "the kill came too late to prove anything"
        await eventually(
            lambda: set(acked) <= set(sink.received("/hook")),
            within=60,
            what="every acknowledged message delivered by the two workers left",
        )
        await _until_all_sent(pg_schema, total, within=20)
        for worker in (workers[0], workers[2]):
            assert await worker.terminate() == 0
        reclaimed = await _reclaimed(pg_schema)
    received = sink.received("/hook")
    duplicates = len(received) - len(set(received))
    # Only what the killed worker held when it died can go out twice.
    assert reclaimed > 0
    assert duplicates <= reclaimed


async def _reclaimed(pg: PgTarget) -> int:
    conn = await asyncpg.connect(pg.url, server_settings={"search_path": pg.schema})
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM events WHERE detail LIKE 'lease expired%'"
        )
    finally:
        await conn.close()
    return n


async def _until_all_sent(pg: PgTarget, total: int, within: float) -> None:
    states: dict[int, int] = {}
    for _ in range(int(within * 10)):
        states = await _states(pg)
        if states == {3: total}:
            return
        await asyncio.sleep(0.1)
    conn = await asyncpg.connect(pg.url, server_settings={"search_path": pg.schema})
    try:
        stuck = await conn.fetch(
            "SELECT id, state, lease_owner, lease_until, attempts, updated_at FROM messages "
            "WHERE state <> 3 LIMIT 5"
        )
        events = await conn.fetch(
            "SELECT message_id, at, state, detail FROM events WHERE message_id = $1 ORDER BY seq",
            stuck[0][0] if stuck else 0,
        )
    finally:
        await conn.close()
    raise AssertionError(f"not all sent within {within} s: {states}; {stuck}; {events}")


async def test_a_postgres_restart_mid_run_loses_nothing_acknowledged(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    pg = PgTarget(private_postgres.url, "sluice")
    async with (
        WebhookSink(SinkOptions(latency_ms=2)) as sink,
        gateways(tmp_path, pg, sink.url, 2) as workers,
    ):
        acked: list[str] = []
        restarted = asyncio.Event()

        async def produce() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                for n in range(40):
                    start = n * 100
                    # A batch that was not acknowledged is sent again with the same key.
                    for _ in range(600):
                        ids = await post_batch(session, workers[n % 2].port, start, 100, f"b{n}")
                        if ids is not None:
                            break
                        await asyncio.sleep(0.05)  # a client's pause before it tries again
                    assert ids is not None, "a batch was never acknowledged"
                    acked.extend(ids)
                    if n == 20:
                        await restarted.wait()

        async def restart() -> None:
            await eventually(lambda: len(acked) >= 1000, what="a thousand messages in")
            await asyncio.to_thread(private_postgres.stop, "immediate")  # as in a crash
            await asyncio.sleep(0.5)
            await asyncio.to_thread(private_postgres.start)
            restarted.set()

        await asyncio.gather(produce(), restart())
        assert len(acked) == 4000
        await eventually(
            lambda: set(acked) <= set(sink.received("/hook")),
            within=60,
            what="every acknowledged message delivered after the restart",
        )
        await _until_all_sent(pg, 4000, within=30)
        for worker in workers:
            assert await worker.terminate() == 0
    # The workers did see the server go away (and went on by themselves).
    logs = "".join(w.log_path.read_text() for w in workers)
    assert "trying again" in logs


async def test_postgres_down_longer_than_the_retries_the_gateway_waits_it_out(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    pg = PgTarget(private_postgres.url, "sluice")
    async with (
        WebhookSink(SinkOptions(latency_ms=2)) as sink,
        gateways(tmp_path, pg, sink.url, 1) as (gateway,),
        aiohttp.ClientSession() as session,
    ):
        acked = await post_batch(session, gateway.port, 0, 500, "before")
        assert acked is not None
        await asyncio.to_thread(private_postgres.stop, "immediate")
        # Past the journal's retries: the producer is told to come back, nothing crashes.
        async with session.post(
            f"http://127.0.0.1:{gateway.port}/v1/messages",
            json={"channel": "web", "to": "+1555", "body": "during"},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
        await asyncio.sleep(1.5)  # runners, callbacks and the upkeep all meet the outage
        assert gateway.proc is not None and gateway.proc.returncode is None
        await asyncio.to_thread(private_postgres.start)
        after = None
        for _ in range(100):  # the producer comes back, as told
            after = await post_batch(session, gateway.port, 500, 500, "after")
            if after is not None:
                break
            await asyncio.sleep(0.1)
        assert after is not None
        acked += after
        await eventually(
            lambda: set(acked) <= set(sink.received("/hook")),
            within=60,
            what="everything acknowledged delivered once the server is back",
        )
        await _until_all_sent(pg, 1000, within=30)
        assert await gateway.terminate() == 0
