"""History lookup of one recipient's messages in the PostgreSQL journal, among millions.

    .venv/bin/python bench/history_lookup.py --messages 10000000 --seconds 10 --rate 2000

Fills a schema of the PostgreSQL server (default: the local one) through the journal's own
migrations, then with `--messages` messages spread over `--recipients` recipients, each with
the two events a sent message has (sending, sent), written by SQL (`generate_series`) so the
load takes minutes, not hours. It then asks the journal (`PostgresJournal.by_recipient`, the
code path of `GET /v1/recipients/…/messages`) for random recipients' newest 20 messages at a
fixed `--rate`, from `--concurrency` tasks, and prints the lookups/s achieved and the latency
percentiles. The goal printed beside them: p99 ≤ 5 ms at ≥ 2,000 lookups/s.

`--keep` leaves the schema for another run (`--reuse` skips the load when it is there).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from sluice.journal.postgres import PostgresJournal
from sluice.model import EPOCH_MS

GOAL_P99_MS = 5.0
GOAL_RATE = 2000
TENANT = "acme"
PAGE = 20


def recipient(i: int) -> str:
    return f"+1555{i:07d}"


async def load(url: str, schema: str, messages: int, recipients: int) -> None:
    journal = PostgresJournal(url, schema=schema)
    await journal.open()  # creates the schema and its tables
    await journal.close()
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        have = await conn.fetchval("SELECT count(*) FROM messages")
        if have >= messages:
            print(f"schema {schema}: {have:,} messages already there")
            return
        started = time.perf_counter()
        chunk = 1_000_000
        base = (1_760_000_000_000 - EPOCH_MS) << 22  # ids from a fixed time, node 0
        for first in range(have, messages, chunk):
            last = min(messages, first + chunk)
            # Message i goes to recipient (i * 7919) mod R: a recipient's messages are spread
            # over the whole table, as they are when many recipients are served at once.
            await conn.execute(
                "INSERT INTO messages (id, tenant, channel, recipient, body, priority, state, "
                "due_at, attempts, provider_id, updated_at) "
                "SELECT $1::bigint + (g::bigint << 12), $2, 'sms', "
                "'+1555' || lpad(((g::bigint * 7919) % $3)::text, 7, '0'), "
                "'Your code is ' || g, 2, 3, 1700000000000 + g, 1, 'p' || g, "
                "1700000000000 + g FROM generate_series($4::int, $5::int - 1) AS g",
                base,
                TENANT,
                recipients,
                first,
                last,
            )
            await conn.execute(
                "INSERT INTO events (message_id, at, state, channel, attempt, outcome, "
                "provider_id, latency_ms) "
                "SELECT $1::bigint + (g::bigint << 12), 1700000000000 + g, s, 'sms', 1, "
                "CASE WHEN s = 3 THEN 0 END, CASE WHEN s = 3 THEN 'p' || g END, "
                "CASE WHEN s = 3 THEN 12.5 END "
                "FROM generate_series($2::int, $3::int - 1) AS g, (VALUES (2), (3)) AS v(s)",
                base,
                first,
                last,
            )
            rate = last / (time.perf_counter() - started)
            print(f"  loaded {last:,} messages ({rate:,.0f}/s)", flush=True)
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("VACUUM ANALYZE events")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
            "AND c.relkind = 'r'",
            schema,
        )
        print(f"loaded in {time.perf_counter() - started:.0f} s; schema size {size}")
    finally:
        await conn.close()


async def measure(
    url: str, schema: str, recipients: int, seconds: float, rate: float, concurrency: int
) -> None:
    journal = PostgresJournal(url, schema=schema, pool_size=concurrency)
    await journal.open()
    rng = random.Random(7)
    latencies: list[float] = []
    found = 0
    interval = concurrency / rate
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client() -> None:
        nonlocal found
        next_at = loop.time() + rng.random() * interval
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            t0 = time.perf_counter()
            records = await journal.by_recipient(
                TENANT, recipient(rng.randrange(recipients)), None, PAGE
            )
            latencies.append(time.perf_counter() - t0)
            found += len(records)
            next_at += interval

    try:
        for _ in range(200):  # warm the pool and the cache a little, as a running server is
            await journal.by_recipient(TENANT, recipient(rng.randrange(recipients)), None, PAGE)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await journal.close()
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(n * p))] * 1000

    achieved = n / elapsed
    print(
        f"{n:,} lookups in {elapsed:.1f} s: {achieved:,.0f}/s (asked {rate:,.0f}/s, "
        f"goal >= {GOAL_RATE:,}), {found / n:.1f} messages with their timelines each"
    )
    print(
        f"latency p50 {pct(0.5):.2f} ms, p90 {pct(0.9):.2f} ms, p99 {pct(0.99):.2f} ms "
        f"(goal <= {GOAL_P99_MS} ms), max {latencies[-1] * 1000:.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--schema", default="bench_history")
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="lookups per second asked")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="leave the schema for another run")
    args = parser.parse_args()
    print(
        f"history lookup: {args.messages:,} messages, {args.recipients:,} recipients, "
        f"pages of {PAGE}, {args.concurrency} concurrent clients"
    )
    try:
        await load(args.url, args.schema, args.messages, args.recipients)
        await measure(
            args.url, args.schema, args.recipients, args.seconds, args.rate, args.concurrency
        )
    finally:
        if not args.keep:
            conn = await asyncpg.connect(args.url)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
