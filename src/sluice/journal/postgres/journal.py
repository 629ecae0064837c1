"""`PostgresJournal`, the public face of the PostgreSQL journal: its life cycle, and each
operation of the contract run as one transaction with retries.

The operations themselves live beside it (`inserts`, `leases`, `outcomes`, `receipts`,
`callbacks`, `reads`, `audience`, `broadcasts`); each is a function `op(conn, tx, *args)`
that this class runs in a transaction on a connection of its pool, again on a fresh one after
a lost connection (`connection`), applying at commit what the transaction changed besides its
rows (`changes`: the pending counts, the wake-ups of other processes).

The edges' calls (insert, get, by_recipient, cancel, those of audiences but topic_members,
and the producers' ones of broadcasts: create, read, list, change) stop trying after
`ingress_wait_seconds`, the delivery side's after `reconnect_seconds`: with the server down a
POST hears 503 within a few seconds while runners go on asking. While the server is out of
reach (an operation or the pending counts' read met a lost or refused connection, and none
has worked since) `fault()` says so, and the process is not ready.

Examples:
    journal = PostgresJournal("postgresql://127.0.0.1:5432/postgres", schema="sluice")
    await journal.open()
    journal.watch_due(lambda channel, urgent: runners[channel].wake(urgent))
    ...
    await journal.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import asyncpg

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
from sluice.journal.postgres import audience, broadcasts
from sluice.journal.postgres.callbacks import op_claim_callbacks, op_finish_callbacks
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import (
    INGRESS_WAIT_SECONDS,
    RECONNECT_SECONDS,
    RETRYABLE,
    UNREACHABLE,
    PoolConnection,
    PoolExhausted,
    close_pool,
    create_pool,
    describe,
    safe_url,
)
from sluice.journal.postgres.inserts import (
    insert_columns,
    op_insert,
    op_insert_again,
    op_save_state,
)
from sluice.journal.postgres.leases import (
    op_claim,
    op_renew,
    op_requeue,
    op_reroute,
    op_sweep,
)
from sluice.journal.postgres.outcomes import op_cancel, op_complete
from sluice.journal.postgres.pending import PendingCounts, add_pending, op_fold_pending
from sluice.journal.postgres.reads import op_fetch, op_fetchrow, op_next_due, op_read_records
from sluice.journal.postgres.receipts import op_apply_receipts, op_expire_receipts
from sluice.journal.postgres.schema import migrate
from sluice.journal.postgres.wakeups import DUE_CHANNEL, NOTIFY_DUE, DueListener, Wake
from sluice.model import Message, State, now_ms

log = logging.getLogger("sluice.journal")

T = TypeVar("T")

_BEGIN_RELAXED = "BEGIN; SET LOCAL synchronous_commit TO off"

#: Operations whose loss in a server crash costs at most a repeated delivery.
_RELAXED_OPS = frozenset(
    {
        op_claim,
        op_complete,
        op_renew,
        op_requeue,
        op_sweep,
        op_reroute,
        op_claim_callbacks,
        op_finish_callbacks,
        op_fold_pending,
    }
)


class PostgresJournal:
    """The journal on a PostgreSQL server, shared by every process that opens it.

    Its background loops (the pending counts' refresh, the listening connection) run in a
    TaskGroup that `open()` enters in the caller's task and `close()` leaves: a loop that
    crashes cancels the task that opened the journal, and `close()` raises the crash.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "sluice",
        pool_size: int = 8,
        statement_timeout_seconds: float = 30.0,
        reconnect_seconds: float = RECONNECT_SECONDS,
        ingress_wait_seconds: float = INGRESS_WAIT_SECONDS,
        fsync_outcomes: bool = False,
    ) -> None:
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        self._statement_timeout_ms = int(statement_timeout_seconds * 1000)
        self._reconnect_seconds = reconnect_seconds
        self._ingress_wait = min(ingress_wait_seconds, reconnect_seconds)
        #: Why the server is out of reach, while it is (see `fault`).
        self._unreachable: str | None = None
        self._relax_outcomes = not fsync_outcomes
        self._pool: asyncpg.Pool | None = None
        self._pending = PendingCounts()
        self._listener = DueListener(url, self._pending)
        #: The TaskGroup of the background loops while open, and the loops in it.
        self._loops: contextlib.AsyncExitStack | None = None
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._waiting = 0
        self.commits = 0
        self.ops = 0
        self.busy_seconds = 0.0

    # ---------------------------------------------------------------- life cycle

    async def open(self) -> None:
        try:
            self._pool = await create_pool(
                self._url,
                self._schema,
                self._pool_size,
                self._statement_timeout_ms,
                self._reconnect_seconds,
            )
            async with self._pool.acquire() as conn:
                await migrate(conn, self._schema)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise JournalError(f"cannot open journal {safe_url(self._url)}: {exc}") from exc
        await self._pending.start(self._pool)
        loops = contextlib.AsyncExitStack()
        group = await loops.enter_async_context(asyncio.TaskGroup())
        self._loop_tasks = [
            group.create_task(
                self._pending.run(self._pool, self._ingress_wait, self._heard),
                name="journal-pending",
            ),
            group.create_task(self._listener.run(), name="journal-listen"),
        ]
        self._loops = loops

    async def close(self) -> None:
        """Stop the background loops, then close the pool; raises what crashed a loop."""
        loops, self._loops = self._loops, None
        try:
            if loops is not None:
                for task in self._loop_tasks:
                    task.cancel()
                await loops.aclose()  # waits for them; a crash comes out as an ExceptionGroup
        finally:
            self._loop_tasks = []
            if self._pool is not None:
                pool, self._pool = self._pool, None
                await close_pool(pool)

    def fault(self) -> str | None:
        return self._unreachable

    def _heard(self, error: BaseException | None) -> None:
        """Note how a call to the server went: it answered (None), or `error`."""
        if error is None:
            if self._unreachable is not None:
                log.warning("journal: %s answers again", safe_url(self._url))
            self._unreachable = None
        elif isinstance(error, UNREACHABLE) and not isinstance(error, PoolExhausted):
            if self._unreachable is None:
                log.warning("journal: %s out of reach: %s", safe_url(self._url), describe(error))
            self._unreachable = f"journal {safe_url(self._url)} unreachable: {describe(error)}"

    def watch_due(self, wake: Wake) -> None:
        """Call `wake(channel, urgent)` when any process inserts messages due now."""
        self._listener.watchers.append(wake)

    # ---------------------------------------------------------------- running operations

    async def _run(
        self,
        op: Callable[..., Awaitable[T]],
        *args: Any,
        retried: Callable[..., Awaitable[T]] | None = None,
        read: bool = False,
        edge: bool = False,
    ) -> T:
        """Run `op(conn, tx, *args)` in one transaction (a `read` in none: one statement
        sees one snapshot); on a lost connection, again (or `retried` if given: what to run
        when the first try may have committed), for up to `reconnect_seconds`, or
        `ingress_wait_seconds` for a call of the edges (`edge`)."""
        if self._pool is None:
            raise JournalError("journal is not open")
        patience = self._ingress_wait if edge else self._reconnect_seconds
        deadline = time.monotonic() + patience
        delay = 0.05
        attempt = op
        while True:
            tx = Tx()
            started = time.perf_counter()
            try:
                result = await self._transaction(
                    attempt, tx, args, read, deadline if edge else None
                )
            except RETRYABLE as exc:
                self._heard(exc)
                if time.monotonic() >= deadline or self._pool is None:
                    raise JournalError(f"journal unreachable: {describe(exc)}") from exc
                log.warning("journal: %s; trying again in %.2f s", describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                if retried is not None:
                    attempt = retried
                continue
            except asyncpg.IntegrityConstraintViolationError:
                raise  # a caller's mistake (a duplicate id), not the store's
            except asyncpg.PostgresError as exc:
                # A statement past its timeout, a full disk, a missing table: the store
                # failed this call (HTTP 503; runners wait and ask again).
                raise JournalError(f"journal failed: {describe(exc)}") from exc
            self._heard(None)
            self.commits += 1
            self.ops += 1
            self.busy_seconds += time.perf_counter() - started
            if tx.deltas:
                self._pending.add(tx.deltas)
            return result

    async def _transaction(
        self,
        op: Callable[..., Awaitable[T]],
        tx: Tx,
        args: tuple[Any, ...],
        read: bool,
        deadline: float | None,
    ) -> T:
        pool = self._pool
        if pool is None:
            raise JournalError("journal is not open")
        self._waiting += 1
        try:
            # An edge's call waits for a connection (a free one, or a new one from a server
            # that may not answer) no longer than its deadline.
            timeout = None if deadline is None else max(0.01, deadline - time.monotonic())
            try:
                conn = await pool.acquire(timeout=timeout)
            except TimeoutError:
                if pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0:
                    raise PoolExhausted("every connection of the pool is in use") from None
                raise
        finally:
            self._waiting -= 1
        try:
            if deadline is None:
                return await self._statements(conn, op, tx, args, read)
            # An edge's call gets no more than its deadline from a server that stopped
            # answering (the statement timeout would hold a client for 30 s).
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                return await self._statements(conn, op, tx, args, read)
        finally:
            await pool.release(conn)

    async def _statements(
        self,
        conn: PoolConnection,
        op: Callable[..., Awaitable[T]],
        tx: Tx,
        args: tuple[Any, ...],
        read: bool,
    ) -> T:
        """`op` in its transaction on `conn` (a read: on its own)."""
        if read:
            try:
                return await op(conn, tx, *args)
            except asyncio.CancelledError:
                conn.terminate()  # a statement under way: the pool must not wait to reset it
                raise
        # Claims and outcomes need not wait for the WAL flush (as journal.fsync_outcomes
        # = false in SQLite): losing one to a server crash only sends a message again.
        relaxed = self._relax_outcomes and op in _RELAXED_OPS
        await conn.execute(_BEGIN_RELAXED if relaxed else "BEGIN")
        try:
            result = await op(conn, tx, *args)
            if tx.deltas:
                await add_pending(conn, tx.deltas)
            if tx.due:
                await conn.execute(
                    NOTIFY_DUE,
                    DUE_CHANNEL,
                    [c + (" urgent" if urgent else "") for c, urgent in tx.due.items()],
                )
            await conn.execute("COMMIT")
        except asyncio.CancelledError:
            # Out of time (or stopping) mid-transaction: a ROLLBACK would wait on the
            # server that did not answer; closing the connection rolls it back.
            conn.terminate()
            raise
        except BaseException:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
        return result

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
        columns = insert_columns(messages, now_ms())
        return await self._run(
            op_insert, tenant, messages, columns, idempotency_key, digest, deadline,
            retried=op_insert_again, edge=True,
        )  # fmt: skip

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        return await self._run(op_claim, channel, limit, non_urgent_limit, owner, now, lease_ms)

    async def save_state(self, name: str, data: bytes) -> None:
        await self._run(op_save_state, name, data, now_ms())

    async def load_state(self, name: str) -> bytes | None:
        row = await self._run(
            op_fetchrow, "SELECT data FROM saved_state WHERE name = $1", name, read=True
        )
        return None if row is None else bytes(row[0])

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        if not completions:
            return 0
        return await self._run(op_complete, owner, completions)

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        if not ids:
            return 0
        return await self._run(op_renew, owner, until, list(ids))

    async def release(self, owner: int, now: int) -> int:
        return await self._run(op_requeue, "lease_owner = $2", owner, now, "released at shutdown")

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult:
        result = await self._run(op_sweep, now, idempotency_ttl_ms)
        await self._run(op_fold_pending)
        return result

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        return await self._run(op_reroute, from_channel, to_channel, limit, now)

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult:
        return await self._run(op_cancel, tenant, message_id, now, edge=True)

    # ---------------------------------------------------------------- audiences

    async def upsert_subscribers(
        self, tenant: str, rows: list[SubscriberRow], now: int
    ) -> UpsertCounts:
        return await self._run(audience.op_upsert_subscribers, tenant, rows, now, edge=True)

    async def subscriber(self, tenant: str, external_id: str) -> StoredSubscriber | None:
        return await self._run(audience.read_subscriber, tenant, external_id, read=True, edge=True)

    async def delete_subscriber(self, tenant: str, external_id: str) -> bool:
        return await self._run(audience.op_delete_subscriber, tenant, external_id, edge=True)

    async def create_topic(self, tenant: str, name: str, now: int) -> bool:
        return await self._run(audience.op_create_topic, tenant, name, now, edge=True)

    async def topic(self, tenant: str, name: str) -> TopicInfo | None:
        return await self._run(audience.read_topic, tenant, name, read=True, edge=True)

    async def topics(self, tenant: str, after: str | None, limit: int) -> list[TopicInfo]:
        return await self._run(audience.read_topics, tenant, after, limit, read=True, edge=True)

    async def delete_topic(self, tenant: str, name: str) -> bool:
        return await self._run(audience.op_delete_topic, tenant, name, edge=True)

    async def subscribe(
        self, tenant: str, topic: str, external_ids: list[str], now: int
    ) -> SubscribeCounts | None:
        return await self._run(audience.op_subscribe, tenant, topic, external_ids, now, edge=True)

    async def unsubscribe(self, tenant: str, topic: str, external_ids: list[str]) -> int | None:
        return await self._run(audience.op_unsubscribe, tenant, topic, external_ids, edge=True)

    async def topic_members(
        self, tenant: str, topic: str, after: int, limit: int
    ) -> list[Member] | None:
        """Read by the delivery side (a broadcast's pages): it keeps trying as runners do."""
        return await self._run(audience.read_topic_members, tenant, topic, after, limit, read=True)

    # ---------------------------------------------------------------- broadcasts

    async def create_broadcast(
        self, new: NewBroadcast, idempotency_key: str | None, digest: bytes | None, now: int
    ) -> tuple[int, bool]:
        return await self._run(
            broadcasts.op_create_broadcast, new, idempotency_key, digest, now,
            retried=broadcasts.op_create_again, edge=True,
        )  # fmt: skip

    async def broadcast(self, tenant: str, broadcast_id: int) -> BroadcastRecord | None:
        return await self._run(
            broadcasts.read_broadcast, tenant, broadcast_id, read=True, edge=True
        )

    async def broadcasts(
        self, tenant: str, before_id: int | None, limit: int
    ) -> list[BroadcastRecord]:
        return await self._run(
            broadcasts.read_broadcasts, tenant, before_id, limit, read=True, edge=True
        )

    async def lease_broadcasts(
        self, owner: int, now: int, lease_ms: int, limit: int
    ) -> list[BroadcastRecord]:
        return await self._run(broadcasts.op_lease_broadcasts, owner, now, lease_ms, limit)

    async def expand_broadcast(self, owner: int, chunk: ExpansionChunk, now: int) -> bool:
        columns = insert_columns(chunk.messages, now_ms())
        return await self._run(
            broadcasts.op_expand_broadcast, owner, chunk, columns, now,
            retried=broadcasts.op_expand_again,
        )  # fmt: skip

    async def broadcast_members(
        self, broadcast: int, topic_keys: tuple[int, ...], index: int, after: int, limit: int
    ) -> list[BroadcastMember]:
        """Read by the delivery side (the expander): it keeps trying as runners do."""
        return await self._run(
            broadcasts.read_broadcast_members,
            broadcast,
            topic_keys,
            index,
            after,
            limit,
            read=True,
        )

    async def release_broadcasts(self, owner: int) -> None:
        await self._run(broadcasts.op_release_broadcasts, owner)

    async def change_broadcast(
        self, tenant: str, broadcast_id: int, status: BroadcastStatus, now: int
    ) -> StatusChange | None:
        return await self._run(
            broadcasts.op_change_broadcast, tenant, broadcast_id, status, now, edge=True
        )

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        records = await self._run(
            op_read_records,
            "WHERE id = $1 AND tenant = $2",
            (message_id, tenant),
            read=True,
            edge=True,
        )
        return records[0] if records else None

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        before = before_id if before_id is not None else (1 << 63) - 1
        return await self._run(
            op_read_records,
            "WHERE tenant = $1 AND recipient = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
            (tenant, recipient, before, limit),
            read=True,
            edge=True,
        )

    async def next_due(self, channel: str) -> int | None:
        due: int | None = await self._run(op_next_due, channel, read=True)
        return due

    def queue_depth(self) -> int:
        """Operations waiting for a connection of the pool."""
        return self._waiting

    def pending(self) -> dict[str, int]:
        return self._pending.view

    def stats(self) -> JournalStats:
        return JournalStats(
            dict(self.pending()), self.commits, self.ops, self.busy_seconds, self.queue_depth()
        )

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        if not receipts:
            return 0
        return await self._run(op_apply_receipts, channel, receipts)

    async def expire_receipts(
        self, channel: str, sent_before: int, now: int, detail: str, limit: int = 10_000
    ) -> int:
        return await self._run(op_expire_receipts, channel, sent_before, now, detail, limit)

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]:
        return await self._run(op_claim_callbacks, limit, now, lease_ms)

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None:
        await self._run(op_finish_callbacks, done, retry, dropped)

    async def count_by_state(self) -> dict[State, int]:
        """Messages per state (a full scan: for tests and tools, not the hot path)."""
        rows = await self._run(
            op_fetch, "SELECT state, count(*)::bigint FROM messages GROUP BY state", read=True
        )
        return {State(state): n for state, n in rows}
