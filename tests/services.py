"""Real PostgreSQL and Redis servers for tests: the shared ones, and private ones to break.

The shared servers (SERVICES.md) serve the whole machine; a test gets isolation on them from a
schema or a key prefix of its own (the ``pg_schema`` and ``redis_prefix`` fixtures). A test that
restarts or kills a server uses a private one, on its own port and in its own directory.
The fixtures themselves are in conftest.py; the context managers here work without pytest.

Examples:
    with PrivatePostgres() as pg:
        conn = await asyncpg.connect(pg.url)
        ...
        pg.kill()  # SIGKILL of the postmaster, as in a crash
        pg.start()  # crash recovery; same port, same data

Warning:
    ``start``, ``stop``, ``restart`` and ``kill`` block until the server is up or gone. Measured
    here: a PostgreSQL first start 0.65 s (0.45 s of it initdb), restart 50 ms, start after
    kill 35 ms; Redis start 20 ms, restart 135 ms. When other tasks of the test must keep
    running meanwhile, call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self, TypedDict

import asyncpg
import redis.asyncio

PG_VERSION = "15"
PG_BIN = Path("/usr/lib/postgresql") / PG_VERSION / "bin"
# initdb and postgres refuse to run as root; as root we run them as Debian's cluster owner.
PG_OS_USER = "postgres"

# Both shared servers trust loopback connections. Any role works on PostgreSQL (`postgres` and
# `root` are superusers); we name `postgres` so the URL does not depend on who runs the tests.
SHARED_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"

# Bounds on waiting for a server. A test-sized cluster starts, and recovers from a crash, in
# well under a second; 30 s only fails on a machine that is badly stuck.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.02
# A connection a test left open inside its schema would make DROP SCHEMA wait for ever; after
# this long the teardown fails and says so instead.
DROP_LOCK_TIMEOUT = "10s"
# Keys deleted per round trip when a test's prefix is cleaned up.
DELETE_BATCH = 500


class PgTarget(NamedTuple):
    """A schema of one test's own on a PostgreSQL server."""

    url: str
    schema: str


class RedisTarget(NamedTuple):
    """A key prefix of one test's own on a Redis server."""

    url: str
    prefix: str


class _Credentials(TypedDict):
    user: int | None
    group: int | None
    extra_groups: list[int] | None


class ServerError(RuntimeError):
    """A private server did not start or stop; the message carries the end of its log."""


def shared_postgres_url() -> str:
    """The shared PostgreSQL 15 on loopback (trust auth, superuser `postgres`)."""
    return SHARED_POSTGRES_URL


def shared_redis_url() -> str:
    """The shared Redis 7 on loopback (keeps nothing on disk)."""
    return SHARED_REDIS_URL


@contextlib.asynccontextmanager
async def temporary_schema(url: str) -> AsyncIterator[PgTarget]:
    """A fresh schema ``t_<hex>`` on the server at `url`, dropped with CASCADE on exit.

    Examples:
        async with temporary_schema(shared_postgres_url()) as target:
            conn = await asyncpg.connect(target.url, server_settings={"search_path": target.schema})

    Warning:
        Close your connections first: one holding a lock inside the schema makes the drop fail
        after DROP_LOCK_TIMEOUT rather than wait for ever.
    """
    schema = f"t_{secrets.token_hex(8)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield PgTarget(url, schema)
    finally:
        conn = await asyncpg.connect(url, server_settings={"lock_timeout": DROP_LOCK_TIMEOUT})
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def temporary_prefix(url: str) -> AsyncIterator[RedisTarget]:
    """A fresh key prefix ``t:<hex>:`` on the Redis at `url`; its keys are deleted on exit."""
    prefix = f"t:{secrets.token_hex(8)}:"
    try:
        yield RedisTarget(url, prefix)
    finally:
        client = redis.asyncio.Redis.from_url(url)
        try:
            batch: list[bytes] = []
            # Deleting keys SCAN has already returned does not make it skip any others.
            async for key in client.scan_iter(match=f"{prefix}*", count=DELETE_BATCH):
                batch.append(key)
                if len(batch) == DELETE_BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
        finally:
            await client.aclose()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    # /proc/<pid>/task/<pid>/children needs a kernel option; the parent field of every
    # process's stat line is always there.
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    # A killed child of a process we do not own may stay a zombie (a container's init need not
    # reap); it holds no resources, so it counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    return left


def _signal(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class _Process:
    """A server process and its directory; releasing it kills the process tree and removes both.

    Kept apart from the server object so that a finalizer can release it even when a test
    forgets to stop its server.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.popen: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL the server, then wait until its children are gone too."""
        if self.popen is None:
            return
        children = _children(self.popen.pid)
        self.popen.kill()
        self.popen.wait()
        self.popen = None
        # A PostgreSQL backend notices its postmaster's death and exits by itself, but until it
        # has, it holds the shared memory a new postmaster on the same directory refuses to share.
        _signal(_wait_gone(children, STOP_TIMEOUT), signal.SIGKILL)

    def release(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class _PrivateServer:
    """A server process of a test's own: a port, a directory, and start/stop/kill."""

    name = "server"
    log_name = "server.log"

    def __init__(self, prefix: str, owner: tuple[int, int] | None = None) -> None:
        self._port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix=prefix))
        # (uid, gid) the server runs as, and owner of its directory; None: as we run.
        self._owner = owner
        if owner is not None:
            os.chown(self._dir, *owner)
        self._process = _Process(self._dir)
        self._close = weakref.finalize(self, self._process.release)

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._process.popen is not None

    def start(self) -> None:
        """Start the server (a no-op when it runs) and wait until it answers."""
        if not self._close.alive:
            raise ServerError(f"private {self.name} on port {self._port} is closed")
        if self.running:
            return
        self._prepare()
        with open(self._dir / self.log_name, "ab") as log:
            self._process.popen = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                **self._as_owner(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.popen.poll() is not None:
                self._process.popen = None
                raise self._error("exited while starting")
            if time.monotonic() > deadline:
                self._process.kill()
                raise self._error(f"did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the server, as in a crash; `start` brings it back on the same port."""
        self._process.kill()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and its children stopped (SIGSTOP) for the block: a server that stops
        answering and keeps its connections open, as behind a dead link or a hung host."""
        popen = self._process.popen
        assert popen is not None, "the server is not running"
        pids = [popen.pid, *_children(popen.pid)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Kill the server if it runs and remove its directory; the object is done for."""
        self._close()

    def _stop(self, signum: signal.Signals) -> None:
        popen = self._process.popen
        if popen is None:
            return
        popen.send_signal(signum)
        try:
            popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise self._error(f"did not stop within {STOP_TIMEOUT:.0f} s; killed it") from None
        self._process.popen = None

    def _error(self, what: str) -> ServerError:
        try:
            lines = (self._dir / self.log_name).read_text(errors="replace").splitlines()[-20:]
        except OSError:
            lines = []
        tail = "\n".join("    " + line for line in lines)
        return ServerError(f"private {self.name} on 127.0.0.1:{self._port} {what}; log:\n{tail}")

    def _as_owner(self) -> _Credentials:
        if self._owner is None:
            return {"user": None, "group": None, "extra_groups": None}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _prepare(self) -> None:
        pass

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PrivatePostgres(_PrivateServer):
    """A PostgreSQL 15 cluster of a test's own, initialised on first start.

    Trust auth on 127.0.0.1 for any role; the superuser is `postgres`. `fsync=off` and
    `full_page_writes=off` only matter when the machine itself crashes: a killed server finds
    its committed data in the kernel's page cache and recovers it as in production. Commits stay
    synchronous, so an acknowledged commit survives `kill` as it would on a real server.

    Examples:
        with PrivatePostgres() as pg:
            pg.restart()
            pg.stop("immediate")  # no shutdown checkpoint: the next start recovers from WAL
            pg.start()
    """

    name = "PostgreSQL"
    log_name = "postgres.log"

    def __init__(self) -> None:
        owner = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_OS_USER)
            owner = (entry.pw_uid, entry.pw_gid)
        super().__init__(prefix="sluice-pg-", owner=owner)
        self._data = self._dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Shut down: "fast" ends sessions and checkpoints; "immediate" skips the checkpoint."""
        self._stop(signal.SIGINT if mode == "fast" else signal.SIGQUIT)

    def restart(self) -> None:
        """A fast shutdown, then a start on the same port and data."""
        self.stop("fast")
        self.start()

    def _prepare(self) -> None:
        if self._data.exists():
            return
        initdb = subprocess.run(
            [
                str(PG_BIN / "initdb"),
                f"--pgdata={self._data}",
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self._dir,
            **self._as_owner(),
        )
        if initdb.returncode != 0:
            output = (initdb.stdout + initdb.stderr).decode(errors="replace")
            raise ServerError(f"initdb into {self._data} failed:\n{output}")

    def _command(self) -> list[str]:
        return [
            str(PG_BIN / "postgres"),
            "-D",
            str(self._data),
            "-p",
            str(self._port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self._dir}",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ]

    def _answers(self) -> bool:
        # pg_isready says yes only once recovery is over, unlike a bare TCP connect.
        ready = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self._port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return ready.returncode == 0


class PrivateRedis(_PrivateServer):
    """A Redis of a test's own that keeps nothing on disk: every stop or kill empties it.

    Examples:
        with PrivateRedis() as redis:
            redis.kill()
            redis.start()  # same port, no keys
    """

    name = "Redis"
    log_name = "redis.log"

    def __init__(self) -> None:
        super().__init__(prefix="sluice-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM); connected clients see their connection close."""
        self._stop(signal.SIGTERM)

    def restart(self) -> None:
        """A clean shutdown, then a start on the same port."""
        self.stop()
        self.start()

    def _command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(self._port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
        ]

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64) == b"+PONG\r\n"
        except OSError:
            return False


class FakeRedis:
    """A TCP server on a free port that reads commands and answers each with `answer` (None:
    never answers, a hung Redis); counts the connections it accepted.

    Examples:
        async with FakeRedis() as silent:
            client = redis.asyncio.Redis.from_url(silent.url)
    """

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                if self.answer is not None:
                    writer.write(self.answer)
                    await writer.drain()
