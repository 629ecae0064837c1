"""Outcomes of deliveries and cancels by producers: how claimed messages reach their next state.

A batch of 5,000 outcomes is a few statements: one per kind (back to the queue, settled, or
delivered by a receipt that overtook its SENT), then their events, parts and callbacks. State
changes check the state they expect (SENDING, leased by this owner), so an outcome applied twice,
or after its lease was swept, changes nothing.
"""

from __future__ import annotations

import itertools

from sluice.journal.base import CancelResult, Completion
from sluice.journal.postgres.callbacks import insert_callbacks
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.postgres.events import insert_events
from sluice.journal.postgres.receipts import SentPart, record_parts
from sluice.journal.rows import CallbackRow, callback_payload, final_callback
from sluice.model import State, now_ms

_SENDING = int(State.SENDING)
_CANCELLED = int(State.CANCELLED)

#: What a batch of outcomes queues besides its rows: status callbacks (message id, URL,
#: payload) and the parts of SENT messages.
_Callbacks = list[tuple[int, str, bytes]]
_Parts = list[SentPart]


async def op_complete(
    conn: PoolConnection, tx: Tx, owner: int, completions: list[Completion]
) -> int:
    """Apply outcomes; return how many status callbacks were queued."""
    now = now_ms()
    applied: list[Completion] = []
    callbacks: _Callbacks = []
    parts: _Parts = []
    requeuing = [c for c in completions if c.state == State.QUEUED]
    delivered = [c for c in completions if c.state == State.DELIVERED]
    settling = [c for c in completions if c.state not in (State.QUEUED, State.DELIVERED)]
    if requeuing:
        await _requeue(conn, tx, owner, now, requeuing, applied)
    if settling:
        await _settle(conn, tx, owner, now, settling, applied, callbacks, parts)
    if delivered:
        await _deliver(conn, tx, now, delivered, applied, callbacks)
    await insert_events(
        conn,
        now,
        (
            (c.message_id, int(c.state), c.channel, c.attempt, int(c.outcome), c.provider_id,
             c.latency_ms, c.detail)
            for c in applied
        ),
    )  # fmt: skip
    if parts:
        await record_parts(conn, tx, parts, now)
    return await insert_callbacks(conn, now, callbacks)


async def _requeue(
    conn: PoolConnection,
    tx: Tx,
    owner: int,
    now: int,
    requeuing: list[Completion],
    applied: list[Completion],
) -> None:
    """Back to the queue (a retry later, or another channel): one statement for the batch."""
    done = {
        r[0]
        for r in await conn.fetch(
            "UPDATE messages m SET state = 1, due_at = v.due_at, channel = v.channel, "
            "attempts = m.attempts - v.uncount, lease_owner = NULL, lease_until = NULL, "
            "updated_at = $1 FROM unnest($2::bigint[], $3::bigint[], $4::text[], "
            "$5::integer[]) AS v(id, due_at, channel, uncount) "
            "WHERE m.id = v.id AND m.state = 2 AND m.lease_owner = $6 RETURNING m.id",
            now,
            [c.message_id for c in requeuing],
            [c.due_at for c in requeuing],
            [c.reroute_to or c.channel for c in requeuing],
            [1 if c.uncount else 0 for c in requeuing],
            owner,
        )
    }
    for c in requeuing:
        if c.message_id not in done:  # lost its lease (swept, or completed twice)
            continue
        if c.reroute_to and c.reroute_to != c.channel:
            tx.deltas[c.channel] -= 1
            tx.deltas[c.reroute_to] += 1
            if c.due_at <= now:
                tx.due[c.reroute_to] = tx.due.get(c.reroute_to, False)
        applied.append(c)


async def _settle(
    conn: PoolConnection,
    tx: Tx,
    owner: int,
    now: int,
    settling: list[Completion],
    applied: list[Completion],
    callbacks: _Callbacks,
    parts: _Parts,
) -> None:
    """Out of SENDING for good (SENT, FAILED, EXPIRED…): one statement for the batch; SENT
    messages leave their parts for the receipts to find."""
    records = await conn.fetch(
        "UPDATE messages m SET state = v.state, provider_id = v.provider_id, "
        "lease_owner = NULL, lease_until = NULL, updated_at = $1 "
        "FROM unnest($2::bigint[], $3::smallint[], $4::text[]) AS v(id, state, "
        "provider_id) WHERE m.id = v.id AND m.state = 2 AND m.lease_owner = $5 "
        "RETURNING m.id, m.tenant, m.channel, m.recipient, m.attempts, m.callback_url, "
        "m.metadata",
        now,
        [c.message_id for c in settling],
        [int(c.state) for c in settling],
        [c.provider_id for c in settling],
        owner,
    )
    rows: dict[int, CallbackRow[bytes]] = {
        row.id: row for row in itertools.starmap(CallbackRow, records)
    }
    for c in settling:
        row = rows.get(c.message_id)
        if row is None:
            continue
        tx.deltas[row.channel] -= 1
        callback = final_callback(c, row, now)
        if callback is not None:
            callbacks.append((c.message_id, *callback))
        if c.parts and c.state == State.SENT:
            n = len(c.parts)
            parts += [SentPart(c.channel, pid, c.message_id, i, n) for i, pid in enumerate(c.parts)]
        applied.append(c)


async def _deliver(
    conn: PoolConnection,
    tx: Tx,
    now: int,
    delivering: list[Completion],
    applied: list[Completion],
    callbacks: _Callbacks,
) -> None:
    """DELIVERED outcomes, from SENDING or SENT, one message at a time."""
    for c in delivering:
        # A receipt can overtake the commit of its own SENT outcome: from SENDING too.
        found = await conn.fetchrow(
            "SELECT tenant, channel, recipient, attempts, callback_url, metadata, state "
            "FROM messages WHERE id = $1 AND state IN (2, 3) FOR UPDATE",
            c.message_id,
        )
        if found is None:
            continue
        *columns, state = found
        row: CallbackRow[bytes] = CallbackRow(c.message_id, *columns)
        await conn.execute(
            "UPDATE messages SET state = $1, lease_owner = NULL, lease_until = NULL, "
            "provider_id = COALESCE(provider_id, $2), updated_at = $3 WHERE id = $4",
            int(c.state),
            c.provider_id,
            now,
            c.message_id,
        )
        if state == _SENDING:
            tx.deltas[row.channel] -= 1
        callback = final_callback(c, row, now)
        if callback is not None:
            callbacks.append((c.message_id, *callback))
        applied.append(c)


async def op_cancel(conn: PoolConnection, tx: Tx, tenant: str, mid: int, now: int) -> CancelResult:
    found = await conn.fetchrow(
        "SELECT state, channel, recipient, attempts, callback_url, metadata FROM messages "
        "WHERE id = $1 AND tenant = $2 FOR UPDATE",
        mid,
        tenant,
    )
    if found is None:
        return CancelResult.NOT_FOUND
    state, channel, recipient, attempts, callback_url, metadata = found
    if state not in (State.ACCEPTED, State.QUEUED):
        return CancelResult.TOO_LATE
    detail = "cancelled by the producer"
    await conn.execute(
        "UPDATE messages SET state = $1, updated_at = $2 WHERE id = $3", _CANCELLED, now, mid
    )
    await insert_events(conn, now, [(mid, _CANCELLED, channel, None, None, None, None, detail)])
    tx.deltas[channel] -= 1
    if callback_url:
        row: CallbackRow[bytes] = CallbackRow(
            mid, tenant, channel, recipient, attempts, callback_url, metadata
        )
        payload = callback_payload(row, State.CANCELLED, now, None, detail)
        await insert_callbacks(conn, now, [(mid, callback_url, payload)])
    return CancelResult.CANCELLED
