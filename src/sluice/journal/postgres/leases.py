"""Claims and leases: how queued messages are taken, held, and given back.

- **Claims** lock due rows with `FOR UPDATE SKIP LOCKED`, lane by lane, urgent first, so
  processes claiming the same channel never wait for each other nor take the same message.
- **Leases** name the owning process; its heartbeat renews them, and a sweep in any process
  returns the messages of an owner that stopped renewing (it died) to the queue. The sweep
  also expires queued messages past their `expires_at` and forgets old idempotency keys and
  receipts nobody claimed.
"""

from __future__ import annotations

import itertools

from sluice.journal.base import EARLY_RECEIPT_TTL_MS, SweepResult
from sluice.journal.postgres import broadcasts
from sluice.journal.postgres.callbacks import insert_callbacks
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.postgres.events import insert_events
from sluice.journal.rows import (
    MESSAGE_COLUMNS,
    CallbackRow,
    MessageRow,
    callback_payload,
    row_to_message,
)
from sluice.model import Message, Priority, State

#: Messages expired per sweep at most.
MAX_EXPIRE_PER_SWEEP = 10_000

_EXPIRED = int(State.EXPIRED)


def _lane(priority: int, limit: str) -> str:
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE state = 1 AND channel = $1 "
        f"AND priority = {priority} AND due_at <= $2 ORDER BY due_at LIMIT {limit} "
        "FOR UPDATE SKIP LOCKED"
    )


_LOWER_LANES = [p for p in Priority if p != Priority.URGENT]
_URGENT_LANE = _lane(Priority.URGENT, "$3")
_LOWER_LANE = {p: _lane(p, "$3") for p in _LOWER_LANES}


async def op_claim(
    conn: PoolConnection,
    tx: Tx,
    channel: str,
    limit: int,
    non_urgent_limit: int,
    owner: int,
    now: int,
    lease_ms: int,
) -> list[Message]:
    # Lane by lane, urgent first; the lower lanes share `non_urgent_limit`. Rows another
    # process has locked are skipped, not waited for.
    records = list(await conn.fetch(_URGENT_LANE, channel, now, limit))
    room = min(limit - len(records), non_urgent_limit)
    for priority in _LOWER_LANES:
        if room <= 0:
            break
        found = await conn.fetch(_LOWER_LANE[priority], channel, now, room)
        records += found
        room -= len(found)
    if not records:
        return []
    live: list[Message] = []
    expired: list[int] = []
    # Naming a record's columns costs ~60 ns a row over unpacking it (1,000 records: ~135
    # against ~75 µs), far inside the noise of a claim of 1,000 (~11 ms).
    row: MessageRow[bytes]
    for row in itertools.starmap(MessageRow, records):
        expires_at = row.expires_at
        if expires_at is not None and expires_at <= now:
            expired.append(row.id)
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
        await expire(conn, tx, expired, now)
    return live


async def expire(conn: PoolConnection, tx: Tx, ids: list[int], now: int) -> int:
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
    expired: list[CallbackRow[bytes]] = list(itertools.starmap(CallbackRow, rows))
    await insert_events(
        conn, now, [(r.id, _EXPIRED, r.channel, None, None, None, None, detail) for r in expired]
    )
    callbacks = []
    for row in expired:
        tx.deltas[row.channel] -= 1
        if row.callback_url:
            payload = callback_payload(row, State.EXPIRED, now, None, detail)
            callbacks.append((row.id, row.callback_url, payload))
    await insert_callbacks(conn, now, callbacks)
    return len(rows)


async def op_renew(conn: PoolConnection, tx: Tx, owner: int, until: int, ids: list[int]) -> int:
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


async def op_requeue(
    conn: PoolConnection, tx: Tx, where: str, param: int, now: int, detail: str
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


async def op_sweep(conn: PoolConnection, tx: Tx, now: int, idempotency_ttl_ms: int) -> SweepResult:
    reclaimed = await op_requeue(
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
    expired = await expire(conn, tx, expiring, now) if expiring else 0
    await broadcasts.cancel_held(conn, tx, now)
    await broadcasts.forget_reached(conn)
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


async def op_reroute(conn: PoolConnection, tx: Tx, src: str, dst: str, limit: int, now: int) -> int:
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
