"""One channel rate shared by several gateway processes through Redis: how close they keep to it.

    .venv/bin/python bench/shared_rate.py --processes 3 --rate 3000 --seconds 3

Starts --processes real OS processes, each with its own Redis client and a
`SharedTokenBucket` for the same channel, all spending tokens as fast as the bucket allows (a
channel with an endless backlog and a peer that never slows down). After --warm seconds (the
full bucket's burst goes out then) each counts what it sends for --seconds, in 100 ms slots of
the common wall clock. Prints the aggregate rate and its deviation from the configured one, the
fullest and emptiest one-second window, each process's share, and the Redis traffic: round trips
counted by the processes and commands executed by the server (INFO; the script's own commands
included, and those of any other client of that Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio

from sluice.sharing.rate import SharedTokenBucket

#: Width of the slots each process counts its sends in; 10 of them make a one-second window.
SLOT_SECONDS = 0.1
#: A spender with nothing to take looks again at least this often.
POLL_SECONDS = 0.005


async def spend(args: argparse.Namespace, prefix: str, pipe: Connection) -> dict[str, Any]:
    """One gateway process reduced to its bucket: spend as fast as allowed, count per slot."""
    client = redis.asyncio.Redis.from_url(
        args.redis_url, socket_timeout=args.timeout, socket_connect_timeout=args.timeout
    )
    bucket = SharedTokenBucket(
        "bench", args.rate, args.burst or args.rate / 10, client, prefix=prefix
    )
    slots = [0] * round(args.seconds / SLOT_SECONDS)
    async with asyncio.TaskGroup() as tg:
        refresher = tg.create_task(bucket.run())
        pipe.send("ready")
        start = await asyncio.to_thread(pipe.recv)  # the same wall-clock time for everyone
        await asyncio.sleep(max(0.0, start - time.time()))
        begin, end = start + args.warm, start + args.warm + args.seconds
        # Counters when the window opens (all processes are spending by then).
        exchanges, granted, live = 0, 0.0, 0
        while (now := time.time()) < end:
            taken = 0
            while bucket.try_take():
                taken += 1
            if now >= begin:
                if not live:
                    exchanges, granted, live = bucket.exchanges, bucket.granted, bucket.live
                slots[min(int((now - begin) / SLOT_SECONDS), len(slots) - 1)] += taken
            await asyncio.sleep(min(bucket.delay_for(1), POLL_SECONDS))
        refresher.cancel()
    await client.aclose()
    return {
        "slots": slots,
        "exchanges": bucket.exchanges - exchanges,
        "granted": bucket.granted - granted,
        "live": live,
        "shared": bucket.shared,
    }


def worker(args: argparse.Namespace, prefix: str, pipe: Connection) -> None:
    pipe.send(asyncio.run(spend(args, prefix, pipe)))


async def server_counters(url: str) -> tuple[float, int, int, int]:
    """(now, commands processed, EVALSHA/EVAL calls, their µs since the server started)."""
    async with redis.asyncio.Redis.from_url(url) as client:
        stats = await client.info("stats")
        commands = await client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(commands.get(name, {}).get("calls", 0))
        usec += int(commands.get(name, {}).get("usec", 0))
    return time.monotonic(), int(stats["total_commands_processed"]), calls, usec


async def delete_keys(url: str, prefix: str) -> None:
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=3000.0, help="global messages/s")
    parser.add_argument("--burst", type=float, default=0.0, help="default: rate / 10")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window")
    parser.add_argument("--warm", type=float, default=0.5, help="seconds before the window")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--timeout", type=float, default=0.5, help="Redis timeout, seconds")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds < 1:
        parser.error("--rate must be > 0 and --seconds at least 1 (one-second windows)")

    prefix = f"bench:{secrets.token_hex(4)}"
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for _ in range(args.processes):
        ours, theirs = context.Pipe()
        proc = context.Process(target=worker, args=(args, prefix, theirs))
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                sys.exit("a worker did not start within 30 s")
        before = asyncio.run(server_counters(args.redis_url))
        start = time.time() + 0.2
        for pipe in pipes:
            pipe.send(start)
        results = [pipe.recv() for pipe in pipes]
        after = asyncio.run(server_counters(args.redis_url))
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        asyncio.run(delete_keys(args.redis_url, prefix))
    report(args, results, before, after)


def report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    before: tuple[float, int, int, int],
    after: tuple[float, int, int, int],
) -> None:
    seconds = args.seconds
    slots = [sum(column) for column in zip(*(r["slots"] for r in results), strict=True)]
    per_second = round(1 / SLOT_SECONDS)
    windows = [sum(slots[i : i + per_second]) for i in range(len(slots) - per_second + 1)]
    sent = sum(slots)
    rate = sent / seconds
    deviation = (rate / args.rate - 1) * 100
    burst = args.burst or args.rate / 10
    print(
        f"shared rate: {args.processes} processes, {args.rate:,.0f}/s configured "
        f"(burst {burst:,.0f}), {seconds:g} s measured after {args.warm:g} s, Redis "
        f"{args.redis_url}"
    )
    print(
        f"  achieved {rate:,.1f}/s aggregate: {deviation:+.2f} % from configured (goal ±5 %); "
        f"tokens granted {sum(r['granted'] for r in results) / seconds:,.1f}/s"
    )
    print(
        f"  one-second windows (sliding, 100 ms steps): fullest {max(windows):,} "
        f"({(max(windows) / args.rate - 1) * 100:+.1f} %), emptiest {min(windows):,} "
        f"({(min(windows) / args.rate - 1) * 100:+.1f} %)"
    )
    for i, r in enumerate(results):
        mine = sum(r["slots"])
        print(
            f"  process {i + 1}: {mine / seconds:,.1f}/s = {mine / max(sent, 1) * 100:.1f} % "
            f"of the total (fair: {100 / args.processes:.1f} %), saw {r['live']} live, "
            f"{r['exchanges'] / seconds:.0f} round trips/s, "
            f"{'shared' if r['shared'] else 'FELL BACK'}"
        )
    trips = sum(r["exchanges"] for r in results) / seconds
    elapsed, commands, calls, usec = (b - a for a, b in zip(before, after, strict=True))
    print(
        f"  Redis: {trips:,.0f} round trips/s from the processes "
        f"({trips / args.processes:,.0f} each, {rate / max(trips, 1):.1f} messages per trip)"
    )
    print(
        f"  Redis server over the whole run: {commands / elapsed:,.0f} commands/s (the "
        f"script's own included, and any other client's), {calls / elapsed:,.0f} script "
        f"calls/s, {usec / max(calls, 1):.0f} µs each"
    )


if __name__ == "__main__":
    main()
