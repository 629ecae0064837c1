"""The timeline: the events every state change appends, in one statement per transaction."""

from __future__ import annotations

from collections.abc import Iterable

from sluice.journal.postgres.connection import PoolConnection


async def insert_events(
    conn: PoolConnection,
    now: int,
    events: Iterable[
        tuple[int, int, str | None, int | None, int | None, str | None, float | None, str | None]
    ],
) -> None:
    """Events of (message_id, state, channel, attempt, outcome, provider_id, latency_ms,
    detail), all at `now`, in order."""
    columns = list(zip(*events, strict=True))
    if not columns:
        return
    await conn.execute(
        "INSERT INTO events (message_id, at, state, channel, attempt, outcome, provider_id, "
        "latency_ms, detail) SELECT m, $1, s, c, a, o, p, l, d FROM unnest($2::bigint[], "
        "$3::smallint[], $4::text[], $5::integer[], $6::smallint[], $7::text[], $8::real[], "
        "$9::text[]) WITH ORDINALITY AS e(m, s, c, a, o, p, l, d, n) ORDER BY n",
        now,
        *(list(col) for col in columns),
    )
