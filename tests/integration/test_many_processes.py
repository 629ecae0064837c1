"""`sluice serve --workers 2` as a user runs it: a supervisor and two real gateways sharing one
port and one PostgreSQL journal. The supervisor with stand-in children:
test_supervisor_processes.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import msgspec
import pytest
from harness import KEY, gateway_config, webhook_channel

from services import PgTarget, free_port
from sluice.config import dump_toml
from sluice.model import id_node, parse_id
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

NODE = 100
_STARTED = re.compile(r"child (\d+) started \(pid (\d+), node (\d+)\)")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


class Supervised:
    """`sluice serve --workers N` as a subprocess, its output (the children's too) in a file."""

    def __init__(self, tmp_path: Path, journal: dict[str, object], sink_url: str) -> None:
        self.port = free_port()
        self.smtp_port = free_port()
        raw = gateway_config(
            journal,
            {"web": webhook_channel(f"{sink_url}/hook", width=8)},
            server={"listen": f"127.0.0.1:{self.port}", "node": NODE},
            smtp={"tenant": "acme", "listen": f"127.0.0.1:{self.smtp_port}"},
        )
        self.config = tmp_path / "sluice.toml"
        self.config.write_text(dump_toml(raw))
        self.log_path = tmp_path / "serve.log"
        self.proc: asyncio.subprocess.Process | None = None

    def log(self) -> str:
        return self.log_path.read_text()

    def children(self) -> dict[int, int]:
        """The pid of each slot's latest child, from the supervisor's log."""
        return {int(m[1]): int(m[2]) for m in _STARTED.finditer(self.log())}

    def serving(self, slot: int) -> int:
        """How many times the child of `slot` said it serves."""
        return self.log().count(f"[child {slot}] sluice: sluice serving on")

    async def start(self, workers: int = 2) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sluice.cli", "serve",
                "--config", str(self.config), "--workers", str(workers),
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        await _until(
            lambda: self._check_running() and all(self.serving(s) for s in range(workers)),
            "every child to serve",
        )
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/readyz") as resp,
        ):
            assert resp.status == 200

    def _check_running(self) -> bool:
        assert self.proc is not None
        assert self.proc.returncode is None, self.log()
        return True

    async def post(self, session: aiohttp.ClientSession, n: int = 1) -> list[str]:
        """n messages in one request, on a connection of its own (any child may take it)."""
        batch = [{"channel": "web", "to": f"+1555{i:04d}", "body": "hello"} for i in range(n)]
        async with session.post(
            f"http://127.0.0.1:{self.port}/v1/messages",
            data=msgspec.json.encode({"messages": batch}),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            return list(body["ids"])

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            return await self.proc.wait()

    async def stop_quietly(self) -> None:
        children = self.children() if self.log_path.exists() else {}
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for pid in children.values():  # they stop by themselves; this is for a failed test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _journal(pg: PgTarget) -> dict[str, object]:
    return {"backend": "postgres", "url": pg.url, "schema": pg.schema}


def _session() -> aiohttp.ClientSession:
    # A connection per request: the kernel gives each new connection to one of the children.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _leased(pg: PgTarget) -> int:
    conn = await asyncpg.connect(pg.url, server_settings={"search_path": pg.schema})
    try:
        return int(await conn.fetchval("SELECT count(*) FROM messages WHERE state = 2"))
    finally:
        await conn.close()


async def test_both_children_answer_on_one_port_and_sigterm_stops_them_gracefully(
    tmp_path: Path, pg_schema: PgTarget
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=20)) as sink:
        serve = Supervised(tmp_path, _journal(pg_schema), sink.url)
        try:
            await serve.start()
            pids = serve.children()
            assert sorted(pids) == [0, 1]
            for slot in (0, 1):  # the SMTP front door's port is shared too
                listening = f"[child {slot}] sluice.smtp: smtp front door listening on port"
                assert f"{listening} {serve.smtp_port}" in serve.log()
            reader, writer = await asyncio.open_connection("127.0.0.1", serve.smtp_port)
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220")
            writer.close()
            ids: list[str] = []
            async with _session() as session:
                deadline = time.monotonic() + 30
                while {id_node(parse_id(i)) for i in ids} != {NODE, NODE + 1}:
                    assert time.monotonic() < deadline, "one child never answered"
                    ids += await serve.post(session)
                ids += await serve.post(session, 500)  # in flight when SIGTERM comes
            await sink.wait_for(len(ids) // 4, path="/hook")
            assert await serve.terminate() == 0
            log = serve.log()
            for slot in (0, 1):
                assert f"[child {slot}] sluice: shutting down" in log
                assert f"child {slot} stopped" in log
            assert "all children stopped" in log
            assert "Traceback" not in log
            assert not any(_alive(pid) for pid in pids.values())
            assert await _leased(pg_schema) == 0  # what was in flight went back to the queue
        finally:
            await serve.stop_quietly()


async def test_a_killed_child_is_restarted_and_the_port_keeps_answering(
    tmp_path: Path, pg_schema: PgTarget
) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        serve = Supervised(tmp_path, _journal(pg_schema), sink.url)
        try:
            await serve.start()
            killed = serve.children()[1]
            os.kill(killed, signal.SIGKILL)
            nodes: set[int] = set()
            deadline = time.monotonic() + 30
            async with _session() as session:
                while serve.serving(1) < 2:  # every request is answered meanwhile, by child 0
                    assert time.monotonic() < deadline, serve.log()
                    await serve.post(session)
                while NODE + 1 not in nodes:  # child 1 is back and takes its share again
                    assert time.monotonic() < deadline, serve.log()
                    nodes |= {id_node(parse_id(i)) for i in await serve.post(session)}
            log = serve.log()
            assert f"child 1 (pid {killed}, node {NODE + 1}) was killed by SIGKILL; starting" in log
            assert serve.children()[1] != killed
            assert "Traceback" not in log
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()


async def test_children_stop_when_the_supervisor_is_killed(
    tmp_path: Path, pg_schema: PgTarget
) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        serve = Supervised(tmp_path, _journal(pg_schema), sink.url)
        try:
            await serve.start()
            pids = serve.children()
            assert serve.proc is not None
            serve.proc.kill()
            await serve.proc.wait()
            await _until(lambda: not any(_alive(p) for p in pids.values()), "orphans to stop")
            for slot in (0, 1):  # PR_SET_PDEATHSIG: each got SIGTERM and stopped gracefully
                assert f"[child {slot}] sluice: shutting down" in serve.log()
        finally:
            await serve.stop_quietly()


async def test_children_that_cannot_open_the_journal_make_it_give_up(tmp_path: Path) -> None:
    unreachable = {"backend": "postgres", "url": f"postgresql://127.0.0.1:{free_port()}/x"}
    serve = Supervised(tmp_path, unreachable, "http://127.0.0.1:9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.cli", "serve", "--config", str(serve.config),
        "--workers", "2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "sluice [child 0]: cannot open journal" in text
    assert "exited with status 1; starting it again in 0.5 s" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("sluice: child ") and "5 times in a row; giving up" in last
