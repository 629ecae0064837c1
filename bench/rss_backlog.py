"""Memory with a big backlog: RSS of `sluice serve` holding a million queued messages.

    .venv/bin/python bench/rss_backlog.py --messages 1000000 --connections 4

The gateway runs as a real `sluice serve` process (SQLite, synchronous=FULL by default) with
its only channel paused, so every message stays queued in the journal. The script posts the
messages in batches of ``--batch`` (distinct recipients) over ``--connections`` connections
and prints the gateway's RSS after ingest; then stops it (SIGTERM), starts it again on the
same journal (the restart path counts the pending messages) and prints its RSS once ready,
how long it took to become ready (process start, imports included, to the first 200 from
/readyz) and the journal's size on disk. The goal printed beside the figures is 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    gateway,
    get_json,
    journal_mb,
    log_problems,
    peak_rss_mb,
    post_batches,
    rss_mb,
    workdir,
)

GOAL_RSS_MB = 250
CHANNELS = {
    "web": {"type": "webhook", "paused": True, "webhook": {"url": "http://127.0.0.1:9/unused"}}
}


def verdict(mb: float) -> str:
    return f"goal <= {GOAL_RSS_MB} MB: {'meets' if mb <= GOAL_RSS_MB else 'above'}"


def pending(base: str) -> int:
    return int(get_json(f"{base}/v1/channels", auth=True)["channels"][0]["pending"])


def sizes(directory: Path) -> str:
    files = journal_mb(directory)
    parts = ", ".join(f"{name} {mb:,.0f} MB" for name, mb in files.items())
    return f"{sum(files.values()):,.0f} MB ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    print(
        f"messages={args.messages:,} batch={args.batch:,} connections={args.connections} "
        f"synchronous={args.synchronous}"
    )
    with workdir() as directory:
        with gateway(directory, CHANNELS, args.synchronous) as (proc, base):
            idle = rss_mb(proc.pid)
            t0 = time.perf_counter()
            accepted, refused, statuses = asyncio.run(
                post_batches(base, args.messages, args.batch, args.connections)
            )
            elapsed = time.perf_counter() - t0
            after, peak = rss_mb(proc.pid), peak_rss_mb(proc.pid)
            queued = pending(base)
            print(
                f"ingest: {accepted:,} accepted in {elapsed:.1f} s "
                f"({accepted / elapsed:,.0f} msgs/s); refused batches {refused}; "
                f"statuses {statuses}"
            )
            print(
                f"RSS idle {idle:.0f} MB; after ingest {after:.0f} MB, peak {peak:.0f} MB "
                f"({verdict(after)}); channel pending {queued:,}"
            )
            print(f"journal on disk after ingest: {sizes(directory)}")
            stopping = time.perf_counter()
        stopped = time.perf_counter() - stopping
        print(
            f"SIGTERM: exited with code {proc.returncode} after {stopped:.1f} s; "
            f"journal {sizes(directory)}"
        )
        t1 = time.perf_counter()
        with gateway(directory, CHANNELS, args.synchronous) as (proc, base):
            ready = time.perf_counter() - t1
            restarted, peak = rss_mb(proc.pid), peak_rss_mb(proc.pid)
            queued = pending(base)
            print(
                f"restart: ready in {ready:.2f} s; RSS {restarted:.0f} MB, peak {peak:.0f} MB "
                f"({verdict(max(restarted, peak))}); channel pending {queued:,}"
            )
        print(f"journal on disk after the second stop: {sizes(directory)}")
        for line in log_problems(directory):
            print(f"serve.log: {line}")


if __name__ == "__main__":
    main()
