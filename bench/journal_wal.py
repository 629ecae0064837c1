"""WAL size of the SQLite journal under sustained ingest, with and without its bound.

    .venv/bin/python bench/journal_wal.py --seconds 20 --wal-limit 16777216
    .venv/bin/python bench/journal_wal.py --seconds 20 --wal-limit 1099511627776   # no bound

`--producers` tasks insert batches of `--batch` messages into one `SqliteJournal` (group
commit, synchronous=full) without a pause, while a consumer claims and completes them (the
delivery side's writes) and a reader looks messages up (the status API's reads), for
`--seconds`. Every 20 ms the WAL's size is sampled; printed: messages/s, the largest and the
last WAL size, the database's size, and how often the writer truncated the WAL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from sluice.journal.base import Completion
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, Outcome, State, now_ms

TENANT = "acme"
OWNER = 1
SAMPLE_SECONDS = 0.02


def size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


async def run(directory: Path, args: argparse.Namespace) -> None:
    path = directory / "journal.db"
    wal = Path(f"{path}-wal")
    journal = SqliteJournal(path, wal_limit_bytes=args.wal_limit)
    await journal.open()
    ids = IdGenerator(node=1)
    inserted: list[int] = []
    stop = asyncio.Event()
    largest = 0

    async def produce(n: int) -> None:
        i = 0
        while not stop.is_set():
            batch = [
                Message(ids.next(), TENANT, "web", f"+1555{n:02d}{i + k:07d}", "x" * args.body)
                for k in range(args.batch)
            ]
            i += args.batch
            result = await journal.insert(TENANT, batch)
            inserted.extend(result.ids)

    async def consume() -> None:
        while not stop.is_set():
            claimed = await journal.claim("web", 1000, 1000, OWNER, now_ms(), 30_000)
            if not claimed:
                await asyncio.sleep(0.01)
                continue
            done = [Completion(m.id, State.SENT, "web", 1, Outcome.SENT) for m in claimed]
            await journal.complete(OWNER, done)

    async def read() -> None:
        while not stop.is_set():
            if inserted:
                await journal.get(TENANT, random.choice(inserted))
            await asyncio.sleep(0.001)

    async def sample() -> None:
        nonlocal largest
        while not stop.is_set():
            largest = max(largest, size(wal))
            await asyncio.sleep(SAMPLE_SECONDS)

    tasks = [asyncio.create_task(produce(n)) for n in range(args.producers)]
    tasks += [asyncio.create_task(consume()), asyncio.create_task(read())]
    tasks.append(asyncio.create_task(sample()))
    started = time.perf_counter()
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    last = size(wal)
    print(
        f"sustained ingest {elapsed:.1f} s, {args.producers} producers x {args.batch} messages,"
        f" WAL limit {args.wal_limit:,} bytes"
    )
    print(f"  {len(inserted):,} messages, {len(inserted) / elapsed:,.0f}/s inserted")
    print(f"  WAL largest {largest / 1e6:.1f} MB, at the end {last / 1e6:.1f} MB")
    print(f"  database {size(path) / 1e6:.1f} MB")
    print(
        f"  writer truncations {journal.wal_truncations}, "
        f"put off by readers {journal.wal_truncations_busy}"
    )
    await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--body", type=int, default=60)
    parser.add_argument("--wal-limit", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--dir", type=Path, default=None, help="where the journal goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-wal-", dir=args.dir) as directory:
        asyncio.run(run(Path(directory), args))


if __name__ == "__main__":
    main()
