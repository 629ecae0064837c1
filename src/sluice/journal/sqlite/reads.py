"""The SQLite journal's reads, run on the reader thread's own connection: WAL lets them
proceed while the writer commits.

Examples:
    records = read_records(conn, "WHERE id = ? AND tenant = ?", (message_id, tenant))
    due = read_next_due(conn, "sms")
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sluice.journal.base import MessageRecord, TimelineEntry
from sluice.journal.rows import (
    EVENT_COLUMNS,
    MESSAGE_COLUMNS,
    EventRow,
    RecordRow,
    message_record,
    timeline_entry,
)
from sluice.model import Priority

_PRIORITIES = tuple(int(p) for p in Priority)


def read_records(
    conn: sqlite3.Connection, where: str, params: tuple[Any, ...]
) -> list[MessageRecord]:
    rows = [
        RecordRow(*found)
        for found in conn.execute(
            f"SELECT {MESSAGE_COLUMNS}, state, updated_at, provider_id, not_before FROM messages "
            f"{where}",
            params,
        )
    ]
    if not rows:
        return []
    timelines: dict[int, list[TimelineEntry]] = {row.id: [] for row in rows}
    marks = ",".join("?" * len(timelines))
    for message_id, *event in conn.execute(
        f"SELECT message_id, {EVENT_COLUMNS} FROM events WHERE message_id IN ({marks}) "
        "ORDER BY rowid",
        list(timelines),
    ):
        timelines[message_id].append(timeline_entry(EventRow(*event)))
    return [message_record(row, timelines[row.id]) for row in rows]


def read_next_due(conn: sqlite3.Connection, channel: str) -> int | None:
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


def read_state(conn: sqlite3.Connection, name: str) -> tuple[bytes] | None:
    """The row of a component's saved state, if it saved one."""
    row: tuple[bytes] | None = conn.execute(
        "SELECT data FROM saved_state WHERE name = ?", (name,)
    ).fetchone()
    return row


def count_states(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """(state, messages in it) for every state that has any: a full scan."""
    rows: list[tuple[int, int]] = conn.execute(
        "SELECT state, COUNT(*) FROM messages GROUP BY state"
    ).fetchall()
    return rows
