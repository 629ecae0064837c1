"""Subscribers, topics and subscriptions in the SQLite journal (`journal/audience.py` says
what each operation means). Writes are ops run by the journal's one writer; reads run on the
reader thread.

Tables (`SCHEMA`): `subscribers` (an integer key, the tenant's id, the encoded record),
`topics` (an integer key, the name, the count of subscribers kept with every change) and
`subscriptions` (topic key, subscriber key: the primary key is the order a broadcast reads a
topic in).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sluice.journal.audience import (
    Member,
    StoredSubscriber,
    SubscribeCounts,
    SubscriberRow,
    TopicInfo,
    UpsertCounts,
    merged,
)
from sluice.journal.multirow import statements

if TYPE_CHECKING:
    from sluice.journal.sqlite.writer import Transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscribers (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    external_id TEXT NOT NULL,
    data BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant, external_id)
);
CREATE TABLE IF NOT EXISTS topics (
    key INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    subscribers INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic INTEGER NOT NULL,
    subscriber INTEGER NOT NULL,
    PRIMARY KEY (topic, subscriber)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subscriptions_subscriber ON subscriptions (subscriber, topic);
"""

#: Ids looked up in one statement (well under SQLite's limit of host parameters).
_CHUNK = 500
#: Multi-row INSERTs (journal/multirow.py: one step a statement, not one a row, so the writer
#: does not wait for the GIL once a row): ?1 the tenant, ?2 the time; key, id, data a row.
_SUBSCRIBERS_INSERT = "INSERT INTO subscribers (key, tenant, external_id, data, updated_at) VALUES "
_SUBSCRIBER_ROWS = ("(?3,?1,?4,?5,?2)", "(?,?1,?,?,?2)")
#: ?1 the topic; a subscriber's key a row.
_SUBSCRIPTIONS_INSERT = "INSERT OR IGNORE INTO subscriptions (topic, subscriber) VALUES "
_SUBSCRIPTION_ROWS = ("(?1,?2)", "(?1,?)")
_MAX_ROWS = 1024


def _topic_keys(
    conn: sqlite3.Connection, tenant: str, names: set[str], now: int, *, create: bool
) -> dict[str, int]:
    """The keys of the tenant's topics named `names`, created first when `create`."""
    ordered = sorted(names)
    keys = _keys(conn, "SELECT name, key FROM topics WHERE tenant = ? AND name", tenant, ordered)
    missing = [name for name in ordered if name not in keys]
    if create and missing:  # set-wise: one statement for all of them, one to learn their keys
        conn.executemany(
            "INSERT INTO topics (tenant, name, created_at) VALUES (?, ?, ?)",
            [(tenant, name, now) for name in missing],
        )
        keys |= _topic_keys(conn, tenant, set(missing), now, create=False)
    return keys


def _add_subscriptions(conn: sqlite3.Connection, pairs: dict[int, list[int]]) -> int:
    """Subscribe (topic key → subscriber keys), counting each topic's new subscribers."""
    added = 0
    for topic, subscribers in pairs.items():
        before = conn.total_changes
        _insert(conn, _SUBSCRIPTIONS_INSERT, _SUBSCRIPTION_ROWS, [topic], subscribers, 1)
        new = conn.total_changes - before
        if new:
            conn.execute(
                "UPDATE topics SET subscribers = subscribers + ? WHERE key = ?", (new, topic)
            )
            added += new
    return added


def op_upsert_subscribers(
    conn: sqlite3.Connection, tx: Transaction, tenant: str, rows: list[SubscriberRow], now: int
) -> UpsertCounts:
    latest = merged(rows)
    existing = _subscriber_keys(conn, tenant, list(latest))
    # Set-wise, a statement a kind of row (executemany), not a statement a row.
    conn.executemany(
        "UPDATE subscribers SET data = ?, updated_at = ? WHERE key = ?",
        [(latest[i].data, now, key) for i, key in existing.items()],
    )
    new = [row for i, row in latest.items() if i not in existing]
    # The journal's one writer gives the new rows their keys itself, so that no second
    # lookup is needed to learn them: the next after the largest ever given (AUTOINCREMENT's
    # high-water mark), never a deleted subscriber's, so a cursor past it misses nobody new.
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'subscribers'").fetchone()
    largest = found[0] if found is not None else 0
    keys = dict(existing)
    for offset, row in enumerate(new, largest + 1):
        keys[row.external_id] = offset
    values: list[object] = []
    for row in new:
        values += (keys[row.external_id], row.external_id, row.data)
    _insert(conn, _SUBSCRIBERS_INSERT, _SUBSCRIBER_ROWS, [tenant, now], values, 3)
    topics = _topic_keys(
        conn, tenant, {t for row in latest.values() for t in row.topics}, now, create=True
    )
    pairs: dict[int, list[int]] = defaultdict(list)
    for row in latest.values():
        for topic in row.topics:
            pairs[topics[topic]].append(keys[row.external_id])
    subscribed = _add_subscriptions(conn, pairs)
    return UpsertCounts(len(new), len(existing), subscribed)


def op_delete_subscriber(
    conn: sqlite3.Connection, tx: Transaction, tenant: str, external_id: str
) -> bool:
    found = conn.execute(
        "SELECT key FROM subscribers WHERE tenant = ? AND external_id = ?", (tenant, external_id)
    ).fetchone()
    if found is None:
        return False
    (key,) = found
    conn.execute(
        "UPDATE topics SET subscribers = subscribers - 1 "
        "WHERE key IN (SELECT topic FROM subscriptions WHERE subscriber = ?)",
        (key,),
    )
    conn.execute("DELETE FROM subscriptions WHERE subscriber = ?", (key,))
    conn.execute("DELETE FROM subscribers WHERE key = ?", (key,))
    return True


def op_create_topic(
    conn: sqlite3.Connection, tx: Transaction, tenant: str, name: str, now: int
) -> bool:
    created = conn.execute(
        "INSERT OR IGNORE INTO topics (tenant, name, created_at) VALUES (?, ?, ?)",
        (tenant, name, now),
    )
    return created.rowcount == 1


def op_delete_topic(conn: sqlite3.Connection, tx: Transaction, tenant: str, name: str) -> bool:
    found = conn.execute(
        "SELECT key FROM topics WHERE tenant = ? AND name = ?", (tenant, name)
    ).fetchone()
    if found is None:
        return False
    conn.execute("DELETE FROM subscriptions WHERE topic = ?", found)
    conn.execute("DELETE FROM topics WHERE key = ?", found)
    return True


def _subscriber_keys(
    conn: sqlite3.Connection, tenant: str, external_ids: list[str]
) -> dict[str, int]:
    select = "SELECT external_id, key FROM subscribers WHERE tenant = ? AND external_id"
    return _keys(conn, select, tenant, list(dict.fromkeys(external_ids)))


def _insert(
    conn: sqlite3.Connection,
    head: str,
    shape: tuple[str, str],
    fixed: list[object],
    values: Sequence[object],
    width: int,
) -> None:
    """Insert `values` (`width` a row) after the `fixed` parameters, a statement a chunk."""
    for sql, params in statements(head, shape, fixed, values, width, _MAX_ROWS):
        conn.execute(sql, params)


def _keys(conn: sqlite3.Connection, select: str, tenant: str, names: list[str]) -> dict[str, int]:
    """name → key for `names`, by `select` ("SELECT name, key … AND column") + " IN (…)",
    `_CHUNK` names a statement."""
    keys: dict[str, int] = {}
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        keys.update(conn.execute(f"{select} IN ({marks})", (tenant, *chunk)).fetchall())
    return keys


def op_subscribe(
    conn: sqlite3.Connection,
    tx: Transaction,
    tenant: str,
    topic: str,
    external_ids: list[str],
    now: int,
) -> SubscribeCounts | None:
    topics = _topic_keys(conn, tenant, {topic}, now, create=False)
    if topic not in topics:
        return None
    keys = _subscriber_keys(conn, tenant, external_ids)
    unknown = [i for i in dict.fromkeys(external_ids) if i not in keys]
    added = _add_subscriptions(conn, {topics[topic]: list(keys.values())})
    return SubscribeCounts(added, len(keys) - added, unknown)


def op_unsubscribe(
    conn: sqlite3.Connection, tx: Transaction, tenant: str, topic: str, external_ids: list[str]
) -> int | None:
    topics = _topic_keys(conn, tenant, {topic}, 0, create=False)
    if topic not in topics:
        return None
    key = topics[topic]
    keys = _subscriber_keys(conn, tenant, external_ids)
    before = conn.total_changes
    conn.executemany(
        "DELETE FROM subscriptions WHERE topic = ? AND subscriber = ?",
        [(key, s) for s in keys.values()],
    )
    removed = conn.total_changes - before
    if removed:
        conn.execute(
            "UPDATE topics SET subscribers = subscribers - ? WHERE key = ?", (removed, key)
        )
    return removed


# ------------------------------------------------------------------------------------ reads


def read_subscriber(
    conn: sqlite3.Connection, tenant: str, external_id: str
) -> StoredSubscriber | None:
    found = conn.execute(
        "SELECT key, data, updated_at FROM subscribers WHERE tenant = ? AND external_id = ?",
        (tenant, external_id),
    ).fetchone()
    if found is None:
        return None
    key, data, updated_at = found
    topics = [
        name
        for (name,) in conn.execute(
            "SELECT t.name FROM subscriptions s JOIN topics t ON t.key = s.topic "
            "WHERE s.subscriber = ? ORDER BY t.name",
            (key,),
        )
    ]
    return StoredSubscriber(external_id, data, topics, updated_at)


def read_topic(conn: sqlite3.Connection, tenant: str, name: str) -> TopicInfo | None:
    found = conn.execute(
        "SELECT name, subscribers, created_at FROM topics WHERE tenant = ? AND name = ?",
        (tenant, name),
    ).fetchone()
    return TopicInfo(*found) if found is not None else None


def read_topics(
    conn: sqlite3.Connection, tenant: str, after: str | None, limit: int
) -> list[TopicInfo]:
    rows = conn.execute(
        "SELECT name, subscribers, created_at FROM topics WHERE tenant = ? AND name > ? "
        "ORDER BY name LIMIT ?",
        (tenant, after or "", limit),
    ).fetchall()
    return [TopicInfo(*row) for row in rows]


def read_topic_members(
    conn: sqlite3.Connection, tenant: str, topic: str, after: int, limit: int
) -> list[Member] | None:
    found = conn.execute(
        "SELECT key FROM topics WHERE tenant = ? AND name = ?", (tenant, topic)
    ).fetchone()
    if found is None:
        return None
    rows = conn.execute(
        "SELECT s.subscriber, b.external_id, b.data FROM subscriptions s "
        "JOIN subscribers b ON b.key = s.subscriber "
        "WHERE s.topic = ? AND s.subscriber > ? ORDER BY s.subscriber LIMIT ?",
        (found[0], after, limit),
    ).fetchall()
    return [Member(*row) for row in rows]
