"""Durable ingest over HTTP: messages/s accepted (202 after commit) in batches.

    .venv/bin/python bench/ingest_http.py --batch 1000 --connections 8 --seconds 10

The gateway runs as a real `sluice serve` process (SQLite, synchronous=FULL by default) with
its channel paused, so only ingest is measured; this script is the client, in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from common import batch_body, cpu_seconds, gateway, headers, workdir


async def load(
    base: str, body: bytes, batch: int, connections: int, seconds: float
) -> tuple[int, list[float], int]:
    accepted = 0
    refused = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal accepted, refused
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(
                    f"{base}/v1/messages", data=body, headers=headers()
                ) as resp:
                    await resp.read()
                    if resp.status == 202:
                        accepted += batch
                        latencies.append(time.perf_counter() - started)
                    else:
                        refused += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(connections):
                tg.create_task(client())
    return accepted, latencies, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    body = batch_body(args.batch)
    channels = {
        "web": {"type": "webhook", "paused": True, "webhook": {"url": "http://127.0.0.1:9/unused"}}
    }
    with workdir() as directory, gateway(directory, channels, args.synchronous) as (proc, base):
        asyncio.run(load(base, body, args.batch, args.connections, 1.0))  # warm up
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        accepted, latencies, refused = asyncio.run(
            load(base, body, args.batch, args.connections, args.seconds)
        )
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
    latencies.sort()
    print(f"batch={args.batch} connections={args.connections} synchronous={args.synchronous}")
    print(f"accepted {accepted:,} messages in {elapsed:.1f} s: {accepted / elapsed:,.0f} msgs/s")
    print(
        f"request latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms; refused {refused}"
    )
    print(f"server CPU {cpu:.1f} s = {cpu / accepted * 1e6:.1f} µs per message")


if __name__ == "__main__":
    main()
