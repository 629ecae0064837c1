"""Many gateway processes on one PostgreSQL journal: throughput, and a rate shared through Redis.

    .venv/bin/python bench/scale_out.py throughput --messages 200000 --workers 1 2 --sqlite
    .venv/bin/python bench/scale_out.py rate --rate 1500 --processes 3 --seconds 10

`throughput`: for each count of workers: a fresh schema on the PostgreSQL server, a
zero-latency SMSC simulator (`sluice sim smsc`), and that many `sluice serve` processes on
the same journal, each with its own port, message-id node and SMPP bind (window 100). Four
producers post `--messages` messages in batches of 1,000, spread over the processes' HTTP
ports; the clock stops when the SMSC has taken every message. Prints messages/s end to end,
the CPU of the gateways, of the PostgreSQL server and of the SMSC per message, and the
speed-up of each count over one process (goal: 2 processes >= 1.7 x 1). With `--sqlite`, one
process on the embedded journal first, for comparison.

`rate`: `--processes` gateways on one journal and one Redis (the shared Redis at
127.0.0.1:6379, under a prefix of its own), one webhook channel with `rate = --rate` to a
`sluice sim webhook` process, more messages queued than the run can send. After a second of
warm-up the sink's accepted count is read at the start and end of `--seconds`: the aggregate
rate, its deviation from the configured one (goal within ±5 %), and each process's share from
its `/metrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    KEY,
    cpu_seconds,
    free_port,
    hash_api_key,
    sink_process,
    stop,
    to_toml,
    wait_http,
    workdir,
)
from smpp import Smsc, post_with, smpp_channel

GOAL_SPEEDUP = 1.7
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEMA = "bench_scale_out"


def _config(directory: Path, name: str, port: int, node: int, journal: dict[str, Any],
            channels: dict[str, Any], redis: dict[str, Any] | None) -> Path:  # fmt: skip
    raw: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "node": node},
        "journal": journal,
        "limits": {"max_backlog": 100_000_000},
        "channels": channels,
        "tenants": {"bench": {"api_keys": [hash_api_key(KEY)]}},
    }
    if redis is not None:
        raw["redis"] = redis
    path = directory / f"{name}.toml"
    path.write_text(to_toml(raw))
    return path


@contextlib.contextmanager
def gateways(
    directory: Path,
    count: int,
    journal: dict[str, Any],
    smsc_port: int,
    channels: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    channels = channels or {"sms": smpp_channel(smsc_port, window=100, receipts=False)}
    started: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(count):
            port = free_port()
            config = _config(directory, f"gw{i}", port, i + 1, journal, channels, redis)
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


def shared_rate(args: argparse.Namespace) -> None:
    asyncio.run(_reset_schema())
    prefix = f"bench-{os.getpid()}"
    seconds = args.seconds
    total = int(args.rate * (seconds + 3) * 1.5)
    messages = [{"channel": "web", "to": f"+1555{i:07d}", "body": f"m{i}"} for i in range(total)]
    with workdir() as directory, sink_process() as (_, sink_base):
        channel = {
            "type": "webhook",
            "width": 16,
            "rate": args.rate,
            "burst": args.rate / 10,
            "paused": True,
            "webhook": {"url": f"{sink_base}/hook"},
        }
        journal = {"backend": "postgres", "url": PG_URL, "schema": SCHEMA}
        redis = {"url": "redis://127.0.0.1:6379/0", "prefix": prefix}
        with gateways(directory, 1, journal, 0, {"web": channel}) as procs:
            asyncio.run(_post_spread([base for _, base in procs], messages))  # queued, paused
        channel["paused"] = False
        with gateways(directory, args.processes, journal, 0, {"web": channel}, redis) as procs:
            time.sleep(1.0)  # warm-up: every process has asked Redis for its first tokens
            n0, t0 = _sink_accepted(sink_base), time.perf_counter()
            sent0 = [
                _metric(base, "sluice_channel_messages_total", 'result="sent"') for _, base in procs
            ]
            time.sleep(seconds)
            n1, t1 = _sink_accepted(sink_base), time.perf_counter()
            sent1 = [
                _metric(base, "sluice_channel_messages_total", 'result="sent"') for _, base in procs
            ]
            live = [_metric(base, "sluice_channel_rate_processes") for _, base in procs]
    achieved = (n1 - n0) / (t1 - t0)
    deviation = (achieved / args.rate - 1) * 100
    print(f"shared rate: {args.processes} gateway processes, one journal, one Redis; "
          f"channel rate {args.rate:,.0f}/s (burst {args.rate / 10:,.0f}), "
          f"{seconds:g} s measured")  # fmt: skip
    print(f"  the sink accepted {achieved:,.1f}/s: {deviation:+.2f} % from the configured rate "
          "(goal within ±5 %)")  # fmt: skip
    delta = [b - a for a, b in zip(sent0, sent1, strict=True)]
    for i, (d, n) in enumerate(zip(delta, live, strict=True)):
        print(f"  process {i + 1}: {d / (t1 - t0):,.1f}/s = {d / max(1, sum(delta)) * 100:.1f} % "
              f"(fair {100 / args.processes:.1f} %), counted {n:.0f} live")  # fmt: skip
    asyncio.run(_reset_schema())
    asyncio.run(_drop_keys(prefix))


def _sink_accepted(base: str) -> int:
    with urllib.request.urlopen(f"{base}/_sink/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["accepted"])


def _metric(base: str, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and 'channel="web"' in line and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError(f"{name} not in {base}/metrics")


async def _drop_keys(prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("throughput", help="msgs/s with 1 and 2 processes")
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sqlite", action="store_true", help="one SQLite process first")
    p = commands.add_parser("rate", help="a channel rate shared through Redis")
    p.add_argument("--rate", type=float, default=1500.0)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "rate":
        shared_rate(args)
    else:
        throughput(args)


def throughput(args: argparse.Namespace) -> None:
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
