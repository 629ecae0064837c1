"""End to end to a webhook: messages/s from first POST to last delivery, and accept → sent latency.

    .venv/bin/python bench/end_to_end.py --messages 50000 --width 64 --seconds 10

Three real processes: `sluice sim webhook` (the peer, answering 200 at once unless given
``--sink-latency-ms``), `sluice serve` (SQLite, synchronous=FULL by default) with one webhook
channel of the given width and no rate limit, and this script as the producer. With no sink
latency the sink's "max in flight" stays 1: it answers each request before reading the next.

Phase 1, throughput: post ``--messages`` in batches of ``--batch`` over ``--connections``
connections as fast as they are accepted, and wait until the sink has accepted every one;
messages/s = messages / (first POST → sink has them all, polled every 20 ms).

Phase 2, latency: a fresh gateway, journal and sink; a paced producer posts every 10 ms the
messages that keep it on ``--rate`` (default half the phase-1 rate) for ``--seconds``; once
the sink has them all the gateway is stopped (SIGTERM) and the journal read: accept → sent
is the ``at`` of each message's SENT event minus the time in its id (taken at ingress, before
the commit). Journal times are whole milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from sluice.model import State, id_time_ms

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    batch_body,
    cpu_seconds,
    gateway,
    get_json,
    headers,
    log_problems,
    post_batches,
    sink_process,
    workdir,
)

HOOK_PATH = "/hook"
#: How often the sink's counts are polled while waiting for the last deliveries.
POLL_SECONDS = 0.02
#: Give up waiting for deliveries when the sink's count has not moved for this long.
STALL_SECONDS = 30.0
#: The paced producer's tick.
TICK_SECONDS = 0.01
#: Posts of the paced producer allowed in flight at once; beyond that, ticks accumulate.
MAX_POSTS_IN_FLIGHT = 16
#: Largest post of the paced producer when it catches up (the API's default limits.max_batch).
MAX_BATCH = 10_000


def channels(sink_base: str, width: int) -> dict[str, Any]:
    return {
        "web": {
            "type": "webhook",
            "width": width,
            "rate": 0,
            "webhook": {"url": f"{sink_base}{HOOK_PATH}"},
        }
    }


def sink_args(args: argparse.Namespace) -> list[str]:
    return ["--latency-ms", f"{args.sink_latency_ms:g}"] if args.sink_latency_ms else []


def delivered(sink_base: str) -> int:
    """Distinct message ids the sink has accepted on the hook path."""
    stats = get_json(f"{sink_base}/_sink/stats")
    path = stats["by_path"].get(HOOK_PATH)
    return int(path["unique_ids"]) if path else 0


def wait_delivered(sink_base: str, count: int) -> float:
    """Poll the sink until it has ``count`` messages; return the perf_counter when it had."""
    last, moved = -1, time.perf_counter()
    while True:
        now = time.perf_counter()
        got = delivered(sink_base)
        if got >= count:
            return now
        if got != last:
            last, moved = got, now
        elif now - moved > STALL_SECONDS:
            stats = get_json(f"{sink_base}/_sink/stats")
            stats.pop("arrivals_per_second", None)
            raise RuntimeError(f"the sink is stuck at {got:,} of {count:,} messages: {stats}")
        time.sleep(POLL_SECONDS)


def sink_summary(sink_base: str) -> str:
    stats = get_json(f"{sink_base}/_sink/stats")
    return (
        f"sink: received {stats['received']:,}, duplicates {stats['duplicates']}, "
        f"statuses {stats['by_status']}, max in flight {stats['max_in_flight']}"
    )


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def throughput(args: argparse.Namespace) -> float:
    with (
        workdir() as directory,
        sink_process(*sink_args(args)) as (sink_proc, sink_base),
        gateway(directory, channels(sink_base, args.width), args.synchronous) as (proc, base),
    ):
        cpu0, sink_cpu0 = cpu_seconds(proc.pid), cpu_seconds(sink_proc.pid)
        t0 = time.perf_counter()
        accepted, refused, statuses = asyncio.run(
            post_batches(base, args.messages, args.batch, args.connections)
        )
        posted = time.perf_counter()
        done = wait_delivered(sink_base, accepted)
        cpu = cpu_seconds(proc.pid) - cpu0
        sink_cpu = cpu_seconds(sink_proc.pid) - sink_cpu0
        summary = sink_summary(sink_base)
        problems = log_problems(directory)
    elapsed = done - t0
    rate = accepted / elapsed
    print(
        f"phase 1, throughput: {args.messages:,} messages in batches of {args.batch:,} over "
        f"{args.connections} connections, width {args.width}, synchronous={args.synchronous}"
    )
    print(
        f"  accepted {accepted:,} in {posted - t0:.2f} s ({accepted / (posted - t0):,.0f} "
        f"msgs/s ingest); refused batches {refused}; statuses {statuses}"
    )
    print(f"  all at the sink after {elapsed:.2f} s: {rate:,.0f} messages/s end to end")
    print(
        f"  gateway CPU {cpu:.1f} s = {cpu / accepted * 1e6:.0f} µs per message "
        f"({cpu / elapsed:.2f} cores); "
        f"sink CPU {sink_cpu:.1f} s ({sink_cpu / elapsed:.2f} cores)"
    )
    print(f"  {summary}")
    for line in problems:
        print(f"  serve.log: {line}")
    return rate


async def paced(base: str, rate: float, seconds: float) -> tuple[int, int, float]:
    """Post at ``rate`` messages/s for ``seconds``; return (accepted, refused, elapsed)."""
    accepted = refused = 0
    slots = asyncio.Semaphore(MAX_POSTS_IN_FLIGHT)
    async with aiohttp.ClientSession() as session:

        async def post(start: int, n: int) -> None:
            nonlocal accepted, refused
            try:
                async with session.post(
                    f"{base}/v1/messages", data=batch_body(n, start=start), headers=headers()
                ) as resp:
                    await resp.read()
                    if resp.status == 202:
                        accepted += n
                    else:
                        refused += n
            finally:
                slots.release()

        sent = 0
        started = time.perf_counter()
        tick = 0
        async with asyncio.TaskGroup() as tg:
            while (now := time.perf_counter()) - started < seconds:
                due = min(int(rate * (now - started)) - sent, MAX_BATCH)
                if due > 0 and not slots.locked():
                    await slots.acquire()
                    tg.create_task(post(sent, due))
                    sent += due
                tick += 1
                await asyncio.sleep(max(0.0, started + tick * TICK_SECONDS - time.perf_counter()))
            elapsed = time.perf_counter() - started
    return accepted, refused, elapsed


def read_latencies(database: Path) -> tuple[int, list[int], list[int]]:
    """(messages in the journal, accept → claimed ms, accept → sent ms) from a stopped journal."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]

        def first_event(state: State) -> list[int]:
            rows = conn.execute(
                "SELECT message_id, min(at) FROM events WHERE state = ? GROUP BY message_id",
                (int(state),),
            )
            return sorted(at - id_time_ms(mid) for mid, at in rows)

        return total, first_event(State.SENDING), first_event(State.SENT)
    finally:
        conn.close()


def latency(args: argparse.Namespace, rate: float) -> None:
    with workdir() as directory:
        with (
            sink_process(*sink_args(args)) as (sink_proc, sink_base),
            gateway(directory, channels(sink_base, args.width), args.synchronous) as (proc, base),
        ):
            cpu0, sink_cpu0 = cpu_seconds(proc.pid), cpu_seconds(sink_proc.pid)
            accepted, refused, elapsed = asyncio.run(paced(base, rate, args.seconds))
            t_posted = time.perf_counter()
            drain = wait_delivered(sink_base, accepted) - t_posted
            cpu = cpu_seconds(proc.pid) - cpu0
            sink_cpu = cpu_seconds(sink_proc.pid) - sink_cpu0
            summary = sink_summary(sink_base)
        # Both processes are stopped: the journal is read as it was left on disk.
        total, claimed, sent = read_latencies(directory / "journal.db")
        problems = log_problems(directory)
    print(
        f"phase 2, latency: target {rate:,.0f} msgs/s for {args.seconds:g} s, a post every "
        f"{TICK_SECONDS * 1000:.0f} ms, width {args.width}"
    )
    print(
        f"  accepted {accepted:,} in {elapsed:.2f} s: {accepted / elapsed:,.0f} msgs/s "
        f"achieved; refused {refused}; last delivery {drain * 1000:.0f} ms after the last post"
    )
    print(f"  journal: {total:,} messages, {len(sent):,} with a SENT event")
    if sent:
        print(
            "  accept → sent   "
            + ", ".join(f"p{q * 100:g} {percentile(sent, q)} ms" for q in (0.5, 0.9, 0.99))
            + f", max {sent[-1]} ms"
        )
    if claimed:
        print(
            "  accept → claimed "
            + ", ".join(f"p{q * 100:g} {percentile(claimed, q)} ms" for q in (0.5, 0.9, 0.99))
            + f", max {claimed[-1]} ms"
        )
    busy = elapsed + drain
    print(
        f"  gateway CPU {cpu:.1f} s = {cpu / max(accepted, 1) * 1e6:.0f} µs per message "
        f"({cpu / busy:.2f} cores); sink CPU {sink_cpu:.1f} s ({sink_cpu / busy:.2f} cores)"
    )
    print(f"  {summary}")
    for line in problems:
        print(f"  serve.log: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=50_000,
        help="phase 1 messages; 0 skips phase 1 (then give --rate)",
    )
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4, help="phase 1 connections")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10, help="phase 2 duration")
    parser.add_argument(
        "--rate", type=float, default=0, help="phase 2 messages/s; default half the phase 1 figure"
    )
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument(
        "--sink-latency-ms",
        type=float,
        default=0,
        help="the sink holds every answer back this long (%(default)s)",
    )
    args = parser.parse_args()
    if args.messages <= 0 and args.rate <= 0:
        parser.error("--messages 0 skips phase 1, so give the phase 2 --rate")
    measured = throughput(args) if args.messages > 0 else 0.0
    if args.seconds > 0:
        latency(args, args.rate or measured / 2)


if __name__ == "__main__":
    main()
