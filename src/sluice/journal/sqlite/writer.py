"""The SQLite journal's writer thread: one connection, every write, group commit.

`GroupCommitWriter` is the half of `SqliteJournal` that writes: `_write` queues an operation
with a future; the thread takes everything queued (up to `max_ops`), runs it in one
transaction, commits once and only then resolves the futures, on the event loop. An operation
is a function `op(conn, tx, *args)` run on the writer thread; `tx` is the group's
`Transaction`, whose count changes reach `pending()` only if the group commits.

Between groups the writer keeps the WAL bounded: under sustained ingest the checkpoint thread's
PASSIVE checkpoints copy pages but never catch the WAL's end (a commit always lands between
its last copy and the next group), so SQLite never starts the WAL over and it grows until
SQLite's own safety checkpoint (270 MB beside a 188 MB database after 20 s of ingest,
bench/journal_wal.py). Past `wal_limit_bytes` the writer, the only one who can stop new
frames, checkpoints with TRUNCATE and the WAL starts from zero (19.6 MB at most, same rate).

A storage fault met by an operation (a damaged page, a full disk, an I/O error) fails that
operation with a `JournalError` (health.py) and is remembered for `fault()`; the writer goes on.

Examples:
    class SqliteJournal(GroupCommitWriter):
        async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
            return await self._write(op_renew, owner, until, json_encoder.encode(list(ids)))
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from sluice.journal.base import JournalDamaged, JournalError
from sluice.journal.recipient_index import RecipientIndex
from sluice.journal.sqlite.health import (
    FreeSpace,
    ShmRoom,
    check_integrity,
    is_full,
    storage_error,
)
from sluice.journal.sqlite.schema import BUSY_TIMEOUT_MS, connect, install

log = logging.getLogger("sluice.journal")

Op: TypeAlias = Callable[..., Any]
#: An operation queued for the writer: the function, its arguments after (conn, tx), its future.
Queued: TypeAlias = tuple[Op, tuple[Any, ...], asyncio.Future[Any]]
#: What settles a queued operation's future: (the future, its value, or the error it raised).
Reply: TypeAlias = tuple[asyncio.Future[Any], Any, BaseException | None]


class WriterState:
    """What the writer thread remembers between groups (only it touches this)."""

    __slots__ = ("early_receipts",)

    def __init__(self) -> None:
        #: An upper bound on the rows of `early_receipts`: when 0, no SENT needs to look there.
        self.early_receipts = 0


class Transaction:
    """Per-group scratch: pending-count changes applied only if the group commits."""

    __slots__ = ("deltas", "index_pairs", "shared")

    def __init__(self, shared: WriterState) -> None:
        self.shared = shared
        self.deltas: Counter[str] = Counter()
        #: (recipient key, message id) of the messages inserted, for the group's index run.
        self.index_pairs: list[tuple[int, int]] = []


class GroupCommitWriter:
    """The writer thread and its state; `SqliteJournal` adds the readers and the contract.

    `relaxed_ops` are the operations whose loss in a power cut costs at most a repeated
    delivery: with `relax_outcomes` they commit without fsync (see `_run_group`)."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        *,
        max_ops: int,
        relax_outcomes: bool,
        relaxed_ops: frozenset[Op],
        wal_limit_bytes: int,
        check_at_start: bool,
        free_space: FreeSpace,
        reserve_bytes: int,
        ingest_ops: frozenset[Op],
    ) -> None:
        self._path = path
        self._wal_path = Path(f"{path}-wal")
        self._wal_limit = wal_limit_bytes
        self._check_at_start = check_at_start
        self._shm = ShmRoom(path)
        self._free_space = free_space
        self._reserve = reserve_bytes
        self._ingest_ops = ingest_ops
        self._synchronous = synchronous
        self._current_sync = synchronous
        self._relax_outcomes = relax_outcomes
        self._relaxed_ops = relaxed_ops
        self._max_ops = max_ops
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: Counter[str] = Counter()
        self._pending_view: dict[str, int] = {}
        self._index = RecipientIndex()
        self._shared = WriterState()
        self._ready = threading.Event()
        #: Set before the writer's stop marker is queued: nothing may queue behind it.
        self._closing = False
        self._open_error: BaseException | None = None
        self.commits = 0
        self.ops = 0
        #: Seconds the writer spent in transactions, and the queue wait of committed operations.
        self.busy_seconds = 0.0
        self.largest_group = 0
        #: WAL checkpoints the writer ran past the limit, and those readers kept from finishing.
        self.wal_truncations = 0
        self.wal_truncations_busy = 0
        #: Why the journal cannot serve: its file is damaged (for good), its disk is full.
        self._damage: str | None = None
        self._space_fault: str | None = None
        self._commits_failing = False

    def _reset_writer(self) -> None:
        """Forget the counts of a previous open (the recovery at open counts them again)."""
        self._pending.clear()
        self._pending_view = {}
        self._closing = False
        self._ready.clear()
        self._open_error = None
        self._damage = None
        self._space_fault = None

    async def _start_writer(self) -> BaseException | None:
        """Start the writer thread; return why it could not open the journal, if it could not."""
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()
        await asyncio.to_thread(self._ready.wait)
        if self._open_error is not None:
            self._writer = None
        return self._open_error

    async def _stop_writer(self) -> None:
        """Let the writer finish what is queued, then end its thread."""
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None

    # ---------------------------------------------------------------- group commit

    async def _write(self, op: Op, *args: Any) -> Any:
        if self._writer is None or self._loop is None or self._closing:
            raise JournalError("journal is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, args, future))
        return await future

    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(self._path, self._synchronous, wal_limit_bytes=self._wal_limit)
        try:
            if self._check_at_start:
                check_integrity(conn, self._path)
            install(conn)
            self._index.load(conn)
            self._shm = ShmRoom(self._path)  # SQLite truncated it: this is its first connection
            self._shm.cover(self._wal_limit)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_loop(self) -> None:
        try:
            conn = self._open_writer()
        except BaseException as exc:
            self._open_error = storage_error(exc, self._path) or exc
            self._ready.set()
            return
        self._ready.set()
        relaxed_ops = self._relaxed_ops
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            group = [item]
            while len(group) < self._max_ops:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            if any(item[0] in self._ingest_ops for item in group):
                group = self._refuse_ingest(group)
            if self._relax_outcomes:
                # Claims and outcomes commit on their own, before the producers' fsync: the
                # delivery path never waits for a batch of new messages to reach the disk.
                relaxed = [item for item in group if item[0] in relaxed_ops]
                if relaxed and len(relaxed) < len(group):
                    self._run_group(conn, relaxed)
                    group = [item for item in group if item[0] not in relaxed_ops]
            if group:
                self._run_group(conn, group)
            self._bound_wal(conn)
        conn.close()

    def _probe_space(self) -> None:
        """Set or clear the free-space fault from one probe of the disk."""
        try:
            free = self._free_space(self._path.parent)
        except OSError as exc:
            log.warning("journal: free space beside %s unknown: %s", self._path, exc)
            return
        if free < self._reserve:
            if self._space_fault is None:
                log.error("journal: %s", self._low_space(free))
            self._space_fault = self._low_space(free)
        elif free > 0 and self._space_fault is not None:
            log.warning("journal: %d bytes free beside %s; taking messages again", free, self._path)
            self._space_fault = None

    def _low_space(self, free: int) -> str:
        return (
            f"the disk holding journal {self._path} is almost full: {free} bytes free, below "
            f"journal.free_space_reserve_bytes ({self._reserve}); new messages are refused "
            "until space is freed"
        )

    def _refuse_ingest(self, group: list[Queued]) -> list[Queued]:
        """Probe the disk before a group that brings new data; while it is below the reserve,
        refuse that data (the rest of the group runs): the probe interval of the checkpoint
        thread alone lets a burst fill a small disk before it looks."""
        self._probe_space()
        fault = self._space_fault
        if fault is None:
            return group
        refused: list[Reply] = [
            (future, None, JournalError(fault)) for op, _, future in group if op in self._ingest_ops
        ]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, refused)
        return [item for item in group if item[0] not in self._ingest_ops]

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """Past `wal_limit_bytes`, copy the WAL into the database and truncate it (see the
        module); keep the WAL index allocated for what the WAL holds (health.ShmRoom)."""
        try:
            size = os.stat(self._wal_path).st_size
            self._shm.cover(size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._space_fault = f"journal {self._path}: no room for the WAL index ({exc})"
            return
        if size <= self._wal_limit:
            return
        # The one writer must not wait on readers here (the busy handler would hold every
        # insert and outcome for up to busy_timeout): a checkpoint a reader blocks is tried
        # again after a later group.
        conn.execute("PRAGMA busy_timeout=0")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                self._failure(exc)
            busy = 1
        except sqlite3.Error as exc:
            self._failure(exc)
            return
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if busy:
            self.wal_truncations_busy += 1  # a reader or the checkpoint thread: next group
        else:
            self.wal_truncations += 1

    def _failure(self, exc: Exception) -> Exception:
        """What an operation's caller hears of `exc`: a JournalError for a storage fault
        (remembered for `fault()`, logged once in one line), `exc` itself otherwise."""
        error = storage_error(exc, self._path)
        if error is None:
            return exc
        error.__cause__ = exc
        if isinstance(error, JournalDamaged):
            if self._damage is None:
                log.error("%s", error)
            self._damage = str(error)
        elif is_full(error):
            self._space_fault = str(error)
        return error

    def _run_group(self, conn: sqlite3.Connection, group: list[Queued]) -> None:
        tx = Transaction(self._shared)
        started = time.perf_counter()
        if self._relax_outcomes:
            # Claims, outcomes and leases that are lost to a power cut only cause a re-send,
            # which at-least-once delivery allows; producers' data and receipts are fsynced.
            relaxed_ops = self._relaxed_ops
            durable = any(op not in relaxed_ops for op, _, _ in group)
            wanted = "FULL" if durable else "NORMAL"
            if wanted != self._current_sync:
                conn.execute(f"PRAGMA synchronous={wanted}")
                self._current_sync = wanted
        results: list[Reply] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Optimistic: every operation in one transaction, no savepoint each (each
                # statement is a GIL hand-off). Operations rarely fail; when one does, the
                # group is rolled back and each operation runs again in its own transaction.
                for op, args, future in group:
                    results.append((future, op(conn, tx, *args), None))
            except Exception as exc:
                if conn.in_transaction:  # SQLite rolls back by itself after some faults
                    conn.execute("ROLLBACK")
                tx = Transaction(self._shared)
                if len(group) == 1:
                    results = [(group[0][2], None, self._failure(exc))]
                else:
                    results = [self._run_alone(conn, tx, item) for item in group]
                conn.execute("BEGIN IMMEDIATE")
            run = self._index.write_run(conn, tx.index_pairs) if tx.index_pairs else None
            conn.execute("COMMIT")
        except Exception as exc:
            failed = self._failure(exc)
            if isinstance(failed, JournalError):
                if not self._commits_failing:  # once per run of failures, in one line
                    log.error("journal commit failed: %s", failed)
                self._commits_failing = True
                error = failed
            else:
                log.exception("journal commit failed")
                error = JournalError(f"journal commit failed: {exc}")
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            results = [(future, None, error) for _, _, future in group]
        else:
            if self._commits_failing:
                log.warning("journal %s commits again", self._path)
                self._commits_failing = False
            if tx.deltas:
                self._pending.update(tx.deltas)
                # Readers on the event loop get a fresh dict, never one being changed.
                self._pending_view = {k: v for k, v in self._pending.items() if v}
            self.commits += 1
            self.ops += len(group)
            self.largest_group = max(self.largest_group, len(group))
            self.busy_seconds += time.perf_counter() - started
            if run is not None:
                self._index.committed(run)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, results)
        self._merge_index_runs(conn)

    def _run_alone(self, conn: sqlite3.Connection, tx: Transaction, item: Queued) -> Reply:
        """One operation in its own transaction (after its group failed); its count changes
        are added to `tx` only if it commits."""
        op, args, future = item
        alone = Transaction(self._shared)
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = op(conn, alone, *args)
            run = self._index.write_run(conn, alone.index_pairs) if alone.index_pairs else None
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return future, None, self._failure(exc)
        if run is not None:
            self._index.committed(run)
        tx.deltas.update(alone.deltas)
        return future, value, None

    def _merge_index_runs(self, conn: sqlite3.Connection) -> None:
        try:
            while (merge := self._index.due()) is not None:
                self._index.merge(conn, merge)
        except sqlite3.Error as exc:
            # The runs stay as they were; lookups stay correct, only slower. Next group retries.
            failed = self._failure(exc)
            if failed is exc:
                log.exception("merging recipient index runs failed")
            elif not self._commits_failing:
                log.warning("merging recipient index runs failed: %s", failed)


def _resolve(results: list[Reply]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
