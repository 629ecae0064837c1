"""A gateway whose journal fails under it: a damaged SQLite file, a disk below its reserve,
PostgreSQL gone. The edges answer 503, /readyz says 503 while it lasts, nothing crashes, and
the gateway comes back by itself when the cause goes (a damaged file excepted).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import KEY, Running, eventually, gateway_config, running_gateway, webhook_channel

from services import PrivatePostgres
from sluice.config import dump_toml
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, format_id
from sluice.sim.webhook_sink import SinkOptions, WebhookSink
from small_disk import fill, small_disk

pytestmark = pytest.mark.integration

MARK = "DAMAGE-THIS-PAGE"
PAGE = 4096
MIB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {KEY}"}


async def damaged_journal(path: Path) -> list[int]:
    """A journal of 300 queued messages whose first one's page is garbage; their ids."""
    ids = IdGenerator(node=3)
    messages = [
        Message(ids.next(), "acme", "web", f"+1555{i:06d}", "x" * 100 if i else MARK)
        for i in range(300)
    ]
    journal = SqliteJournal(path, synchronous="normal")
    await journal.open()
    await journal.insert("acme", messages)
    await journal.close()
    data = bytearray(path.read_bytes())  # noqa: ASYNC240 (nothing else runs yet)
    page = data.find(MARK.encode()) // PAGE
    data[page * PAGE : (page + 1) * PAGE] = b"\xff" * PAGE
    path.write_bytes(bytes(data))  # noqa: ASYNC240
    return [m.id for m in messages]


async def status(gw: Running, method: str, path: str, **kwargs: Any) -> int:
    async with gw.client.request(method, path, headers=AUTH, **kwargs) as resp:
        await resp.read()
        return resp.status


async def post_one(gw: Running) -> int:
    return await status(
        gw, "POST", "/v1/messages", json={"channel": "web", "to": "+1555", "body": "hi"}
    )


async def readyz(gw: Running) -> int:
    return await status(gw, "GET", "/readyz")


async def test_sluice_serve_refuses_a_damaged_journal_in_one_line(tmp_path: Path) -> None:
    await damaged_journal(tmp_path / "journal.db")
    raw = gateway_config(tmp_path, {"web": webhook_channel("http://127.0.0.1:9/hook")})
    config = tmp_path / "sluice.toml"
    config.write_text(dump_toml(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice.cli",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("sluice serve started on a damaged journal") from None
    assert proc.returncode == 1  # refused, not a crash (nor serving a damaged file)
    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(tmp_path / "journal.db") in lines[0] and "damaged" in lines[0]
    assert ".recover" in lines[0]


async def test_a_damaged_page_met_while_running_is_503_not_ready_and_no_crash(
    tmp_path: Path,
) -> None:
    ids = await damaged_journal(tmp_path / "journal.db")
    raw = gateway_config(
        tmp_path,
        {"web": webhook_channel("http://127.0.0.1:9/hook")},
        journal={"check_at_start": False},
    )
    async with running_gateway(raw) as gw:
        # The channel's claim meets the damaged page: the runner waits and tries again, the
        # process is not ready, and it goes on serving what it can.
        await eventually(lambda: not gw.gateway.ready(), what="the damage noticed")
        assert await readyz(gw) == 503
        assert await status(gw, "GET", f"/v1/messages/{format_id(ids[0])}") == 503
        assert await post_one(gw) == 202
        assert await status(gw, "GET", f"/v1/messages/{format_id(ids[0])}") == 503
        assert not gw.gateway.ready()
    # running_gateway's exit awaited the gateway's run(): it ended without an error.


async def test_a_disk_below_its_reserve_is_503_and_not_ready_until_space_returns(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", 8 * MIB) as disk:
        async with WebhookSink(SinkOptions()) as sink:
            raw = gateway_config(
                disk,
                {"web": webhook_channel(f"{sink.url}/hook")},
                journal={"free_space_reserve_bytes": 2 * MIB},
            )
            async with running_gateway(raw) as gw:
                assert await readyz(gw) == 200
                assert await post_one(gw) == 202
                filler = disk / "filler"
                fill(filler, leave=1 * MIB)
                await eventually(lambda: not gw.gateway.ready(), what="the reserve noticed")
                async with gw.client.get("/readyz") as resp:
                    assert resp.status == 503
                    error = (await resp.json())["error"]
                # The balancer's probe says why, for whoever looks at it.
                assert error["code"] == "not_ready"
                assert "journal.free_space_reserve_bytes" in error["message"]
                async with gw.client.get("/metrics") as resp:
                    assert "sluice_journal_fault 1.0" in await resp.text()
                assert await post_one(gw) == 503
                filler.unlink()
                await eventually(gw.gateway.ready, what="ready again")
                assert await readyz(gw) == 200
                assert await post_one(gw) == 202


def failing_fast(server: PrivatePostgres) -> dict[str, Any]:
    """A PostgreSQL journal whose edges give up after 1 s while delivery keeps trying 120 s."""
    return {
        "backend": "postgres",
        "url": server.url,
        "schema": "sluice",
        "reconnect_seconds": 120,
        "ingress_wait_seconds": 1,
    }


async def test_with_postgres_down_a_post_hears_503_within_its_wait_and_readyz_follows(
    private_postgres: PrivatePostgres,
) -> None:
    journal = failing_fast(private_postgres)
    async with WebhookSink(SinkOptions()) as sink:
        raw = gateway_config(journal, {"web": webhook_channel(f"{sink.url}/hook")})
        async with running_gateway(raw) as gw:
            assert await readyz(gw) == 200
            assert await post_one(gw) == 202
            await asyncio.to_thread(private_postgres.stop, "immediate")
            # A client that gives up after 60 s hears 503 (journal.reconnect_seconds is 120).
            timeout = aiohttp.ClientTimeout(total=60)
            async with gw.client.post(
                "/v1/messages",
                json={"channel": "web", "to": "+1555", "body": "during"},
                headers=AUTH,
                timeout=timeout,
            ) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
            await eventually(lambda: not gw.gateway.ready(), what="unreachable noticed")
            assert await readyz(gw) == 503
            await asyncio.to_thread(private_postgres.start)
            await eventually(gw.gateway.ready, within=60, what="ready again")
            assert await post_one(gw) == 202


async def test_with_postgres_not_answering_a_post_hears_503_within_its_wait(
    private_postgres: PrivatePostgres,
) -> None:
    """A server that stops answering but keeps its connections (SIGSTOP): the statement under
    way is given up at the edge's wait, not at the statement timeout (30 s), and a busy pool
    is not mistaken for an unreachable server."""
    journal = failing_fast(private_postgres)
    async with WebhookSink(SinkOptions()) as sink:
        raw = gateway_config(journal, {"web": webhook_channel(f"{sink.url}/hook")})
        async with running_gateway(raw) as gw:
            assert await post_one(gw) == 202
            with private_postgres.frozen():
                started = time.monotonic()
                timeout = aiohttp.ClientTimeout(total=25)
                async with gw.client.post(
                    "/v1/messages",
                    json={"channel": "web", "to": "+1555", "body": "during"},
                    headers=AUTH,
                    timeout=timeout,
                ) as resp:
                    assert resp.status == 503
                # Well before the statement timeout; generous for a loaded machine.
                assert time.monotonic() - started < 15
            await eventually(gw.gateway.ready, within=60, what="ready again")
            assert await post_one(gw) == 202
