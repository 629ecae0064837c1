"""Subscribers, topics and subscriptions in the PostgreSQL journal (`journal/audience.py` says
what each operation means), as in SQLite (`sqlite/audience.py`), for processes that change
them at the same time.

A batch travels as arrays (`unnest`): an import of 10,000 subscribers is one upsert and one
insert of subscriptions, which tells created rows from updated ones by `xmax = 0`. A topic's
count moves by what the statements of the same transaction did insert or delete (their
RETURNING rows), never by what the caller asked for: two imports of the same ids, or one run
again after a lost connection, count each subscription once.

Locks: rows are written in a fixed order (ids, names and keys sorted) so that two batches
meet in the same order; a transaction that adds to a topic holds it (FOR KEY SHARE) against
`delete_topic`, and `subscribe` holds its subscribers against `delete_subscriber`, so that no
subscription outlives its topic or subscriber. A deadlock left over (counters of several
topics) fails the transaction, which the journal runs again.
"""

from __future__ import annotations

from sluice.journal.audience import (
    Member,
    StoredSubscriber,
    SubscribeCounts,
    SubscriberRow,
    TopicInfo,
    UpsertCounts,
    merged,
)
from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import PoolConnection

_CREATE_TOPICS = (
    "INSERT INTO topics (tenant, name, created_at) SELECT $1, name, $3 "
    "FROM unnest($2::text[]) AS t(name) ON CONFLICT (tenant, name) DO NOTHING"
)
_LOCK_TOPICS = (
    "SELECT key, name FROM topics WHERE tenant = $1 AND name = ANY($2::text[]) "
    "ORDER BY key FOR KEY SHARE"
)
_UPSERT = (
    "INSERT INTO subscribers (tenant, external_id, data, updated_at) "
    "SELECT $1, external_id, data, $2 FROM unnest($3::text[], $4::bytea[]) "
    "AS r(external_id, data) "
    "ON CONFLICT (tenant, external_id) DO UPDATE SET data = excluded.data, "
    "updated_at = excluded.updated_at RETURNING external_id, key, xmax = 0"
)
#: Adds the pairs and moves each topic's count by the subscriptions actually added.
_SUBSCRIBE = (
    "WITH added AS (INSERT INTO subscriptions (topic, subscriber) "
    "SELECT * FROM unnest($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING RETURNING topic), "
    "counted AS (SELECT topic, count(*) AS n FROM added GROUP BY topic) "
    "UPDATE topics t SET subscribers = t.subscribers + counted.n FROM counted "
    "WHERE t.key = counted.topic RETURNING counted.n"
)
_LOCK_SUBSCRIBERS = (
    "SELECT external_id, key FROM subscribers WHERE tenant = $1 "
    "AND external_id = ANY($2::text[]) ORDER BY key FOR KEY SHARE"
)


async def _topic_keys(
    conn: PoolConnection, tenant: str, names: set[str], now: int, *, create: bool
) -> dict[str, int]:
    """The keys of the tenant's topics named `names` (created first when `create`), each
    held until the commit against a `delete_topic`."""
    keys: dict[str, int] = {}
    missing = sorted(names)
    while missing:
        if create:
            await conn.execute(_CREATE_TOPICS, tenant, missing, now)
        keys.update((name, key) for key, name in await conn.fetch(_LOCK_TOPICS, tenant, missing))
        missing = [name for name in missing if name not in keys]
        if not create:
            break
        # Still missing: a delete_topic removed it after our insert found it; create it again.
    return keys


async def _add_subscriptions(conn: PoolConnection, pairs: list[tuple[int, int]]) -> int:
    """Subscribe (topic key, subscriber key) pairs; how many were new."""
    if not pairs:
        return 0
    pairs.sort()
    counted = await conn.fetch(_SUBSCRIBE, [t for t, _ in pairs], [s for _, s in pairs])
    return sum(n for (n,) in counted)


async def op_upsert_subscribers(
    conn: PoolConnection, tx: Tx, tenant: str, rows: list[SubscriberRow], now: int
) -> UpsertCounts:
    latest = merged(rows)
    if not latest:
        return UpsertCounts(0, 0, 0)
    topics = await _topic_keys(
        conn, tenant, {t for row in latest.values() for t in row.topics}, now, create=True
    )
    ids = sorted(latest)
    upserted = await conn.fetch(_UPSERT, tenant, now, ids, [latest[i].data for i in ids])
    created = 0
    pairs: list[tuple[int, int]] = []
    for external_id, key, inserted in upserted:
        created += inserted
        pairs.extend((topics[topic], key) for topic in latest[external_id].topics)
    subscribed = await _add_subscriptions(conn, pairs)
    return UpsertCounts(created, len(latest) - created, subscribed)


async def op_delete_subscriber(conn: PoolConnection, tx: Tx, tenant: str, external_id: str) -> bool:
    key = await conn.fetchval(
        "DELETE FROM subscribers WHERE tenant = $1 AND external_id = $2 RETURNING key",
        tenant,
        external_id,
    )
    if key is None:
        return False
    await conn.execute(
        "WITH gone AS (DELETE FROM subscriptions WHERE subscriber = $1 RETURNING topic) "
        "UPDATE topics t SET subscribers = t.subscribers - 1 FROM gone WHERE t.key = gone.topic",
        key,
    )
    return True


async def op_create_topic(conn: PoolConnection, tx: Tx, tenant: str, name: str, now: int) -> bool:
    created = await conn.fetchval(
        "INSERT INTO topics (tenant, name, created_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (tenant, name) DO NOTHING RETURNING key",
        tenant,
        name,
        now,
    )
    return created is not None


async def op_delete_topic(conn: PoolConnection, tx: Tx, tenant: str, name: str) -> bool:
    key = await conn.fetchval(
        "DELETE FROM topics WHERE tenant = $1 AND name = $2 RETURNING key", tenant, name
    )
    if key is None:
        return False
    await conn.execute("DELETE FROM subscriptions WHERE topic = $1", key)
    return True


async def op_subscribe(
    conn: PoolConnection, tx: Tx, tenant: str, topic: str, external_ids: list[str], now: int
) -> SubscribeCounts | None:
    topics = await _topic_keys(conn, tenant, {topic}, now, create=False)
    if topic not in topics:
        return None
    ids = list(dict.fromkeys(external_ids))
    keys: dict[str, int] = {i: k for i, k in await conn.fetch(_LOCK_SUBSCRIBERS, tenant, ids)}
    unknown = [i for i in ids if i not in keys]
    added = await _add_subscriptions(conn, [(topics[topic], k) for k in keys.values()])
    return SubscribeCounts(added, len(keys) - added, unknown)


async def op_unsubscribe(
    conn: PoolConnection, tx: Tx, tenant: str, topic: str, external_ids: list[str]
) -> int | None:
    key = await conn.fetchval(
        "SELECT key FROM topics WHERE tenant = $1 AND name = $2", tenant, topic
    )
    if key is None:
        return None
    removed: int | None = await conn.fetchval(
        "WITH gone AS (DELETE FROM subscriptions WHERE topic = $1 AND subscriber IN "
        "(SELECT key FROM subscribers WHERE tenant = $2 AND external_id = ANY($3::text[])) "
        "RETURNING 1), counted AS (SELECT count(*) AS n FROM gone) "
        "UPDATE topics t SET subscribers = t.subscribers - counted.n FROM counted "
        "WHERE t.key = $1 AND counted.n > 0 RETURNING counted.n",
        key,
        tenant,
        list(dict.fromkeys(external_ids)),
    )
    return removed or 0


# ------------------------------------------------------------------------------------ reads


async def read_subscriber(
    conn: PoolConnection, tx: Tx, tenant: str, external_id: str
) -> StoredSubscriber | None:
    found = await conn.fetchrow(
        "SELECT s.data, s.updated_at, ARRAY(SELECT t.name FROM subscriptions x "
        "JOIN topics t ON t.key = x.topic WHERE x.subscriber = s.key ORDER BY t.name) "
        "FROM subscribers s WHERE s.tenant = $1 AND s.external_id = $2",
        tenant,
        external_id,
    )
    if found is None:
        return None
    data, updated_at, topics = found
    return StoredSubscriber(external_id, data, list(topics), updated_at)


async def read_topic(conn: PoolConnection, tx: Tx, tenant: str, name: str) -> TopicInfo | None:
    found = await conn.fetchrow(
        "SELECT name, subscribers, created_at FROM topics WHERE tenant = $1 AND name = $2",
        tenant,
        name,
    )
    return TopicInfo(*found) if found is not None else None


async def read_topics(
    conn: PoolConnection, tx: Tx, tenant: str, after: str | None, limit: int
) -> list[TopicInfo]:
    rows = await conn.fetch(
        "SELECT name, subscribers, created_at FROM topics WHERE tenant = $1 AND name > $2 "
        "ORDER BY name LIMIT $3",
        tenant,
        after or "",
        limit,
    )
    return [TopicInfo(*row) for row in rows]


async def read_topic_members(
    conn: PoolConnection, tx: Tx, tenant: str, topic: str, after: int, limit: int
) -> list[Member] | None:
    """One statement (one snapshot): no row when there is no such topic, one row of NULLs
    when it has no member after `after`."""
    rows = await conn.fetch(
        "SELECT m.key, m.external_id, m.data FROM topics t LEFT JOIN LATERAL ("
        "SELECT s.subscriber AS key, b.external_id, b.data FROM subscriptions s "
        "JOIN subscribers b ON b.key = s.subscriber "
        "WHERE s.topic = t.key AND s.subscriber > $3 ORDER BY s.subscriber LIMIT $4"
        ") m ON true WHERE t.tenant = $1 AND t.name = $2 ORDER BY m.key",
        tenant,
        topic,
        after,
        limit,
    )
    if not rows:
        return None
    return [Member(*row) for row in rows if row[0] is not None]
