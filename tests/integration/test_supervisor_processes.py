"""The supervisor with real child processes that need no database: stand-ins for
`sluice serve --child` (stand_in_child.py) sharing one real port. The same with real gateways
on PostgreSQL: test_many_processes.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from services import free_port
from sluice.config import Config, dump_toml, from_dict
from sluice.process.supervisor import ChildCommand, ChildSpec, RestartPolicy, Supervisor

pytestmark = pytest.mark.integration

STAND_IN = str(Path(__file__).with_name("stand_in_child.py"))


class Answer(NamedTuple):
    slot: int
    node: int
    pid: int


def _config(port: int, **server: object) -> Config:
    return from_dict(
        {
            "server": {"listen": f"127.0.0.1:{port}", "workers": 2, "node": 10, **server},
            "journal": {"backend": "postgres"},  # never opened by the stand-ins
        }
    )


def _stand_in(mode: str) -> ChildCommand:
    def command(spec: ChildSpec) -> list[str]:
        return [sys.executable, STAND_IN, mode, spec.encode()]

    return command


async def _ask(port: int) -> Answer | None:
    """One request on a new connection; None if nobody accepts it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
    if not response.startswith(b"HTTP/1.1 200"):
        return None
    slot, node, pid = response.partition(b"\r\n\r\n")[2].split()
    return Answer(int(slot), int(node), int(pid))


async def _answers_from_every_slot(port: int, slots: int = 2) -> dict[int, Answer]:
    """Ask, eight connections at a time, until every slot has answered."""
    seen: dict[int, Answer] = {}
    deadline = time.monotonic() + 20
    while len(seen) < slots:
        assert time.monotonic() < deadline, f"only slots {sorted(seen)} answered"
        for answer in await asyncio.gather(*(_ask(port) for _ in range(8))):
            if answer is not None:
                seen[answer.slot] = answer
        await asyncio.sleep(0.02)
    return seen


async def test_children_share_one_port_and_stop_cleanly_on_request() -> None:
    port = free_port()
    supervisor = Supervisor(_config(port), _stand_in("serve"))
    running = asyncio.create_task(supervisor.run())
    try:
        seen = await _answers_from_every_slot(port)
        assert [(a.slot, a.node) for a in sorted(seen.values())] == [(0, 10), (1, 11)]
        assert {a.pid for a in seen.values()} == {p.pid for p in supervisor.children.values()}
    finally:
        supervisor.request_stop("test")
        status = await asyncio.wait_for(running, 30)
    assert (status, supervisor.error, supervisor.children) == (0, None, {})
    assert await _ask(port) is None  # the port is closed with the last of them


async def test_a_killed_child_is_restarted_while_the_port_keeps_answering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    supervisor = Supervisor(_config(port), _stand_in("serve"))
    running = asyncio.create_task(supervisor.run())
    try:
        killed = (await _answers_from_every_slot(port))[1].pid
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:  # every request is answered, by child 0 until child 1 is back
            answer = await _ask(port)
            assert answer is not None, "the port stopped answering"
            if answer.slot == 1 and answer.pid != killed:
                break
            assert time.monotonic() < deadline, "child 1 did not come back"
        assert answer.node == 11  # a restarted child keeps its node
        assert (
            f"child 1 (pid {killed}, node 11) was killed by SIGKILL; starting it again in 0.5 s"
            in caplog.text
        )
    finally:
        supervisor.request_stop("test")
        status = await asyncio.wait_for(running, 30)
    assert status == 0


async def test_children_that_die_at_start_make_it_give_up_and_exit_1() -> None:
    policy = RestartPolicy(base_seconds=0.01, stable_seconds=30, max_quick_deaths=3)
    supervisor = Supervisor(_config(free_port()), _stand_in("fail"), policy=policy)
    started = time.monotonic()
    status = await asyncio.wait_for(supervisor.run(), 60)
    assert status == 1
    assert supervisor.error is not None
    assert "exited with status 3" in supervisor.error
    assert "3 times in a row; giving up" in supervisor.error
    assert supervisor.children == {}
    assert time.monotonic() - started < 30


async def test_children_that_ignore_sigterm_are_killed_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    config = _config(port, shutdown_grace_seconds=0.2)
    supervisor = Supervisor(config, _stand_in("stubborn"), stop_margin_seconds=0.3)
    running = asyncio.create_task(supervisor.run())
    await _answers_from_every_slot(port)
    supervisor.request_stop("test")
    assert await asyncio.wait_for(running, 30) == 1
    assert supervisor.error == "children still running 0 s after SIGTERM"
    assert "still running 0 s after SIGTERM: killing it" in caplog.text
    assert "was killed by SIGKILL while stopping" in caplog.text


async def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    # parent: a process that starts the child and sleeps; the child asks for PR_SET_PDEATHSIG.
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import subprocess, sys, time; subprocess.Popen([sys.executable, sys.argv[1], 'orphan']);"
        " time.sleep(600)",
        STAND_IN,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 20)
        assert line.startswith(b"armed ")
        parent.kill()
        await parent.wait()
        line = await asyncio.wait_for(parent.stdout.readline(), 20)
        assert line == b"stopped by SIGTERM\n"
        assert await asyncio.wait_for(parent.stdout.read(), 20) == b""  # the child exited
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def _sluice_serve(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.cli", "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_serve_refuses_workers_it_cannot_run(tmp_path: Path) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(dump_toml({"journal": {"path": str(tmp_path / "j.db")}}))
    code, err = await _sluice_serve("--config", str(config), "--workers", "2")
    assert code == 2
    assert "server.workers: the sqlite journal serves one process" in err
    config.write_text(dump_toml({"server": {"node": 1000}, "journal": {"backend": "postgres"}}))
    code, err = await _sluice_serve("--config", str(config), "--workers", "30")
    assert code == 2
    assert "server.node: 30 processes" in err and "at most 994" in err


async def test_a_port_in_use_is_reported_once_by_the_supervisor(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "sluice.toml"
        server = {"listen": f"127.0.0.1:{port}"}
        config.write_text(dump_toml({"server": server, "journal": {"backend": "postgres"}}))
        code, err = await _sluice_serve("--config", str(config), "--workers", "2")
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "child" not in err  # no child was started
