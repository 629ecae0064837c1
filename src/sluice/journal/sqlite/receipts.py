"""Delivery receipts in the SQLite journal: a sent message's final state, from its provider.

A receipt can arrive before the commit of its message's SENT outcome; it is then kept in
`early_receipts` until that outcome commits (see `claims.op_complete`) or its time runs out.

Examples:
    finals = op_apply_receipts(conn, tx, "sms", receipts)
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sluice.journal.base import Receipt
from sluice.journal.rows import CallbackRow
from sluice.journal.sqlite.callbacks import add_callback
from sluice.journal.sqlite.json_rows import (
    ProviderPartRow,
    callback_rows,
    json_encoder,
    provider_part_rows,
)
from sluice.model import Outcome, State, first_id_at, now_ms

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction


def op_apply_receipts(
    conn: sqlite3.Connection, tx: Transaction, channel: str, receipts: list[Receipt]
) -> int:
    """Apply a batch of receipts; return how many messages reached a final state.

    Receipts for single-part messages, the bulk of them, are applied a few statements per
    batch (see json_rows.py); early ones are kept in one statement; parts of longer messages
    go one by one through `apply_receipt`."""
    now = now_ms()
    keys = json_encoder.encode([r.provider_id for r in receipts])
    (found,) = conn.execute(_PARTS_SELECT, (channel, keys)).fetchone()
    known: dict[str, ProviderPartRow] = {p.provider_id: p for p in provider_part_rows.decode(found)}
    early: list[Receipt] = []
    single: dict[int, Receipt] = {}
    multi: list[Receipt] = []
    for r in receipts:
        hit = known.get(r.provider_id)
        if hit is None:
            early.append(r)
        elif hit.parts > 1:
            multi.append(r)
        elif hit.message_id in single:  # the same receipt twice: the second finds nothing left
            early.append(r)
        else:
            single[hit.message_id] = r
    if early:
        conn.execute(
            "INSERT OR REPLACE INTO early_receipts (channel, provider_id, delivered, detail, at) "
            "SELECT ?1, value ->> 0, value ->> 1, value ->> 2, ?2 FROM json_each(?3)",
            (channel, now, json_encoder.encode(early)),
        )
        tx.shared.early_receipts += len(early)
    finals = _settle_receipts(conn, channel, single, now) if single else 0
    for r in multi:
        finals += apply_receipt(conn, tx, channel, r, now)
    return finals


#: ?1 channel, ?2 a JSON array of provider ids: the `ProviderPartRow` of those known.
_PARTS_SELECT = (
    "SELECT json_group_array(json_array(provider_id, message_id, parts)) FROM provider_parts "
    "WHERE channel = ?1 AND provider_id IN (SELECT value FROM json_each(?2))"
)


def _settle_receipts(
    conn: sqlite3.Connection, channel: str, receipts: dict[int, Receipt], now: int
) -> int:
    """Final states for single-part messages from their receipts, by message id."""
    rows = [
        (mid, r.provider_id, int(State.DELIVERED if r.delivered else State.FAILED))
        for mid, r in receipts.items()
    ]
    keys = json_encoder.encode(rows)
    conn.execute(
        "DELETE FROM provider_parts WHERE channel = ?1 AND provider_id IN "
        "(SELECT value ->> 1 FROM json_each(?2))",
        (channel, keys),
    )
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(id, tenant, channel, recipient, attempts, "
        "callback_url, hex(metadata))) FROM messages "
        "WHERE id IN (SELECT value ->> 0 FROM json_each(?1)) AND state = 3",
        (keys,),
    ).fetchone()
    sent = callback_rows.decode(found)
    if not sent:
        return 0
    conn.execute(
        "UPDATE messages SET state = v.value ->> 2, updated_at = ?2 FROM json_each(?1) AS v "
        "WHERE messages.id = v.value ->> 0 AND messages.state = 3",
        (keys, now),
    )
    events = []
    for row in sent:
        r = receipts[row.id]
        state = State.DELIVERED if r.delivered else State.FAILED
        outcome = Outcome.SENT if r.delivered else Outcome.PERMANENT
        events.append((row.id, int(state), row.attempts, int(outcome), r.provider_id, r.detail))
        add_callback(conn, row, state, now, r.provider_id, r.detail)
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "detail) SELECT value ->> 0, ?1, value ->> 1, ?2, value ->> 2, value ->> 3, "
        "value ->> 4, value ->> 5 FROM json_each(?3)",
        (now, channel, json_encoder.encode(events)),
    )
    return len(sent)


def apply_receipt(
    conn: sqlite3.Connection, tx: Transaction, channel: str, receipt: Receipt, now: int
) -> int:
    """Record one part's receipt; return 1 if its message reached a final state."""
    row = conn.execute(
        "UPDATE provider_parts SET delivered = ?, detail = ? "
        "WHERE channel = ? AND provider_id = ? RETURNING message_id, parts",
        (int(receipt.delivered), receipt.detail, channel, receipt.provider_id),
    ).fetchone()
    if row is None:  # overtook the commit of its SENT outcome, or not ours: keep it a while
        conn.execute(
            "INSERT OR REPLACE INTO early_receipts (channel, provider_id, delivered, detail, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (channel, receipt.provider_id, int(receipt.delivered), receipt.detail, now),
        )
        tx.shared.early_receipts += 1
        return 0
    message_id, count = row
    if count == 1:  # the common case: no other part to look up
        parts = [(receipt.provider_id, int(receipt.delivered), receipt.detail)]
    else:
        parts = conn.execute(
            "SELECT provider_id, delivered, detail FROM provider_parts WHERE message_id = ?",
            (message_id,),
        ).fetchall()
    if any(delivered is None for _, delivered, _ in parts):
        return 0  # more parts to hear from
    failed = [(pid, detail) for pid, delivered, detail in parts if not delivered]
    state = State.FAILED if failed else State.DELIVERED
    detail: str | None  # a lone part's receipt may carry none
    if failed:
        detail = "; ".join(f"part {pid}: {d or 'not delivered'}" for pid, d in failed)
    else:
        detail = receipt.detail if len(parts) == 1 else f"all {len(parts)} parts delivered"
    if count == 1:
        conn.execute(
            "DELETE FROM provider_parts WHERE channel = ? AND provider_id = ?",
            (channel, receipt.provider_id),
        )
    else:
        conn.execute("DELETE FROM provider_parts WHERE message_id = ?", (message_id,))
    found = conn.execute(
        "UPDATE messages SET state = ?, updated_at = ? WHERE id = ? AND state = 3 "
        "RETURNING tenant, channel, recipient, attempts, callback_url, metadata",
        (int(state), now, message_id),
    ).fetchone()
    if found is None:
        return 0
    final: CallbackRow[bytes] = CallbackRow(message_id, *found)
    outcome = Outcome.SENT if state == State.DELIVERED else Outcome.PERMANENT
    conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message_id,
            now,
            int(state),
            channel,
            final.attempts,
            int(outcome),
            receipt.provider_id,
            detail,
        ),
    )
    add_callback(conn, final, state, now, receipt.provider_id, detail)
    return 1


def op_expire_receipts(
    conn: sqlite3.Connection,
    tx: Transaction,
    channel: str,
    sent_before: int,
    now: int,
    detail: str,
    limit: int,
) -> int:
    """SENT messages of `channel` whose receipts were still awaited at `sent_before` become
    EXPIRED with `detail` (a receipt that comes later finds nothing left to settle); returns
    how many, at most `limit`.

    The scan starts from `provider_parts`, which holds only the parts whose receipts are
    awaited: a few seconds' worth of traffic on a link whose receipts come, plus the ones
    this deadline exists for."""
    found = conn.execute(
        "SELECT DISTINCT p.message_id FROM provider_parts p JOIN messages m ON m.id = p.message_id "
        "WHERE p.message_id < ?4 AND p.channel = ?1 AND m.state = 3 AND m.updated_at < ?2 "
        "LIMIT ?3",
        # Made before it was sent: only the parts of messages made before `sent_before` are
        # read (a range of provider_parts_message), not every receipt awaited.
        (channel, sent_before, limit, first_id_at(sent_before)),
    ).fetchall()
    done = 0
    for (mid,) in found:
        row = conn.execute(
            "UPDATE messages SET state = ?, updated_at = ? WHERE id = ? AND state = 3 "
            "RETURNING tenant, channel, recipient, attempts, callback_url, metadata, provider_id",
            (int(State.EXPIRED), now, mid),
        ).fetchone()
        conn.execute("DELETE FROM provider_parts WHERE message_id = ?", (mid,))
        if row is None:
            continue
        *columns, provider_id = row
        final: CallbackRow[bytes] = CallbackRow(mid, *columns)
        conn.execute(
            "INSERT INTO events (message_id, at, state, channel, attempt, provider_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (mid, now, int(State.EXPIRED), channel, final.attempts, provider_id, detail),
        )
        add_callback(conn, final, State.EXPIRED, now, provider_id, detail)
        done += 1
    return done
