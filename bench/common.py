"""Shared pieces of the benchmarks: real `sluice serve` and `sluice sim webhook` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from sluice.config import dump_toml as to_toml
from sluice.config import hash_api_key

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as path:
        yield Path(path)


@contextlib.contextmanager
def gateway(
    directory: Path, channels: dict[str, Any], synchronous: str = "full", **sections: Any
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    raw: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}"},
        "journal": {"path": str(directory / "journal.db"), "synchronous": synchronous},
        "limits": {"max_backlog": 100_000_000},
        "channels": channels,
        "tenants": {"bench": {"api_keys": [hash_api_key(KEY)]}},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    config = directory / "sluice.toml"
    config.write_text(to_toml(raw))
    log = open(directory / "serve.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz")
        yield proc, base
    finally:
        stop(proc)


@contextlib.contextmanager
def sink(*args: str) -> Iterator[str]:
    with sink_process(*args) as (_, base):
        yield base


@contextlib.contextmanager
def sink_process(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`sink`, also yielding the process (for its CPU time)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "sim", "webhook", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/_sink/stats")
        yield proc, base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and of its live descendants (a supervisor's children count only
    once they have exited in its own figure)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    total = 0.0
    for member in tree:
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def batch_body(n: int, channel: str = "web", priority: str = "normal", start: int = 0) -> bytes:
    return msgspec.json.encode(
        {
            "messages": [
                {
                    "channel": channel,
                    "to": f"+1555{i:07d}",
                    "body": f"Benchmark message number {i}",
                    "priority": priority,
                }
                for i in range(start, start + n)
            ]
        }
    )


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def peak_rss_mb(pid: int) -> float:
    """The process's highest RSS so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def get_json(url: str, auth: bool = False) -> Any:
    request = urllib.request.Request(url, headers=headers() if auth else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return msgspec.json.decode(resp.read())


def journal_mb(directory: Path) -> dict[str, float]:
    """Sizes of the journal's files (database, WAL, shared memory) that exist, in MB."""
    sizes = {}
    for suffix in ("", "-wal", "-shm"):
        path = directory / f"journal.db{suffix}"
        if path.exists():
            sizes[path.name] = path.stat().st_size / 1e6
    return sizes


#: Words that mark a serve.log line worth showing after a run.
_LOG_PROBLEMS = ("ERROR", "WARNING", "CRITICAL", "Traceback", "Exception")


def log_problems(directory: Path, limit: int = 20) -> list[str]:
    """The first `limit` lines of the gateway's serve.log that report a problem."""
    path = directory / "serve.log"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if any(word in line for word in _LOG_PROBLEMS)][:limit]


async def post_batches(
    base: str, total: int, batch: int, connections: int
) -> tuple[int, int, dict[int, int]]:
    """POST ``total`` messages in batches, each batch with distinct recipients, over
    ``connections`` concurrent connections. Returns (accepted, refused batches, statuses).
    A refused batch is not retried."""
    accepted = refused = 0
    statuses: dict[int, int] = {}
    starts = iter(range(0, total, batch))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal accepted, refused
            for start in starts:
                n = min(batch, total - start)
                body = batch_body(n, start=start)
                async with session.post(
                    f"{base}/v1/messages", data=body, headers=headers()
                ) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 202:
                        accepted += n
                    else:
                        refused += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(connections):
                tg.create_task(client())
    return accepted, refused, statuses
