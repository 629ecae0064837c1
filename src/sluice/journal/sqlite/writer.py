"""The SQLite journal's writer thread: one connection, every write, group commit.

`GroupCommitWriter` is the half of `SqliteJournal` that writes: `_write` queues an operation
with a future; the thread takes everything queued (up to `max_ops`), runs it in one
transaction, commits once and only then resolves the futures, on the event loop. An operation
is a function `op(conn, tx, *args)` run on the writer thread; `tx` is the group's
`Transaction`, whose count changes reach `pending()` only if the group commits.

Examples:
    class SqliteJournal(GroupCommitWriter):
        async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
            return await self._write(op_renew, owner, until, json_encoder.encode(list(ids)))
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from sluice.journal.base import JournalError
from sluice.journal.recipient_index import RecipientIndex
from sluice.journal.sqlite.schema import connect, install

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
    ) -> None:
        self._path = path
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

    def _reset_writer(self) -> None:
        """Forget the counts of a previous open (the recovery at open counts them again)."""
        self._pending.clear()
        self._pending_view = {}
        self._closing = False
        self._ready.clear()
        self._open_error = None

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

    def _write_loop(self) -> None:
        try:
            conn = connect(self._path, self._synchronous)
            install(conn)
            self._index.load(conn)
        except BaseException as exc:
            self._open_error = exc
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
            if self._relax_outcomes:
                # Claims and outcomes commit on their own, before the producers' fsync: the
                # delivery path never waits for a batch of new messages to reach the disk.
                relaxed = [item for item in group if item[0] in relaxed_ops]
                if relaxed and len(relaxed) < len(group):
                    self._run_group(conn, relaxed)
                    group = [item for item in group if item[0] not in relaxed_ops]
            self._run_group(conn, group)
        conn.close()

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
                conn.execute("ROLLBACK")
                tx = Transaction(self._shared)
                if len(group) == 1:
                    results = [(group[0][2], None, exc)]
                else:
                    results = [self._run_alone(conn, tx, item) for item in group]
                conn.execute("BEGIN IMMEDIATE")
            run = self._index.write_run(conn, tx.index_pairs) if tx.index_pairs else None
            conn.execute("COMMIT")
        except Exception as exc:
            log.exception("journal commit failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = JournalError(f"journal commit failed: {exc}")
            results = [(future, None, error) for _, _, future in group]
        else:
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
            conn.execute("ROLLBACK")
            return future, None, exc
        if run is not None:
            self._index.committed(run)
        tx.deltas.update(alone.deltas)
        return future, value, None

    def _merge_index_runs(self, conn: sqlite3.Connection) -> None:
        try:
            while (merge := self._index.due()) is not None:
                self._index.merge(conn, merge)
        except sqlite3.Error:
            # The runs stay as they were; lookups stay correct, only slower. Next group retries.
            log.exception("merging recipient index runs failed")


def _resolve(results: list[Reply]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
