"""The embedded journal: SQLite in WAL mode with group commit.

One writer thread owns the write connection. Every write operation (insert, claim, complete …)
is queued to it with a future; the thread takes everything queued, runs each operation inside
its own savepoint of one transaction, commits once, and only then resolves the futures. Many
producers therefore share one fsync, and nobody hears "done" before the data is on disk.
Reads (status, history) run on a second connection in their own thread; WAL lets them proceed
while the writer commits.

One process owns a journal file at a time (an advisory lock beside it), so at start every
message left `sending` by a crashed predecessor is returned to the queue at once.

Warning: an operation that raises rolls back to its savepoint only; the rest of the group
commits. A failing COMMIT (disk full, I/O error) fails every operation of the group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import msgspec

from sluice.journal import recipient_index
from sluice.journal.base import (
    EARLY_RECEIPT_TTL_MS,
    CallbackJob,
    CancelResult,
    Completion,
    IdempotencyConflict,
    JournalBusy,
    JournalError,
    MessageRecord,
    Receipt,
    SubmitResult,
    SweepResult,
    TimelineEntry,
)
from sluice.journal.multirow import chunk_sizes, insert_sql
from sluice.journal.recipient_index import LOOKUP_SQL, RecipientIndex, recipient_key
from sluice.journal.rows import (
    EVENT_COLUMNS,
    MESSAGE_COLUMNS,
    callback_payload,
    encode_metadata,
    final_callback,
    message_record,
    row_to_message,
    timeline_entry,
)
from sluice.model import (
    Message,
    Outcome,
    Priority,
    State,
    now_ms,
)

log = logging.getLogger("sluice.journal")

SCHEMA_VERSION = 2
#: SQLite page cache per connection: the writer's holds the hot ends of the indexes.
WRITER_CACHE_KIB = 64 * 1024
READER_CACHE_KIB = 16 * 1024
#: How often the checkpoint thread copies the WAL into the database file.
CHECKPOINT_INTERVAL_SECONDS = 0.2
#: WAL size (pages of 4 KiB) at which the writer checkpoints by itself: 256 MiB.
WAL_SAFETY_CHECKPOINT_PAGES = 65_536
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    sender TEXT,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    not_before INTEGER,
    expires_at INTEGER,
    callback_url TEXT,
    metadata BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner INTEGER,
    lease_until INTEGER,
    provider_id TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_due
    ON messages (channel, priority, due_at) WHERE state = 1;
CREATE INDEX IF NOT EXISTS messages_leased
    ON messages (lease_until) WHERE state = 2;
CREATE INDEX IF NOT EXISTS messages_expiring
    ON messages (expires_at) WHERE state = 1 AND expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    message_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    channel TEXT,
    attempt INTEGER,
    outcome INTEGER,
    provider_id TEXT,
    latency_ms REAL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    digest BLOB,
    ids BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS provider_parts (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    delivered INTEGER,
    detail TEXT,
    PRIMARY KEY (channel, provider_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS provider_parts_message ON provider_parts (message_id);
CREATE TABLE IF NOT EXISTS saved_state (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    saved_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS early_receipts (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    detail TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (channel, provider_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS early_receipts_age ON early_receipts (at);
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_due ON callbacks (due_at);
"""

_QUEUED = int(State.QUEUED)
_SENDING = int(State.SENDING)
_PRIORITIES = tuple(int(p) for p in Priority)
_json = msgspec.json.Encoder()
_rows_decoder = msgspec.json.Decoder(list[list[Any]])


# The writer's statements return their rows as ONE value (a JSON array built by SQLite) and
# take their keys as one JSON parameter. `sqlite3` releases the GIL around every step, and a
# thread waiting to take it back waits up to the switch interval (5 ms) while the event loop
# runs: a 600-row SELECT measured 0.3 ms alone and 270 ms next to a busy event loop, the same
# rows as one aggregated step 11 ms. Rows from RETURNING cannot be aggregated, so updates that
# need their rows read them first with an aggregated SELECT.
def _lane(priority: int, limit: str) -> str:
    return (
        "SELECT * FROM (SELECT * FROM messages INDEXED BY messages_due WHERE state = 1 AND "
        f"channel = ?1 AND priority = {priority} AND due_at <= ?2 ORDER BY due_at LIMIT {limit})"
    )


#: ?1 channel, ?2 now, ?3 limit, ?4 limit of the lanes below urgent: the due messages, urgent
#: first, each lane oldest first.
_CLAIM_SELECT = (
    "SELECT json_group_array(json_array(id, tenant, channel, recipient, body, sender, priority, "
    "due_at, expires_at, callback_url, hex(metadata), attempts)) FROM ("
    f"{_lane(Priority.URGENT, '?3')} UNION ALL SELECT * FROM (SELECT * FROM ("
    + " UNION ALL ".join(_lane(p, "?4") for p in Priority if p != Priority.URGENT)
    + ") LIMIT ?4) LIMIT ?3)"
)
#: ?1 a JSON array of [id, …] arrays, ?2 the lease owner: [id, tenant, channel, recipient,
#: attempts, callback_url, metadata as hex] of those still leased by the owner.
_LEASED_SELECT = (
    "SELECT json_group_array(json_array(id, tenant, channel, recipient, attempts, callback_url, "
    "hex(metadata))) FROM messages WHERE id IN (SELECT value ->> 0 FROM json_each(?1)) "
    "AND state = 2 AND lease_owner = ?2"
)
#: ?1 [[id, state, provider_id], …], ?2 now, ?3 owner.
_SETTLE_UPDATE = (
    "UPDATE messages SET state = v.value ->> 1, provider_id = v.value ->> 2, "
    "lease_owner = NULL, lease_until = NULL, updated_at = ?2 FROM json_each(?1) AS v "
    "WHERE messages.id = v.value ->> 0 AND messages.state = 2 AND messages.lease_owner = ?3"
)
#: ?1 [[id, due_at, channel, attempts to take back], …], ?2 now, ?3 owner.
_REQUEUE_UPDATE = (
    "UPDATE messages SET state = 1, due_at = v.value ->> 1, channel = v.value ->> 2, "
    "attempts = messages.attempts - (v.value ->> 3), lease_owner = NULL, lease_until = NULL, "
    "updated_at = ?2 FROM json_each(?1) AS v "
    "WHERE messages.id = v.value ->> 0 AND messages.state = 2 AND messages.lease_owner = ?3"
)

Op = Callable[..., Any]


def _unhex(metadata: str) -> bytes | None:
    """A metadata blob as the aggregated JSON rows carry it: hex, '' for none."""
    return bytes.fromhex(metadata) if metadata else None


def _jsonrow_to_message(row: list[Any]) -> Message:
    """A row of `_CLAIM_SELECT` (metadata as hex) as a Message."""
    row[-2] = _unhex(row[-2])
    return row_to_message(row)


class _WriterState:
    """What the writer thread remembers between groups (only it touches this)."""

    __slots__ = ("early_receipts",)

    def __init__(self) -> None:
        #: An upper bound on the rows of `early_receipts`: when 0, no SENT needs to look there.
        self.early_receipts = 0


class _Transaction:
    """Per-group scratch: pending-count changes applied only if the group commits."""

    __slots__ = ("deltas", "index_pairs", "shared")

    def __init__(self, shared: _WriterState) -> None:
        self.shared = shared
        self.deltas: Counter[str] = Counter()
        #: (recipient key, message id) of the messages inserted, for the group's index run.
        self.index_pairs: list[tuple[int, int]] = []


class SqliteJournal:
    """Examples:
    journal = SqliteJournal("var/sluice.db")
    await journal.open()
    result = await journal.insert("acme", [message])
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        max_ops_per_commit: int = 4096,
        fsync_outcomes: bool = False,
    ) -> None:
        self._path = Path(path)
        self._synchronous = synchronous.upper()
        self._current_sync = self._synchronous
        self._relax_outcomes = self._synchronous == "FULL" and not fsync_outcomes
        self._max_ops = max_ops_per_commit
        self._queue: queue.SimpleQueue[tuple[Op, tuple[Any, ...], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._writer: threading.Thread | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self._pending: Counter[str] = Counter()
        self._pending_view: dict[str, int] = {}
        self._index = RecipientIndex()
        self._shared = _WriterState()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._closing = False
        self._checkpointer: threading.Thread | None = None
        self._open_error: BaseException | None = None
        self.commits = 0
        self.ops = 0
        #: Seconds the writer spent in transactions, and the queue wait of committed operations.
        self.busy_seconds = 0.0
        self.largest_group = 0

    # ---------------------------------------------------------------- life cycle

    async def open(self) -> None:
        self._pending.clear()
        self._pending_view = {}
        self._closing = False
        self._ready.clear()
        self._open_error = None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._loop = asyncio.get_running_loop()
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()
        await asyncio.to_thread(self._ready.wait)
        if self._open_error is not None:
            self._writer = None
            self._release_lock()
            raise JournalError(f"cannot open journal {self._path}: {self._open_error}")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-reader")
        self._stopped.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="journal-checkpoint", daemon=True
        )
        self._checkpointer.start()
        await self._write(_op_recover)

    async def close(self) -> None:
        self._closing = True  # before the writer's stop marker: nothing may queue behind it
        self._stopped.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            self._reader.submit(self._close_reader).result()
            self._reader.shutdown(wait=True)
            self._reader = None
        self._release_lock()

    def _take_lock(self) -> None:
        fd = os.open(str(self._path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(
                f"journal {self._path} is in use by another process; one process owns an "
                "SQLite journal (use PostgreSQL to run several)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self, cache_kib: int = WRITER_CACHE_KIB) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")
        conn.execute("PRAGMA temp_store=MEMORY")
        # Checkpoints run in their own thread (`_checkpoint_loop`); the writer only checkpoints
        # itself if that thread falls this far behind.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_CHECKPOINT_PAGES}")
        return conn

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database off the writer's path (PASSIVE)."""
        conn = self._connect(cache_kib=1024)
        try:
            while not self._stopped.wait(CHECKPOINT_INTERVAL_SECONDS):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed; the writer will retry", exc_info=True)
        finally:
            conn.close()

    # ---------------------------------------------------------------- group commit

    async def _write(self, op: Op, *args: Any) -> Any:
        if self._writer is None or self._loop is None or self._closing:
            raise JournalError("journal is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, args, future))
        return await future

    def _write_loop(self) -> None:
        try:
            conn = self._connect()
            conn.executescript(_SCHEMA + recipient_index.SCHEMA)
            _migrate(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._index.load(conn)
        except BaseException as exc:
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
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
                relaxed = [item for item in group if item[0] in _RELAXED_OPS]
                if relaxed and len(relaxed) < len(group):
                    self._run_group(conn, relaxed)
                    group = [item for item in group if item[0] not in _RELAXED_OPS]
            self._run_group(conn, group)
        conn.close()

    def _run_group(
        self, conn: sqlite3.Connection, group: list[tuple[Op, tuple[Any, ...], asyncio.Future[Any]]]
    ) -> None:
        tx = _Transaction(self._shared)
        started = time.perf_counter()
        if self._relax_outcomes:
            # Claims, outcomes and leases that are lost to a power cut only cause a re-send,
            # which at-least-once delivery allows; producers' data and receipts are fsynced.
            durable = any(op not in _RELAXED_OPS for op, _, _ in group)
            wanted = "FULL" if durable else "NORMAL"
            if wanted != self._current_sync:
                conn.execute(f"PRAGMA synchronous={wanted}")
                self._current_sync = wanted
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
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
                tx = _Transaction(self._shared)
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

    def _run_alone(
        self,
        conn: sqlite3.Connection,
        tx: _Transaction,
        item: tuple[Op, tuple[Any, ...], asyncio.Future[Any]],
    ) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
        """One operation in its own transaction (after its group failed); its count changes
        are added to `tx` only if it commits."""
        op, args, future = item
        alone = _Transaction(self._shared)
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

    # ---------------------------------------------------------------- reads

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._connect(cache_kib=READER_CACHE_KIB)
            self._reader_local.conn = conn
        return conn

    def _close_reader(self) -> None:
        conn = getattr(self._reader_local, "conn", None)
        if conn is not None:
            conn.close()
            self._reader_local.conn = None

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._reader is None:
            raise JournalError("journal is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, lambda: fn(self._reader_conn(), *args))

    # ---------------------------------------------------------------- the contract

    async def insert(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
    ) -> SubmitResult:
        prepared = _prepare_insert(tenant, messages)
        result: SubmitResult = await self._write(
            _op_insert, tenant, prepared, idempotency_key, digest
        )
        return result

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        claimed: list[Message] = await self._write(
            _op_claim, channel, limit, non_urgent_limit, owner, now, lease_ms
        )
        return claimed

    async def save_state(self, name: str, data: bytes) -> None:
        """Keep a component's state (the SMTP client memory, the greylist) across restarts."""
        await self._write(_op_save_state, name, data, now_ms())

    async def load_state(self, name: str) -> bytes | None:
        row = await self._read(
            lambda conn, key: conn.execute(
                "SELECT data FROM saved_state WHERE name = ?", (key,)
            ).fetchone(),
            name,
        )
        return None if row is None else bytes(row[0])

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        if not completions:
            return 0
        callbacks: int = await self._write(_op_complete, owner, completions)
        return callbacks

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        if not ids:
            return 0
        count: int = await self._write(_op_renew, owner, until, _json.encode(list(ids)))
        return count

    async def release(self, owner: int, now: int) -> int:
        count: int = await self._write(_op_release, owner, now)
        return count

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult:
        result: SweepResult = await self._write(_op_sweep, now, idempotency_ttl_ms)
        return result

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        count: int = await self._write(_op_reroute, from_channel, to_channel, limit, now)
        return count

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult:
        result: CancelResult = await self._write(_op_cancel, tenant, message_id, now)
        return result

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        records: list[MessageRecord] = await self._read(
            _read_records, "WHERE id = ? AND tenant = ?", (message_id, tenant)
        )
        return records[0] if records else None

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        where = (
            f"WHERE id IN ({LOOKUP_SQL}) AND tenant = ? AND recipient = ? ORDER BY id DESC LIMIT ?"
        )
        params = (
            recipient_key(tenant, recipient),
            before_id if before_id is not None else (1 << 63) - 1,
            tenant,
            recipient,
            limit,
        )
        records: list[MessageRecord] = await self._read(_read_records, where, params)
        return records

    async def next_due(self, channel: str) -> int | None:
        due: int | None = await self._read(_read_next_due, channel)
        return due

    def watch_due(self, wake: Callable[[str, bool], None]) -> None:
        """Nothing to watch: one process holds the journal, and it wakes its own runners."""

    def queue_depth(self) -> int:
        """Operations waiting for the writer (the journal stage's queue)."""
        return self._queue.qsize()

    def pending(self) -> dict[str, int]:
        return self._pending_view

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        if not receipts:
            return 0
        finals: int = await self._write(_op_apply_receipts, channel, receipts)
        return finals

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]:
        jobs: list[CallbackJob] = await self._write(_op_claim_callbacks, limit, now, lease_ms)
        return jobs

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None:
        await self._write(_op_finish_callbacks, done, retry, dropped)

    async def count_by_state(self) -> dict[State, int]:
        """Messages per state (a full scan: for tests and tools, not the hot path)."""
        rows: list[tuple[int, int]] = await self._read(
            lambda conn: conn.execute(
                "SELECT state, COUNT(*) FROM messages GROUP BY state"
            ).fetchall()
        )
        return {State(state): n for state, n in rows}


def _op_save_state(
    conn: sqlite3.Connection, tx: _Transaction, name: str, data: bytes, now: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO saved_state (name, data, saved_at) VALUES (?, ?, ?)",
        (name, data, now),
    )


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a journal written by an older version up to `SCHEMA_VERSION`."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal schema version {version} is newer than this Sluice ({SCHEMA_VERSION})"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "not_before" not in columns:  # version 1 → 2
        conn.execute("ALTER TABLE messages ADD COLUMN not_before INTEGER")


def _resolve(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


# -------------------------------------------------------------------- operations (writer thread)


def _op_recover(conn: sqlite3.Connection, tx: _Transaction) -> None:
    """At start: return orphaned claims to the queue and rebuild the pending counts."""
    now = now_ms()
    rows = conn.execute(
        "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL, updated_at = ? "
        "WHERE state = ? RETURNING id, channel",
        (_QUEUED, now, _SENDING),
    ).fetchall()
    conn.executemany(
        "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, ?, ?, ?)",
        [(mid, now, _QUEUED, channel, "recovered at start") for mid, channel in rows],
    )
    if rows:
        log.warning("recovered %d messages left in flight by a previous run", len(rows))
    (tx.shared.early_receipts,) = conn.execute("SELECT COUNT(*) FROM early_receipts").fetchone()
    # Nothing is `sending` now and nothing stays `accepted` past its insert, so the pending
    # messages are the queued ones: counted from the small partial index, not the table.
    counts = conn.execute(
        "SELECT channel, COUNT(*) FROM messages INDEXED BY messages_due WHERE state = 1 "
        "GROUP BY channel"
    ).fetchall()
    tx.deltas.update(dict(counts))


#: Messages per UPDATE of a claim and per INSERT of its events (journal/multirow.py).
_MAX_CLAIM_CHUNK = 512
#: Rows per INSERT of messages (journal/multirow.py): at most 11 values a row, 11,264 a statement.
_MAX_CHUNK_ROWS = 1024
_INSERT_HEAD = (
    "INSERT INTO messages (id, tenant, channel, recipient, sender, body, priority, state, "
    "due_at, not_before, expires_at, callback_url, metadata, updated_at) VALUES "
)
#: A row's values after ?1 (the tenant) and ?2 (the time of the insert), in two shapes: the
#: common one (no sender, schedule, expiry, callback or metadata) binds 5 values a row.
_PLAIN_WIDTH = 5
_PLAIN_ROWS = (
    "(?3,?1,?4,?5,NULL,?6,?7,1,?2,NULL,NULL,NULL,NULL,?2)",
    "(?,?1,?,?,NULL,?,?,1,?2,NULL,NULL,NULL,NULL,?2)",
)
_FULL_WIDTH = 11
_FULL_ROWS = (
    "(?3,?1,?4,?5,?6,?7,?8,1,?9,?10,?11,?12,?13,?2)",
    "(?,?1,?,?,?,?,?,1,?,?,?,?,?,?2)",
)


class _Insert(msgspec.Struct):
    """An insert prepared on the caller's thread, so the writer only binds and steps: a few
    multi-row INSERTs (journal/multirow.py) with their values."""

    statements: list[tuple[str, list[Any]]]
    ids: list[int]
    pairs: list[tuple[int, int]]
    counts: dict[str, int]


def _prepare_insert(tenant: str, messages: list[Message]) -> _Insert:
    now = now_ms()
    plain = not any(
        m.sender is not None
        or m.not_before is not None
        or m.expires_at is not None
        or m.callback_url is not None
        or m.metadata
        for m in messages
    )
    values: list[Any] = []
    if plain:
        for m in messages:
            values += (m.id, m.channel, m.recipient, m.body, m.priority)
        width, (first, row) = _PLAIN_WIDTH, _PLAIN_ROWS
    else:
        for m in messages:
            values += (
                m.id,
                m.channel,
                m.recipient,
                m.sender,
                m.body,
                m.priority,
                m.not_before or now,
                m.not_before,
                m.expires_at,
                m.callback_url,
                encode_metadata(m.metadata),
            )
        width, (first, row) = _FULL_WIDTH, _FULL_ROWS
    statements = []
    start = 0
    for rows in chunk_sizes(len(messages), _MAX_CHUNK_ROWS):
        end = start + rows * width
        sql = insert_sql(_INSERT_HEAD, first, row, rows)
        statements.append((sql, [tenant, now, *values[start:end]]))
        start = end
    counts: Counter[str] = Counter(m.channel for m in messages)
    pairs = [(recipient_key(tenant, m.recipient), m.id) for m in messages]
    return _Insert(statements, [m.id for m in messages], pairs, dict(counts))


def _op_insert(
    conn: sqlite3.Connection,
    tx: _Transaction,
    tenant: str,
    prepared: _Insert,
    key: str | None,
    digest: bytes | None,
) -> SubmitResult:
    if key is not None:
        row = conn.execute(
            "SELECT digest, ids FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key)
        ).fetchone()
        if row is not None:
            if row[0] is not None and digest is not None and row[0] != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used before for a different request"
                )
            return SubmitResult(msgspec.msgpack.decode(row[1], type=list[int]), True)
    for sql, params in prepared.statements:
        conn.execute(sql, params)
    if key is not None:
        conn.execute(
            "INSERT INTO idempotency (tenant, key, digest, ids, created_at) VALUES (?, ?, ?, ?, ?)",
            (tenant, key, digest, msgspec.msgpack.encode(prepared.ids), now_ms()),
        )
    tx.deltas.update(prepared.counts)
    tx.index_pairs.extend(prepared.pairs)
    return SubmitResult(prepared.ids, False)


def _op_claim(
    conn: sqlite3.Connection,
    tx: _Transaction,
    channel: str,
    limit: int,
    non_urgent_limit: int,
    owner: int,
    now: int,
    lease_ms: int,
) -> list[Message]:
    # Every lane in one step, urgent first; the lower lanes share `non_urgent_limit`.
    (found,) = conn.execute(
        _CLAIM_SELECT, (channel, now, limit, min(limit, non_urgent_limit))
    ).fetchone()
    rows = _rows_decoder.decode(found)
    if not rows:
        return []
    live: list[Message] = []
    expired: list[list[Any]] = []
    for row in rows:
        if row[8] is not None and row[8] <= now:
            expired.append(row)
        else:
            live.append(_jsonrow_to_message(row))
    if live:
        ids = _json.encode([m.id for m in live])
        conn.execute(
            "UPDATE messages SET state = 2, lease_owner = ?1, lease_until = ?2, "
            "attempts = attempts + 1, updated_at = ?3 "
            "WHERE id IN (SELECT value FROM json_each(?4))",
            (owner, now + lease_ms, now, ids),
        )
        conn.execute(
            "INSERT INTO events (message_id, at, state, channel, attempt) "
            "SELECT id, ?1, 2, channel, attempts FROM messages "
            "WHERE id IN (SELECT value FROM json_each(?2))",
            (now, ids),
        )
        for m in live:
            m.attempts += 1
    if expired:
        _expire(conn, tx, [r[0] for r in expired], now)
    return live


def _expire(conn: sqlite3.Connection, tx: _Transaction, ids: list[int], now: int) -> int:
    done = 0
    for mid in ids:
        row = conn.execute(
            "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND state IN (0, 1) "
            "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
            (int(State.EXPIRED), now, mid),
        ).fetchone()
        if row is None:
            continue
        done += 1
        tenant, channel, recipient, attempts, callback_url, metadata = row
        conn.execute(
            "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, ?, ?, ?)",
            (mid, now, int(State.EXPIRED), channel, "expired before it could be sent"),
        )
        tx.deltas[channel] -= 1
        if callback_url:
            _add_callback(
                conn,
                mid,
                callback_url,
                State.EXPIRED,
                now,
                channel,
                attempts,
                tenant,
                recipient,
                None,
                "expired before it could be sent",
                metadata,
            )
    return done


def _add_callback(
    conn: sqlite3.Connection,
    mid: int,
    url: str,
    state: State,
    now: int,
    channel: str,
    attempts: int,
    tenant: str,
    recipient: str,
    provider_id: str | None,
    detail: str | None,
    metadata: bytes | None,
) -> None:
    payload = callback_payload(
        mid, state, now, channel, attempts, tenant, recipient, provider_id, detail, metadata
    )
    conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) VALUES (?, ?, ?, ?)",
        (mid, url, payload, now),
    )


def _op_complete(
    conn: sqlite3.Connection, tx: _Transaction, owner: int, completions: list[Completion]
) -> int:
    """Apply outcomes; return how many status callbacks were queued."""
    now = now_ms()
    events: list[Completion] = []
    parts: list[Any] = []
    tracked: list[Completion] = []
    settling: list[Completion] = []
    requeuing: list[Completion] = []
    delivered: list[Completion] = []
    for c in completions:
        if c.state == State.QUEUED:
            requeuing.append(c)
        elif c.state == State.DELIVERED:
            delivered.append(c)
        else:  # SENT or FAILED from SENDING: the bulk of a busy channel
            settling.append(c)
    callbacks = 0
    if requeuing:
        keys = _json.encode(
            [
                (c.message_id, c.due_at, c.reroute_to or c.channel, 1 if c.uncount else 0)
                for c in requeuing
            ]
        )
        leased = _leased(conn, keys, owner)
        conn.execute(_REQUEUE_UPDATE, (keys, now, owner))
        for c in requeuing:
            if c.message_id not in leased:  # lost its lease (swept, or completed twice)
                continue
            if c.reroute_to and c.reroute_to != c.channel:
                tx.deltas[c.channel] -= 1
                tx.deltas[c.reroute_to] += 1
            events.append(c)
    if settling:
        keys = _json.encode([(c.message_id, int(c.state), c.provider_id) for c in settling])
        leased = _leased(conn, keys, owner)
        conn.execute(_SETTLE_UPDATE, (keys, now, owner))
        for c in settling:
            row = leased.get(c.message_id)
            if row is None:
                continue
            tx.deltas[row[2]] -= 1
            callbacks += _final_callback(conn, c, row[1:], now)
            if c.parts and c.state == State.SENT:
                n = len(c.parts)
                for i, pid in enumerate(c.parts):
                    parts += (c.channel, pid, c.message_id, i, n)
                tracked.append(c)
            events.append(c)
    for c in delivered:
        # A receipt can overtake the commit of its own SENT outcome: from SENDING too.
        found = conn.execute(
            "SELECT tenant, channel, recipient, attempts, callback_url, metadata, state "
            "FROM messages WHERE id = ? AND state IN (2, 3)",
            (c.message_id,),
        ).fetchone()
        if found is None:
            continue
        conn.execute(
            "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL, "
            "provider_id = COALESCE(provider_id, ?), updated_at = ? WHERE id = ?",
            (int(c.state), c.provider_id, now, c.message_id),
        )
        if found[6] == _SENDING:
            tx.deltas[found[1]] -= 1
        callbacks += _final_callback(conn, c, found, now)
        events.append(c)
    if events:
        conn.execute(_EVENTS_FROM_COMPLETIONS, (now, _json.encode(events)))
    _insert_rows(conn, _PARTS_INSERT, 5, parts)
    if not tx.shared.early_receipts:
        return callbacks
    for c in tracked:  # receipts that arrived before this commit
        for pid in c.parts:
            early = conn.execute(
                "DELETE FROM early_receipts WHERE channel = ? AND provider_id = ? "
                "RETURNING delivered, detail",
                (c.channel, pid),
            ).fetchone()
            if early is not None:
                tx.shared.early_receipts -= 1
                _apply_receipt(conn, tx, c.channel, Receipt(pid, bool(early[0]), early[1]), now)
    return callbacks


def _leased(conn: sqlite3.Connection, keys: bytes, owner: int) -> dict[int, tuple[Any, ...]]:
    """The messages of `keys` (a JSON array of [id, …]) still leased by `owner`, by id:
    (id, tenant, channel, recipient, attempts, callback_url, metadata)."""
    (found,) = conn.execute(_LEASED_SELECT, (keys, owner)).fetchone()
    leased = {}
    for row in _rows_decoder.decode(found):
        row[6] = _unhex(row[6])
        leased[row[0]] = tuple(row)
    return leased


#: ?1 now, ?2 a JSON array of Completion (array_like: message_id, state, channel, attempt,
#: outcome, latency_ms, provider_id, detail, …).
_EVENTS_FROM_COMPLETIONS = (
    "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
    "latency_ms, detail) SELECT value ->> 0, ?1, value ->> 1, value ->> 2, value ->> 3, "
    "value ->> 4, value ->> 6, value ->> 5, value ->> 7 FROM json_each(?2)"
)
_PARTS_INSERT = (
    "INSERT OR REPLACE INTO provider_parts (channel, provider_id, message_id, part, parts) VALUES "
)


def _insert_rows(conn: sqlite3.Connection, head: str, width: int, values: list[Any]) -> None:
    """Insert flattened rows of `width` values with one statement per chunk (multirow.py)."""
    row = "(" + ",".join("?" * width) + ")"
    start = 0
    for rows in chunk_sizes(len(values) // width, _MAX_CLAIM_CHUNK):
        end = start + rows * width
        conn.execute(insert_sql(head, row, row, rows), values[start:end])
        start = end


def _final_callback(conn: sqlite3.Connection, c: Completion, row: tuple[Any, ...], now: int) -> int:
    """Queue the status callback of a message that reached a final state, if it has a URL;
    `row` is (tenant, channel, recipient, attempts, callback_url, metadata). Returns 0 or 1."""
    found = final_callback(c, row, now)
    if found is None:
        return 0
    conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) VALUES (?, ?, ?, ?)",
        (c.message_id, *found, now),
    )
    return 1


def _op_apply_receipts(
    conn: sqlite3.Connection, tx: _Transaction, channel: str, receipts: list[Receipt]
) -> int:
    """Apply a batch of receipts; return how many messages reached a final state.

    Receipts for single-part messages, the bulk of them, are applied a few statements per
    batch (see `_AGGREGATE`); early ones are kept in one statement; parts of longer messages
    go one by one through `_apply_receipt`."""
    now = now_ms()
    keys = _json.encode([r.provider_id for r in receipts])
    (found,) = conn.execute(_PARTS_SELECT, (channel, keys)).fetchone()
    known = {pid: (mid, n) for pid, mid, n in _rows_decoder.decode(found)}
    early: list[Receipt] = []
    single: dict[int, Receipt] = {}
    multi: list[Receipt] = []
    for r in receipts:
        hit = known.get(r.provider_id)
        if hit is None:
            early.append(r)
        elif hit[1] > 1:
            multi.append(r)
        elif hit[0] in single:  # the same receipt twice: the second finds nothing left
            early.append(r)
        else:
            single[hit[0]] = r
    if early:
        conn.execute(
            "INSERT OR REPLACE INTO early_receipts (channel, provider_id, delivered, detail, at) "
            "SELECT ?1, value ->> 0, value ->> 1, value ->> 2, ?2 FROM json_each(?3)",
            (channel, now, _json.encode(early)),
        )
        tx.shared.early_receipts += len(early)
    finals = _settle_receipts(conn, channel, single, now) if single else 0
    for r in multi:
        finals += _apply_receipt(conn, tx, channel, r, now)
    return finals


#: ?1 channel, ?2 a JSON array of provider ids: [provider_id, message_id, parts] known.
_PARTS_SELECT = (
    "SELECT json_group_array(json_array(provider_id, message_id, parts)) FROM provider_parts "
    "WHERE channel = ?1 AND provider_id IN (SELECT value FROM json_each(?2))"
)


def _settle_receipts(
    conn: sqlite3.Connection, channel: str, receipts: dict[int, Receipt], now: int
) -> int:
    """Final states for single-part messages from their receipts, by message id."""
    rows = [
        (mid, r.provider_id, int(State.DELIVERED if r.delivered else State.FAILED))
        for mid, r in receipts.items()
    ]
    keys = _json.encode(rows)
    conn.execute(
        "DELETE FROM provider_parts WHERE channel = ?1 AND provider_id IN "
        "(SELECT value ->> 1 FROM json_each(?2))",
        (channel, keys),
    )
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(id, tenant, channel, recipient, attempts, "
        "callback_url, hex(metadata))) FROM messages "
        "WHERE id IN (SELECT value ->> 0 FROM json_each(?1)) AND state = 3",
        (keys,),
    ).fetchone()
    sent = _rows_decoder.decode(found)
    if not sent:
        return 0
    conn.execute(
        "UPDATE messages SET state = v.value ->> 2, updated_at = ?2 FROM json_each(?1) AS v "
        "WHERE messages.id = v.value ->> 0 AND messages.state = 3",
        (keys, now),
    )
    events = []
    for mid, tenant, msg_channel, recipient, attempts, callback_url, metadata in sent:
        r = receipts[mid]
        state = State.DELIVERED if r.delivered else State.FAILED
        outcome = Outcome.SENT if r.delivered else Outcome.PERMANENT
        events.append((mid, int(state), attempts, int(outcome), r.provider_id, r.detail))
        if callback_url:
            _add_callback(
                conn, mid, callback_url, state, now, msg_channel, attempts, tenant, recipient,
                r.provider_id, r.detail, _unhex(metadata),
            )  # fmt: skip
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "detail) SELECT value ->> 0, ?1, value ->> 1, ?2, value ->> 2, value ->> 3, "
        "value ->> 4, value ->> 5 FROM json_each(?3)",
        (now, channel, _json.encode(events)),
    )
    return len(sent)


def _apply_receipt(
    conn: sqlite3.Connection, tx: _Transaction, channel: str, receipt: Receipt, now: int
) -> int:
    """Record one part's receipt; return 1 if its message reached a final state."""
    row = conn.execute(
        "UPDATE provider_parts SET delivered = ?, detail = ? "
        "WHERE channel = ? AND provider_id = ? RETURNING message_id, parts",
        (int(receipt.delivered), receipt.detail, channel, receipt.provider_id),
    ).fetchone()
    if row is None:  # overtook the commit of its SENT outcome, or not ours: keep it a while
        conn.execute(
            "INSERT OR REPLACE INTO early_receipts (channel, provider_id, delivered, detail, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (channel, receipt.provider_id, int(receipt.delivered), receipt.detail, now),
        )
        tx.shared.early_receipts += 1
        return 0
    message_id, count = row
    if count == 1:  # the common case: no other part to look up
        parts = [(receipt.provider_id, int(receipt.delivered), receipt.detail)]
    else:
        parts = conn.execute(
            "SELECT provider_id, delivered, detail FROM provider_parts WHERE message_id = ?",
            (message_id,),
        ).fetchall()
    if any(delivered is None for _, delivered, _ in parts):
        return 0  # more parts to hear from
    failed = [(pid, detail) for pid, delivered, detail in parts if not delivered]
    state = State.FAILED if failed else State.DELIVERED
    if failed:
        detail = "; ".join(f"part {pid}: {d or 'not delivered'}" for pid, d in failed)
    else:
        detail = receipt.detail if len(parts) == 1 else f"all {len(parts)} parts delivered"
    if count == 1:
        conn.execute(
            "DELETE FROM provider_parts WHERE channel = ? AND provider_id = ?",
            (channel, receipt.provider_id),
        )
    else:
        conn.execute("DELETE FROM provider_parts WHERE message_id = ?", (message_id,))
    final = conn.execute(
        "UPDATE messages SET state = ?, updated_at = ? WHERE id = ? AND state = 3 "
        "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
        (int(state), now, message_id),
    ).fetchone()
    if final is None:
        return 0
    outcome = Outcome.SENT if state == State.DELIVERED else Outcome.PERMANENT
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (message_id, now, int(state), channel, final[3], int(outcome), receipt.provider_id, detail),
    )
    if final[4]:
        _add_callback(
            conn, message_id, final[4], state, now, final[1], final[3], final[0], final[2],
            receipt.provider_id, detail, final[5],
        )  # fmt: skip
    return 1


def _op_renew(
    conn: sqlite3.Connection, tx: _Transaction, owner: int, until: int, ids: bytes
) -> int:
    return conn.execute(
        "UPDATE messages SET lease_until = ?1 WHERE id IN (SELECT value FROM json_each(?3)) "
        "AND lease_owner = ?2 AND state = 2",
        (until, owner, ids),
    ).rowcount


def _requeue(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...], now: int, detail: str
) -> int:
    rows = conn.execute(
        "UPDATE messages SET state = 1, lease_owner = NULL, lease_until = NULL, updated_at = ? "
        f"WHERE state = 2 AND {where} RETURNING id, channel",
        (now, *params),
    ).fetchall()
    conn.executemany(
        "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, 1, ?, ?)",
        [(mid, now, channel, detail) for mid, channel in rows],
    )
    return len(rows)


def _op_release(conn: sqlite3.Connection, tx: _Transaction, owner: int, now: int) -> int:
    return _requeue(conn, "lease_owner = ?", (owner,), now, "released at shutdown")


def _op_sweep(
    conn: sqlite3.Connection, tx: _Transaction, now: int, idempotency_ttl_ms: int
) -> SweepResult:
    reclaimed = _requeue(
        conn, "lease_until < ?", (now,), now, "lease expired; its owner stopped renewing it"
    )
    expiring = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM messages INDEXED BY messages_expiring "
            "WHERE state = 1 AND expires_at IS NOT NULL AND expires_at <= ? LIMIT 10000",
            (now,),
        )
    ]
    expired = _expire(conn, tx, expiring, now)
    forgotten = conn.execute(
        "DELETE FROM idempotency WHERE created_at < ?", (now - idempotency_ttl_ms,)
    ).rowcount
    # Receipts for ids we never sent (another system's, or lost) are not kept for ever.
    conn.execute("DELETE FROM early_receipts WHERE at < ?", (now - EARLY_RECEIPT_TTL_MS,))
    (tx.shared.early_receipts,) = conn.execute("SELECT COUNT(*) FROM early_receipts").fetchone()
    return SweepResult(reclaimed, expired, forgotten)


def _op_reroute(
    conn: sqlite3.Connection, tx: _Transaction, src: str, dst: str, limit: int, now: int
) -> int:
    rows = conn.execute(
        "UPDATE messages SET channel = ?, updated_at = ? WHERE id IN ("
        "SELECT id FROM messages INDEXED BY messages_due "
        "WHERE state = 1 AND channel = ? AND due_at <= ? LIMIT ?) RETURNING id",
        (dst, now, src, now, limit),
    ).fetchall()
    conn.executemany(
        "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, 1, ?, ?)",
        [(mid, now, dst, f"failover from {src}: its breaker is open") for (mid,) in rows],
    )
    tx.deltas[src] -= len(rows)
    tx.deltas[dst] += len(rows)
    return len(rows)


def _op_cancel(
    conn: sqlite3.Connection, tx: _Transaction, tenant: str, mid: int, now: int
) -> CancelResult:
    row = conn.execute(
        "SELECT state, channel, recipient, attempts, callback_url, metadata FROM messages "
        "WHERE id = ? AND tenant = ?",
        (mid, tenant),
    ).fetchone()
    if row is None:
        return CancelResult.NOT_FOUND
    state, channel, recipient, attempts, callback_url, metadata = row
    if state not in (State.ACCEPTED, State.QUEUED):
        return CancelResult.TOO_LATE
    conn.execute(
        "UPDATE messages SET state = ?, updated_at = ? WHERE id = ?",
        (int(State.CANCELLED), now, mid),
    )
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, ?, ?, ?)",
        (mid, now, int(State.CANCELLED), channel, "cancelled by the producer"),
    )
    tx.deltas[channel] -= 1
    if callback_url:
        _add_callback(
            conn,
            mid,
            callback_url,
            State.CANCELLED,
            now,
            channel,
            attempts,
            tenant,
            recipient,
            None,
            "cancelled by the producer",
            metadata,
        )
    return CancelResult.CANCELLED


def _op_claim_callbacks(
    conn: sqlite3.Connection, tx: _Transaction, limit: int, now: int, lease_ms: int
) -> list[CallbackJob]:
    rows = conn.execute(
        "UPDATE callbacks SET due_at = ?, attempts = attempts + 1 WHERE id IN ("
        "SELECT id FROM callbacks WHERE due_at <= ? ORDER BY due_at LIMIT ?) "
        "RETURNING id, message_id, url, payload, attempts",
        (now + lease_ms, now, limit),
    ).fetchall()
    return [CallbackJob(*row) for row in rows]


def _op_finish_callbacks(
    conn: sqlite3.Connection,
    tx: _Transaction,
    done: list[int],
    retry: list[tuple[int, int]],
    dropped: list[int],
) -> None:
    conn.executemany("DELETE FROM callbacks WHERE id = ?", [(i,) for i in (*done, *dropped)])
    conn.executemany("UPDATE callbacks SET due_at = ? WHERE id = ?", [(d, i) for i, d in retry])


# -------------------------------------------------------------------- reads (reader thread)


def _read_records(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...]
) -> list[MessageRecord]:
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS}, state, updated_at, provider_id, not_before FROM messages "
        f"{where}",
        params,
    ).fetchall()
    if not rows:
        return []
    ids = [row[0] for row in rows]
    marks = ",".join("?" * len(ids))
    timelines: dict[int, list[TimelineEntry]] = {mid: [] for mid in ids}
    for row in conn.execute(
        f"SELECT message_id, {EVENT_COLUMNS} FROM events WHERE message_id IN ({marks}) "
        "ORDER BY rowid",
        ids,
    ):
        timelines[row[0]].append(timeline_entry(row[1:]))
    return [message_record(row, timelines[row[0]]) for row in rows]


def _read_next_due(conn: sqlite3.Connection, channel: str) -> int | None:
    # One MIN per priority: each is a single index seek on (channel, priority, due_at), where a
    # MIN over the whole channel would walk every queued message.
    dues = [
        row[0]
        for priority in _PRIORITIES
        for row in conn.execute(
            "SELECT MIN(due_at) FROM messages INDEXED BY messages_due "
            "WHERE state = 1 AND channel = ? AND priority = ?",
            (channel, priority),
        )
        if row[0] is not None
    ]
    return min(dues) if dues else None


#: Operations whose loss in a power cut costs at most a repeated delivery (see `_run_group`).
_RELAXED_OPS = frozenset(
    {
        _op_claim,
        _op_complete,
        _op_renew,
        _op_release,
        _op_sweep,
        _op_reroute,
        _op_claim_callbacks,
        _op_finish_callbacks,
    }
)
