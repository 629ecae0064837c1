"""The queue of status callbacks to producers.

A final state queues its callback in the transaction that reaches it; the callback sender
claims due callbacks for a lease (`FOR UPDATE SKIP LOCKED`, so processes never send one twice
at once), then finishes them: sent, due again later, or dropped.
"""

from __future__ import annotations

from sluice.journal.base import CallbackJob
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection


async def insert_callbacks(
    conn: PoolConnection, now: int, callbacks: list[tuple[int, str, bytes]]
) -> int:
    if not callbacks:
        return 0
    mids, urls, payloads = zip(*callbacks, strict=True)
    await conn.execute(
        "INSERT INTO callbacks (message_id, url, payload, due_at) "
        "SELECT m, u, p, $1 FROM unnest($2::bigint[], $3::text[], $4::bytea[]) AS c(m, u, p)",
        now,
        list(mids),
        list(urls),
        list(payloads),
    )
    return len(callbacks)


async def op_claim_callbacks(
    conn: PoolConnection, tx: Tx, limit: int, now: int, lease_ms: int
) -> list[CallbackJob]:
    rows = await conn.fetch(
        "UPDATE callbacks SET due_at = $1, attempts = attempts + 1 WHERE id IN ("
        "SELECT id FROM callbacks WHERE due_at <= $2 ORDER BY due_at LIMIT $3 "
        "FOR UPDATE SKIP LOCKED) RETURNING id, message_id, url, payload, attempts",
        now + lease_ms,
        now,
        limit,
    )
    return [CallbackJob(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]


async def op_finish_callbacks(
    conn: PoolConnection,
    tx: Tx,
    done: list[int],
    retry: list[tuple[int, int]],
    dropped: list[int],
) -> None:
    if done or dropped:
        await conn.execute("DELETE FROM callbacks WHERE id = ANY($1::bigint[])", [*done, *dropped])
    if retry:
        await conn.execute(
            "UPDATE callbacks c SET due_at = v.due FROM unnest($1::bigint[], $2::bigint[]) "
            "AS v(id, due) WHERE c.id = v.id",
            [i for i, _ in retry],
            [d for _, d in retry],
        )
