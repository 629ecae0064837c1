"""The SQLite journal's upkeep: recovery at open, leases, sweeps, expiry, failover, cancels
and the components' saved state.

Examples:
    op_recover(conn, tx)                            # once, as the journal opens
    result = op_sweep(conn, tx, now, 86_400_000)    # leases expired, messages expired, keys
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from sluice.journal.base import EARLY_RECEIPT_TTL_MS, CancelResult, SweepResult
from sluice.journal.rows import CallbackRow
from sluice.journal.sqlite import broadcasts
from sluice.journal.sqlite.callbacks import add_callback
from sluice.model import State, now_ms

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction

log = logging.getLogger("sluice.journal")

_QUEUED = int(State.QUEUED)
_SENDING = int(State.SENDING)


def op_recover(conn: sqlite3.Connection, tx: Transaction) -> None:
    """At start: return orphaned claims (and broadcast leases) and rebuild the pending
    counts."""
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
    # One process holds an SQLite journal: a broadcast's expander lease is a previous run's,
    # and that run is over. Its broadcasts resume at once, not when the lease would lapse.
    conn.execute(
        "UPDATE broadcasts SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL"
    )
    (tx.shared.early_receipts,) = conn.execute("SELECT COUNT(*) FROM early_receipts").fetchone()
    # Nothing is `sending` now and nothing stays `accepted` past its insert, so the pending
    # messages are the queued ones: counted from the small partial index, not the table.
    counts = conn.execute(
        "SELECT channel, COUNT(*) FROM messages INDEXED BY messages_due WHERE state = 1 "
        "GROUP BY channel"
    ).fetchall()
    tx.deltas.update(dict(counts))


def op_renew(conn: sqlite3.Connection, tx: Transaction, owner: int, until: int, ids: bytes) -> int:
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


def op_release(conn: sqlite3.Connection, tx: Transaction, owner: int, now: int) -> int:
    return _requeue(conn, "lease_owner = ?", (owner,), now, "released at shutdown")


def op_sweep(
    conn: sqlite3.Connection, tx: Transaction, now: int, idempotency_ttl_ms: int
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
    expired = expire(conn, tx, expiring, now)
    broadcasts.cancel_held(conn, tx, now)
    broadcasts.forget_reached(conn)
    forgotten = conn.execute(
        "DELETE FROM idempotency WHERE created_at < ?", (now - idempotency_ttl_ms,)
    ).rowcount
    # Receipts for ids we never sent (another system's, or lost) are not kept for ever.
    conn.execute("DELETE FROM early_receipts WHERE at < ?", (now - EARLY_RECEIPT_TTL_MS,))
    (tx.shared.early_receipts,) = conn.execute("SELECT COUNT(*) FROM early_receipts").fetchone()
    return SweepResult(reclaimed, expired, forgotten)


def expire(conn: sqlite3.Connection, tx: Transaction, ids: list[int], now: int) -> int:
    done = 0
    detail = "expired before it could be sent"
    for mid in ids:
        found = conn.execute(
            "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE id = ? AND state IN (0, 1) "
            "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
            (int(State.EXPIRED), now, mid),
        ).fetchone()
        if found is None:
            continue
        done += 1
        row: CallbackRow[bytes] = CallbackRow(mid, *found)
        conn.execute(
            "INSERT INTO events (message_id, at, state, channel, detail) VALUES (?, ?, ?, ?, ?)",
            (mid, now, int(State.EXPIRED), row.channel, detail),
        )
        tx.deltas[row.channel] -= 1
        add_callback(conn, row, State.EXPIRED, now, None, detail)
    return done


def op_reroute(
    conn: sqlite3.Connection, tx: Transaction, src: str, dst: str, limit: int, now: int
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


def op_cancel(
    conn: sqlite3.Connection, tx: Transaction, tenant: str, mid: int, now: int
) -> CancelResult:
    found = conn.execute(
        "SELECT state, channel, recipient, attempts, callback_url, metadata FROM messages "
        "WHERE id = ? AND tenant = ?",
        (mid, tenant),
    ).fetchone()
    if found is None:
        return CancelResult.NOT_FOUND
    state, channel, recipient, attempts, callback_url, metadata = found
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
    row: CallbackRow[bytes] = CallbackRow(
        mid, tenant, channel, recipient, attempts, callback_url, metadata
    )
    add_callback(conn, row, State.CANCELLED, now, None, "cancelled by the producer")
    return CancelResult.CANCELLED


def op_save_state(
    conn: sqlite3.Connection, tx: Transaction, name: str, data: bytes, now: int
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO saved_state (name, data, saved_at) VALUES (?, ?, ?)",
        (name, data, now),
    )
