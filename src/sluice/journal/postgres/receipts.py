"""Receipts from providers, and the parts of SENT messages they answer.

A receipt can arrive before the commit of its own SENT outcome; a message sent in several
parts is final once every part has its receipt.
"""

from __future__ import annotations

import msgspec

from sluice.journal.base import Receipt
from sluice.journal.postgres.callbacks import insert_callbacks
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection
from sluice.journal.postgres.events import insert_events
from sluice.journal.rows import CallbackRow, callback_payload
from sluice.model import Outcome, State, first_id_at, now_ms

# A part's SENT and its receipt meet in one row of `provider_parts`, keyed by (channel,
# provider id), whichever comes first: the SENT commit sets message_id, the receipt sets
# delivered. Both write it with INSERT … ON CONFLICT, so when they run at once in two
# transactions the second waits for the first's commit and then sees it: a receipt that
# overtakes its SENT is never lost between them. (Two tables, "parts" and "early receipts",
# each checked by the other side, lose it under READ COMMITTED: each side's check runs before
# the other commits.)


class SentPart(msgspec.Struct, array_like=True, gc=False):
    """A part of a SENT message, whose receipt will come back under its provider id."""

    channel: str
    provider_id: str
    message_id: int
    #: Its index in the message, and how many parts the message was sent in.
    part: int
    parts: int


async def record_parts(conn: PoolConnection, tx: Tx, parts: list[SentPart], now: int) -> None:
    """The provider ids of SENT messages' parts; applies receipts that came before."""
    # One row per key in one statement.
    latest = list({(p.channel, p.provider_id): p for p in parts}.values())
    rows = await conn.fetch(
        "INSERT INTO provider_parts (channel, provider_id, message_id, part, parts, at) "
        "SELECT c, p, m, i, n, $6 FROM unnest($1::text[], $2::text[], $3::bigint[], "
        "$4::integer[], $5::integer[]) AS u(c, p, m, i, n) "
        "ON CONFLICT (channel, provider_id) DO UPDATE SET message_id = excluded.message_id, "
        "part = excluded.part, parts = excluded.parts "
        "RETURNING channel, provider_id, message_id, delivered",
        [p.channel for p in latest],
        [p.provider_id for p in latest],
        [p.message_id for p in latest],
        [p.part for p in latest],
        [p.parts for p in latest],
        now,
    )
    heard = sorted(
        {(mid, channel, pid) for channel, pid, mid, delivered in rows if delivered is not None}
    )
    for mid, channel, pid in heard:
        await _settle_if_complete(conn, channel, mid, pid, now)


async def op_apply_receipts(
    conn: PoolConnection, tx: Tx, channel: str, receipts: list[Receipt]
) -> int:
    """Apply a batch of receipts; return how many messages reached a final state."""
    now = now_ms()
    latest = {r.provider_id: r for r in receipts}  # one row per key in one statement
    rows = await conn.fetch(
        "INSERT INTO provider_parts (channel, provider_id, delivered, detail, at) "
        "SELECT $1, p, d, t, $2 FROM unnest($3::text[], $4::boolean[], $5::text[]) "
        "AS r(p, d, t) ON CONFLICT (channel, provider_id) DO UPDATE SET "
        "delivered = excluded.delivered, detail = excluded.detail "
        "RETURNING provider_id, message_id, parts",
        channel,
        now,
        list(latest),
        [r.delivered for r in latest.values()],
        [r.detail for r in latest.values()],
    )
    single: dict[int, Receipt] = {}
    multi: dict[int, str] = {}
    for pid, mid, n in rows:
        if mid is None:
            continue  # before its SENT commit (or not ours): the SENT will find it
        if n > 1:
            multi[mid] = pid
        else:
            single[mid] = latest[pid]
    finals = await _settle_receipts(conn, channel, single, now) if single else 0
    for mid in sorted(multi):
        finals += await _settle_if_complete(conn, channel, mid, multi[mid], now)
    return finals


async def _settle_receipts(
    conn: PoolConnection, channel: str, receipts: dict[int, Receipt], now: int
) -> int:
    """Final states for single-part messages from their receipts, by message id."""
    mids = list(receipts)
    await conn.execute(
        "DELETE FROM provider_parts WHERE channel = $1 AND provider_id = ANY($2::text[])",
        channel,
        [r.provider_id for r in receipts.values()],
    )
    sent = await conn.fetch(
        "UPDATE messages m SET state = v.state, updated_at = $1 "
        "FROM unnest($2::bigint[], $3::smallint[]) AS v(id, state) "
        "WHERE m.id = v.id AND m.state = 3 "
        "RETURNING m.id, m.tenant, m.channel, m.recipient, m.attempts, m.callback_url, m.metadata",
        now,
        mids,
        [int(State.DELIVERED if receipts[mid].delivered else State.FAILED) for mid in mids],
    )
    events = []
    callbacks = []
    for mid, tenant, msg_channel, recipient, attempts, callback_url, metadata in sent:
        r = receipts[mid]
        state = State.DELIVERED if r.delivered else State.FAILED
        outcome = Outcome.SENT if r.delivered else Outcome.PERMANENT
        events.append(
            (mid, int(state), channel, attempts, int(outcome), r.provider_id, None, r.detail)
        )
        if callback_url:  # the row is named only for a callback: most messages have none
            row: CallbackRow[bytes] = CallbackRow(
                mid, tenant, msg_channel, recipient, attempts, callback_url, metadata
            )
            payload = callback_payload(row, state, now, r.provider_id, r.detail)
            callbacks.append((mid, callback_url, payload))
    await insert_events(conn, now, events)
    await insert_callbacks(conn, now, callbacks)
    return len(sent)


async def _settle_if_complete(
    conn: PoolConnection, channel: str, message_id: int, pid: str, now: int
) -> int:
    """The final state of a message once every part has its receipt (`pid`: the part heard
    last); returns 1 if it reached one.

    The message's row is locked first: receipts for two parts committing at once then read
    the parts one after the other, and the second sees the first's."""
    locked = await conn.fetchval(
        "SELECT 1 FROM messages WHERE id = $1 AND state = 3 FOR UPDATE", message_id
    )
    if locked is None:
        return 0
    parts = await conn.fetch(
        "SELECT provider_id, delivered, detail FROM provider_parts WHERE message_id = $1 "
        "ORDER BY part",
        message_id,
    )
    if not parts or any(delivered is None for _, delivered, _ in parts):
        return 0  # more parts to hear from
    failed = [(p, detail) for p, delivered, detail in parts if not delivered]
    state = State.FAILED if failed else State.DELIVERED
    if failed:
        detail = "; ".join(f"part {p}: {d or 'not delivered'}" for p, d in failed)
    elif len(parts) == 1:
        detail = parts[0]["detail"]
    else:
        detail = f"all {len(parts)} parts delivered"
    await conn.execute("DELETE FROM provider_parts WHERE message_id = $1", message_id)
    found = await conn.fetchrow(
        "UPDATE messages SET state = $1, updated_at = $2 WHERE id = $3 "
        "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
        int(state),
        now,
        message_id,
    )
    assert found is not None  # locked FOR UPDATE above: the UPDATE finds its row
    final: CallbackRow[bytes] = CallbackRow(message_id, *found)
    outcome = Outcome.SENT if state == State.DELIVERED else Outcome.PERMANENT
    await insert_events(
        conn,
        now,
        [(message_id, int(state), channel, final.attempts, int(outcome), pid, None, detail)],
    )
    if final.callback_url:
        payload = callback_payload(final, state, now, pid, detail)
        await insert_callbacks(conn, now, [(message_id, final.callback_url, payload)])
    return 1


async def op_expire_receipts(
    conn: PoolConnection,
    tx: Tx,
    channel: str,
    sent_before: int,
    now: int,
    detail: str,
    limit: int,
) -> int:
    """SENT messages of `channel` whose receipts were still awaited at `sent_before` become
    EXPIRED with `detail` (a receipt that comes later finds nothing left to settle); returns
    how many, at most `limit`.

    The rows are taken FOR UPDATE SKIP LOCKED: a receipt settling one of them at this moment
    keeps it, and two processes sweeping at once share the work instead of waiting."""
    expired = await conn.fetch(
        "WITH due AS (SELECT m.id FROM messages m WHERE m.state = 3 AND m.updated_at < $2 "
        "AND m.id IN (SELECT p.message_id FROM provider_parts p WHERE p.channel = $1 "
        "AND p.message_id < $6) LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "UPDATE messages m SET state = $4, updated_at = $5 FROM due WHERE m.id = due.id "
        "RETURNING m.id, m.tenant, m.channel, m.recipient, m.attempts, m.callback_url, "
        "m.metadata, m.provider_id",
        channel,
        sent_before,
        limit,
        int(State.EXPIRED),
        now,
        # Made before it was sent: only parts of messages made before `sent_before` are read.
        first_id_at(sent_before),
    )
    if not expired:
        return 0
    mids = [row["id"] for row in expired]
    await conn.execute("DELETE FROM provider_parts WHERE message_id = ANY($1::bigint[])", mids)
    events = []
    callbacks = []
    for mid, tenant, msg_channel, recipient, attempts, callback_url, metadata, pid in expired:
        events.append((mid, int(State.EXPIRED), channel, attempts, None, pid, None, detail))
        if callback_url:
            row: CallbackRow[bytes] = CallbackRow(
                mid, tenant, msg_channel, recipient, attempts, callback_url, metadata
            )
            payload = callback_payload(row, State.EXPIRED, now, pid, detail)
            callbacks.append((mid, callback_url, payload))
    await insert_events(conn, now, events)
    await insert_callbacks(conn, now, callbacks)
    return len(expired)
