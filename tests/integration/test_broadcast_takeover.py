"""Two `sluice serve` processes on one PostgreSQL journal: the one expanding a broadcast is
killed with SIGKILL, the other takes its lease over once it lapses and finishes the
broadcast; both deliver; nobody is missed and nobody gets two messages from expansion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from harness import KEY, ServeProcess, eventually, gateway_config, webhook_channel

from services import PgTarget, free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

SUBSCRIBERS = 1500
AUTH = {"Authorization": f"Bearer {KEY}"}


def _process(tmp_path: Path, pg: PgTarget, sink_url: str, name: str, node: int) -> ServeProcess:
    port = free_port()
    raw = gateway_config(
        {
            "backend": "postgres",
            "url": pg.url,
            "schema": pg.schema,
            "lease_seconds": 1.5,
            "heartbeat_seconds": 0.3,
            "sweep_seconds": 0.3,
        },
        {"web": webhook_channel(f"{sink_url}/hook", width=8, rate=200, burst=20)},
        server={"listen": f"127.0.0.1:{port}", "node": node},
        audience={
            "expansion_chunk": 50,
            "min_lookahead": 100,
            "lookahead_seconds": 0.2,
            "expander_lease_seconds": 1.5,
            "expander_poll_seconds": 0.2,
        },
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(raw))
    return ServeProcess(path, port, tmp_path / f"{name}.log")


async def _lease_owner(pg: PgTarget) -> int | None:
    conn = await asyncpg.connect(pg.url, server_settings={"search_path": pg.schema})
    try:
        owner: int | None = await conn.fetchval("SELECT lease_owner FROM broadcasts")
    finally:
        await conn.close()
    return owner


async def _view(session: aiohttp.ClientSession, port: int, bid: str) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/v1/broadcasts/{bid}", headers=AUTH) as r:
        assert r.status == 200
        view: dict[str, Any] = await r.json()
        return view


async def test_a_broadcast_outlives_the_process_expanding_it(
    tmp_path: Path, pg_schema: PgTarget
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=2)) as sink:
        first = _process(tmp_path, pg_schema, sink.url, "first", 1)
        second = _process(tmp_path, pg_schema, sink.url, "second", 2)
        try:
            await first.start()
            async with aiohttp.ClientSession() as session:
                body = b"\n".join(
                    msgspec.json.encode(
                        {"id": f"s{i:05d}", "webhook": f"https://e.com/{i}", "topics": ["news"]}
                    )
                    for i in range(SUBSCRIBERS)
                )
                base = f"http://127.0.0.1:{first.port}"
                async with session.post(
                    f"{base}/v1/subscribers/import",
                    data=body,
                    headers={**AUTH, "Content-Type": "application/x-ndjson"},
                ) as resp:
                    assert resp.status == 200
                async with session.post(
                    f"{base}/v1/broadcasts",
                    json={
                        "topics": ["news"],
                        "channels": ["web"],
                        "content": {"webhook": {"body": "hi {{ subscriber.id }}"}},
                    },
                    headers=AUTH,
                ) as resp:
                    assert resp.status == 202
                    bid = (await resp.json())["id"]
                # The first process leases and expands it; then the second starts.
                await sink.wait_for(100, path="/hook")
                owner = await _lease_owner(pg_schema)
                assert owner is not None
                await second.start()
                await first.kill()
                before = await _view(session, second.port, bid)
                assert before["examined"] < SUBSCRIBERS, "the kill came after expansion"

                async def completed() -> bool:
                    view = await _view(session, second.port, bid)
                    return bool(view["phase"] == "completed")

                await eventually(completed, within=90, what="the broadcast completed")
                view = await _view(session, second.port, bid)
                assert view["planned"] == SUBSCRIBERS and view["counts"]["sent"] == SUBSCRIBERS
                assert await _lease_owner(pg_schema) not in (None, owner)  # taken over
                received = sink.received("/hook")
                assert len(set(received)) == SUBSCRIBERS
                for message_id in {i for i in received if received.count(i) > 1}:
                    async with session.get(
                        f"http://127.0.0.1:{second.port}/v1/messages/{message_id}",
                        headers=AUTH,
                    ) as resp:
                        timeline = (await resp.json())["timeline"]
                    assert [e["state"] for e in timeline].count("sending") >= 2, timeline
            assert await second.terminate() == 0
        finally:
            await first.stop_quietly()
            await second.stop_quietly()
