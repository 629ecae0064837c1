"""Crash and shutdown of a real `sluice serve` process: nothing acknowledged is lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import msgspec
import pytest
from harness import (
    KEY,
    ServeProcess,
    eventually,
    gateway_config,
    webhook_channel,
)

from services import free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

TOTAL = 3000
WIDTH = 16


def _write_config(tmp_path: Path, sink_url: str, port: int) -> Path:
    raw = gateway_config(
        tmp_path,
        {"web": webhook_channel(f"{sink_url}/hook", width=WIDTH, rate=1500, burst=50)},
        server={"listen": f"127.0.0.1:{port}"},
        journal={"synchronous": "full"},
    )
    path = tmp_path / "sluice.toml"
    path.write_text(dump_toml(raw))
    return path


async def _post_all(port: int, total: int) -> list[str]:
    """Post in batches; only ids in a 202 answer count as acknowledged."""
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, total, 500):
            batch = [
                {"channel": "web", "to": f"+1555{i:06d}", "body": f"m{i}"}
                for i in range(start, min(total, start + 500))
            ]
            async with session.post(
                f"http://127.0.0.1:{port}/v1/messages",
                data=msgspec.json.encode({"messages": batch}),
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 202
                ids.extend((await resp.json())["ids"])
    return ids


def _recovered(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT COUNT(*) FROM events WHERE detail = 'recovered at start'"
        ).fetchone()
    return int(n)


async def test_sigkill_mid_run_loses_nothing_and_duplicates_are_bounded(tmp_path: Path) -> None:
    async with WebhookSink(SinkOptions(latency_ms=2)) as sink:
        port = free_port()
        config = _write_config(tmp_path, sink.url, port)
        serve = ServeProcess(config, port, tmp_path / "serve.log")
        try:
            await serve.start()
            acked = await _post_all(port, TOTAL)
            await sink.wait_for(TOTAL // 4, path="/hook")
            await serve.kill()
            delivered_before = len(set(sink.received("/hook")))
            assert delivered_before < TOTAL, "the crash came too late to prove anything"
            await serve.start()
            await eventually(
                lambda: set(acked) <= set(sink.received("/hook")),
                within=60,
                what="every acknowledged message delivered after the restart",
            )
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()
        received = sink.received("/hook")
        duplicates = len(received) - len(set(received))
        in_flight_at_crash = _recovered(tmp_path / "journal.db")
        assert duplicates <= in_flight_at_crash
        with sqlite3.connect(tmp_path / "journal.db") as conn:
            states = dict(conn.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))
        assert states == {3: TOTAL}  # all sent, none left sending or queued


async def test_sigterm_finishes_in_flight_work_and_exits_cleanly(tmp_path: Path) -> None:
    async with WebhookSink(SinkOptions(latency_ms=20)) as sink:
        port = free_port()
        config = _write_config(tmp_path, sink.url, port)
        serve = ServeProcess(config, port, tmp_path / "serve.log")
        try:
            await serve.start()
            acked = await _post_all(port, 1000)
            await sink.wait_for(100, path="/hook")
            assert await serve.terminate() == 0
            # Nothing is left leased: what was in flight finished or went back to the queue.
            with sqlite3.connect(tmp_path / "journal.db") as conn:
                (sending,) = conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE state = 2"
                ).fetchone()
            assert sending == 0
            await serve.start()
            await eventually(
                lambda: set(acked) <= set(sink.received("/hook")),
                within=60,
                what="the rest delivered after the restart",
            )
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()
        received = sink.received("/hook")
        assert len(received) == len(set(received)), "a graceful stop must not duplicate"
