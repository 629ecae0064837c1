"""End-to-end throughput with 1 and 2 gateway processes on one PostgreSQL journal (and SQLite).

    .venv/bin/python bench/scale_out.py --messages 200000 --workers 1 2 --sqlite

For each count of workers: a fresh schema on the PostgreSQL server, a zero-latency SMSC
simulator (`sluice sim smsc`), and that many `sluice serve` processes on the same journal,
each with its own port, message-id node and SMPP bind (window 100). Four producers post
`--messages` messages in batches of 1,000, spread over the processes' HTTP ports; the clock
stops when the journal holds every message as sent. Prints messages/s end to end, the CPU of
the gateways, of the PostgreSQL server and of the SMSC per message, and the speed-up of each
count over one process (goal: 2 processes >= 1.7 x 1). With `--sqlite`, one process on the
embedded journal first, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from common import KEY, cpu_seconds, free_port, hash_api_key, stop, to_toml, wait_http, workdir
from smpp import Smsc, post_with, smpp_channel

GOAL_SPEEDUP = 1.7
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = "bench_scale_out"


def _config(directory: Path, name: str, port: int, node: int, journal: dict[str, Any],
            smsc_port: int) -> Path:  # fmt: skip
    raw: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "node": node},
        "journal": journal,
        "limits": {"max_backlog": 100_000_000},
        "channels": {"sms": smpp_channel(smsc_port, window=100, receipts=False)},
        "tenants": {"bench": {"api_keys": [hash_api_key(KEY)]}},
    }
    path = directory / f"{name}.toml"
    path.write_text(to_toml(raw))
    return path


@contextlib.contextmanager
def gateways(
    directory: Path, count: int, journal: dict[str, Any], smsc_port: int
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(count):
            port = free_port()
            config = _config(directory, f"gw{i}", port, i + 1, journal, smsc_port)
            log = open(directory / f"gw{i}.log", "ab")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                [sys.executable, "-m", "sluice.cli", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            started.append((proc, f"http://127.0.0.1:{port}"))
        for _, base in started:
            wait_http(f"{base}/readyz")
        yield started
    finally:
        for proc, _ in started:
            stop(proc)


async def _post_spread(bases: list[str], messages: list[dict[str, Any]]) -> None:
    """Batches of 1,000 from four producers, the processes' ports taken in turn."""
    share = len(messages) // len(bases)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(
                post_with(
                    session, base, messages[i * share : (i + 1) * share], 4 // len(bases) or 1
                )
                for i, base in enumerate(bases)
            )
        )


def _postgres_cpu() -> float:
    """CPU seconds of every process of the PostgreSQL server (its backends included)."""
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout
    total = 0.0
    for pid in out.split():
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(pid))
    return total


async def _reset_schema() -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    finally:
        await conn.close()


def run(count: int, backend: str, messages: list[dict[str, Any]]) -> float:
    if backend == "postgres":
        asyncio.run(_reset_schema())
    smsc = Smsc("--record-limit", "0")
    try:
        with workdir() as directory:
            journal: dict[str, Any] = (
                {"backend": "postgres", "url": PG_URL, "schema": SCHEMA}
                if backend == "postgres"
                else {"path": str(directory / "journal.db")}
            )
            with gateways(directory, count, journal, smsc.port) as procs:
                cpu0 = sum(cpu_seconds(p.pid) for p, _ in procs)
                pg0, smsc0 = _postgres_cpu(), cpu_seconds(smsc.proc.pid)
                started = time.perf_counter()
                asyncio.run(_post_spread([base for _, base in procs], messages))
                posted = time.perf_counter()
                while smsc.stats().get("submits", 0) < len(messages):
                    time.sleep(0.01)
                finished = time.perf_counter()
                cpu = sum(cpu_seconds(p.pid) for p, _ in procs) - cpu0
                pg_cpu, smsc_cpu = _postgres_cpu() - pg0, cpu_seconds(smsc.proc.pid) - smsc0
    finally:
        smsc.stop()
    n = len(messages)
    rate = n / (finished - started)
    us = 1e6 / n
    print(
        f"{backend:8} {count} process{'es' if count > 1 else '  '}: posted in "
        f"{posted - started:.2f} s, all submitted after {finished - started:.2f} s: "
        f"{rate:,.0f} msgs/s; CPU per message: gateways {cpu * us:.0f} µs, "
        f"PostgreSQL {pg_cpu * us:.0f} µs, SMSC {smsc_cpu * us:.0f} µs",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sqlite", action="store_true", help="one SQLite process first")
    args = parser.parse_args()
    messages = [
        {"channel": "sms", "to": f"+4470{i:08d}", "body": f"Your code is {i:06d}"}
        for i in range(args.messages)
    ]
    print(f"scale-out: {args.messages:,} messages, zero-latency SMSC, one bind (window 100) "
          "per process, receipts off")  # fmt: skip
    if args.sqlite:
        run(1, "sqlite", messages)
    rates = {count: run(count, "postgres", messages) for count in args.workers}
    if 1 in rates:
        for count, rate in rates.items():
            if count > 1:
                print(f"speed-up of {count} processes over 1: {rate / rates[1]:.2f} x"
                      + (f" (goal >= {GOAL_SPEEDUP} x)" if count == 2 else ""))  # fmt: skip
    asyncio.run(_reset_schema())


if __name__ == "__main__":
    main()
