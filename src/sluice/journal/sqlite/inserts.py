"""The producers' write in the SQLite journal: new messages, prepared on the caller's thread.

Examples:
    prepared = prepare_insert("acme", messages)                  # on the event loop
    result = op_insert(conn, tx, "acme", prepared, key, digest)  # on the writer thread
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec

from sluice.journal.base import IdempotencyConflict, SubmitResult
from sluice.journal.multirow import statements
from sluice.journal.recipient_index import recipient_key
from sluice.journal.rows import encode_metadata
from sluice.model import Message, now_ms

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction


#: Rows per INSERT of messages (journal/multirow.py): at most 11 values a row, 11,264 a statement.
_MAX_CHUNK_ROWS = 1024
_INSERT_HEAD = (
    "INSERT INTO messages (id, tenant, channel, recipient, sender, body, priority, state, "
    "due_at, not_before, expires_at, callback_url, metadata, updated_at) VALUES "
)
#: A row's values after ?1 (the tenant) and ?2 (the time of the insert), in two shapes: the
#: common one (no sender, schedule, expiry, callback or metadata) binds 5 values a row.
_PLAIN_WIDTH = 5
_PLAIN_ROWS = (
    "(?3,?1,?4,?5,NULL,?6,?7,1,?2,NULL,NULL,NULL,NULL,?2)",
    "(?,?1,?,?,NULL,?,?,1,?2,NULL,NULL,NULL,NULL,?2)",
)
_FULL_WIDTH = 11
_FULL_ROWS = (
    "(?3,?1,?4,?5,?6,?7,?8,1,?9,?10,?11,?12,?13,?2)",
    "(?,?1,?,?,?,?,?,1,?,?,?,?,?,?2)",
)
#: A broadcast's messages: ?3 the broadcast's id on every row. Those due at once share their
#: sender (?4), expiry (?5) and metadata (?6), bound once a statement, and bind 5 values a row
#: (binding is most of the writer's cost per row: 8.6 µs of the writer a message, against 15
#: with the full shape, 1,000-message chunks); the others (a due time of their own, an
#: email's subject in their metadata) take the full shape.
_BROADCAST_HEAD = _INSERT_HEAD.replace("updated_at)", "updated_at, broadcast)")
_SHARED_ROWS = (
    "(?7,?1,?8,?9,?4,?10,?11,1,?2,NULL,?5,NULL,?6,?2,?3)",
    "(?,?1,?,?,?4,?,?,1,?2,NULL,?5,NULL,?6,?2,?3)",
)
_BROADCAST_FULL_ROWS = (
    "(?4,?1,?5,?6,?7,?8,?9,1,?10,?11,?12,?13,?14,?2,?3)",
    "(?,?1,?,?,?,?,?,1,?,?,?,?,?,?2,?3)",
)


class PreparedInsert(msgspec.Struct):
    """An insert prepared on the caller's thread, so the writer only binds and steps: a few
    multi-row INSERTs (journal/multirow.py) with their values."""

    statements: list[tuple[str, list[Any]]]
    ids: list[int]
    pairs: list[tuple[int, int]]
    counts: dict[str, int]
    #: A `time.monotonic()` value: the writer skips the insert if its group begins later.
    deadline: float | None = None


def prepare_insert(
    tenant: str,
    messages: list[Message],
    deadline: float | None = None,
    *,
    broadcast: int | None = None,
) -> PreparedInsert:
    """The statements inserting `messages` (those of `broadcast`, when given)."""
    now = now_ms()
    if broadcast is not None:
        statements = _broadcast_statements(tenant, now, broadcast, messages)
    elif not any(
        m.sender is not None
        or m.not_before is not None
        or m.expires_at is not None
        or m.callback_url is not None
        or m.metadata
        for m in messages
    ):
        statements = _statements(
            _INSERT_HEAD, _PLAIN_ROWS, [tenant, now], _plain_values(messages), _PLAIN_WIDTH
        )
    else:
        statements = _statements(
            _INSERT_HEAD, _FULL_ROWS, [tenant, now], _full_values(messages, now), _FULL_WIDTH
        )
    counts: Counter[str] = Counter(m.channel for m in messages)
    pairs = [(recipient_key(tenant, m.recipient), m.id) for m in messages]
    return PreparedInsert(statements, [m.id for m in messages], pairs, dict(counts), deadline)


def _broadcast_statements(
    tenant: str, now: int, broadcast: int, messages: list[Message]
) -> list[tuple[str, list[Any]]]:
    if not messages:
        return []
    lead = messages[0]
    shared: list[Message] = []
    own: list[Message] = []
    for m in messages:
        if (
            m.not_before is None
            and m.callback_url is None
            and m.sender == lead.sender
            and m.expires_at == lead.expires_at
            and m.metadata == lead.metadata
        ):
            shared.append(m)
        else:
            own.append(m)
    fixed = [tenant, now, broadcast, lead.sender, lead.expires_at, encode_metadata(lead.metadata)]
    statements = _statements(
        _BROADCAST_HEAD, _SHARED_ROWS, fixed, _plain_values(shared), _PLAIN_WIDTH
    )
    if own:
        statements += _statements(
            _BROADCAST_HEAD,
            _BROADCAST_FULL_ROWS,
            [tenant, now, broadcast],
            _full_values(own, now),
            _FULL_WIDTH,
        )
    return statements


def _plain_values(messages: list[Message]) -> list[Any]:
    values: list[Any] = []
    for m in messages:
        values += (m.id, m.channel, m.recipient, m.body, m.priority)
    return values


def _full_values(messages: list[Message], now: int) -> list[Any]:
    values: list[Any] = []
    for m in messages:
        values += (
            m.id,
            m.channel,
            m.recipient,
            m.sender,
            m.body,
            m.priority,
            m.not_before or now,
            m.not_before,
            m.expires_at,
            m.callback_url,
            encode_metadata(m.metadata),
        )
    return values


def _statements(
    head: str, shape: tuple[str, str], fixed: list[Any], values: list[Any], width: int
) -> list[tuple[str, list[Any]]]:
    return statements(head, shape, fixed, values, width, _MAX_CHUNK_ROWS)


def op_insert(
    conn: sqlite3.Connection,
    tx: Transaction,
    tenant: str,
    prepared: PreparedInsert,
    key: str | None,
    digest: bytes | None,
) -> SubmitResult | None:
    """Store the messages, or return None without writing anything when the insert's deadline
    has passed (its caller raises DeadlinePassed): checked here, on the writer thread, just
    before the statements run, so a request that waited out a long queue is never committed
    after its producer gave up."""
    if prepared.deadline is not None and time.monotonic() > prepared.deadline:
        return None
    if key is not None:
        row = conn.execute(
            "SELECT digest, ids FROM idempotency WHERE tenant = ? AND key = ?", (tenant, key)
        ).fetchone()
        if row is not None:
            if row[0] is not None and digest is not None and row[0] != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was used before for a different request"
                )
            return SubmitResult(msgspec.msgpack.decode(row[1], type=list[int]), True)
    for sql, params in prepared.statements:
        conn.execute(sql, params)
    if key is not None:
        conn.execute(
            "INSERT INTO idempotency (tenant, key, digest, ids, created_at) VALUES (?, ?, ?, ?, ?)",
            (tenant, key, digest, msgspec.msgpack.encode(prepared.ids), now_ms()),
        )
    tx.deltas.update(prepared.counts)
    tx.index_pairs.extend(prepared.pairs)
    return SubmitResult(prepared.ids, False)
