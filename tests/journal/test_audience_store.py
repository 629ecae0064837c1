"""Subscribers, topics and subscriptions, with the same semantics in both journals
(journal/audience.py): upserts that update, topics counted by counters, and members read by
key so that a cursor goes on exactly where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from journal_backends import BACKENDS, open_journal
from services import PgTarget
from sluice.journal.audience import SubscriberRow, TopicInfo
from sluice.journal.postgres import PostgresJournal

NOW = 1_800_000_000_000


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_journal(request.param, tmp_path) as journal:
        yield journal


def row(external_id: str, *topics: str, data: bytes = b"") -> SubscriberRow:
    return SubscriberRow(external_id, data or external_id.encode(), topics)


async def test_upsert_creates_then_updates_and_adds_topics(store: Any) -> None:
    counts = await store.upsert_subscribers("acme", [row("u1", "news"), row("u2")], NOW)
    assert counts == (2, 0, 1)
    counts = await store.upsert_subscribers(
        "acme", [row("u1", "news", "sport", data=b"v2"), row("u3", "sport")], NOW + 1
    )
    assert counts == (1, 1, 2)  # u1 updated (news it had), u3 created; sport twice
    found = await store.subscriber("acme", "u1")
    assert (found.data, found.topics, found.updated_at) == (b"v2", ["news", "sport"], NOW + 1)
    assert await store.topic("acme", "sport") == TopicInfo("sport", 2, NOW + 1)
    assert await store.subscriber("other", "u1") is None  # tenants apart
    # A later row with the same id wins; nothing is counted twice.
    counts = await store.upsert_subscribers(
        "acme", [row("u4", data=b"a"), row("u4", data=b"b")], NOW
    )
    assert counts == (1, 0, 0)
    assert (await store.subscriber("acme", "u4")).data == b"b"


async def test_topics_are_counted_listed_and_paged(store: Any) -> None:
    assert await store.create_topic("acme", "b-topic", NOW) is True
    assert await store.create_topic("acme", "b-topic", NOW) is False
    await store.create_topic("acme", "a-topic", NOW)
    await store.create_topic("other", "c-topic", NOW)
    names = [t.name for t in await store.topics("acme", None, 10)]
    assert names == ["a-topic", "b-topic"]
    assert [t.name for t in await store.topics("acme", "a-topic", 10)] == ["b-topic"]
    assert [t.name for t in await store.topics("acme", None, 1)] == ["a-topic"]
    await store.upsert_subscribers("acme", [row("u1"), row("u2"), row("u3")], NOW)
    counts = await store.subscribe("acme", "a-topic", ["u1", "u2", "nobody", "u1"], NOW)
    assert counts == (2, 0, ["nobody"])
    counts = await store.subscribe("acme", "a-topic", ["u2", "u3"], NOW)
    assert counts == (1, 1, [])
    assert (await store.topic("acme", "a-topic")).subscribers == 3
    assert await store.unsubscribe("acme", "a-topic", ["u2", "nobody"]) == 1
    assert await store.unsubscribe("acme", "a-topic", ["u2"]) == 0
    assert (await store.topic("acme", "a-topic")).subscribers == 2
    assert await store.subscribe("acme", "missing", ["u1"], NOW) is None
    assert await store.unsubscribe("acme", "missing", ["u1"]) is None


async def test_deletes_keep_the_counts_true(store: Any) -> None:
    await store.upsert_subscribers("acme", [row("u1", "t1", "t2"), row("u2", "t1")], NOW)
    assert await store.delete_subscriber("acme", "u1") is True
    assert await store.delete_subscriber("acme", "u1") is False
    assert (await store.topic("acme", "t1")).subscribers == 1
    assert (await store.topic("acme", "t2")).subscribers == 0
    assert await store.delete_topic("acme", "t1") is True
    assert await store.topic("acme", "t1") is None
    assert (await store.subscriber("acme", "u2")).topics == []  # the subscriber stays
    assert await store.delete_topic("acme", "t1") is False


async def test_members_are_read_by_key_and_a_cursor_goes_on_where_it_stopped(store: Any) -> None:
    await store.upsert_subscribers("acme", [row(f"u{i}", "news") for i in range(25)], NOW)
    seen: list[str] = []
    after = 0
    first_page = await store.topic_members("acme", "news", after, 10)
    assert len(first_page) == 10
    after = first_page[-1].key
    seen += [m.external_id for m in first_page]
    # The topic changes between pages: a new member joins, one already read leaves.
    await store.upsert_subscribers("acme", [row("late", "news")], NOW)
    await store.unsubscribe("acme", "news", [seen[0]])
    while page := await store.topic_members("acme", "news", after, 10):
        seen += [m.external_id for m in page]
        after = page[-1].key
    assert len(seen) == len(set(seen)) == 26  # nobody twice, the newcomer included
    assert seen[-1] == "late"
    assert [m.data for m in await store.topic_members("acme", "news", 0, 1)] == [b"u1"]
    assert await store.topic_members("acme", "missing", 0, 10) is None


# ------------------------------------------------- PostgreSQL: processes changing them at once

#: Backends waiting, directly or not, on the lock of the connection that asks.
_WAITING_BEHIND_ME = """
WITH RECURSIVE chain(pid) AS (
    SELECT pg_backend_pid()
    UNION
    SELECT a.pid FROM pg_stat_activity a JOIN chain c ON c.pid = ANY(pg_blocking_pids(a.pid))
)
SELECT array_agg(pid) FROM chain WHERE pid <> pg_backend_pid()
"""


@contextlib.asynccontextmanager
async def processes(target: PgTarget, n: int) -> AsyncIterator[list[PostgresJournal]]:
    """`n` journals on one schema, as `n` processes would open it (the edges' calls given
    time to wait behind the test's locks)."""
    journals = [
        PostgresJournal(target.url, schema=target.schema, ingress_wait_seconds=60) for _ in range(n)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for journal in journals:
            await journal.open()
            stack.push_async_callback(journal.close)
        yield journals


@contextlib.asynccontextmanager
async def topic_locked(target: PgTarget, name: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection holding the topic's row as its count's update would (the lock is given up
    when the block ends, or earlier by `COMMIT`)."""
    conn = await asyncpg.connect(target.url, server_settings={"search_path": target.schema})
    try:
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 FROM topics WHERE name = $1 FOR NO KEY UPDATE", name)
        yield conn
        await conn.execute("COMMIT")
    finally:
        await conn.close()


async def waiting_behind(
    conn: asyncpg.Connection, n: int, unless: asyncio.Task[Any] | None = None
) -> list[int]:
    """The pids of the `n` backends waiting behind `conn`'s locks, once there are that many
    (or those there are once `unless` is done: it did not wait)."""
    deadline = time.monotonic() + 30
    while True:
        # In a transaction, pg_stat_activity shows what it showed first unless cleared.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        pids = await conn.fetchval(_WAITING_BEHIND_ME) or []
        if len(pids) >= n or (unless is not None and unless.done()):
            return sorted(pids)
        assert time.monotonic() < deadline, f"{len(pids)} of {n} backends waiting"
        await asyncio.sleep(0.02)


async def stored_subscriptions(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM subscriptions")
    return count


async def test_two_processes_importing_overlapping_ids_count_each_subscription_once(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 2) as (first, second):
        await first.create_topic("acme", "news", NOW)
        async with topic_locked(pg_schema, "news") as lock:
            # Both imports get as far as the count's update before either commits: the one
            # there first waits on the lock, the other on the ids it shares with the first.
            imports = [
                asyncio.create_task(
                    first.upsert_subscribers(
                        "acme", [row(f"u{i:03}", "news") for i in range(600)], NOW
                    )
                ),
                asyncio.create_task(
                    second.upsert_subscribers(
                        "acme", [row(f"u{i:03}", "news") for i in reversed(range(300, 900))], NOW
                    )
                ),
            ]
            await waiting_behind(lock, 2)
            await lock.execute("COMMIT")
            counts = await asyncio.gather(*imports)
            assert sum(c.created for c in counts) == 900
            assert sum(c.updated for c in counts) == 300
            assert sum(c.subscribed for c in counts) == 900
            assert (await first.topic("acme", "news")).subscribers == 900
            assert await stored_subscriptions(lock) == 900


async def test_subscribing_the_ids_an_import_subscribes_at_once_counts_each_once(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 2) as (importer, api):
        ids = [f"u{i}" for i in range(200)]
        await importer.upsert_subscribers("acme", [row(i) for i in ids], NOW)
        await importer.create_topic("acme", "news", NOW)
        async with topic_locked(pg_schema, "news") as lock:
            # The import's subscriptions are written but not committed when the API's
            # subscribe of the same ids (in another order) looks for them.
            task = asyncio.create_task(
                importer.upsert_subscribers("acme", [row(i, "news") for i in ids], NOW + 1)
            )
            await waiting_behind(lock, 1)
            subscribed = asyncio.create_task(api.subscribe("acme", "news", ids[::-1], NOW))
            await waiting_behind(lock, 2)
            await lock.execute("COMMIT")
            imported, counts = await asyncio.gather(task, subscribed)
            assert imported.subscribed + counts.added == 200
            assert counts.added + counts.already == 200
            assert (await api.topic("acme", "news")).subscribers == 200
            assert await stored_subscriptions(lock) == 200


async def test_an_import_run_again_after_a_lost_connection_counts_once(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 1) as (journal,):
        await journal.upsert_subscribers("acme", [row("old", "news")], NOW)
        rows = [row("old", "news"), *(row(f"u{i}", "news") for i in range(100))]
        async with topic_locked(pg_schema, "news") as lock:
            task = asyncio.create_task(journal.upsert_subscribers("acme", rows, NOW + 1))
            # Its subscriptions are written, its count not yet: the connection is lost.
            (first_try,) = await waiting_behind(lock, 1)
            await lock.execute("SELECT pg_terminate_backend($1)", first_try)
            deadline = time.monotonic() + 30
            while (again := await waiting_behind(lock, 1)) == [first_try]:
                assert time.monotonic() < deadline, "the import was not run again"
                await asyncio.sleep(0.02)
            assert first_try not in again
            await lock.execute("COMMIT")
            assert await task == (100, 1, 100)
            assert (await journal.topic("acme", "news")).subscribers == 101
            assert await stored_subscriptions(lock) == 101


#: Subscriptions whose topic or subscriber is gone, and topics whose count is not their rows'.
_ORPHANS_AND_WRONG_COUNTS = """
SELECT (SELECT count(*) FROM subscriptions s WHERE NOT EXISTS
            (SELECT 1 FROM topics t WHERE t.key = s.topic)
        OR NOT EXISTS (SELECT 1 FROM subscribers b WHERE b.key = s.subscriber)),
       (SELECT count(*) FROM topics t WHERE t.subscribers <>
            (SELECT count(*) FROM subscriptions s WHERE s.topic = t.key))
"""


async def test_a_topic_deleted_during_an_import_keeps_no_subscription(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 2) as (importer, deleter):
        await importer.create_topic("acme", "news", NOW)
        async with topic_locked(pg_schema, "news") as lock:
            task = asyncio.create_task(
                importer.upsert_subscribers("acme", [row(f"u{i}", "news") for i in range(50)], NOW)
            )
            await waiting_behind(lock, 1)  # the import is at its count's update
            deleted = asyncio.create_task(deleter.delete_topic("acme", "news"))
            await waiting_behind(lock, 2)
            await lock.execute("COMMIT")
            assert await task == (50, 0, 50)
            assert await deleted is True
            assert await importer.topic("acme", "news") is None
            assert await stored_subscriptions(lock) == 0
            assert (await importer.subscriber("acme", "u7")).topics == []


async def test_an_import_into_a_topic_being_deleted_keeps_no_subscription(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 2) as (importer, deleter):
        await importer.create_topic("acme", "news", NOW)
        async with topic_locked(pg_schema, "news") as lock:
            # The delete waits first; the import comes up behind it with its subscriptions.
            deleted = asyncio.create_task(deleter.delete_topic("acme", "news"))
            await waiting_behind(lock, 1)
            task = asyncio.create_task(
                importer.upsert_subscribers("acme", [row(f"u{i}", "news") for i in range(50)], NOW)
            )
            await waiting_behind(lock, 2)
            await lock.execute("COMMIT")
            counts = await task
            assert await deleted is True
            assert counts.created == 50
            topic = await importer.topic("acme", "news")
            # Either order is fine (the delete first: the import makes the topic again), as
            # long as every subscription has its topic and every count its rows.
            assert await stored_subscriptions(lock) == (0 if topic is None else 50)
            assert tuple(await lock.fetchrow(_ORPHANS_AND_WRONG_COUNTS)) == (0, 0)


async def test_a_subscriber_deleted_while_being_subscribed_keeps_no_subscription(
    pg_schema: PgTarget,
) -> None:
    async with processes(pg_schema, 2) as (api, deleter):
        ids = [f"u{i}" for i in range(5)]
        await api.upsert_subscribers("acme", [row(i) for i in ids], NOW)
        await api.create_topic("acme", "news", NOW)
        async with topic_locked(pg_schema, "news") as lock:
            subscribed = asyncio.create_task(api.subscribe("acme", "news", ids, NOW))
            await waiting_behind(lock, 1)  # its subscriptions written, its count not yet
            deleted = asyncio.create_task(deleter.delete_subscriber("acme", "u3"))
            await waiting_behind(lock, 2, unless=deleted)  # it must wait for the subscribe
            await lock.execute("COMMIT")
            assert await subscribed == (5, 0, [])
            assert await deleted is True
            assert (await api.topic("acme", "news")).subscribers == 4
            assert await stored_subscriptions(lock) == 4
            assert tuple(await lock.fetchrow(_ORPHANS_AND_WRONG_COUNTS)) == (0, 0)


async def test_a_cursor_past_the_last_member_misses_no_newcomer(store: Any) -> None:
    """Keys are never given again: a subscriber created after the highest-key one was
    deleted gets a key past every cursor, on both journals."""
    await store.upsert_subscribers("acme", [row("u1", "news"), row("u2", "news")], NOW)
    [*_, last] = await store.topic_members("acme", "news", 0, 10)
    assert last.external_id == "u2"
    await store.delete_subscriber("acme", "u2")
    await store.upsert_subscribers("acme", [row("u3", "news")], NOW)
    after = await store.topic_members("acme", "news", last.key, 10)
    assert [m.external_id for m in after] == ["u3"]


async def test_an_id_twice_in_one_upsert_keeps_both_rows_topics(store: Any) -> None:
    counts = await store.upsert_subscribers(
        "acme", [row("u1", "a", data=b"first"), row("u1", "b", data=b"second")], NOW
    )
    assert counts == (1, 0, 2)
    found = await store.subscriber("acme", "u1")
    assert (found.data, found.topics) == (b"second", ["a", "b"])
