"""The journal against its own storage failing: a damaged SQLite file, a disk that fills, a WAL
that grows under sustained ingest, a PostgreSQL server that goes away.

SQLite files are damaged by overwriting one page of a closed journal with garbage; disks fill
on small real file systems (small_disk.py: tmpfs, or ext4 with 1 KiB blocks), or through the
journal's injectable free-space probe. The PostgreSQL test stops a server of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from services import PrivatePostgres
from sluice.journal.base import Completion, JournalDamaged, JournalError
from sluice.journal.postgres import PostgresJournal
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, Outcome, State, now_ms
from small_disk import fill, small_disk

TENANT = "acme"
OWNER = 7
LEASE = 30_000
MARK = "DAMAGE-THIS-PAGE"
PAGE = 4096
MIB = 1024 * 1024

_ids = IdGenerator(node=6)


def make(n: int, body: str = "x" * 100, channel: str = "web") -> list[Message]:
    return [
        Message(_ids.next(), TENANT, channel, f"+1555{i:06d}", body if i else MARK)
        for i in range(n)
    ]


async def build(path: Path, n: int = 300) -> list[Message]:
    """A closed journal of `n` queued messages; the first one's body is `MARK`."""
    journal = SqliteJournal(path, synchronous="normal")
    await journal.open()
    messages = make(n)
    await journal.insert(TENANT, messages)
    await journal.close()  # the last connection checkpoints: every page is in the file
    return messages


def damage(path: Path) -> None:
    """Overwrite the page that holds the first message with garbage."""
    data = bytearray(path.read_bytes())
    at = data.find(MARK.encode())
    assert at > 0, "the message is not in the database file"
    page = at // PAGE
    data[page * PAGE : (page + 1) * PAGE] = b"\xff" * PAGE
    path.write_bytes(bytes(data))


async def until(check: object, within: float = 20.0) -> None:
    """Poll `check()` (a callable returning a truth value) until it holds."""
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ a damaged file


async def test_a_damaged_journal_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    await build(path)
    damage(path)
    journal = SqliteJournal(path)
    with pytest.raises(JournalDamaged) as caught:
        await journal.open()
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and "damaged" in message
    assert ".recover" in message and "backup" in message  # what to do
    # Nothing is left behind: the lock is free, a second try says the same.
    with pytest.raises(JournalDamaged):
        await SqliteJournal(path).open()


async def test_a_damaged_page_met_while_running_fails_only_the_calls_touching_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    messages = await build(path)
    damage(path)
    journal = SqliteJournal(path, check_at_start=False)  # the check is configurable
    await journal.open()
    try:
        assert journal.fault() is None
        # A read and a write that touch the damaged page: a JournalError (HTTP 503; the
        # runners wait and try again), never sqlite3.DatabaseError.
        with pytest.raises(JournalDamaged, match="damaged"):
            await journal.get(TENANT, messages[0].id)
        with pytest.raises(JournalDamaged):
            await journal.claim("web", 1000, 1000, OWNER, now_ms() + 1000, LEASE)
        fault = journal.fault()
        assert fault is not None and str(path) in fault
        # The rest of the journal still works.
        fresh = make(3, channel="sms")
        assert len((await journal.insert(TENANT, fresh)).ids) == 3
        claimed = await journal.claim("sms", 10, 10, OWNER, now_ms() + 1000, LEASE)
        assert [m.id for m in claimed] == [m.id for m in fresh]
        assert journal.fault() is not None  # a damaged file stays a fault until recovered
    finally:
        await journal.close()


# ------------------------------------------------------------------ free space


async def test_below_the_reserve_new_messages_are_refused_and_taken_again_with_space(
    tmp_path: Path,
) -> None:
    free = [100 * MIB]
    journal = SqliteJournal(
        tmp_path / "journal.db",
        free_space_reserve_bytes=10 * MIB,
        free_space=lambda _: free[0],
    )
    await journal.open()
    try:
        accepted = make(5)
        await journal.insert(TENANT, accepted)
        free[0] = 9 * MIB
        with pytest.raises(JournalError, match="free_space_reserve_bytes"):
            await journal.insert(TENANT, make(1))  # the writer looks before the group
        fault = journal.fault()
        assert fault is not None and "almost full" in fault
        with pytest.raises(JournalError, match="almost full"):
            await journal.save_state("greylist", b"{}")
        # What was accepted is still delivered.
        claimed = await journal.claim("web", 10, 10, OWNER, now_ms() + 1000, LEASE)
        assert len(claimed) == 5
        await journal.complete(
            OWNER, [Completion(m.id, State.SENT, "web", 1, Outcome.SENT) for m in claimed]
        )
        free[0] = 50 * MIB
        await until(lambda: journal.fault() is None)  # by itself, without a write
        assert len((await journal.insert(TENANT, make(2))).ids) == 2
    finally:
        await journal.close()


@pytest.mark.parametrize("reserve", [0, 512 * 1024])
async def test_a_real_disk_filling_up_is_refused_then_left_behind_when_space_returns(
    tmp_path: Path, reserve: int
) -> None:
    with small_disk(tmp_path / "disk", 4 * MIB) as disk:
        filler = disk / "filler"
        fill(filler, leave=2 * MIB)
        journal = SqliteJournal(disk / "journal.db", free_space_reserve_bytes=reserve)
        await journal.open()
        try:
            accepted = 0
            with pytest.raises(JournalError) as caught:
                for _ in range(10_000):
                    await journal.insert(TENANT, make(50))
                    accepted += 50
            assert accepted > 0
            if reserve:  # refused before the disk was full
                assert "free_space_reserve_bytes" in str(caught.value)
                assert os.statvfs(disk).f_bavail > 0
            else:  # a real ENOSPC from SQLite
                assert "disk is full" in str(caught.value)
            assert journal.fault() is not None
            filler.unlink()
            await until(lambda: journal.fault() is None)
            assert len((await journal.insert(TENANT, make(50))).ids) == 50
            claimed = await journal.claim("web", 100, 100, OWNER, now_ms() + 1000, LEASE)
            assert len(claimed) == 100
        finally:
            await journal.close()


async def test_the_wal_index_has_no_holes_on_a_file_system_of_1_kib_blocks(
    tmp_path: Path,
) -> None:
    # SQLite grows its -shm by writing the last byte of each 4 KiB page; with 1 KiB blocks
    # the page's other blocks stay holes until SQLite stores into them through its mapping,
    # and such a store on a full disk is SIGBUS (exit 135, no word). The WAL index must be on
    # disk, every block of it, before the WAL needs it: for 4x the WAL limit.
    limit = 64 * MIB
    with small_disk(tmp_path / "disk", 32 * MIB, "ext4-1k") as disk:
        journal = SqliteJournal(
            disk / "journal.db", free_space_reserve_bytes=0, wal_limit_bytes=limit
        )
        await journal.open()
        try:
            await journal.insert(TENANT, make(2000))
            shm = os.stat(disk / "journal.db-shm")
            # One 32 KiB region indexes 4,096 WAL frames of 4,120 bytes.
            assert shm.st_size >= 4 * limit // (4096 * 4120) * 32 * 1024
            assert shm.st_blocks * 512 >= shm.st_size, "holes in the WAL index"
        finally:
            await journal.close()


# ------------------------------------------------------------------ the WAL


async def test_the_wal_stays_bounded_under_sustained_ingest(tmp_path: Path) -> None:
    limit = 256 * 1024
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path, synchronous="normal", wal_limit_bytes=limit)
    await journal.open()
    wal = Path(f"{path}-wal")
    largest = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal largest
        for _ in range(100):
            await journal.insert(TENANT, make(100))
            largest = max(largest, os.stat(wal).st_size)

    async def consume() -> None:
        while not stop.is_set():
            claimed = await journal.claim("web", 500, 500, OWNER, now_ms() + 1000, LEASE)
            done = [Completion(m.id, State.SENT, "web", 1, Outcome.SENT) for m in claimed]
            await journal.complete(OWNER, done)
            await asyncio.sleep(0)

    try:
        consumer = asyncio.create_task(consume())
        await asyncio.gather(*(produce() for _ in range(4)))
        stop.set()
        await consumer
        # 40,000 messages (~12 MB of pages written) through a WAL that never passes its limit
        # by more than the groups committed before the writer looked.
        assert largest < limit + 4 * MIB, largest
        assert journal.wal_truncations > 0
    finally:
        await journal.close()


async def test_truncating_the_wal_never_waits_for_a_reader(tmp_path: Path) -> None:
    """A reader holding an old snapshot blocks the TRUNCATE checkpoint; the one writer must
    not wait on it (the busy handler would hold every insert for up to 10 s): it tries again
    after a later group."""
    limit = 64 * 1024
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path, synchronous="normal", wal_limit_bytes=limit)
    await journal.open()
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await journal.insert(TENANT, make(10))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()  # holds its snapshot
        for _ in range(20):  # well past the limit, each insert answered at once
            await asyncio.wait_for(journal.insert(TENANT, make(200)), 5)
        assert journal.wal_truncations_busy > 0
        reader.execute("COMMIT")
        await journal.insert(TENANT, make(200))  # the reader gone: truncated
        assert journal.wal_truncations > 0
    finally:
        reader.close()
        await journal.close()


# ------------------------------------------------------------------ PostgreSQL out of reach


@pytest.mark.integration
async def test_with_postgres_down_the_edges_fail_fast_while_delivery_keeps_trying(
    private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sluice.journal")
    journal = PostgresJournal(
        private_postgres.url, schema="sluice", reconnect_seconds=120, ingress_wait_seconds=1
    )
    await journal.open()
    try:
        accepted = make(3)
        await journal.insert(TENANT, accepted)
        assert journal.fault() is None
        await asyncio.to_thread(private_postgres.stop, "immediate")
        started = time.monotonic()
        with pytest.raises(JournalError, match="unreachable"):
            await journal.insert(TENANT, make(1))
        # Well before the 120 s that delivery keeps trying for.
        assert time.monotonic() - started < 60
        with pytest.raises(JournalError, match="unreachable"):
            await journal.get(TENANT, accepted[0].id)
        fault = journal.fault()
        assert fault is not None and "unreachable" in fault
        seen = len(caplog.records)
        claim = asyncio.create_task(journal.claim("web", 10, 10, OWNER, now_ms() + 1000, LEASE))
        # The claim meets the outage and keeps trying.
        await until(lambda: any("trying again" in r.getMessage() for r in caplog.records[seen:]))
        assert not claim.done()
        await asyncio.to_thread(private_postgres.start)
        claimed = await asyncio.wait_for(claim, 60)
        assert sorted(m.id for m in claimed) == sorted(m.id for m in accepted)
        await until(lambda: journal.fault() is None)
    finally:
        await journal.close()


@pytest.mark.integration
async def test_a_busy_pool_is_not_taken_for_an_unreachable_server(
    private_postgres: PrivatePostgres,
) -> None:
    """Every connection in use: an edge's call gives up at its wait (503), but the journal
    is busy, not out of reach, so the process stays ready."""
    journal = PostgresJournal(
        private_postgres.url, schema="sluice", pool_size=2, ingress_wait_seconds=0.5
    )
    await journal.open()
    try:
        accepted = make(1)
        await journal.insert(TENANT, accepted)
        pool = journal._pool  # to hold every connection the pool has
        assert pool is not None
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        try:
            with pytest.raises(JournalError):
                await journal.get(TENANT, accepted[0].id)
            assert journal.fault() is None
        finally:
            for conn in held:
                await pool.release(conn)
        assert await journal.get(TENANT, accepted[0].id) is not None
    finally:
        await journal.close()
