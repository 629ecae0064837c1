"""What the SQLite journal's integrity check at start costs (`journal.check_at_start`).

    .venv/bin/python bench/journal_check.py --messages 1000000
    .venv/bin/python bench/journal_check.py --messages 10000000 --dir /var/tmp   # ~6 GB

Builds a journal of `--messages` messages through the journal itself (inserts in batches of
1,000, then every message claimed and sent, so each has the rows and events of a sent one),
closes it, then opens it `--runs` times each with and without the check and prints the
file's size, the time of `PRAGMA quick_check` alone, and of `SqliteJournal.open()` with and
without it. The OS page cache is warm (the file was just written): a cold cache adds the
time to read the whole file once. `--keep PATH` builds there (or reuses a journal there).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from sluice.journal.base import Completion
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, Outcome, State, now_ms

TENANT = "acme"
OWNER = 1
BATCH = 1000


async def build(path: Path, messages: int) -> None:
    journal = SqliteJournal(path, synchronous="normal", check_at_start=False)
    await journal.open()
    ids = IdGenerator(node=1)
    started = time.perf_counter()
    for start in range(0, messages, BATCH):
        batch = [
            Message(ids.next(), TENANT, "web", f"+1555{(start + k) % 1_000_000:07d}", "x" * 60)
            for k in range(min(BATCH, messages - start))
        ]
        await journal.insert(TENANT, batch)
        claimed = await journal.claim("web", BATCH, BATCH, OWNER, now_ms(), 30_000)
        done = [Completion(m.id, State.SENT, "web", 1, Outcome.SENT) for m in claimed]
        await journal.complete(OWNER, done)
        if (start // BATCH) % 500 == 0:
            rate = (start + BATCH) / (time.perf_counter() - started)
            print(f"  {start + BATCH:,} messages ({rate:,.0f}/s)", flush=True)
    await journal.close()


def quick_check_seconds(path: Path) -> float:
    conn = sqlite3.connect(path)
    try:
        started = time.perf_counter()
        rows = conn.execute("PRAGMA quick_check").fetchall()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    assert rows == [("ok",)], rows
    return elapsed


async def open_seconds(path: Path, check: bool) -> float:
    journal = SqliteJournal(path, check_at_start=check)
    started = time.perf_counter()
    await journal.open()
    elapsed = time.perf_counter() - started
    await journal.close()
    return elapsed


async def run(path: Path, args: argparse.Namespace) -> None:
    if not path.exists():  # noqa: ASYNC240 (before anything runs)
        print(f"building a journal of {args.messages:,} messages in {path}")
        started = time.perf_counter()
        await build(path, args.messages)
        print(f"  built in {time.perf_counter() - started:.0f} s")
    size = path.stat().st_size  # noqa: ASYNC240 (nothing else runs)
    checks = [quick_check_seconds(path) for _ in range(args.runs)]
    with_check = [await open_seconds(path, True) for _ in range(args.runs)]
    without = [await open_seconds(path, False) for _ in range(args.runs)]
    print(f"journal {size / 1e6:,.0f} MB, {args.messages:,} messages (warm page cache)")
    print(f"  PRAGMA quick_check: median {statistics.median(checks):.2f} s of {checks}")
    print(f"  open with the check: median {statistics.median(with_check):.2f} s")
    print(f"  open without it: median {statistics.median(without):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where a temporary journal goes")
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) it here")
    args = parser.parse_args()
    if args.keep is not None:
        asyncio.run(run(args.keep, args))
        return
    with tempfile.TemporaryDirectory(prefix="sluice-check-", dir=args.dir) as directory:
        asyncio.run(run(Path(directory) / "journal.db", args))


if __name__ == "__main__":
    main()
