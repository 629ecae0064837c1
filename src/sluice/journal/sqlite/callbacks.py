"""The status callbacks' outbox in the SQLite journal: queued by the writer's operations as
messages reach a final state, claimed and finished by the callback sender.

Examples:
    add_final_callback(conn, completion, row, now)   # 1 if the message has a callback URL
    add_callback(conn, row, State.EXPIRED, now, None, "expired before it could be sent")
    jobs = op_claim_callbacks(conn, tx, 100, now, 60_000)
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sluice.journal.base import CallbackJob, Completion
from sluice.journal.rows import Blob, CallbackRow, callback_payload, final_callback
from sluice.model import State

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction


def add_callback(
    conn: sqlite3.Connection,
    row: CallbackRow[Blob],
    state: State,
    now: int,
    provider_id: str | None,
    detail: str | None,
) -> int:
    """Queue the status callback of a message that reached `state`, if it has a URL.
    Returns 0 or 1."""
    url = row.callback_url
    if not url:
        return 0
    payload = callback_payload(row, state, now, provider_id, detail)
    conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) VALUES (?, ?, ?, ?)",
        (row.id, url, payload, now),
    )
    return 1


def add_final_callback(
    conn: sqlite3.Connection, c: Completion, row: CallbackRow[Blob], now: int
) -> int:
    """Queue the status callback of a message that reached a final state, if it has a URL.
    Returns 0 or 1."""
    callback = final_callback(c, row, now)
    if callback is None:
        return 0
    url, payload = callback
    conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) VALUES (?, ?, ?, ?)",
        (c.message_id, url, payload, now),
    )
    return 1


def op_claim_callbacks(
    conn: sqlite3.Connection, tx: Transaction, limit: int, now: int, lease_ms: int
) -> list[CallbackJob]:
    rows = conn.execute(
        "UPDATE callbacks SET due_at = ?, attempts = attempts + 1 WHERE id IN ("
        "SELECT id FROM callbacks WHERE due_at <= ? ORDER BY due_at LIMIT ?) "
        "RETURNING id, message_id, url, payload, attempts",
        (now + lease_ms, now, limit),
    ).fetchall()
    return [CallbackJob(*row) for row in rows]


def op_finish_callbacks(
    conn: sqlite3.Connection,
    tx: Transaction,
    done: list[int],
    retry: list[tuple[int, int]],
    dropped: list[int],
) -> None:
    conn.executemany("DELETE FROM callbacks WHERE id = ?", [(i,) for i in (*done, *dropped)])
    conn.executemany("UPDATE callbacks SET due_at = ? WHERE id = ?", [(d, i) for i, d in retry])
