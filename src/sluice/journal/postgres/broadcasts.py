"""Broadcasts in the PostgreSQL journal (`journal/broadcasts.py` says what each operation
means), as in SQLite (`sqlite/broadcasts.py`), for processes that expand, pause and cancel
them at the same time.

Tables (schema migration 3): `broadcasts` (one row each: the spec, the cursor, the
expansion's counters, the expander's lease) and `broadcast_counts` (messages per broadcast,
channel, state and slot). A statement trigger on `messages` keeps the counts with every change
of a broadcast message's state or channel, whichever statement makes it (claim, outcome,
receipt, sweep, expiry, cancel, reroute); expansion counts its own new messages, one statement
a chunk. Counter rows are spread over slots (the server process id modulo `COUNT_SLOTS`) so
that concurrent transactions seldom wait for one row; a read sums the slots.

Locks: an expansion chunk, a pause, a resume and a cancel each hold the broadcast's row
(FOR UPDATE) for their transaction, so a pause committed between two chunks stops the next
one; leasing skips the rows they hold.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from sluice.journal.base import IdempotencyConflict
from sluice.journal.broadcasts import (
    HELD_DUE_MS,
    IDEMPOTENCY_PREFIX,
    PAUSED_DUE_MS,
    RECORD_COLUMNS,
    BroadcastMember,
    BroadcastRecord,
    BroadcastStatus,
    ExpansionChunk,
    NewBroadcast,
    StatusChange,
    UnknownTopics,
    record_of,
)
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.postgres.inserts import Columns, insert_messages
from sluice.model import State

#: Counter rows per (broadcast, channel, state): the trigger's modulus too. Any number is
#: correct (reads sum the slots); 16 keeps a pool or two of connections mostly apart.
COUNT_SLOTS = 16

_CANCELLED = int(State.CANCELLED)

#: A broadcast's row, then its counts summed over the slots (zero sums left out).
_RECORD = (
    f"SELECT {RECORD_COLUMNS}, ARRAY(SELECT ROW(c.channel, c.state, "
    "sum(c.n)::bigint) FROM broadcast_counts c WHERE c.broadcast = b.id "
    "GROUP BY c.channel, c.state HAVING sum(c.n) <> 0) FROM broadcasts b "
)
_COUNT_NEW = (
    "INSERT INTO broadcast_counts AS c (broadcast, channel, state, slot, n) "
    f"SELECT $1, channel, 1, pg_backend_pid() % {COUNT_SLOTS}, count(*) "
    "FROM unnest($2::text[]) AS m(channel) GROUP BY channel ORDER BY channel "
    "ON CONFLICT (broadcast, channel, state, slot) DO UPDATE SET n = c.n + excluded.n"
)
_suppressed = msgspec.json.Decoder(dict[str, int])
_json = msgspec.json.Encoder()


async def op_create_broadcast(
    conn: PoolConnection,
    tx: Tx,
    new: NewBroadcast,
    key: str | None,
    digest: bytes | None,
    now: int,
) -> tuple[int, bool]:
    if key is not None:
        row = await conn.fetchrow(
            "SELECT digest, ids FROM idempotency WHERE tenant = $1 AND key = $2",
            new.tenant,
            IDEMPOTENCY_PREFIX + key,
        )
        if row is not None:
            if row[0] is not None and digest is not None and bytes(row[0]) != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used before for a different broadcast"
                )
            return row[1][0], True
        # Two requests with the same new key at once: the second waits here for the first.
        inserted = await conn.fetchval(
            "INSERT INTO idempotency (tenant, key, digest, ids, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            new.tenant,
            IDEMPOTENCY_PREFIX + key,
            digest,
            [new.id],
            now,
        )
        if inserted is None:
            return await op_create_broadcast(conn, tx, new, key, digest, now)
    found = {
        name: (topic_key, count)
        for name, topic_key, count in await conn.fetch(
            "SELECT name, key, subscribers FROM topics WHERE tenant = $1 "
            "AND name = ANY($2::text[])",
            new.tenant,
            list(new.topics),
        )
    }
    missing = [name for name in new.topics if name not in found]
    if missing:
        raise UnknownTopics(missing)  # the transaction, idempotency key and all, rolls back
    await conn.execute(
        "INSERT INTO broadcasts (id, tenant, spec, topic_keys, status, created_at, updated_at, "
        "start_at, audience) VALUES ($1, $2, $3, $4, 'running', $5, $5, $6, $7)",
        new.id,
        new.tenant,
        new.spec,
        [found[name][0] for name in new.topics],
        now,
        new.start_at,
        sum(count for _, count in found.values()),
    )
    return new.id, False


async def op_create_again(
    conn: PoolConnection,
    tx: Tx,
    new: NewBroadcast,
    key: str | None,
    digest: bytes | None,
    now: int,
) -> tuple[int, bool]:
    """A create whose first try lost its connection, perhaps after its commit landed: if it
    did, the producer hears of its broadcast as the first call would have told it."""
    if await conn.fetchval(
        "SELECT EXISTS (SELECT FROM broadcasts WHERE id = $1 AND tenant = $2)", new.id, new.tenant
    ):
        return new.id, False
    return await op_create_broadcast(conn, tx, new, key, digest, now)


async def op_lease_broadcasts(
    conn: PoolConnection, tx: Tx, owner: int, now: int, lease_ms: int, limit: int
) -> list[BroadcastRecord]:
    leased = await conn.fetch(
        "UPDATE broadcasts SET lease_owner = $1, lease_until = $2 WHERE id IN ("
        "SELECT id FROM broadcasts WHERE NOT expanded AND status = 'running' "
        "AND start_at <= $3 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $3) "
        "ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id",
        owner,
        now + lease_ms,
        now,
        limit,
    )
    if not leased:
        return []
    rows = await conn.fetch(
        _RECORD + "WHERE b.id = ANY($1::bigint[]) ORDER BY b.id", [row[0] for row in leased]
    )
    return [_record(row) for row in rows]


async def op_expand_broadcast(
    conn: PoolConnection, tx: Tx, owner: int, chunk: ExpansionChunk, columns: Columns, now: int
) -> bool:
    found = await conn.fetchrow(
        "SELECT tenant, topic_index, cursor, suppressed FROM broadcasts WHERE id = $1 "
        "AND status = 'running' AND NOT expanded AND lease_owner = $2 FOR UPDATE",
        chunk.broadcast,
        owner,
    )
    if found is None or (found[1], found[2]) != (chunk.topic_index, chunk.cursor):
        return False
    if chunk.messages:
        await insert_messages(conn, tx, found[0], chunk.messages, columns, chunk.broadcast)
        await conn.execute(_COUNT_NEW, chunk.broadcast, columns.channels)
    if chunk.reached and not chunk.finished:  # (once finished, `forget_reached` clears them)
        await conn.execute(
            "INSERT INTO broadcast_reached (broadcast, subscriber) "
            "SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
            chunk.broadcast,
            list(chunk.reached),
        )
    suppressed = Counter(_suppressed.decode(found[3]))
    suppressed.update(chunk.suppressed)
    await conn.execute(
        "UPDATE broadcasts SET topic_index = $2, cursor = $3, expanded = $4, "
        "examined = examined + $5, planned = planned + $6, suppressed = $7::jsonb, "
        "updated_at = $8, started_at = CASE started_at WHEN 0 THEN $8 ELSE started_at END, "
        "expanded_at = $9 WHERE id = $1",
        chunk.broadcast,
        chunk.next_topic_index,
        chunk.next_cursor,
        chunk.finished,
        chunk.examined,
        len(chunk.messages),
        _json.encode(dict(suppressed)).decode(),
        now,
        now if chunk.finished else 0,
    )
    return True


async def op_expand_again(
    conn: PoolConnection, tx: Tx, owner: int, chunk: ExpansionChunk, columns: Columns, now: int
) -> bool:
    """A chunk whose first try lost its connection, perhaps after its commit landed: if it
    did (the cursor is where the chunk moves it, its messages are there), it applied."""
    found = await conn.fetchrow(
        "SELECT topic_index, cursor FROM broadcasts WHERE id = $1 AND lease_owner = $2",
        chunk.broadcast,
        owner,
    )
    moved = found is not None and (found[0], found[1]) == (
        chunk.next_topic_index,
        chunk.next_cursor,
    )
    if moved and (
        not chunk.messages
        or await conn.fetchval(
            "SELECT EXISTS (SELECT FROM messages WHERE id = $1 AND broadcast = $2)",
            chunk.messages[0].id,
            chunk.broadcast,
        )
    ):
        return True
    return await op_expand_broadcast(conn, tx, owner, chunk, columns, now)


async def op_release_broadcasts(conn: PoolConnection, tx: Tx, owner: int) -> None:
    await conn.execute(
        "UPDATE broadcasts SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        owner,
    )


async def op_change_broadcast(
    conn: PoolConnection,
    tx: Tx,
    tenant: str,
    broadcast_id: int,
    status: BroadcastStatus,
    now: int,
) -> StatusChange | None:
    found = await conn.fetchval(
        "SELECT status FROM broadcasts WHERE id = $1 AND tenant = $2 FOR UPDATE",
        broadcast_id,
        tenant,
    )
    if found is None:
        return None
    current = BroadcastStatus(found)
    moved = 0
    if current is not BroadcastStatus.CANCELLED and current is not status:
        await conn.execute(
            "UPDATE broadcasts SET status = $2, updated_at = $3 WHERE id = $1",
            broadcast_id,
            status.value,
            now,
        )
        if status is BroadcastStatus.PAUSED:
            moved = _count(
                await conn.execute(
                    "UPDATE messages SET due_at = due_at + $2 "
                    "WHERE broadcast = $1 AND state = 1 AND due_at < $3",
                    broadcast_id,
                    HELD_DUE_MS,
                    PAUSED_DUE_MS,
                )
            )
        elif status is BroadcastStatus.RUNNING:
            # Due when they were, a retry's backoff kept; at once if that time has passed.
            released = await conn.fetch(
                # (Held at the single PAUSED_DUE_MS by an earlier version: its own time.)
                "WITH released AS (UPDATE messages SET due_at = CASE WHEN due_at = $3 "
                "THEN greatest(coalesce(not_before, 0), $2) ELSE greatest(due_at - $4, $2) END "
                "WHERE broadcast = $1 AND state = 1 AND due_at >= $3 RETURNING channel) "
                "SELECT channel, count(*) FROM released GROUP BY channel",
                broadcast_id,
                now,
                PAUSED_DUE_MS,
                HELD_DUE_MS,
            )
            for channel, n in released:
                moved += n
                # Other processes' runners sleep until told: the held messages are due now.
                tx.due[channel] = tx.due.get(channel, False)
        else:
            moved = await _cancel_queued(conn, tx, broadcast_id, now)
    record = await conn.fetchrow(_RECORD + "WHERE b.id = $1", broadcast_id)
    return StatusChange(_record(record), moved)


#: Rows of `broadcast_reached` a sweep deletes at most.
FORGET_REACHED_ROWS = 50_000


async def forget_reached(conn: PoolConnection, limit: int = FORGET_REACHED_ROWS) -> int:
    """Delete up to `limit` rows of `broadcast_reached` of broadcasts done reading (expanded
    or cancelled); a sweep's step, so that no transaction deletes millions at once."""
    return _count(
        await conn.execute(
            "DELETE FROM broadcast_reached WHERE ctid = ANY (ARRAY ("
            "SELECT r.ctid FROM broadcasts b JOIN LATERAL (SELECT ctid FROM broadcast_reached "
            "WHERE broadcast = b.id LIMIT $1) r ON true "
            "WHERE b.expanded OR b.status = 'cancelled' LIMIT $1))",
            limit,
        )
    )


async def cancel_held(conn: PoolConnection, tx: Tx, now: int) -> int:
    """Cancel the queued messages of cancelled broadcasts (those queued again after the
    cancel: a retry, a lapsed lease); return how many (a sweep's step)."""
    found = await conn.fetch(
        "SELECT DISTINCT broadcast FROM messages WHERE state = 1 AND broadcast IS NOT NULL "
        "AND broadcast IN (SELECT id FROM broadcasts WHERE status = 'cancelled')"
    )
    cancelled = 0
    for (broadcast_id,) in found:
        cancelled += await _cancel_queued(conn, tx, broadcast_id, now)
    return cancelled


async def _cancel_queued(conn: PoolConnection, tx: Tx, broadcast_id: int, now: int) -> int:
    """Cancel the broadcast's queued messages, each with its event; return how many."""
    rows = await conn.fetch(
        "WITH gone AS (UPDATE messages SET state = $2, updated_at = $3 "
        "WHERE broadcast = $1 AND state = 1 RETURNING id, channel) "
        "INSERT INTO events (message_id, at, state, channel, detail) "
        "SELECT id, $3, $2, channel, 'broadcast cancelled' FROM gone RETURNING channel",
        broadcast_id,
        _CANCELLED,
        now,
    )
    for (channel,) in rows:
        tx.deltas[channel] -= 1
    return len(rows)


def _count(status: str) -> int:
    """The row count of a command status ("UPDATE 12")."""
    return int(status.rsplit(" ", 1)[-1])


# ------------------------------------------------------------------------------------ reads


async def read_broadcast(
    conn: PoolConnection, tx: Tx, tenant: str, broadcast_id: int
) -> BroadcastRecord | None:
    row = await conn.fetchrow(_RECORD + "WHERE b.id = $1 AND b.tenant = $2", broadcast_id, tenant)
    return None if row is None else _record(row)


async def read_broadcasts(
    conn: PoolConnection, tx: Tx, tenant: str, before_id: int | None, limit: int
) -> list[BroadcastRecord]:
    rows = await conn.fetch(
        _RECORD + "WHERE b.tenant = $1 AND b.id < $2 ORDER BY b.id DESC LIMIT $3",
        tenant,
        before_id if before_id is not None else (1 << 63) - 1,
        limit,
    )
    return [_record(row) for row in rows]


async def read_broadcast_members(
    conn: PoolConnection,
    tx: Tx,
    broadcast: int,
    topic_keys: tuple[int, ...],
    index: int,
    after: int,
    limit: int,
) -> list[BroadcastMember]:
    rows = await conn.fetch(
        "SELECT s.subscriber, b.external_id, b.data, $5 AND EXISTS (SELECT FROM "
        "broadcast_reached r WHERE r.broadcast = $4 AND r.subscriber = s.subscriber) "
        "FROM subscriptions s JOIN subscribers b ON b.key = s.subscriber "
        "WHERE s.topic = $1 AND s.subscriber > $2 ORDER BY s.subscriber LIMIT $3",
        topic_keys[index],
        after,
        limit,
        broadcast,
        index > 0,
    )
    return [BroadcastMember(key, eid, data, dup) for key, eid, data, dup in rows]


def _record(row: Any) -> BroadcastRecord:
    """A row of `_RECORD`: `RECORD_COLUMNS`, then the counts."""
    counts: dict[str, dict[int, int]] = {}
    for channel, state, n in row[17]:
        counts.setdefault(channel, {})[state] = n
    return record_of(row, _suppressed.decode(row[13]), counts, row[16])
