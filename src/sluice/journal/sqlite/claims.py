"""A runner's side of the SQLite journal: claim due messages, then complete them.

`op_claim` leases the due messages of a channel, urgent first; `op_complete` applies their
outcomes in three parts: messages to try again (requeued), messages sent or failed (settled,
the bulk of a busy channel) and messages delivered (a receipt that overtook its own outcome).
Their statements pass rows as one JSON value each way (see json_rows.py for why).

Examples:
    claimed = op_claim(conn, tx, "sms", 100, 50, owner, now, 30_000)
    callbacks = op_complete(conn, tx, owner, completions)
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from sluice.journal.base import Completion, Receipt
from sluice.journal.multirow import chunk_sizes, insert_sql
from sluice.journal.rows import CallbackRow, row_to_message
from sluice.journal.sqlite.callbacks import add_final_callback
from sluice.journal.sqlite.json_rows import callback_rows, json_encoder, message_rows
from sluice.journal.sqlite.receipts import apply_receipt
from sluice.journal.sqlite.upkeep import expire
from sluice.model import Message, Priority, State, now_ms

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction

_SENDING = int(State.SENDING)


def _lane(priority: int, limit: str) -> str:
    return (
        "SELECT * FROM (SELECT * FROM messages INDEXED BY messages_due WHERE state = 1 AND "
        f"channel = ?1 AND priority = {priority} AND due_at <= ?2 ORDER BY due_at LIMIT {limit})"
    )


#: ?1 channel, ?2 now, ?3 limit, ?4 limit of the lanes below urgent: the due messages as
#: `MessageRow[str]`, urgent first, each lane oldest first.
_CLAIM_SELECT = (
    "SELECT json_group_array(json_array(id, tenant, channel, recipient, body, sender, priority, "
    "due_at, expires_at, callback_url, hex(metadata), attempts)) FROM ("
    f"{_lane(Priority.URGENT, '?3')} UNION ALL SELECT * FROM (SELECT * FROM ("
    + " UNION ALL ".join(_lane(p, "?4") for p in Priority if p != Priority.URGENT)
    + ") LIMIT ?4) LIMIT ?3)"
)
#: ?1 a JSON array of [id, …] arrays, ?2 the lease owner: the `CallbackRow[str]` of those
#: still leased by the owner.
_LEASED_SELECT = (
    "SELECT json_group_array(json_array(id, tenant, channel, recipient, attempts, callback_url, "
    "hex(metadata))) FROM messages WHERE id IN (SELECT value ->> 0 FROM json_each(?1)) "
    "AND state = 2 AND lease_owner = ?2"
)
#: ?1 [[id, state, provider_id], …], ?2 now, ?3 owner.
_SETTLE_UPDATE = (
    "UPDATE messages SET state = v.value ->> 1, provider_id = v.value ->> 2, "
    "lease_owner = NULL, lease_until = NULL, updated_at = ?2 FROM json_each(?1) AS v "
    "WHERE messages.id = v.value ->> 0 AND messages.state = 2 AND messages.lease_owner = ?3"
)
#: ?1 [[id, due_at, channel, attempts to take back], …], ?2 now, ?3 owner.
_REQUEUE_UPDATE = (
    "UPDATE messages SET state = 1, due_at = v.value ->> 1, channel = v.value ->> 2, "
    "attempts = messages.attempts - (v.value ->> 3), lease_owner = NULL, lease_until = NULL, "
    "updated_at = ?2 FROM json_each(?1) AS v "
    "WHERE messages.id = v.value ->> 0 AND messages.state = 2 AND messages.lease_owner = ?3"
)


def op_claim(
    conn: sqlite3.Connection,
    tx: Transaction,
    channel: str,
    limit: int,
    non_urgent_limit: int,
    owner: int,
    now: int,
    lease_ms: int,
) -> list[Message]:
    # Every lane in one step, urgent first; the lower lanes share `non_urgent_limit`.
    (found,) = conn.execute(
        _CLAIM_SELECT, (channel, now, limit, min(limit, non_urgent_limit))
    ).fetchone()
    rows = message_rows.decode(found)
    if not rows:
        return []
    live: list[Message] = []
    expired: list[int] = []
    for row in rows:
        expires_at = row.expires_at
        if expires_at is not None and expires_at <= now:
            expired.append(row.id)
        else:
            live.append(row_to_message(row))
    if live:
        ids = json_encoder.encode([m.id for m in live])
        conn.execute(
            "UPDATE messages SET state = 2, lease_owner = ?1, lease_until = ?2, "
            "attempts = attempts + 1, updated_at = ?3 "
            "WHERE id IN (SELECT value FROM json_each(?4))",
            (owner, now + lease_ms, now, ids),
        )
        conn.execute(
            "INSERT INTO events (message_id, at, state, channel, attempt) "
            "SELECT id, ?1, 2, channel, attempts FROM messages "
            "WHERE id IN (SELECT value FROM json_each(?2))",
            (now, ids),
        )
        for m in live:
            m.attempts += 1
    if expired:
        expire(conn, tx, expired, now)
    return live


def op_complete(
    conn: sqlite3.Connection, tx: Transaction, owner: int, completions: list[Completion]
) -> int:
    """Apply outcomes; return how many status callbacks were queued."""
    now = now_ms()
    events: list[Completion] = []
    parts: list[Any] = []
    tracked: list[Completion] = []
    settling: list[Completion] = []
    requeuing: list[Completion] = []
    delivered: list[Completion] = []
    for c in completions:
        if c.state == State.QUEUED:
            requeuing.append(c)
        elif c.state == State.DELIVERED:
            delivered.append(c)
        else:  # SENT or FAILED from SENDING: the bulk of a busy channel
            settling.append(c)
    callbacks = 0
    if requeuing:
        _complete_requeued(conn, tx, owner, now, requeuing, events)
    if settling:
        callbacks += _complete_settled(conn, tx, owner, now, settling, events, parts, tracked)
    if delivered:
        callbacks += _complete_delivered(conn, tx, now, delivered, events)
    if events:
        conn.execute(_EVENTS_FROM_COMPLETIONS, (now, json_encoder.encode(events)))
    _insert_rows(conn, _PARTS_INSERT, 5, parts)
    if tx.shared.early_receipts:
        _apply_early_receipts(conn, tx, tracked, now)
    return callbacks


def _complete_requeued(
    conn: sqlite3.Connection,
    tx: Transaction,
    owner: int,
    now: int,
    requeuing: list[Completion],
    events: list[Completion],
) -> None:
    """Messages to try again (later, or on the channel they are rerouted to); those still
    leased by `owner` are added to `events`."""
    keys = json_encoder.encode(
        [
            (c.message_id, c.due_at, c.reroute_to or c.channel, 1 if c.uncount else 0)
            for c in requeuing
        ]
    )
    leased = _leased(conn, keys, owner)
    conn.execute(_REQUEUE_UPDATE, (keys, now, owner))
    for c in requeuing:
        if c.message_id not in leased:  # lost its lease (swept, or completed twice)
            continue
        if c.reroute_to and c.reroute_to != c.channel:
            tx.deltas[c.channel] -= 1
            tx.deltas[c.reroute_to] += 1
        events.append(c)


def _complete_settled(
    conn: sqlite3.Connection,
    tx: Transaction,
    owner: int,
    now: int,
    settling: list[Completion],
    events: list[Completion],
    parts: list[Any],
    tracked: list[Completion],
) -> int:
    """Messages sent or failed: those still leased by `owner` are added to `events`, the
    provider ids of sent ones to `parts` (flattened provider_parts rows) and the messages
    themselves to `tracked`. Returns how many status callbacks were queued."""
    callbacks = 0
    keys = json_encoder.encode([(c.message_id, int(c.state), c.provider_id) for c in settling])
    leased = _leased(conn, keys, owner)
    conn.execute(_SETTLE_UPDATE, (keys, now, owner))
    for c in settling:
        row = leased.get(c.message_id)
        if row is None:
            continue
        tx.deltas[row.channel] -= 1
        callbacks += add_final_callback(conn, c, row, now)
        if c.parts and c.state == State.SENT:
            n = len(c.parts)
            for i, pid in enumerate(c.parts):
                parts += (c.channel, pid, c.message_id, i, n)
            tracked.append(c)
        events.append(c)
    return callbacks


def _complete_delivered(
    conn: sqlite3.Connection,
    tx: Transaction,
    now: int,
    delivered: list[Completion],
    events: list[Completion],
) -> int:
    """Messages delivered, from SENT or SENDING: those found are added to `events`. Returns
    how many status callbacks were queued."""
    callbacks = 0
    for c in delivered:
        # A receipt can overtake the commit of its own SENT outcome: from SENDING too.
        found = conn.execute(
            "SELECT tenant, channel, recipient, attempts, callback_url, metadata, state "
            "FROM messages WHERE id = ? AND state IN (2, 3)",
            (c.message_id,),
        ).fetchone()
        if found is None:
            continue
        *columns, state = found
        row: CallbackRow[bytes] = CallbackRow(c.message_id, *columns)
        conn.execute(
            "UPDATE messages SET state = ?, lease_owner = NULL, lease_until = NULL, "
            "provider_id = COALESCE(provider_id, ?), updated_at = ? WHERE id = ?",
            (int(c.state), c.provider_id, now, c.message_id),
        )
        if state == _SENDING:
            tx.deltas[row.channel] -= 1
        callbacks += add_final_callback(conn, c, row, now)
        events.append(c)
    return callbacks


def _apply_early_receipts(
    conn: sqlite3.Connection, tx: Transaction, tracked: list[Completion], now: int
) -> None:
    """Apply the receipts kept in `early_receipts` for the parts of `tracked`."""
    for c in tracked:  # receipts that arrived before this commit
        for pid in c.parts:
            early = conn.execute(
                "DELETE FROM early_receipts WHERE channel = ? AND provider_id = ? "
                "RETURNING delivered, detail",
                (c.channel, pid),
            ).fetchone()
            if early is not None:
                tx.shared.early_receipts -= 1
                apply_receipt(conn, tx, c.channel, Receipt(pid, bool(early[0]), early[1]), now)


def _leased(conn: sqlite3.Connection, keys: bytes, owner: int) -> dict[int, CallbackRow[str]]:
    """The messages of `keys` (a JSON array of [id, …]) still leased by `owner`, by id."""
    (found,) = conn.execute(_LEASED_SELECT, (keys, owner)).fetchone()
    return {row.id: row for row in callback_rows.decode(found)}


#: ?1 now, ?2 a JSON array of Completion (array_like: message_id, state, channel, attempt,
#: outcome, latency_ms, provider_id, detail, …).
_EVENTS_FROM_COMPLETIONS = (
    "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
    "latency_ms, detail) SELECT value ->> 0, ?1, value ->> 1, value ->> 2, value ->> 3, "
    "value ->> 4, value ->> 6, value ->> 5, value ->> 7 FROM json_each(?2)"
)
_PARTS_INSERT = (
    "INSERT OR REPLACE INTO provider_parts (channel, provider_id, message_id, part, parts) VALUES "
)


#: Rows per INSERT of the provider_parts of a batch of outcomes (journal/multirow.py): five
#: values a row, 2,560 a statement. (A claim's UPDATE and events take their ids as one JSON
#: parameter, whatever their number.)
_MAX_PARTS_ROWS = 512


def _insert_rows(conn: sqlite3.Connection, head: str, width: int, values: list[Any]) -> None:
    """Insert flattened rows of `width` values with one statement per chunk (multirow.py)."""
    row = "(" + ",".join("?" * width) + ")"
    start = 0
    for rows in chunk_sizes(len(values) // width, _MAX_PARTS_ROWS):
        end = start + rows * width
        conn.execute(insert_sql(head, row, row, rows), values[start:end])
        start = end
