"""SqliteJournal: the public face of the embedded journal.

It holds the journal file (an advisory lock beside it), queues every write operation to its
writer thread (writer.py) and runs reads on a reader thread with its own connection, while a
third thread checkpoints the WAL and probes the free space beside the file. The operations
themselves live in `inserts`, `claims`, `receipts`, `callbacks` and `upkeep`; the reads in
`reads`; the file's and the disk's health in `health`.

Below `free_space_reserve_bytes` of free space, new messages (and saved state) are refused at
once with a JournalError (HTTP 503) and `fault()` says why, before the disk is full: claims,
outcomes and receipts go on, so what was accepted is still delivered. Once the disk has room
again the next probe clears the fault; nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from sluice.journal.audience import (
    Member,
    StoredSubscriber,
    SubscribeCounts,
    SubscriberRow,
    TopicInfo,
    UpsertCounts,
)
from sluice.journal.base import (
    CallbackJob,
    CancelResult,
    Completion,
    DeadlinePassed,
    JournalBusy,
    JournalError,
    JournalStats,
    MessageRecord,
    Receipt,
    SubmitResult,
    SweepResult,
)
from sluice.journal.broadcasts import (
    BroadcastMember,
    BroadcastRecord,
    BroadcastStatus,
    ExpansionChunk,
    NewBroadcast,
    StatusChange,
)
from sluice.journal.recipient_index import LOOKUP_SQL, recipient_key
from sluice.journal.sqlite import audience, broadcasts
from sluice.journal.sqlite.callbacks import op_claim_callbacks, op_finish_callbacks
from sluice.journal.sqlite.claims import op_claim, op_complete
from sluice.journal.sqlite.health import FreeSpace, free_bytes
from sluice.journal.sqlite.inserts import op_insert, prepare_insert
from sluice.journal.sqlite.json_rows import json_encoder
from sluice.journal.sqlite.reads import count_states, read_next_due, read_records, read_state
from sluice.journal.sqlite.receipts import op_apply_receipts, op_expire_receipts
from sluice.journal.sqlite.schema import READER_CACHE_KIB, connect
from sluice.journal.sqlite.upkeep import (
    op_cancel,
    op_recover,
    op_release,
    op_renew,
    op_reroute,
    op_save_state,
    op_sweep,
)
from sluice.journal.sqlite.writer import GroupCommitWriter, Op
from sluice.model import Message, State, now_ms

log = logging.getLogger("sluice.journal")

#: How often the checkpoint thread copies the WAL into the database file and probes the disk.
CHECKPOINT_INTERVAL_SECONDS = 0.2
#: Free space kept beside the journal: below it new messages are refused (journal.
#: free_space_reserve_bytes). 64 MiB is some 200,000 messages' history for the delivery side
#: to keep writing into, and far more than a 0.2 s probe interval lets ingest take.
FREE_SPACE_RESERVE_BYTES = 64 * 1024 * 1024
#: WAL size past which the writer checkpoints it back to nothing (journal.wal_limit_bytes).
WAL_LIMIT_BYTES = 16 * 1024 * 1024

#: Operations whose loss in a power cut costs at most a repeated delivery (see
#: `GroupCommitWriter._run_group`).
RELAXED_OPS: frozenset[Op] = frozenset(
    {
        op_claim,
        op_complete,
        op_renew,
        op_release,
        op_sweep,
        op_reroute,
        op_claim_callbacks,
        op_finish_callbacks,
    }
)

#: Operations that bring new data, refused while the disk is below its reserve.
INGEST_OPS: frozenset[Op] = frozenset(
    {
        op_insert,
        op_save_state,
        audience.op_upsert_subscribers,
        audience.op_subscribe,
        audience.op_create_topic,
        broadcasts.op_create_broadcast,
        broadcasts.op_expand_broadcast,
    }
)


class SqliteJournal(GroupCommitWriter):
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
        check_at_start: bool = True,
        free_space_reserve_bytes: int = FREE_SPACE_RESERVE_BYTES,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        free_space: FreeSpace = free_bytes,
    ) -> None:
        sync = synchronous.upper()
        super().__init__(
            Path(path),
            sync,
            max_ops=max_ops_per_commit,
            relax_outcomes=sync == "FULL" and not fsync_outcomes,
            relaxed_ops=RELAXED_OPS,
            wal_limit_bytes=wal_limit_bytes,
            check_at_start=check_at_start,
            free_space=free_space,
            reserve_bytes=free_space_reserve_bytes,
            ingest_ops=INGEST_OPS,
        )
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._lock_fd: int | None = None
        self._stopped = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # ---------------------------------------------------------------- life cycle

    async def open(self) -> None:
        self._reset_writer()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        error = await self._start_writer()
        if error is not None:
            self._release_lock()
            if isinstance(error, JournalError):
                raise error
            raise JournalError(f"cannot open journal {self._path}: {error}")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-reader")
        self._stopped.clear()
        self._probe_space()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="journal-checkpoint", daemon=True
        )
        self._checkpointer.start()
        try:
            await self._write(op_recover)
        except JournalError as exc:
            await self.close()
            raise JournalError(f"cannot open journal {self._path}: {exc}") from exc

    async def close(self) -> None:
        self._closing = True  # before the writer's stop marker: nothing may queue behind it
        self._stopped.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        await self._stop_writer()
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

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database off the writer's path (PASSIVE), and
        probe the free space."""
        conn = connect(self._path, self._synchronous, cache_kib=1024)
        failing = False
        try:
            while not self._stopped.wait(CHECKPOINT_INTERVAL_SECONDS):
                self._probe_space()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    self._failure(exc)  # a damaged page counts as met by an operation
                    if not failing:  # once per run of failures, in one line
                        log.warning("WAL checkpoint failed (%s); trying again", exc)
                    failing = True
                else:
                    failing = False
        finally:
            conn.close()

    def _refuse_if_low(self) -> None:
        """Refuse new data at once while the disk is below its reserve (or full)."""
        fault = self._space_fault
        if fault is not None:
            raise JournalError(fault)

    def fault(self) -> str | None:
        return self._damage or self._space_fault

    # ---------------------------------------------------------------- reads

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = connect(self._path, self._synchronous, cache_kib=READER_CACHE_KIB)
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
        return await loop.run_in_executor(self._reader, self._run_read, fn, args)

    def _run_read(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """On the reader thread: `fn(conn, *args)`, a storage fault as a JournalError."""
        try:
            return fn(self._reader_conn(), *args)
        except sqlite3.Error as exc:
            error = self._failure(exc)
            if error is exc:
                raise
            raise error from exc

    # ---------------------------------------------------------------- the contract

    async def insert(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        self._refuse_if_low()
        prepared = prepare_insert(tenant, messages, deadline)
        result: SubmitResult | None = await self._write(
            op_insert, tenant, prepared, idempotency_key, digest
        )
        if result is None:
            raise DeadlinePassed(f"the insert's deadline passed before its commit ({deadline})")
        return result

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        claimed: list[Message] = await self._write(
            op_claim, channel, limit, non_urgent_limit, owner, now, lease_ms
        )
        return claimed

    async def save_state(self, name: str, data: bytes) -> None:
        """Keep a component's state (the SMTP client memory, the greylist) across restarts."""
        self._refuse_if_low()
        await self._write(op_save_state, name, data, now_ms())

    async def load_state(self, name: str) -> bytes | None:
        row = await self._read(read_state, name)
        return None if row is None else bytes(row[0])

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        if not completions:
            return 0
        callbacks: int = await self._write(op_complete, owner, completions)
        return callbacks

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        if not ids:
            return 0
        count: int = await self._write(op_renew, owner, until, json_encoder.encode(list(ids)))
        return count

    async def release(self, owner: int, now: int) -> int:
        count: int = await self._write(op_release, owner, now)
        return count

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult:
        result: SweepResult = await self._write(op_sweep, now, idempotency_ttl_ms)
        return result

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        count: int = await self._write(op_reroute, from_channel, to_channel, limit, now)
        return count

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult:
        result: CancelResult = await self._write(op_cancel, tenant, message_id, now)
        return result

    # ------------------------------------------------------------- audiences

    async def upsert_subscribers(
        self, tenant: str, rows: list[SubscriberRow], now: int
    ) -> UpsertCounts:
        counts: UpsertCounts = await self._write(audience.op_upsert_subscribers, tenant, rows, now)
        return counts

    async def subscriber(self, tenant: str, external_id: str) -> StoredSubscriber | None:
        found: StoredSubscriber | None = await self._read(
            audience.read_subscriber, tenant, external_id
        )
        return found

    async def delete_subscriber(self, tenant: str, external_id: str) -> bool:
        deleted: bool = await self._write(audience.op_delete_subscriber, tenant, external_id)
        return deleted

    async def create_topic(self, tenant: str, name: str, now: int) -> bool:
        created: bool = await self._write(audience.op_create_topic, tenant, name, now)
        return created

    async def topic(self, tenant: str, name: str) -> TopicInfo | None:
        found: TopicInfo | None = await self._read(audience.read_topic, tenant, name)
        return found

    async def topics(self, tenant: str, after: str | None, limit: int) -> list[TopicInfo]:
        found: list[TopicInfo] = await self._read(audience.read_topics, tenant, after, limit)
        return found

    async def delete_topic(self, tenant: str, name: str) -> bool:
        deleted: bool = await self._write(audience.op_delete_topic, tenant, name)
        return deleted

    async def subscribe(
        self, tenant: str, topic: str, external_ids: list[str], now: int
    ) -> SubscribeCounts | None:
        counts: SubscribeCounts | None = await self._write(
            audience.op_subscribe, tenant, topic, external_ids, now
        )
        return counts

    async def unsubscribe(self, tenant: str, topic: str, external_ids: list[str]) -> int | None:
        removed: int | None = await self._write(
            audience.op_unsubscribe, tenant, topic, external_ids
        )
        return removed

    async def topic_members(
        self, tenant: str, topic: str, after: int, limit: int
    ) -> list[Member] | None:
        found: list[Member] | None = await self._read(
            audience.read_topic_members, tenant, topic, after, limit
        )
        return found

    # ------------------------------------------------------------- broadcasts

    async def create_broadcast(
        self, new: NewBroadcast, idempotency_key: str | None, digest: bytes | None, now: int
    ) -> tuple[int, bool]:
        self._refuse_if_low()
        created: tuple[int, bool] = await self._write(
            broadcasts.op_create_broadcast, new, idempotency_key, digest, now
        )
        return created

    async def broadcast(self, tenant: str, broadcast_id: int) -> BroadcastRecord | None:
        found: BroadcastRecord | None = await self._read(
            broadcasts.read_broadcast, tenant, broadcast_id
        )
        return found

    async def broadcasts(
        self, tenant: str, before_id: int | None, limit: int
    ) -> list[BroadcastRecord]:
        found: list[BroadcastRecord] = await self._read(
            broadcasts.read_broadcasts, tenant, before_id, limit
        )
        return found

    async def lease_broadcasts(
        self, owner: int, now: int, lease_ms: int, limit: int
    ) -> list[BroadcastRecord]:
        ids: list[int] = await self._write(
            broadcasts.op_lease_broadcasts, owner, now, lease_ms, limit
        )
        found = [await self._read(broadcasts.read_broadcast, None, i) for i in ids]
        return [record for record in found if record is not None]

    async def expand_broadcast(self, owner: int, chunk: ExpansionChunk, now: int) -> bool:
        self._refuse_if_low()
        tenant = chunk.messages[0].tenant if chunk.messages else ""
        prepared = prepare_insert(tenant, chunk.messages, broadcast=chunk.broadcast)
        applied: bool = await self._write(
            broadcasts.op_expand_broadcast, owner, chunk, prepared, now
        )
        return applied

    async def broadcast_members(
        self, broadcast: int, topic_keys: tuple[int, ...], index: int, after: int, limit: int
    ) -> list[BroadcastMember]:
        found: list[BroadcastMember] = await self._read(
            broadcasts.read_broadcast_members, broadcast, topic_keys, index, after, limit
        )
        return found

    async def release_broadcasts(self, owner: int) -> None:
        await self._write(broadcasts.op_release_broadcasts, owner)

    async def change_broadcast(
        self, tenant: str, broadcast_id: int, status: BroadcastStatus, now: int
    ) -> StatusChange | None:
        change: StatusChange | None = await self._write(
            broadcasts.op_change_broadcast, tenant, broadcast_id, status, now
        )
        return change

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        records: list[MessageRecord] = await self._read(
            read_records, "WHERE id = ? AND tenant = ?", (message_id, tenant)
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
        records: list[MessageRecord] = await self._read(read_records, where, params)
        return records

    async def next_due(self, channel: str) -> int | None:
        due: int | None = await self._read(read_next_due, channel)
        return due

    def watch_due(self, wake: Callable[[str, bool], None]) -> None:
        """Nothing to watch: one process holds the journal, and it wakes its own runners."""

    def queue_depth(self) -> int:
        """Operations waiting for the writer (the journal stage's queue)."""
        return self._queue.qsize()

    def pending(self) -> dict[str, int]:
        return self._pending_view

    def stats(self) -> JournalStats:
        return JournalStats(
            dict(self.pending()), self.commits, self.ops, self.busy_seconds, self.queue_depth()
        )

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        if not receipts:
            return 0
        finals: int = await self._write(op_apply_receipts, channel, receipts)
        return finals

    async def expire_receipts(
        self, channel: str, sent_before: int, now: int, detail: str, limit: int = 10_000
    ) -> int:
        expired: int = await self._write(
            op_expire_receipts, channel, sent_before, now, detail, limit
        )
        return expired

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]:
        jobs: list[CallbackJob] = await self._write(op_claim_callbacks, limit, now, lease_ms)
        return jobs

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None:
        await self._write(op_finish_callbacks, done, retry, dropped)

    async def count_by_state(self) -> dict[State, int]:
        """Messages per state (a full scan: for tests and tools, not the hot path)."""
        rows: list[tuple[int, int]] = await self._read(count_states)
        return {State(state): n for state, n in rows}
