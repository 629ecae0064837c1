"""Broadcasts with the same semantics in both journals (journal/broadcasts.py): a cursor that
moves only with its chunk of messages, counts kept by the journal with every state change,
and pause, resume and cancel that act on the queued messages."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from journal_backends import BACKENDS, open_journal
from sluice.journal.audience import SubscriberRow
from sluice.journal.base import Completion, IdempotencyConflict
from sluice.journal.broadcasts import (
    BroadcastStatus,
    ExpansionChunk,
    NewBroadcast,
    UnknownTopics,
)
from sluice.journal.sqlite import SqliteJournal
from sluice.model import Message, Outcome, Priority, State

NOW = 1_800_000_000_000
OWNER = 7


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_journal(request.param, tmp_path) as journal:
        yield journal


async def subscribers(store: Any, n: int, *topics: str) -> None:
    rows = [SubscriberRow(f"u{i:04d}", f"d{i}".encode(), topics) for i in range(n)]
    await store.upsert_subscribers("acme", rows, NOW)


def message(i: int, channel: str = "sms") -> Message:
    return Message(
        1_000_000 + i, "acme", channel, f"+4477009{i:05d}", f"hello {i}", priority=Priority.BULK
    )


def chunk(
    record: Any,
    messages: list[Message],
    *,
    to: tuple[int, int],
    last: bool = False,
    examined: int | None = None,
    suppressed: dict[str, int] | None = None,
) -> ExpansionChunk:
    return ExpansionChunk(
        record.id,
        record.topic_index,
        record.cursor,
        to[0],
        to[1],
        last,
        messages,
        len(messages) if examined is None else examined,
        suppressed or {},
    )


async def test_create_checks_topics_and_counts_the_audience(store: Any) -> None:
    await subscribers(store, 5, "news")
    await subscribers(store, 3, "news", "sport")  # u0000..u0002 follow both
    with pytest.raises(UnknownTopics) as refused:
        await store.create_broadcast(
            NewBroadcast(1, "acme", b"spec", ("news", "nope", "gone"), NOW), None, None, NOW
        )
    assert refused.value.names == ["nope", "gone"]
    created = await store.create_broadcast(
        NewBroadcast(1, "acme", b"spec", ("news", "sport"), NOW), "k1", b"d1", NOW
    )
    assert created == (1, False)
    # The same key again: the first broadcast, nothing new; another request: a conflict.
    again = await store.create_broadcast(
        NewBroadcast(2, "acme", b"spec", ("news", "sport"), NOW), "k1", b"d1", NOW
    )
    assert again == (1, True)
    with pytest.raises(IdempotencyConflict):
        await store.create_broadcast(
            NewBroadcast(3, "acme", b"spec", ("news",), NOW), "k1", b"other", NOW
        )
    record = await store.broadcast("acme", 1)
    assert record.audience == 8 and record.spec == b"spec" and record.phase == "scheduled"
    assert await store.broadcast("other", 1) is None
    assert [b.id for b in await store.broadcasts("acme", None, 10)] == [1]


async def test_members_of_later_topics_are_duplicates_once_reached(store: Any) -> None:
    await subscribers(store, 4, "news")
    await store.upsert_subscribers("acme", [SubscriberRow("u0001", b"x", ("sport",))], NOW)
    await store.upsert_subscribers("acme", [SubscriberRow("u0002", b"x", ("sport",))], NOW)
    await store.upsert_subscribers("acme", [SubscriberRow("z", b"z", ("sport",))], NOW)
    await store.create_broadcast(
        NewBroadcast(1, "acme", b"s", ("news", "sport"), NOW), None, None, NOW
    )
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    first = await store.broadcast_members(1, record.topic_keys, 0, 0, 3)
    assert [(m.external_id, m.duplicate) for m in first] == [
        ("u0000", False),
        ("u0001", False),
        ("u0002", False),
    ]
    rest = await store.broadcast_members(1, record.topic_keys, 0, first[-1].key, 10)
    assert [m.external_id for m in rest] == ["u0003"]
    # News reaches u0000, u0001 and u0003; u0002 is not reached there (opted out of news).
    reached = (first[0].key, first[1].key, rest[0].key)
    done = ExpansionChunk(
        1, 0, 0, 1, 0, False, [message(i) for i in range(3)], 4, {"opted_out": 1}, reached
    )
    assert await store.expand_broadcast(OWNER, done, NOW + 1)
    # u0001 leaves news now: it was reached all the same, and gets nothing from sport.
    await store.unsubscribe("acme", "news", ["u0001"])
    second = await store.broadcast_members(1, record.topic_keys, 1, 0, 10)
    assert [(m.external_id, m.duplicate) for m in second] == [
        ("u0001", True),
        ("u0002", False),
        ("z", False),
    ]
    # Once no topic is left, what it reached is forgotten, by the sweeps, in steps.
    last = ExpansionChunk(1, 1, 0, 2, 0, True, [message(3)], 3, {"duplicate": 1})
    assert await store.expand_broadcast(OWNER, last, NOW + 2)
    await store.sweep(NOW + 3, 86_400_000)
    assert [m.duplicate for m in await store.broadcast_members(1, record.topic_keys, 1, 0, 9)] == [
        False,
        False,
        False,
    ]


async def test_expansion_moves_the_cursor_with_its_messages_only(store: Any) -> None:
    await subscribers(store, 10, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    assert await store.lease_broadcasts(OWNER + 1, NOW, 30_000, 10) == []  # leased
    members = await store.broadcast_members(record.id, record.topic_keys, 0, 0, 4)
    applied = await store.expand_broadcast(
        OWNER,
        chunk(
            record,
            [message(i) for i in range(3)],
            to=(0, members[-1].key),
            examined=4,
            suppressed={"no_address": 1},
        ),
        NOW + 1,
    )
    assert applied is True
    # A chunk read from the old cursor (a second expander, or a replay) writes nothing.
    assert (
        await store.expand_broadcast(
            OWNER, chunk(record, [message(9)], to=(0, members[-1].key)), NOW + 2
        )
        is False
    )
    # Nor does one from an owner without the lease.
    after = await store.broadcast("acme", 1)
    assert (
        await store.expand_broadcast(OWNER + 1, chunk(after, [message(8)], to=(0, 99)), NOW + 2)
        is False
    )
    assert (after.cursor, after.examined, after.planned) == (members[-1].key, 4, 3)
    assert after.suppressed == {"no_address": 1}
    assert after.counts == {"sms": {State.QUEUED: 3}}
    assert after.started_at == NOW + 1 and after.phase == "expanding"
    assert store.pending()["sms"] == 3
    done = await store.expand_broadcast(
        OWNER,
        chunk(
            after,
            [message(3, "email")],
            to=(1, 0),
            last=True,
            examined=6,
            suppressed={"no_address": 2, "opted_out": 3},
        ),
        NOW + 3,
    )
    assert done is True
    final = await store.broadcast("acme", 1)
    assert final.expanded and final.expanded_at == NOW + 3 and final.phase == "sending"
    assert final.suppressed == {"no_address": 3, "opted_out": 3}
    assert final.counts == {"sms": {State.QUEUED: 3}, "email": {State.QUEUED: 1}}
    # Expanded: nothing more to lease.
    assert await store.lease_broadcasts(OWNER, NOW + 4, 30_000, 10) == []


async def test_counts_follow_every_state_change(store: Any) -> None:
    await subscribers(store, 3, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    await store.expand_broadcast(
        OWNER, chunk(record, [message(i) for i in range(3)], to=(1, 0), last=True), NOW
    )
    claimed = await store.claim("sms", 10, 10, OWNER, NOW + 10, 30_000)
    assert len(claimed) == 3
    assert (await store.broadcast("acme", 1)).counts == {"sms": {State.SENDING: 3}}
    await store.complete(
        OWNER,
        [
            Completion(claimed[0].id, State.SENT, "sms", 1, Outcome.SENT),
            Completion(claimed[1].id, State.FAILED, "sms", 1, Outcome.PERMANENT),
            Completion(
                claimed[2].id,
                State.QUEUED,
                "sms",
                1,
                Outcome.TRANSIENT,
                due_at=NOW,
                reroute_to="email",
            ),
        ],
    )
    record = await store.broadcast("acme", 1)
    assert record.counts == {"sms": {State.SENT: 1, State.FAILED: 1}, "email": {State.QUEUED: 1}}
    assert record.phase == "sending"
    await store.complete(
        OWNER, [Completion(claimed[0].id, State.DELIVERED, "sms", 1, Outcome.SENT)]
    )
    assert (await store.broadcast("acme", 1)).counts["sms"] == {State.DELIVERED: 1, State.FAILED: 1}


async def test_pause_holds_resume_releases_cancel_counts(store: Any) -> None:
    await subscribers(store, 6, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    await store.expand_broadcast(
        OWNER, chunk(record, [message(i) for i in range(4)], to=(0, 4)), NOW
    )
    paused = await store.change_broadcast("acme", 1, BroadcastStatus.PAUSED, NOW + 1)
    assert paused.messages == 4 and paused.record.phase == "paused"
    assert await store.claim("sms", 10, 10, OWNER, NOW + 2, 30_000) == []
    # A paused broadcast is not expanded: its lease is not renewed, a chunk does not apply.
    assert await store.lease_broadcasts(OWNER, NOW + 2, 30_000, 10) == []
    assert (
        await store.expand_broadcast(OWNER, chunk(paused.record, [message(5)], to=(0, 6)), NOW + 2)
        is False
    )
    resumed = await store.change_broadcast("acme", 1, BroadcastStatus.RUNNING, NOW + 3)
    assert resumed.messages == 4 and resumed.record.phase == "expanding"
    claimed = await store.claim("sms", 1, 1, OWNER, NOW + 4, 30_000)
    assert len(claimed) == 1
    cancelled = await store.change_broadcast("acme", 1, BroadcastStatus.CANCELLED, NOW + 5)
    assert cancelled.messages == 3
    assert cancelled.record.counts == {"sms": {State.SENDING: 1, State.CANCELLED: 3}}
    assert cancelled.record.phase == "cancelling"
    # Cancelled stays cancelled; the message in flight ends as its attempt does.
    again = await store.change_broadcast("acme", 1, BroadcastStatus.RUNNING, NOW + 6)
    assert again.record.status is BroadcastStatus.CANCELLED and again.messages == 0
    await store.complete(OWNER, [Completion(claimed[0].id, State.SENT, "sms", 1, Outcome.SENT)])
    final = await store.broadcast("acme", 1)
    assert final.phase == "cancelled"
    assert final.counts == {"sms": {State.SENT: 1, State.CANCELLED: 3}}
    assert store.pending().get("sms", 0) == 0
    assert await store.change_broadcast("other", 1, BroadcastStatus.PAUSED, NOW) is None


async def test_a_lease_is_taken_over_once_it_lapses(store: Any) -> None:
    await subscribers(store, 2, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    await store.create_broadcast(
        NewBroadcast(2, "acme", b"s", ("news",), NOW + 60_000), None, None, NOW
    )
    assert [r.id for r in await store.lease_broadcasts(OWNER, NOW, 1_000, 10)] == [1]
    assert await store.lease_broadcasts(OWNER + 1, NOW + 500, 1_000, 10) == []
    taken = await store.lease_broadcasts(OWNER + 1, NOW + 1_001, 100_000, 10)
    assert [r.id for r in taken] == [1]
    # The first owner's chunk no longer applies; a later start comes when its time does.
    assert (
        await store.expand_broadcast(OWNER, chunk(taken[0], [message(1)], to=(0, 1)), NOW + 1_002)
        is False
    )
    assert [r.id for r in await store.lease_broadcasts(OWNER, NOW + 60_000, 1_000, 10)] == [2]
    await store.release_broadcasts(OWNER + 1)
    assert [r.id for r in await store.lease_broadcasts(OWNER, NOW + 60_001, 1_000, 10)] == [1, 2]


async def test_an_sqlite_journal_drops_the_leases_of_its_previous_run(tmp_path: Path) -> None:
    # One process holds an SQLite journal: whoever held a lease when it last closed is gone.
    async with open_journal("sqlite", tmp_path) as store:
        await subscribers(store, 2, "news")
        await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
        assert len(await store.lease_broadcasts(OWNER, NOW, 600_000, 10)) == 1
    async with open_journal("sqlite", tmp_path) as store:
        assert [r.id for r in await store.lease_broadcasts(OWNER + 1, NOW, 1_000, 10)] == [1]


async def test_a_pause_keeps_each_messages_due_time_for_the_resume(store: Any) -> None:
    await subscribers(store, 4, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    later = msgspec.structs.replace(message(2), not_before=NOW + 500_000)  # a local-time wave
    await store.expand_broadcast(
        OWNER, chunk(record, [message(0), message(1), later], to=(1, 0), last=True), NOW
    )
    first, second = await store.claim("sms", 2, 2, OWNER, NOW, 30_000)
    # One attempt failed for now: its retry is due in 100 s (its backoff).
    retry = Completion(first.id, State.QUEUED, "sms", 1, Outcome.TRANSIENT, due_at=NOW + 100_000)
    await store.complete(OWNER, [retry])
    await store.change_broadcast("acme", 1, BroadcastStatus.PAUSED, NOW + 1)
    # Queued again while paused (a lapsed lease): held too.
    again = Completion(second.id, State.QUEUED, "sms", 1, Outcome.TRANSIENT, due_at=NOW + 2)
    await store.complete(OWNER, [again])
    resumed = await store.change_broadcast("acme", 1, BroadcastStatus.RUNNING, NOW + 20)
    assert resumed.messages == 3
    # The one whose time has passed is due at the resume; the others keep theirs.
    assert [m.id for m in await store.claim("sms", 10, 10, OWNER, NOW + 30, 30_000)] == [second.id]
    assert await store.next_due("sms") == NOW + 100_000
    assert [m.id for m in await store.claim("sms", 10, 10, OWNER, NOW + 100_000, 30_000)] == [
        first.id
    ]
    assert await store.next_due("sms") == NOW + 500_000


async def test_messages_held_by_an_earlier_version_are_released_at_their_own_time(
    store: Any,
) -> None:
    await subscribers(store, 2, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    wave = msgspec.structs.replace(message(0), not_before=NOW + 500_000)
    await store.expand_broadcast(OWNER, chunk(record, [wave], to=(1, 0), last=True), NOW)
    await store.change_broadcast("acme", 1, BroadcastStatus.PAUSED, NOW + 1)
    # As an earlier version held it: at the one fixed time, its due time lost.
    await _raw_execute(store, "UPDATE messages SET due_at = 4611686018427387903 WHERE id = 1000000")
    await store.change_broadcast("acme", 1, BroadcastStatus.RUNNING, NOW + 20)
    assert await store.next_due("sms") == NOW + 500_000  # its wave, from not_before


async def _raw_execute(store: Any, sql: str) -> None:
    """One statement on the journal's own storage, as an earlier version left it."""
    if isinstance(store, SqliteJournal):
        with sqlite3.connect(store._path) as conn:
            conn.execute(sql)
        return
    conn = await asyncpg.connect(store._url)
    try:
        await conn.execute(f"SET search_path TO {store._schema}")
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_message_queued_again_while_paused_or_cancelled_is_held(store: Any) -> None:
    await subscribers(store, 4, "news")
    await store.create_broadcast(NewBroadcast(1, "acme", b"s", ("news",), NOW), None, None, NOW)
    (record,) = await store.lease_broadcasts(OWNER, NOW, 30_000, 10)
    await store.expand_broadcast(
        OWNER, chunk(record, [message(i) for i in range(2)], to=(1, 0), last=True), NOW
    )
    first, second = await store.claim("sms", 10, 10, OWNER, NOW, 30_000)
    await store.change_broadcast("acme", 1, BroadcastStatus.PAUSED, NOW + 1)
    # Its attempt fails for now: queued again, due in a moment, but the broadcast is paused.
    retry = Completion(first.id, State.QUEUED, "sms", 1, Outcome.TRANSIENT, due_at=NOW + 2)
    await store.complete(OWNER, [retry])
    assert await store.claim("sms", 10, 10, OWNER, NOW + 10, 30_000) == []
    await store.change_broadcast("acme", 1, BroadcastStatus.RUNNING, NOW + 20)
    (again,) = await store.claim("sms", 10, 10, OWNER, NOW + 30, 30_000)
    assert again.id == first.id
    # Cancelled while both are in flight, then both queued again: the sweep cancels them.
    await store.change_broadcast("acme", 1, BroadcastStatus.CANCELLED, NOW + 40)
    await store.complete(
        OWNER,
        [
            Completion(m.id, State.QUEUED, "sms", 1, Outcome.TRANSIENT, due_at=NOW + 41)
            for m in (again, second)
        ],
    )
    assert await store.claim("sms", 10, 10, OWNER, NOW + 50, 30_000) == []
    await store.sweep(NOW + 60, 86_400_000)
    final = await store.broadcast("acme", 1)
    assert final.counts == {"sms": {State.CANCELLED: 2}} and final.phase == "cancelled"
    assert store.pending().get("sms", 0) == 0
