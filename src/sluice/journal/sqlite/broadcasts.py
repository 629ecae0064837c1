"""Broadcasts in the SQLite journal (`journal/broadcasts.py` says what each operation means).

Tables: `broadcasts` (one row each: the spec, the cursor, the expansion's counters, the
expander's lease) and `broadcast_counts` (messages per broadcast, channel and state). A
trigger on `messages` keeps `broadcast_counts` with every change of a broadcast message's
state or channel, whichever operation makes it (claim, outcome, receipt, sweep, expiry,
cancel), in the same transaction; expansion adds its new messages itself, a statement a
chunk rather than a trigger a row. Messages of other traffic pay the trigger's WHEN test
only.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import TYPE_CHECKING, Any

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
from sluice.journal.sqlite.json_rows import json_encoder

if TYPE_CHECKING:
    from sluice.journal.sqlite.inserts import PreparedInsert
    from sluice.journal.sqlite.writer import Transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS broadcasts (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec BLOB NOT NULL,
    topic_keys BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    start_at INTEGER NOT NULL,
    audience INTEGER NOT NULL,
    topic_index INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0,
    expanded INTEGER NOT NULL DEFAULT 0,
    examined INTEGER NOT NULL DEFAULT 0,
    planned INTEGER NOT NULL DEFAULT 0,
    suppressed BLOB,
    started_at INTEGER NOT NULL DEFAULT 0,
    expanded_at INTEGER NOT NULL DEFAULT 0,
    lease_owner INTEGER,
    lease_until INTEGER
);
CREATE INDEX IF NOT EXISTS broadcasts_tenant ON broadcasts (tenant, id);
CREATE INDEX IF NOT EXISTS broadcasts_to_expand
    ON broadcasts (start_at) WHERE expanded = 0 AND status = 'running';
CREATE TABLE IF NOT EXISTS broadcast_counts (
    broadcast INTEGER NOT NULL,
    channel TEXT NOT NULL,
    state INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (broadcast, channel, state)
) WITHOUT ROWID;
-- The members a broadcast of several topics has reached, while topics remain to read.
CREATE TABLE IF NOT EXISTS broadcast_reached (
    broadcast INTEGER NOT NULL,
    subscriber INTEGER NOT NULL,
    PRIMARY KEY (broadcast, subscriber)
) WITHOUT ROWID;
"""

#: What stands on `messages.broadcast` (run once the column exists: after the migration).
ON_MESSAGES = """
CREATE INDEX IF NOT EXISTS messages_broadcast_queued
    ON messages (broadcast) WHERE state = 1 AND broadcast IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS messages_broadcast_counts
AFTER UPDATE OF state, channel ON messages
WHEN NEW.broadcast IS NOT NULL AND (OLD.state != NEW.state OR OLD.channel != NEW.channel)
BEGIN
    UPDATE broadcast_counts SET n = n - 1
        WHERE broadcast = OLD.broadcast AND channel = OLD.channel AND state = OLD.state;
    INSERT INTO broadcast_counts (broadcast, channel, state, n)
        VALUES (NEW.broadcast, NEW.channel, NEW.state, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
-- A message queued again (a retry, a lease that lapsed, a restart) while its broadcast is
-- paused or cancelled is held like the others; the sweep cancels those of a cancelled one.
DROP TRIGGER IF EXISTS messages_broadcast_held;  -- an earlier one held at one fixed time
CREATE TRIGGER messages_broadcast_held
AFTER UPDATE OF state ON messages
WHEN NEW.state = 1 AND OLD.state != 1 AND NEW.broadcast IS NOT NULL
BEGIN
    UPDATE messages SET due_at = 4611686018427387904 + due_at
        WHERE id = NEW.id AND due_at < 4611686018427387903 AND EXISTS (
            SELECT 1 FROM broadcasts WHERE id = NEW.broadcast AND status != 'running');
END;
"""

#: Rows of `broadcast_reached` a sweep deletes at most (~1 µs each on the writer).
FORGET_REACHED_ROWS = 50_000

_COLUMNS = RECORD_COLUMNS
_suppressed = msgspec.msgpack.Decoder(dict[str, int])
_keys = msgspec.msgpack.Decoder(tuple[int, ...])
_encoder = msgspec.msgpack.Encoder()


def op_create_broadcast(
    conn: sqlite3.Connection,
    tx: Transaction,
    new: NewBroadcast,
    key: str | None,
    digest: bytes | None,
    now: int,
) -> tuple[int, bool]:
    if key is not None:
        row = conn.execute(
            "SELECT digest, ids FROM idempotency WHERE tenant = ? AND key = ?",
            (new.tenant, IDEMPOTENCY_PREFIX + key),
        ).fetchone()
        if row is not None:
            if row[0] is not None and digest is not None and row[0] != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used before for a different broadcast"
                )
            return msgspec.msgpack.decode(row[1], type=list[int])[0], True
    found = {
        name: (topic_key, count)
        for name, topic_key, count in conn.execute(
            "SELECT name, key, subscribers FROM topics WHERE tenant = ? AND name IN "
            "(SELECT value FROM json_each(?))",
            (new.tenant, json_encoder.encode(list(new.topics))),
        )
    }
    missing = [name for name in new.topics if name not in found]
    if missing:
        raise UnknownTopics(missing)
    keys = [found[name][0] for name in new.topics]
    conn.execute(
        "INSERT INTO broadcasts (id, tenant, spec, topic_keys, status, created_at, updated_at, "
        "start_at, audience) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
        (
            new.id,
            new.tenant,
            new.spec,
            _encoder.encode(keys),
            now,
            now,
            new.start_at,
            sum(count for _, count in found.values()),
        ),
    )
    if key is not None:
        conn.execute(
            "INSERT INTO idempotency (tenant, key, digest, ids, created_at) VALUES (?, ?, ?, ?, ?)",
            (new.tenant, IDEMPOTENCY_PREFIX + key, digest, _encoder.encode([new.id]), now),
        )
    return new.id, False


def op_lease_broadcasts(
    conn: sqlite3.Connection, tx: Transaction, owner: int, now: int, lease_ms: int, limit: int
) -> list[int]:
    rows = conn.execute(
        "UPDATE broadcasts SET lease_owner = ?1, lease_until = ?2 WHERE id IN ("
        "SELECT id FROM broadcasts INDEXED BY broadcasts_to_expand WHERE expanded = 0 "
        "AND status = 'running' AND start_at <= ?3 AND (lease_owner IS NULL "
        "OR lease_owner = ?1 OR lease_until < ?3) ORDER BY id LIMIT ?4) RETURNING id",
        (owner, now + lease_ms, now, limit),
    ).fetchall()
    return sorted(row[0] for row in rows)


def op_expand_broadcast(
    conn: sqlite3.Connection,
    tx: Transaction,
    owner: int,
    chunk: ExpansionChunk,
    prepared: PreparedInsert,
    now: int,
) -> bool:
    found = conn.execute(
        "SELECT topic_index, cursor, suppressed FROM broadcasts WHERE id = ? "
        "AND status = 'running' AND expanded = 0 AND lease_owner = ?",
        (chunk.broadcast, owner),
    ).fetchone()
    if found is None or (found[0], found[1]) != (chunk.topic_index, chunk.cursor):
        return False
    for sql, params in prepared.statements:
        conn.execute(sql, params)
    by_channel: Counter[str] = Counter(m.channel for m in chunk.messages)
    conn.executemany(
        "INSERT INTO broadcast_counts (broadcast, channel, state, n) VALUES (?, ?, 1, ?) "
        "ON CONFLICT DO UPDATE SET n = n + excluded.n",
        [(chunk.broadcast, channel, n) for channel, n in by_channel.items()],
    )
    if chunk.reached and not chunk.finished:  # (once finished, `forget_reached` clears them)
        conn.execute(
            "INSERT OR IGNORE INTO broadcast_reached (broadcast, subscriber) "
            "SELECT ?, value FROM json_each(?)",
            (chunk.broadcast, json_encoder.encode(chunk.reached)),
        )
    suppressed = Counter(_suppressed.decode(found[2]) if found[2] else {})
    suppressed.update(chunk.suppressed)
    conn.execute(
        "UPDATE broadcasts SET topic_index = ?, cursor = ?, expanded = ?, "
        "examined = examined + ?, planned = planned + ?, suppressed = ?, updated_at = ?, "
        "started_at = CASE started_at WHEN 0 THEN ? ELSE started_at END, expanded_at = ? "
        "WHERE id = ?",
        (
            chunk.next_topic_index,
            chunk.next_cursor,
            int(chunk.finished),
            chunk.examined,
            len(chunk.messages),
            _encoder.encode(dict(suppressed)) if suppressed else None,
            now,
            now,
            now if chunk.finished else 0,
            chunk.broadcast,
        ),
    )
    tx.deltas.update(prepared.counts)
    tx.index_pairs.extend(prepared.pairs)
    return True


def op_release_broadcasts(conn: sqlite3.Connection, tx: Transaction, owner: int) -> None:
    conn.execute(
        "UPDATE broadcasts SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
        (owner,),
    )


def op_change_broadcast(
    conn: sqlite3.Connection,
    tx: Transaction,
    tenant: str,
    broadcast_id: int,
    status: BroadcastStatus,
    now: int,
) -> StatusChange | None:
    found = conn.execute(
        "SELECT status FROM broadcasts WHERE id = ? AND tenant = ?", (broadcast_id, tenant)
    ).fetchone()
    if found is None:
        return None
    current = BroadcastStatus(found[0])
    moved = 0
    if current is not BroadcastStatus.CANCELLED and current is not status:
        conn.execute(
            "UPDATE broadcasts SET status = ?, updated_at = ? WHERE id = ?",
            (status.value, now, broadcast_id),
        )
        if status is BroadcastStatus.PAUSED:
            moved = conn.execute(
                "UPDATE messages SET due_at = due_at + ? "
                "WHERE broadcast = ? AND state = 1 AND due_at < ?",
                (HELD_DUE_MS, broadcast_id, PAUSED_DUE_MS),
            ).rowcount
        elif status is BroadcastStatus.RUNNING:
            # Due when they were, a retry's backoff kept; at once if that time has passed.
            # (Held at the single PAUSED_DUE_MS by an earlier version: due at its own time.)
            moved = conn.execute(
                "UPDATE messages SET due_at = CASE WHEN due_at = ?4 "
                "THEN max(coalesce(not_before, 0), ?2) ELSE max(due_at - ?1, ?2) END "
                "WHERE broadcast = ?3 AND state = 1 AND due_at >= ?4",
                (HELD_DUE_MS, now, broadcast_id, PAUSED_DUE_MS),
            ).rowcount
        else:
            moved = _cancel_queued(conn, tx, broadcast_id, now)
    record = read_broadcast(conn, tenant, broadcast_id)
    assert record is not None
    return StatusChange(record, moved)


def forget_reached(conn: sqlite3.Connection, limit: int = FORGET_REACHED_ROWS) -> int:
    """Delete up to `limit` rows of `broadcast_reached` of broadcasts done reading (expanded
    or cancelled); a sweep's step. In steps, not in the transaction that finishes: the
    members of a 10 M broadcast are seconds of deleting, and the writer serves everyone."""
    done = conn.execute(
        "SELECT id FROM broadcasts WHERE (expanded = 1 OR status = 'cancelled') "
        "AND EXISTS (SELECT 1 FROM broadcast_reached r WHERE r.broadcast = broadcasts.id) "
        "LIMIT 16"
    ).fetchall()
    deleted = 0
    for (broadcast_id,) in done:
        deleted += conn.execute(
            "DELETE FROM broadcast_reached WHERE broadcast = ?1 AND subscriber IN "
            "(SELECT subscriber FROM broadcast_reached WHERE broadcast = ?1 LIMIT ?2)",
            (broadcast_id, limit - deleted),
        ).rowcount
        if deleted >= limit:
            break
    return deleted


def cancel_held(conn: sqlite3.Connection, tx: Transaction, now: int) -> int:
    """Cancel the queued messages of cancelled broadcasts (those queued again after the
    cancel: a retry, a lapsed lease); return how many (a sweep's step)."""
    found = conn.execute(
        "SELECT DISTINCT broadcast FROM messages INDEXED BY messages_broadcast_queued "
        "WHERE state = 1 AND broadcast IS NOT NULL AND broadcast IN "
        "(SELECT id FROM broadcasts WHERE status = 'cancelled')"
    ).fetchall()
    return sum(_cancel_queued(conn, tx, broadcast_id, now) for (broadcast_id,) in found)


def _cancel_queued(conn: sqlite3.Connection, tx: Transaction, broadcast_id: int, now: int) -> int:
    """Cancel the broadcast's queued messages, each with its event; return how many."""
    rows = conn.execute(
        "SELECT id, channel FROM messages INDEXED BY messages_broadcast_queued "
        "WHERE broadcast = ? AND state = 1",
        (broadcast_id,),
    ).fetchall()
    if not rows:
        return 0
    ids = json_encoder.encode([row[0] for row in rows])
    conn.execute(
        "UPDATE messages SET state = 7, updated_at = ? "
        "WHERE id IN (SELECT value FROM json_each(?))",
        (now, ids),
    )
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, detail) "
        "SELECT id, ?, 7, channel, 'broadcast cancelled' FROM messages "
        "WHERE id IN (SELECT value FROM json_each(?))",
        (now, ids),
    )
    for _, channel in rows:
        tx.deltas[channel] -= 1
    return len(rows)


def read_broadcast(
    conn: sqlite3.Connection, tenant: str | None, broadcast_id: int
) -> BroadcastRecord | None:
    if tenant is None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM broadcasts WHERE id = ?", (broadcast_id,)
        ).fetchone()
    else:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM broadcasts WHERE id = ? AND tenant = ?",
            (broadcast_id, tenant),
        ).fetchone()
    if row is None:
        return None
    return _record(row, _counts(conn, [broadcast_id]).get(broadcast_id, {}))


def read_broadcasts(
    conn: sqlite3.Connection, tenant: str, before_id: int | None, limit: int
) -> list[BroadcastRecord]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM broadcasts WHERE tenant = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (tenant, before_id if before_id is not None else (1 << 63) - 1, limit),
    ).fetchall()
    counts = _counts(conn, [row[0] for row in rows])
    return [_record(row, counts.get(row[0], {})) for row in rows]


def read_broadcast_members(
    conn: sqlite3.Connection,
    broadcast: int,
    topic_keys: tuple[int, ...],
    index: int,
    after: int,
    limit: int,
) -> list[BroadcastMember]:
    if index == 0:
        rows = conn.execute(
            "SELECT s.subscriber, b.external_id, b.data, 0 FROM subscriptions s "
            "JOIN subscribers b ON b.key = s.subscriber "
            "WHERE s.topic = ? AND s.subscriber > ? ORDER BY s.subscriber LIMIT ?",
            (topic_keys[index], after, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT s.subscriber, b.external_id, b.data, EXISTS (SELECT 1 FROM "
            "broadcast_reached r WHERE r.broadcast = ? AND r.subscriber = s.subscriber) "
            "FROM subscriptions s JOIN subscribers b ON b.key = s.subscriber "
            "WHERE s.topic = ? AND s.subscriber > ? ORDER BY s.subscriber LIMIT ?",
            (broadcast, topic_keys[index], after, limit),
        ).fetchall()
    return [BroadcastMember(key, eid, data, bool(dup)) for key, eid, data, dup in rows]


def _counts(conn: sqlite3.Connection, ids: list[int]) -> dict[int, dict[str, dict[int, int]]]:
    counts: dict[int, dict[str, dict[int, int]]] = {}
    if not ids:
        return counts
    for broadcast, channel, state, n in conn.execute(
        "SELECT broadcast, channel, state, n FROM broadcast_counts "
        "WHERE broadcast IN (SELECT value FROM json_each(?)) AND n != 0",
        (json_encoder.encode(ids),),
    ):
        counts.setdefault(broadcast, {}).setdefault(channel, {})[state] = n
    return counts


def _record(row: Any, counts: dict[str, dict[int, int]]) -> BroadcastRecord:
    suppressed = _suppressed.decode(row[13]) if row[13] else {}
    return record_of(row, suppressed, counts, _keys.decode(row[16]))
