"""Reads: a message with its timeline, a recipient's history, the next due time; and the
statements the journal runs as they are."""

from __future__ import annotations

from typing import Any

import asyncpg

from sluice.journal.base import MessageRecord
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.rows import (
    EVENT_COLUMNS,
    MESSAGE_COLUMNS,
    EventRow,
    RecordRow,
    message_record,
    timeline_entry,
)
from sluice.model import Priority


async def op_fetch(conn: PoolConnection, tx: Tx, sql: str, *args: Any) -> list[Any]:
    return list(await conn.fetch(sql, *args))


async def op_fetchrow(conn: PoolConnection, tx: Tx, sql: str, *args: Any) -> Any:
    return await conn.fetchrow(sql, *args)


#: A message and its events in one row: one round trip for a page of history.
_RECORD_COLUMNS = (
    f"{', '.join('m.' + c for c in MESSAGE_COLUMNS.split(', '))}, m.state, m.updated_at, "
    "m.provider_id, m.not_before, ARRAY(SELECT ROW("
    + ", ".join("e." + c for c in EVENT_COLUMNS.split(", "))
    + ") FROM events e WHERE e.message_id = m.id ORDER BY e.seq)"
)


async def op_read_records(
    conn: PoolConnection, tx: Tx, where: str, params: tuple[Any, ...]
) -> list[MessageRecord]:
    rows = await conn.fetch(f"SELECT {_RECORD_COLUMNS} FROM messages m {where}", *params)
    return [_record(row) for row in rows]


def _record(found: asyncpg.Record) -> MessageRecord:
    """A row of `_RECORD_COLUMNS`: the `RecordRow`, then its events (bytea arrives as bytes)."""
    *columns, events = found
    row: RecordRow = RecordRow(*columns)
    return message_record(row, [timeline_entry(EventRow(*e)) for e in events])


async def op_next_due(conn: PoolConnection, tx: Tx, channel: str) -> int | None:
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
