"""Inserts: a batch of messages (with its idempotency key) and the saved state of components.

A batch travels as arrays (`unnest`), so an insert of 1,000 messages is one statement. An
insert is safe to run twice: one whose first commit did land finds its own ids and reports
success. A broadcast's expansion inserts its chunks with `insert_messages` too, each row
naming its broadcast.
"""

from __future__ import annotations

import time

import msgspec

from sluice.journal.base import DeadlinePassed, IdempotencyConflict, SubmitResult
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.rows import encode_metadata
from sluice.model import Message, Priority, now_ms


class Columns(msgspec.Struct):
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


def insert_columns(messages: list[Message], now: int) -> Columns:
    return Columns(
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
    "not_before, expires_at, callback_url, metadata, updated_at{column}) "
    "SELECT id, $1, channel, recipient, sender, body, priority, 1, due_at, not_before, "
    "expires_at, callback_url, metadata, $2{value} FROM unnest($3::bigint[], $4::text[], "
    "$5::text[], $6::text[], $7::text[], $8::smallint[], $9::bigint[], $10::bigint[], "
    "$11::bigint[], $12::text[], $13::bytea[]) AS m(id, channel, recipient, sender, body, "
    "priority, due_at, not_before, expires_at, callback_url, metadata)"
)
_INSERT_PLAIN = _INSERT.format(column="", value="")
#: A broadcast's messages: $14 is the broadcast's id on every row.
_INSERT_BROADCAST = _INSERT.format(column=", broadcast", value=", $14::bigint")


async def insert_messages(
    conn: PoolConnection,
    tx: Tx,
    tenant: str,
    messages: list[Message],
    c: Columns,
    broadcast: int | None = None,
) -> None:
    """Insert the rows (those of `broadcast`, when given), counted as pending and waking the
    runners of their channels when due now."""
    values = (
        tenant, c.now, c.ids, c.channels, c.recipients, c.senders, c.bodies, c.priorities,
        c.due, c.not_before, c.expires, c.callbacks, c.metadata,
    )  # fmt: skip
    if broadcast is None:
        await conn.execute(_INSERT_PLAIN, *values)
    else:
        await conn.execute(_INSERT_BROADCAST, *values, broadcast)
    for m in messages:
        tx.deltas[m.channel] += 1
        if m.not_before is None or m.not_before <= c.now:
            tx.due[m.channel] = tx.due.get(m.channel, False) or m.priority == Priority.URGENT


async def op_insert(
    conn: PoolConnection,
    tx: Tx,
    tenant: str,
    messages: list[Message],
    c: Columns,
    key: str | None,
    digest: bytes | None,
    deadline: float | None = None,
) -> SubmitResult:
    if deadline is not None and time.monotonic() > deadline:
        # Checked once the transaction has its connection, just before the first statement:
        # a request that waited out the pool is not committed after its producer gave up.
        raise DeadlinePassed(f"the insert's deadline passed before its commit ({deadline})")
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
        if inserted is None:  # waited for the other request's commit: the deadline still holds
            return await op_insert(conn, tx, tenant, messages, c, key, digest, deadline)
    await insert_messages(conn, tx, tenant, messages, c)
    return SubmitResult(c.ids, False)


async def op_insert_again(
    conn: PoolConnection,
    tx: Tx,
    tenant: str,
    messages: list[Message],
    c: Columns,
    key: str | None,
    digest: bytes | None,
    deadline: float | None = None,
) -> SubmitResult:
    """An insert whose first try lost its connection, perhaps after its commit landed: if it
    did, the producer hears so whatever the time; if not, the deadline applies as before."""
    found = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND tenant = $2", c.ids, tenant
    )
    if found == len(c.ids):
        return SubmitResult(c.ids, False)  # it did: nothing more to do
    return await op_insert(conn, tx, tenant, messages, c, key, digest, deadline)


async def op_save_state(conn: PoolConnection, tx: Tx, name: str, data: bytes, now: int) -> None:
    await conn.execute(
        "INSERT INTO saved_state (name, data, saved_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET data = excluded.data, saved_at = excluded.saved_at",
        name,
        data,
        now,
    )
