"""The PostgreSQL journal: the same contract as the SQLite one, shared by many processes.

Every process (on any machine) opens a pool of connections to one PostgreSQL server and runs
each operation as one transaction. Batches travel as arrays (`unnest`), so an insert of 1,000
messages or a batch of 5,000 outcomes is one statement; PostgreSQL's own group commit shares
the WAL flushes of concurrent transactions.

- **Claims** lock due rows with `FOR UPDATE SKIP LOCKED`, lane by lane, urgent first, so
  processes claiming the same channel never wait for each other nor take the same message.
- **Leases** name the owning process; its heartbeat renews them, and a sweep in any process
  returns the messages of an owner that stopped renewing (it died) to the queue.
- **Wake-ups**: an insert notifies (`NOTIFY sluice_due`, delivered at commit) every process
  listening; an idle worker claims at once instead of at its next poll.
- **Pending counts** (admission control) are exact: each transaction adds its per-channel
  change to a row of `pending_counts` keyed by its server process (`pg_backend_pid()`), so
  concurrent transactions never wait for each other's row (one row per process made a
  process's inserts and outcomes queue behind each other: 1.3 ms a transaction), and
  `pending()` is the sum, read every second plus this process's own changes since.
- **Faults**: an operation that loses its connection (a server restart, a network cut) is run
  again on a fresh one until `RECONNECT_SECONDS` have passed. Every operation is safe to run
  twice: state changes check the state they expect, and an insert whose first commit did land
  finds its own ids and reports success.
- **Schema** lives in its own PostgreSQL schema (`journal.schema`) and is migrated at start,
  one version at a time, under an advisory lock so that processes starting together migrate
  it once.

Examples:
    journal = PostgresJournal("postgresql://127.0.0.1:5432/postgres", schema="sluice")
    await journal.open()
    journal.watch_due(lambda channel, urgent: runners[channel].wake(urgent))
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

import asyncpg
import msgspec

from sluice.journal.base import (
    EARLY_RECEIPT_TTL_MS,
    CallbackJob,
    CancelResult,
    Completion,
    IdempotencyConflict,
    JournalError,
    MessageRecord,
    Receipt,
    SubmitResult,
    SweepResult,
)
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
from sluice.model import Message, Outcome, Priority, State, now_ms

log = logging.getLogger("sluice.journal")

#: How long an operation keeps trying to reach the server before it fails.
RECONNECT_SECONDS = 30.0
#: How often the pending counts of every process are read back.
PENDING_REFRESH_SECONDS = 1.0
#: The channel of wake-up notifications.
DUE_CHANNEL = "sluice_due"
#: Messages expired per sweep at most.
MAX_EXPIRE_PER_SWEEP = 10_000

_SENDING = int(State.SENDING)
_EXPIRED = int(State.EXPIRED)
_CANCELLED = int(State.CANCELLED)

#: Errors after which the operation is run again on another connection.
_RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ReadOnlySQLTransactionError,  # a failover in progress: the old primary is a replica
)

#: Each migration brings the schema from the version before it to its own number.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id bigint PRIMARY KEY,
        tenant text NOT NULL,
        channel text NOT NULL,
        recipient text NOT NULL,
        sender text,
        body text NOT NULL,
        priority smallint NOT NULL,
        state smallint NOT NULL,
        due_at bigint NOT NULL,
        not_before bigint,
        expires_at bigint,
        callback_url text,
        metadata bytea,
        attempts integer NOT NULL DEFAULT 0,
        lease_owner bigint,
        lease_until bigint,
        provider_id text,
        updated_at bigint NOT NULL
    );
    CREATE INDEX messages_due ON messages (channel, priority, due_at) WHERE state = 1;
    -- Leased rows are the few in flight: renewals and releases by owner scan them all.
    CREATE INDEX messages_leased ON messages (lease_until) WHERE state = 2;
    CREATE INDEX messages_expiring ON messages (expires_at)
        WHERE state = 1 AND expires_at IS NOT NULL;
    CREATE INDEX messages_recipient ON messages (tenant, recipient, id);
    CREATE TABLE events (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        message_id bigint NOT NULL,
        at bigint NOT NULL,
        state smallint NOT NULL,
        channel text,
        attempt integer,
        outcome smallint,
        provider_id text,
        latency_ms real,
        detail text
    );
    CREATE INDEX events_message ON events (message_id, seq);
    CREATE TABLE idempotency (
        tenant text NOT NULL,
        key text NOT NULL,
        digest bytea,
        ids bigint[] NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);
    -- A part of a SENT message and its receipt, whichever came first: message_id is NULL
    -- while the receipt waits for its SENT commit, delivered while the SENT waits for it.
    CREATE TABLE provider_parts (
        channel text NOT NULL,
        provider_id text NOT NULL,
        message_id bigint,
        part integer,
        parts integer,
        delivered boolean,
        detail text,
        at bigint NOT NULL,
        PRIMARY KEY (channel, provider_id)
    );
    CREATE INDEX provider_parts_message ON provider_parts (message_id)
        WHERE message_id IS NOT NULL;
    CREATE INDEX provider_parts_early ON provider_parts (at) WHERE message_id IS NULL;
    CREATE TABLE callbacks (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id bigint NOT NULL,
        url text NOT NULL,
        payload bytea NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        due_at bigint NOT NULL
    );
    CREATE INDEX callbacks_due ON callbacks (due_at);
    CREATE TABLE saved_state (
        name text PRIMARY KEY,
        data bytea NOT NULL,
        saved_at bigint NOT NULL
    );
    -- Additive counters, one row per channel and server process that wrote it.
    CREATE TABLE pending_counts (
        channel text NOT NULL,
        backend integer NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (channel, backend)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

T = TypeVar("T")
Wake = Callable[[str, bool], None]


class _Tx:
    """What one transaction changes besides its rows: pending counts and wake-ups."""

    __slots__ = ("deltas", "due")

    def __init__(self) -> None:
        self.deltas: Counter[str] = Counter()
        #: Channels with new due messages, and whether an urgent one is among them.
        self.due: dict[str, bool] = {}


class PostgresJournal:
    def __init__(
        self,
        url: str,
        *,
        schema: str = "sluice",
        pool_size: int = 8,
        statement_timeout_seconds: float = 30.0,
        reconnect_seconds: float = RECONNECT_SECONDS,
        fsync_outcomes: bool = False,
    ) -> None:
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        self._statement_timeout_ms = int(statement_timeout_seconds * 1000)
        self._reconnect_seconds = reconnect_seconds
        self._relax_outcomes = not fsync_outcomes
        self._pool: asyncpg.Pool | None = None
        self._pending_read: dict[str, int] = {}
        self._pending_local: Counter[str] = Counter()
        self._pending_view: dict[str, int] = {}
        self._watchers: list[Wake] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._waiting = 0
        self.commits = 0
        self.ops = 0
        self.busy_seconds = 0.0

    # ---------------------------------------------------------------- life cycle

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                server_settings={
                    "search_path": self._schema,
                    "statement_timeout": str(self._statement_timeout_ms),
                    "application_name": "sluice",
                },
                timeout=self._reconnect_seconds,
            )
            async with self._pool.acquire() as conn:
                await _migrate(conn, self._schema)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise JournalError(f"cannot open journal {_safe_url(self._url)}: {exc}") from exc
        self._pending_local.clear()
        await self._refresh_pending()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="journal-pending"),
            asyncio.create_task(self._listen_loop(), name="journal-listen"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()

    def watch_due(self, wake: Wake) -> None:
        """Call `wake(channel, urgent)` when any process inserts messages due now."""
        self._watchers.append(wake)

    # ---------------------------------------------------------------- running operations

    async def _run(
        self,
        op: Callable[..., Awaitable[T]],
        *args: Any,
        retried: Callable[..., Awaitable[T]] | None = None,
        read: bool = False,
    ) -> T:
        """Run `op(conn, tx, *args)` in one transaction (a `read` in none: one statement
        sees one snapshot); on a lost connection, again (or `retried` if given: what to run
        when the first try may have committed)."""
        if self._pool is None:
            raise JournalError("journal is not open")
        deadline = time.monotonic() + self._reconnect_seconds
        delay = 0.05
        attempt = op
        while True:
            tx = _Tx()
            started = time.perf_counter()
            try:
                result = await self._transaction(attempt, tx, args, read)
            except _RETRYABLE as exc:
                if time.monotonic() >= deadline or self._pool is None:
                    raise JournalError(f"journal unreachable: {_describe(exc)}") from exc
                log.warning("journal: %s; trying again in %.2f s", _describe(exc), delay)
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
                raise JournalError(f"journal failed: {_describe(exc)}") from exc
            self.commits += 1
            self.ops += 1
            self.busy_seconds += time.perf_counter() - started
            if tx.deltas:
                self._pending_local.update(tx.deltas)
                self._publish_pending()
            return result

    async def _transaction(
        self, op: Callable[..., Awaitable[T]], tx: _Tx, args: tuple[Any, ...], read: bool
    ) -> T:
        pool = self._pool
        if pool is None:
            raise JournalError("journal is not open")
        self._waiting += 1
        try:
            conn = await pool.acquire()
        finally:
            self._waiting -= 1
        try:
            if read:
                return await op(conn, tx, *args)
            # Claims and outcomes need not wait for the WAL flush (as journal.fsync_outcomes
            # = false in SQLite): losing one to a server crash only sends a message again.
            relaxed = self._relax_outcomes and op in _RELAXED_OPS
            await conn.execute(_BEGIN_RELAXED if relaxed else "BEGIN")
            try:
                result = await op(conn, tx, *args)
                if tx.deltas:
                    await _add_pending(conn, tx.deltas)
                if tx.due:
                    await conn.execute(
                        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                        DUE_CHANNEL,
                        [c + (" urgent" if urgent else "") for c, urgent in tx.due.items()],
                    )
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            return result
        finally:
            await pool.release(conn)

    def _publish_pending(self) -> None:
        view = Counter(self._pending_read)
        view.update(self._pending_local)
        # Readers get a fresh dict, never one being changed.
        self._pending_view = {k: v for k, v in view.items() if v > 0}

    async def _refresh_pending(self) -> None:
        assert self._pool is not None
        local = Counter(self._pending_local)
        rows = await self._pool.fetch(
            "SELECT channel, sum(n)::bigint FROM pending_counts GROUP BY channel"
        )
        self._pending_read = {channel: n for channel, n in rows}
        self._pending_local.subtract(local)
        self._publish_pending()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(PENDING_REFRESH_SECONDS)
            try:
                await self._refresh_pending()
            except (*_RETRYABLE, asyncpg.PostgresError) as exc:
                log.debug("journal: pending counts not refreshed: %s", _describe(exc))

    async def _listen_loop(self) -> None:
        """Keep one connection listening for wake-ups; reconnect after a fault."""
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": "sluice-listen"}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set_event, lost))
                await conn.add_listener(DUE_CHANNEL, self._notified)
                delay = 0.1
                # Anything inserted while we were not listening is due now.
                for wake in self._watchers:
                    for channel in self._pending_view:
                        wake(channel, False)
                await lost.wait()
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except (*_RETRYABLE, asyncpg.PostgresError) as exc:
                log.debug("journal: listener down: %s", _describe(exc))
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        name, _, flag = payload.partition(" ")
        for wake in self._watchers:
            wake(name, flag == "urgent")

    # ---------------------------------------------------------------- the contract

    async def insert(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
    ) -> SubmitResult:
        columns = _insert_columns(messages, now_ms())
        return await self._run(
            _op_insert, tenant, messages, columns, idempotency_key, digest,
            retried=_op_insert_again,
        )  # fmt: skip

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        return await self._run(_op_claim, channel, limit, non_urgent_limit, owner, now, lease_ms)

    async def save_state(self, name: str, data: bytes) -> None:
        await self._run(_op_save_state, name, data, now_ms())

    async def load_state(self, name: str) -> bytes | None:
        row = await self._run(
            _op_fetchrow, "SELECT data FROM saved_state WHERE name = $1", name, read=True
        )
        return None if row is None else bytes(row[0])

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        if not completions:
            return 0
        return await self._run(_op_complete, owner, completions)

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        if not ids:
            return 0
        return await self._run(_op_renew, owner, until, list(ids))

    async def release(self, owner: int, now: int) -> int:
        return await self._run(_op_requeue, "lease_owner = $2", owner, now, "released at shutdown")

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult:
        result = await self._run(_op_sweep, now, idempotency_ttl_ms)
        await self._run(_op_fold_pending)
        return result

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        return await self._run(_op_reroute, from_channel, to_channel, limit, now)

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult:
        return await self._run(_op_cancel, tenant, message_id, now)

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        records = await self._run(
            _op_read_records, "WHERE id = $1 AND tenant = $2", (message_id, tenant), read=True
        )
        return records[0] if records else None

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        before = before_id if before_id is not None else (1 << 63) - 1
        return await self._run(
            _op_read_records,
            "WHERE tenant = $1 AND recipient = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
            (tenant, recipient, before, limit),
            read=True,
        )

    async def next_due(self, channel: str) -> int | None:
        due: int | None = await self._run(_op_next_due, channel, read=True)
        return due

    def queue_depth(self) -> int:
        """Operations waiting for a connection of the pool."""
        return self._waiting

    def pending(self) -> dict[str, int]:
        return self._pending_view

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        if not receipts:
            return 0
        return await self._run(_op_apply_receipts, channel, receipts)

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]:
        return await self._run(_op_claim_callbacks, limit, now, lease_ms)

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None:
        await self._run(_op_finish_callbacks, done, retry, dropped)

    async def count_by_state(self) -> dict[State, int]:
        """Messages per state (a full scan: for tests and tools, not the hot path)."""
        rows = await self._run(
            _op_fetch, "SELECT state, count(*)::bigint FROM messages GROUP BY state", read=True
        )
        return {State(state): n for state, n in rows}


_BEGIN_RELAXED = "BEGIN; SET LOCAL synchronous_commit TO off"


def _set_event(event: asyncio.Event, *_: Any) -> None:
    event.set()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"


async def _migrate(conn: asyncpg.Connection, schema: str) -> None:
    """Create the schema, or bring it from the version it has to SCHEMA_VERSION."""
    async with conn.transaction():
        # One process migrates; the others wait here, then find nothing to do.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('sluice.migrate.' || $1))", schema
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, "
            "applied_at bigint NOT NULL)"
        )
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal schema version {version} is newer than this Sluice ({SCHEMA_VERSION})"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                number,
                now_ms(),
            )
            log.info("journal schema %s migrated to version %d", schema, number)


async def _add_pending(conn: asyncpg.Connection, deltas: Counter[str]) -> None:
    changed = [(channel, n) for channel, n in deltas.items() if n]
    if not changed:
        return
    await conn.execute(
        "INSERT INTO pending_counts (channel, backend, n) "
        "SELECT c, pg_backend_pid(), n FROM unnest($1::text[], $2::bigint[]) AS d(c, n) "
        "ON CONFLICT (channel, backend) DO UPDATE SET n = pending_counts.n + excluded.n",
        [c for c, _ in changed],
        [n for _, n in changed],
    )


async def _op_fold_pending(conn: asyncpg.Connection, tx: _Tx) -> None:
    """Fold the other rows into this connection's (the sums stay the same), so that rows of
    connections long closed do not pile up. One process at a time."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('sluice.fold'))"):
        return
    await conn.execute(
        "WITH gone AS (DELETE FROM pending_counts WHERE backend <> pg_backend_pid() "
        "RETURNING channel, n) "
        "INSERT INTO pending_counts (channel, backend, n) "
        "SELECT channel, pg_backend_pid(), sum(n) FROM gone GROUP BY channel "
        "ON CONFLICT (channel, backend) DO UPDATE SET n = pending_counts.n + excluded.n"
    )


# -------------------------------------------------------------------- operations


async def _op_fetch(conn: asyncpg.Connection, tx: _Tx, sql: str, *args: Any) -> list[Any]:
    return list(await conn.fetch(sql, *args))


async def _op_fetchrow(conn: asyncpg.Connection, tx: _Tx, sql: str, *args: Any) -> Any:
    return await conn.fetchrow(sql, *args)


async def _op_save_state(
    conn: asyncpg.Connection, tx: _Tx, name: str, data: bytes, now: int
) -> None:
    await conn.execute(
        "INSERT INTO saved_state (name, data, saved_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET data = excluded.data, saved_at = excluded.saved_at",
        name,
        data,
        now,
    )


class _Columns(msgspec.Struct):
    """An insert's values, column by column (built before the transaction)."""

    ids: list[int]
    channels: list[str]
    recipients: list[str]
    senders: list[str | None]
    bodies: list[str]
    priorities: list[int]
    due: list[int]
    not_before: list[int | None]
    expires: list[int | None]
    callbacks: list[str | None]
    metadata: list[bytes | None]
    now: int


def _insert_columns(messages: list[Message], now: int) -> _Columns:
    return _Columns(
        [m.id for m in messages],
        [m.channel for m in messages],
        [m.recipient for m in messages],
        [m.sender for m in messages],
        [m.body for m in messages],
        [m.priority for m in messages],
        [m.not_before or now for m in messages],
        [m.not_before for m in messages],
        [m.expires_at for m in messages],
        [m.callback_url for m in messages],
        [encode_metadata(m.metadata) for m in messages],
        now,
    )


_INSERT = (
    "INSERT INTO messages (id, tenant, channel, recipient, sender, body, priority, state, due_at, "
    "not_before, expires_at, callback_url, metadata, updated_at) "
    "SELECT id, $1, channel, recipient, sender, body, priority, 1, due_at, not_before, "
    "expires_at, callback_url, metadata, $2 FROM unnest($3::bigint[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::smallint[], $9::bigint[], $10::bigint[], $11::bigint[], "
    "$12::text[], $13::bytea[]) AS m(id, channel, recipient, sender, body, priority, due_at, "
    "not_before, expires_at, callback_url, metadata)"
)


async def _op_insert(
    conn: asyncpg.Connection,
    tx: _Tx,
    tenant: str,
    messages: list[Message],
    c: _Columns,
    key: str | None,
    digest: bytes | None,
) -> SubmitResult:
    if key is not None:
        row = await conn.fetchrow(
            "SELECT digest, ids FROM idempotency WHERE tenant = $1 AND key = $2", tenant, key
        )
        if row is not None:
            if row[0] is not None and digest is not None and bytes(row[0]) != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used before for a different request"
                )
            return SubmitResult(list(row[1]), True)
        # Two requests with the same new key at once: the second waits here for the first.
        inserted = await conn.fetchval(
            "INSERT INTO idempotency (tenant, key, digest, ids, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            tenant,
            key,
            digest,
            c.ids,
            now_ms(),
        )
        if inserted is None:
            return await _op_insert(conn, tx, tenant, messages, c, key, digest)
    await conn.execute(
        _INSERT, tenant, c.now, c.ids, c.channels, c.recipients, c.senders, c.bodies,
        c.priorities, c.due, c.not_before, c.expires, c.callbacks, c.metadata,
    )  # fmt: skip
    for m in messages:
        tx.deltas[m.channel] += 1
        if m.not_before is None or m.not_before <= c.now:
            tx.due[m.channel] = tx.due.get(m.channel, False) or m.priority == Priority.URGENT
    return SubmitResult(c.ids, False)


async def _op_insert_again(
    conn: asyncpg.Connection,
    tx: _Tx,
    tenant: str,
    messages: list[Message],
    c: _Columns,
    key: str | None,
    digest: bytes | None,
) -> SubmitResult:
    """An insert whose first try lost its connection, perhaps after its commit landed."""
    found = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND tenant = $2", c.ids, tenant
    )
    if found == len(c.ids):
        return SubmitResult(c.ids, False)  # it did: nothing more to do
    return await _op_insert(conn, tx, tenant, messages, c, key, digest)


def _lane(priority: int, limit: str) -> str:
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE state = 1 AND channel = $1 "
        f"AND priority = {priority} AND due_at <= $2 ORDER BY due_at LIMIT {limit} "
        "FOR UPDATE SKIP LOCKED"
    )


_LOWER_LANES = [p for p in Priority if p != Priority.URGENT]
_URGENT_LANE = _lane(Priority.URGENT, "$3")
_LOWER_LANE = {p: _lane(p, "$3") for p in _LOWER_LANES}


async def _op_claim(
    conn: asyncpg.Connection,
    tx: _Tx,
    channel: str,
    limit: int,
    non_urgent_limit: int,
    owner: int,
    now: int,
    lease_ms: int,
) -> list[Message]:
    # Lane by lane, urgent first; the lower lanes share `non_urgent_limit`. Rows another
    # process has locked are skipped, not waited for.
    rows = list(await conn.fetch(_URGENT_LANE, channel, now, limit))
    room = min(limit - len(rows), non_urgent_limit)
    for priority in _LOWER_LANES:
        if room <= 0:
            break
        found = await conn.fetch(_LOWER_LANE[priority], channel, now, room)
        rows += found
        room -= len(found)
    if not rows:
        return []
    live: list[Message] = []
    expired: list[int] = []
    for row in rows:
        if row[8] is not None and row[8] <= now:
            expired.append(row[0])
        else:
            live.append(row_to_message(row))
    if live:
        await conn.execute(
            "WITH claimed AS (UPDATE messages SET state = 2, lease_owner = $1, lease_until = $2, "
            "attempts = attempts + 1, updated_at = $3 WHERE id = ANY($4::bigint[]) "
            "RETURNING id, channel, attempts) "
            "INSERT INTO events (message_id, at, state, channel, attempt) "
            "SELECT id, $3, 2, channel, attempts FROM claimed",
            owner,
            now + lease_ms,
            now,
            [m.id for m in live],
        )
        for m in live:
            m.attempts += 1
    if expired:
        await _expire(conn, tx, expired, now)
    return live


async def _expire(conn: asyncpg.Connection, tx: _Tx, ids: list[int], now: int) -> int:
    detail = "expired before it could be sent"
    rows = await conn.fetch(
        "UPDATE messages SET state = 6, lease_owner = NULL, lease_until = NULL, updated_at = $1 "
        "WHERE id = ANY($2::bigint[]) AND state IN (0, 1) "
        "RETURNING id, tenant, channel, recipient, attempts, callback_url, metadata",
        now,
        ids,
    )
    if not rows:
        return 0
    await _insert_events(
        conn, now, [(r[0], _EXPIRED, r[2], None, None, None, None, detail) for r in rows]
    )
    callbacks = []
    for mid, tenant, channel, recipient, attempts, url, metadata in rows:
        tx.deltas[channel] -= 1
        if url:
            payload = callback_payload(
                mid, State.EXPIRED, now, channel, attempts, tenant, recipient, None, detail,
                metadata,
            )  # fmt: skip
            callbacks.append((mid, url, payload))
    await _insert_callbacks(conn, now, callbacks)
    return len(rows)


async def _insert_events(
    conn: asyncpg.Connection,
    now: int,
    events: Iterable[
        tuple[int, int, str | None, int | None, int | None, str | None, float | None, str | None]
    ],
) -> None:
    """Events of (message_id, state, channel, attempt, outcome, provider_id, latency_ms,
    detail), all at `now`, in order."""
    columns = list(zip(*events, strict=True))
    if not columns:
        return
    await conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "latency_ms, detail) SELECT m, $1, s, c, a, o, p, l, d FROM unnest($2::bigint[], "
        "$3::smallint[], $4::text[], $5::integer[], $6::smallint[], $7::text[], $8::real[], "
        "$9::text[]) WITH ORDINALITY AS e(m, s, c, a, o, p, l, d, n) ORDER BY n",
        now,
        *(list(col) for col in columns),
    )


async def _insert_callbacks(
    conn: asyncpg.Connection, now: int, callbacks: list[tuple[int, str, bytes]]
) -> int:
    if not callbacks:
        return 0
    mids, urls, payloads = zip(*callbacks, strict=True)
    await conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) "
        "SELECT m, u, p, $1 FROM unnest($2::bigint[], $3::text[], $4::bytea[]) AS c(m, u, p)",
        now,
        list(mids),
        list(urls),
        list(payloads),
    )
    return len(callbacks)


async def _op_complete(
    conn: asyncpg.Connection, tx: _Tx, owner: int, completions: list[Completion]
) -> int:
    """Apply outcomes; return how many status callbacks were queued."""
    now = now_ms()
    applied: list[Completion] = []
    callbacks: list[tuple[int, str, bytes]] = []
    parts: list[tuple[str, str, int, int, int]] = []
    requeuing = [c for c in completions if c.state == State.QUEUED]
    delivered = [c for c in completions if c.state == State.DELIVERED]
    settling = [c for c in completions if c.state not in (State.QUEUED, State.DELIVERED)]
    if requeuing:
        done = {
            r[0]
            for r in await conn.fetch(
                "UPDATE messages m SET state = 1, due_at = v.due_at, channel = v.channel, "
                "attempts = m.attempts - v.uncount, lease_owner = NULL, lease_until = NULL, "
                "updated_at = $1 FROM unnest($2::bigint[], $3::bigint[], $4::text[], "
                "$5::integer[]) AS v(id, due_at, channel, uncount) "
                "WHERE m.id = v.id AND m.state = 2 AND m.lease_owner = $6 RETURNING m.id",
                now,
                [c.message_id for c in requeuing],
                [c.due_at for c in requeuing],
                [c.reroute_to or c.channel for c in requeuing],
                [1 if c.uncount else 0 for c in requeuing],
                owner,
            )
        }
        for c in requeuing:
            if c.message_id not in done:  # lost its lease (swept, or completed twice)
                continue
            if c.reroute_to and c.reroute_to != c.channel:
                tx.deltas[c.channel] -= 1
                tx.deltas[c.reroute_to] += 1
                if c.due_at <= now:
                    tx.due[c.reroute_to] = tx.due.get(c.reroute_to, False)
            applied.append(c)
    if settling:
        rows = {
            r[0]: r
            for r in await conn.fetch(
                "UPDATE messages m SET state = v.state, provider_id = v.provider_id, "
                "lease_owner = NULL, lease_until = NULL, updated_at = $1 "
                "FROM unnest($2::bigint[], $3::smallint[], $4::text[]) AS v(id, state, "
                "provider_id) WHERE m.id = v.id AND m.state = 2 AND m.lease_owner = $5 "
                "RETURNING m.id, m.tenant, m.channel, m.recipient, m.attempts, m.callback_url, "
                "m.metadata",
                now,
                [c.message_id for c in settling],
                [int(c.state) for c in settling],
                [c.provider_id for c in settling],
                owner,
            )
        }
        for c in settling:
            row = rows.get(c.message_id)
            if row is None:
                continue
            tx.deltas[row[2]] -= 1
            callback = final_callback(c, tuple(row)[1:], now)
            if callback is not None:
                callbacks.append((c.message_id, *callback))
            if c.parts and c.state == State.SENT:
                n = len(c.parts)
                parts += [(c.channel, pid, c.message_id, i, n) for i, pid in enumerate(c.parts)]
            applied.append(c)
    for c in delivered:
        # A receipt can overtake the commit of its own SENT outcome: from SENDING too.
        found = await conn.fetchrow(
            "SELECT tenant, channel, recipient, attempts, callback_url, metadata, state "
            "FROM messages WHERE id = $1 AND state IN (2, 3) FOR UPDATE",
            c.message_id,
        )
        if found is None:
            continue
        await conn.execute(
            "UPDATE messages SET state = $1, lease_owner = NULL, lease_until = NULL, "
            "provider_id = COALESCE(provider_id, $2), updated_at = $3 WHERE id = $4",
            int(c.state),
            c.provider_id,
            now,
            c.message_id,
        )
        if found[6] == _SENDING:
            tx.deltas[found[1]] -= 1
        callback = final_callback(c, tuple(found), now)
        if callback is not None:
            callbacks.append((c.message_id, *callback))
        applied.append(c)
    await _insert_events(
        conn,
        now,
        (
            (c.message_id, int(c.state), c.channel, c.attempt, int(c.outcome), c.provider_id,
             c.latency_ms, c.detail)
            for c in applied
        ),
    )  # fmt: skip
    if parts:
        await _record_parts(conn, tx, parts, now)
    return await _insert_callbacks(conn, now, callbacks)


# A part's SENT and its receipt meet in one row of `provider_parts`, keyed by (channel,
# provider id), whichever comes first: the SENT commit sets message_id, the receipt sets
# delivered. Both write it with INSERT … ON CONFLICT, so when they run at once in two
# transactions the second waits for the first's commit and then sees it: a receipt that
# overtakes its SENT is never lost between them. (Two tables, "parts" and "early receipts",
# each checked by the other side, lose it under READ COMMITTED: each side's check runs before
# the other commits.)


async def _record_parts(
    conn: asyncpg.Connection, tx: _Tx, parts: list[tuple[str, str, int, int, int]], now: int
) -> None:
    """The provider ids of SENT messages' parts; applies receipts that came before."""
    latest = {(p[0], p[1]): p for p in parts}  # one row per key in one statement
    channels, pids, mids, indexes, counts = (list(c) for c in zip(*latest.values(), strict=True))
    rows = await conn.fetch(
        "INSERT INTO provider_parts (channel, provider_id, message_id, part, parts, at) "
        "SELECT c, p, m, i, n, $6 FROM unnest($1::text[], $2::text[], $3::bigint[], "
        "$4::integer[], $5::integer[]) AS u(c, p, m, i, n) "
        "ON CONFLICT (channel, provider_id) DO UPDATE SET message_id = excluded.message_id, "
        "part = excluded.part, parts = excluded.parts "
        "RETURNING channel, provider_id, message_id, delivered",
        channels,
        pids,
        mids,
        indexes,
        counts,
        now,
    )
    heard = sorted({(r[2], r[0], r[1]) for r in rows if r[3] is not None})
    for mid, channel, pid in heard:
        await _settle_if_complete(conn, channel, mid, pid, now)


async def _op_apply_receipts(
    conn: asyncpg.Connection, tx: _Tx, channel: str, receipts: list[Receipt]
) -> int:
    """Apply a batch of receipts; return how many messages reached a final state."""
    now = now_ms()
    latest = {r.provider_id: r for r in receipts}  # one row per key in one statement
    rows = await conn.fetch(
        "INSERT INTO provider_parts (channel, provider_id, delivered, detail, at) "
        "SELECT $1, p, d, t, $2 FROM unnest($3::text[], $4::boolean[], $5::text[]) "
        "AS r(p, d, t) ON CONFLICT (channel, provider_id) DO UPDATE SET "
        "delivered = excluded.delivered, detail = excluded.detail "
        "RETURNING provider_id, message_id, parts",
        channel,
        now,
        list(latest),
        [r.delivered for r in latest.values()],
        [r.detail for r in latest.values()],
    )
    single: dict[int, Receipt] = {}
    multi: dict[int, str] = {}
    for pid, mid, n in rows:
        if mid is None:
            continue  # before its SENT commit (or not ours): the SENT will find it
        if n > 1:
            multi[mid] = pid
        else:
            single[mid] = latest[pid]
    finals = await _settle_receipts(conn, channel, single, now) if single else 0
    for mid in sorted(multi):
        finals += await _settle_if_complete(conn, channel, mid, multi[mid], now)
    return finals


async def _settle_receipts(
    conn: asyncpg.Connection, channel: str, receipts: dict[int, Receipt], now: int
) -> int:
    """Final states for single-part messages from their receipts, by message id."""
    mids = list(receipts)
    await conn.execute(
        "DELETE FROM provider_parts WHERE channel = $1 AND provider_id = ANY($2::text[])",
        channel,
        [r.provider_id for r in receipts.values()],
    )
    sent = await conn.fetch(
        "UPDATE messages m SET state = v.state, updated_at = $1 "
        "FROM unnest($2::bigint[], $3::smallint[]) AS v(id, state) "
        "WHERE m.id = v.id AND m.state = 3 "
        "RETURNING m.id, m.tenant, m.channel, m.recipient, m.attempts, m.callback_url, m.metadata",
        now,
        mids,
        [int(State.DELIVERED if receipts[mid].delivered else State.FAILED) for mid in mids],
    )
    events = []
    callbacks = []
    for mid, tenant, msg_channel, recipient, attempts, callback_url, metadata in sent:
        r = receipts[mid]
        state = State.DELIVERED if r.delivered else State.FAILED
        outcome = Outcome.SENT if r.delivered else Outcome.PERMANENT
        events.append(
            (mid, int(state), channel, attempts, int(outcome), r.provider_id, None, r.detail)
        )
        if callback_url:
            payload = callback_payload(
                mid, state, now, msg_channel, attempts, tenant, recipient, r.provider_id,
                r.detail, metadata,
            )  # fmt: skip
            callbacks.append((mid, callback_url, payload))
    await _insert_events(conn, now, events)
    await _insert_callbacks(conn, now, callbacks)
    return len(sent)


async def _settle_if_complete(
    conn: asyncpg.Connection, channel: str, message_id: int, pid: str, now: int
) -> int:
    """The final state of a message once every part has its receipt (`pid`: the part heard
    last); returns 1 if it reached one.

    The message's row is locked first: receipts for two parts committing at once then read
    the parts one after the other, and the second sees the first's."""
    locked = await conn.fetchval(
        "SELECT 1 FROM messages WHERE id = $1 AND state = 3 FOR UPDATE", message_id
    )
    if locked is None:
        return 0
    parts = await conn.fetch(
        "SELECT provider_id, delivered, detail FROM provider_parts WHERE message_id = $1 "
        "ORDER BY part",
        message_id,
    )
    if not parts or any(delivered is None for _, delivered, _ in parts):
        return 0  # more parts to hear from
    failed = [(p, detail) for p, delivered, detail in parts if not delivered]
    state = State.FAILED if failed else State.DELIVERED
    if failed:
        detail = "; ".join(f"part {p}: {d or 'not delivered'}" for p, d in failed)
    elif len(parts) == 1:
        detail = parts[0][2]
    else:
        detail = f"all {len(parts)} parts delivered"
    await conn.execute("DELETE FROM provider_parts WHERE message_id = $1", message_id)
    final = await conn.fetchrow(
        "UPDATE messages SET state = $1, updated_at = $2 WHERE id = $3 "
        "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
        int(state),
        now,
        message_id,
    )
    outcome = Outcome.SENT if state == State.DELIVERED else Outcome.PERMANENT
    await _insert_events(
        conn, now, [(message_id, int(state), channel, final[3], int(outcome), pid, None, detail)]
    )
    if final[4]:
        payload = callback_payload(
            message_id, state, now, final[1], final[3], final[0], final[2], pid, detail, final[5]
        )
        await _insert_callbacks(conn, now, [(message_id, final[4], payload)])
    return 1


async def _op_renew(
    conn: asyncpg.Connection, tx: _Tx, owner: int, until: int, ids: list[int]
) -> int:
    status = await conn.execute(
        "UPDATE messages SET lease_until = $1 WHERE id = ANY($3::bigint[]) "
        "AND lease_owner = $2 AND state = 2",
        until,
        owner,
        ids,
    )
    return _count(status)


def _count(status: str) -> int:
    """The row count of a command status ("UPDATE 12")."""
    return int(status.rsplit(" ", 1)[-1])


async def _op_requeue(
    conn: asyncpg.Connection, tx: _Tx, where: str, param: int, now: int, detail: str
) -> int:
    """Leased messages matching `where` ($2 is `param`) back to the queue, due now."""
    rows = await conn.fetch(
        "WITH back AS (UPDATE messages SET state = 1, lease_owner = NULL, lease_until = NULL, "
        f"updated_at = $1 WHERE state = 2 AND {where} RETURNING id, channel) "
        "INSERT INTO events (message_id, at, state, channel, detail) "
        "SELECT id, $1, 1, channel, $3 FROM back RETURNING channel",
        now,
        param,
        detail,
    )
    for (channel,) in rows:
        tx.due[channel] = tx.due.get(channel, False)
    return len(rows)


async def _op_sweep(
    conn: asyncpg.Connection, tx: _Tx, now: int, idempotency_ttl_ms: int
) -> SweepResult:
    reclaimed = await _op_requeue(
        conn, tx, "lease_until < $2", now, now, "lease expired; its owner stopped renewing it"
    )
    expiring = [
        r[0]
        for r in await conn.fetch(
            "SELECT id FROM messages WHERE state = 1 AND expires_at IS NOT NULL "
            "AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            MAX_EXPIRE_PER_SWEEP,
        )
    ]
    expired = await _expire(conn, tx, expiring, now) if expiring else 0
    forgotten = _count(
        await conn.execute(
            "DELETE FROM idempotency WHERE created_at < $1", now - idempotency_ttl_ms
        )
    )
    # Receipts for ids we never sent (another system's, or lost) are not kept for ever.
    await conn.execute(
        "DELETE FROM provider_parts WHERE message_id IS NULL AND at < $1",
        now - EARLY_RECEIPT_TTL_MS,
    )
    return SweepResult(reclaimed, expired, forgotten)


async def _op_reroute(
    conn: asyncpg.Connection, tx: _Tx, src: str, dst: str, limit: int, now: int
) -> int:
    rows = await conn.fetch(
        "WITH moved AS (UPDATE messages SET channel = $1, updated_at = $2 WHERE id IN ("
        "SELECT id FROM messages WHERE state = 1 AND channel = $3 AND due_at <= $2 "
        "ORDER BY priority, due_at LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id) "
        "INSERT INTO events (message_id, at, state, channel, detail) "
        "SELECT id, $2, 1, $1, $5 FROM moved RETURNING message_id",
        dst,
        now,
        src,
        limit,
        f"failover from {src}: its breaker is open",
    )
    if rows:
        tx.deltas[src] -= len(rows)
        tx.deltas[dst] += len(rows)
        tx.due[dst] = False
    return len(rows)


async def _op_cancel(
    conn: asyncpg.Connection, tx: _Tx, tenant: str, mid: int, now: int
) -> CancelResult:
    row = await conn.fetchrow(
        "SELECT state, channel, recipient, attempts, callback_url, metadata FROM messages "
        "WHERE id = $1 AND tenant = $2 FOR UPDATE",
        mid,
        tenant,
    )
    if row is None:
        return CancelResult.NOT_FOUND
    state, channel, recipient, attempts, callback_url, metadata = row
    if state not in (State.ACCEPTED, State.QUEUED):
        return CancelResult.TOO_LATE
    detail = "cancelled by the producer"
    await conn.execute(
        "UPDATE messages SET state = $1, updated_at = $2 WHERE id = $3", _CANCELLED, now, mid
    )
    await _insert_events(conn, now, [(mid, _CANCELLED, channel, None, None, None, None, detail)])
    tx.deltas[channel] -= 1
    if callback_url:
        payload = callback_payload(
            mid, State.CANCELLED, now, channel, attempts, tenant, recipient, None, detail, metadata
        )
        await _insert_callbacks(conn, now, [(mid, callback_url, payload)])
    return CancelResult.CANCELLED


async def _op_claim_callbacks(
    conn: asyncpg.Connection, tx: _Tx, limit: int, now: int, lease_ms: int
) -> list[CallbackJob]:
    rows = await conn.fetch(
        "UPDATE callbacks SET due_at = $1, attempts = attempts + 1 WHERE id IN ("
        "SELECT id FROM callbacks WHERE due_at <= $2 ORDER BY due_at LIMIT $3 "
        "FOR UPDATE SKIP LOCKED) RETURNING id, message_id, url, payload, attempts",
        now + lease_ms,
        now,
        limit,
    )
    return [CallbackJob(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]


async def _op_finish_callbacks(
    conn: asyncpg.Connection,
    tx: _Tx,
    done: list[int],
    retry: list[tuple[int, int]],
    dropped: list[int],
) -> None:
    if done or dropped:
        await conn.execute("DELETE FROM callbacks WHERE id = ANY($1::bigint[])", [*done, *dropped])
    if retry:
        await conn.execute(
            "UPDATE callbacks c SET due_at = v.due FROM unnest($1::bigint[], $2::bigint[]) "
            "AS v(id, due) WHERE c.id = v.id",
            [i for i, _ in retry],
            [d for _, d in retry],
        )


#: A message and its events in one row: one round trip for a page of history.
_RECORD_COLUMNS = (
    f"{', '.join('m.' + c for c in MESSAGE_COLUMNS.split(', '))}, m.state, m.updated_at, "
    "m.provider_id, m.not_before, ARRAY(SELECT ROW("
    + ", ".join("e." + c for c in EVENT_COLUMNS.split(", "))
    + ") FROM events e WHERE e.message_id = m.id ORDER BY e.seq)"
)


async def _op_read_records(
    conn: asyncpg.Connection, tx: _Tx, where: str, params: tuple[Any, ...]
) -> list[MessageRecord]:
    rows = await conn.fetch(f"SELECT {_RECORD_COLUMNS} FROM messages m {where}", *params)
    return [_record(row) for row in rows]


def _record(row: asyncpg.Record) -> MessageRecord:
    values = list(row)
    if values[10] is not None:
        values[10] = bytes(values[10])
    return message_record(values[:16], [timeline_entry(e) for e in values[16]])


async def _op_next_due(conn: asyncpg.Connection, tx: _Tx, channel: str) -> int | None:
    due: int | None = await conn.fetchval(_NEXT_DUE, channel)
    return due


# One MIN per priority: each is a single seek on the (channel, priority, due_at) index, where a
# MIN over the whole channel would walk every queued message. LEAST ignores NULLs.
_NEXT_DUE = (
    "SELECT LEAST("
    + ", ".join(
        f"(SELECT min(due_at) FROM messages WHERE state = 1 AND channel = $1 AND priority = {p})"
        for p in Priority
    )
    + ")"
)


#: Operations whose loss in a server crash costs at most a repeated delivery.
_RELAXED_OPS = frozenset(
    {
        _op_claim,
        _op_complete,
        _op_renew,
        _op_requeue,
        _op_sweep,
        _op_reroute,
        _op_claim_callbacks,
        _op_finish_callbacks,
        _op_fold_pending,
    }
)
