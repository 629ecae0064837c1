"""`sluice serve` with `server.api_processes` on SQLite: a real supervisor, the journal's owner
(delivering) and an edge process (HTTP) as real processes, a real webhook sink. What the user
must see: the same API as one process, every acknowledged message delivered, the owner's
figures on the edge's port, and SIGKILL of either process costing no acknowledged message."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from harness import KEY, ServeProcess, eventually, gateway_config, post_batch, webhook_channel

from services import free_port
from sluice.config import ConfigError, dump_toml, from_dict
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

BATCH = 100


def _write_config(tmp_path: Path, sink_url: str, port: int, **sections: Any) -> Path:
    raw = gateway_config(
        tmp_path,
        {"web": webhook_channel(f"{sink_url}/hook", width=16, rate=2000, burst=50)},
        server={"listen": f"127.0.0.1:{port}", "api_processes": 1},
        journal={"synchronous": "full"},
        **sections,
    )
    path = tmp_path / "sluice.toml"
    path.write_text(dump_toml(raw))
    return path


def _child_pids(log: Path) -> dict[int, int]:
    """The latest pid of each child slot, from the supervisor's log."""
    pids: dict[int, int] = {}
    for slot, pid in re.findall(r"child (\d+) started \(pid (\d+)", log.read_text()):
        pids[int(slot)] = int(pid)
    return pids


async def _produce(port: int, batches: range, acked: list[str], refused: list[int]) -> None:
    """Post batches one after the other, each with its own key, retried until acknowledged."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for number in batches:
            start = number * BATCH
            while (ids := await post_batch(session, port, start, BATCH, f"b{number}")) is None:
                refused.append(number)
                await asyncio.sleep(0.05)
            acked.extend(ids)


async def test_one_api_with_the_owners_figures_and_every_message_delivered(
    tmp_path: Path,
) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        port, smtp_port = free_port(), free_port()
        # The SMTP front door runs in the edge too: it restores its memory from the owner's
        # journal at its start, so the edge waits for the owner first.
        smtp = {"listen": f"127.0.0.1:{smtp_port}", "tenant": "acme"}
        config = _write_config(tmp_path, sink.url, port, smtp=smtp)
        serve = ServeProcess(config, port, tmp_path / "s.log")
        try:
            await serve.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", smtp_port)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
            writer.close()
            acked: list[str] = []
            await asyncio.gather(*(_produce(port, range(i, 20, 4), acked, []) for i in range(4)))
            await eventually(
                lambda: set(acked) <= set(sink.received("/hook")),
                within=30,
                what="every acknowledged message delivered",
            )
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
                auth = {"Authorization": f"Bearer {KEY}"}

                async def sent() -> bool:
                    async with client.get("/v1/channels", headers=auth) as resp:
                        channels = (await resp.json())["channels"]
                    return bool(channels[0]["sent"] == len(acked))

                # The runner's figures live in the owner; the edge shows them (≤ 1 s old).
                await eventually(sent, within=10, what="the owner's sent count on /v1/channels")
                async with client.get(f"/v1/messages/{acked[0]}", headers=auth) as resp:
                    assert (await resp.json())["state"] == "sent"
                async with client.get("/metrics") as resp:
                    text = await resp.text()
            families = re.findall(r"^# HELP (\S+)", text, re.MULTILINE)
            assert len(families) == len(set(families)), "a metric family twice"
            assert "sluice_http_connections" in families  # the edge's own
            assert any(name.startswith("sluice_journal_") for name in families)  # the owner's
            # The owner's send latencies, not the edge's empty histogram of the same name.
            assert re.search(
                r'^sluice_send_seconds_count\{channel="web",outcome="sent"\} 2000', text, re.M
            )
            assert re.search(r'^sluice_messages_accepted_total\{tenant="acme"\} 2000', text, re.M)
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()
        received = sink.received("/hook")
        assert len(received) == len(set(received)) == 2000


async def test_sigkill_of_the_owner_or_the_edge_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=2)) as sink:
        port = free_port()
        log = tmp_path / "s.log"
        serve = ServeProcess(_write_config(tmp_path, sink.url, port), port, log)
        try:
            await serve.start()
            acked: list[str] = []
            refused: list[int] = []
            producing = asyncio.gather(
                *(_produce(port, range(i, 120, 3), acked, refused) for i in range(3))
            )
            await eventually(lambda: len(acked) >= 2000, within=30, what="traffic")
            owner = _child_pids(log)[0]
            os.kill(owner, signal.SIGKILL)  # the journal's owner, mid-traffic
            await eventually(
                lambda: _child_pids(log)[0] != owner, within=20, what="the owner restarted"
            )
            await eventually(lambda: len(acked) >= 6000, within=60, what="traffic again")
            edge = _child_pids(log)[1]
            os.kill(edge, signal.SIGKILL)  # the edge, mid-traffic
            await asyncio.wait_for(producing, 120)
            assert refused, "the kills came when nothing was refused: they proved nothing"
            await eventually(
                lambda: set(acked) <= set(sink.received("/hook")),
                within=60,
                what="every acknowledged message delivered after the restarts",
            )
            assert _child_pids(log)[1] != edge
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()
        assert len(acked) == len(set(acked)) == 120 * BATCH  # keys kept retries single
        with sqlite3.connect(tmp_path / "journal.db") as conn:
            (stored,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        assert stored == 120 * BATCH  # nothing stored twice, nothing missing


async def test_audiences_and_a_broadcast_through_the_edge_expanded_by_the_owner(
    tmp_path: Path,
) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        port = free_port()
        audience = {"expansion_chunk": 50, "min_lookahead": 100, "expander_poll_seconds": 30}
        config = _write_config(tmp_path, sink.url, port, audience=audience)
        serve = ServeProcess(config, port, tmp_path / "s.log")
        try:
            await serve.start()
            auth = {"Authorization": f"Bearer {KEY}"}
            lines = [
                {"id": f"s{i:03d}", "webhook": f"https://example.com/{i}", "topics": ["news"]}
                for i in range(300)
            ] + [{"id": "both", "webhook": "https://example.com/b", "topics": ["news", "sport"]}]
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
                async with client.post(
                    "/v1/subscribers/import",
                    data=b"\n".join(msgspec.json.encode(line) for line in lines),
                    headers={**auth, "Content-Type": "application/x-ndjson"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                async with client.get("/v1/topics/news", headers=auth) as resp:
                    assert (await resp.json())["subscribers"] == 301
                body = {
                    "topics": ["news", "sport"],
                    "channels": ["web"],
                    "content": {"webhook": {"body": "hello {{ subscriber.id }}"}},
                }
                async with client.post("/v1/broadcasts", json=body, headers=auth) as resp:
                    created = await resp.json()
                    assert resp.status == 202, created

                async def completed() -> bool:
                    async with client.get(f"/v1/broadcasts/{created['id']}", headers=auth) as r:
                        return bool((await r.json())["phase"] == "completed")

                # The owner's expander is told of the broadcast by the edge's call (it polls
                # only every 30 s here) and delivers it; the edge shows its counts.
                await eventually(completed, within=20, what="the broadcast completed")
                async with client.get(f"/v1/broadcasts/{created['id']}", headers=auth) as resp:
                    final = await resp.json()
            assert final["planned"] == 301 and final["suppressed"] == {"duplicate": 1}
            assert len(set(sink.received("/hook"))) == 301
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()


def test_the_split_is_for_the_embedded_journal() -> None:
    with pytest.raises(ConfigError, match=r"server\.api_processes"):
        from_dict({"server": {"api_processes": 1}, "journal": {"backend": "postgres"}})
    long_path = "/tmp/" + "d" * 100 + "/journal.db"
    with pytest.raises(ConfigError, match=r"journal\.path"):
        from_dict({"server": {"api_processes": 1}, "journal": {"path": long_path}})
    assert from_dict({"server": {"api_processes": 2}}).server.api_processes == 2
