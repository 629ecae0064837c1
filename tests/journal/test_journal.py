"""Both journals against their contract (journal/base.py): SQLite on real files in tmp_path,
PostgreSQL in a fresh schema of the real server. Tests of one backend's own machinery (the
SQLite writer's group commits, its file lock) take that backend's fixture.

Inserts stamp `due_at` with the wall clock, so claims and sweeps here pass a `now` taken after
the insert returned, plus whatever offset the test needs; everything else is driven by `now`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from journal_backends import BACKENDS, open_journal
from services import PgTarget
from sluice.journal.base import (
    CallbackJob,
    CancelResult,
    Completion,
    DeadlinePassed,
    IdempotencyConflict,
    Journal,
    JournalBusy,
    JournalError,
    MessageRecord,
    Receipt,
)
from sluice.journal.postgres import PostgresJournal
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, Message, Outcome, Priority, State, format_id, now_ms

TENANT = "acme"
OWNER = 11
OTHER_OWNER = 22
LEASE = 30_000
HOOK = "https://app.example.com/hook"

_ids = IdGenerator(node=5)


def make(
    channel: str = "web",
    recipient: str = "+15550001",
    *,
    tenant: str = TENANT,
    **fields: Any,
) -> Message:
    return Message(_ids.next(), tenant, channel, recipient, "hello", **fields)


@pytest.fixture(params=BACKENDS)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(request.param, tmp_path) as j:
        yield j


@pytest.fixture
async def sqlite_journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "journal.db")
    await j.open()
    try:
        yield j
    finally:
        await j.close()


async def record(journal: Journal, message_id: int, tenant: str = TENANT) -> MessageRecord:
    rec = await journal.get(tenant, message_id)
    assert rec is not None
    return rec


async def state_of(journal: Journal, message_id: int) -> State:
    return (await record(journal, message_id)).state


async def insert_one(journal: Journal, **fields: Any) -> Message:
    message = make(**fields)
    result = await journal.insert(message.tenant, [message])
    assert result.ids == [message.id]
    return message


async def claim_all(
    journal: Journal, channel: str = "web", now: int | None = None, owner: int = OWNER
) -> list[Message]:
    return await journal.claim(channel, 100, 100, owner, now or now_ms(), LEASE)


def completion(message: Message, state: State, outcome: Outcome, **fields: Any) -> Completion:
    return Completion(message.id, state, message.channel, message.attempts, outcome, **fields)


async def callbacks(journal: Journal, now: int | None = None) -> list[CallbackJob]:
    return await journal.claim_callbacks(100, now or now_ms() + 1, 60_000)


def payload(job: CallbackJob) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(job.payload)
    return decoded


class WriterGate:
    """Holds the writer thread inside one operation so that the next writes queue up behind it
    and are taken as one group (white box: uses the private `_write`)."""

    def __init__(self, journal: SqliteJournal) -> None:
        self._journal = journal
        self._entered = threading.Event()
        self._release = threading.Event()
        self._task: asyncio.Future[Any] | None = None

    def _op(self, conn: sqlite3.Connection, tx: object) -> None:
        self._entered.set()
        self._release.wait(10)

    async def __aenter__(self) -> WriterGate:
        self._task = asyncio.ensure_future(self._journal._write(self._op))
        assert await asyncio.to_thread(self._entered.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._task is not None
        await self._task


async def queue_all(coros: list[Any]) -> list[asyncio.Task[Any]]:
    """Start one task per coroutine and return once every one has queued its write.

    A journal write is queued synchronously in the task's first step; the event is set in the
    last task's first step, so by the time we resume every task has queued."""
    started = 0
    all_queued = asyncio.Event()

    async def run(coro: Any) -> Any:
        nonlocal started
        started += 1
        if started == len(coros):
            all_queued.set()
        return await coro

    tasks = [asyncio.ensure_future(run(c)) for c in coros]
    await all_queued.wait()
    return tasks


# --- insert and get --------------------------------------------------------------------------


async def test_insert_then_get(journal: Journal) -> None:
    message = make(
        sender="Acme",
        priority=Priority.HIGH,
        callback_url=HOOK,
        metadata={"order": "42"},
        expires_at=now_ms() + 3_600_000,
    )
    result = await journal.insert(TENANT, [message])
    assert result.ids == [message.id]
    assert result.replayed is False

    rec = await record(journal, message.id)
    assert rec.state == State.QUEUED
    stored = rec.message
    assert (stored.id, stored.tenant, stored.channel, stored.recipient, stored.body) == (
        message.id,
        TENANT,
        "web",
        "+15550001",
        "hello",
    )
    assert stored.sender == "Acme"
    assert stored.priority == Priority.HIGH
    assert stored.callback_url == HOOK
    assert stored.metadata == {"order": "42"}
    assert stored.expires_at == message.expires_at
    assert stored.attempts == 0
    assert [e.state for e in rec.timeline] == [State.ACCEPTED, State.QUEUED]
    assert rec.timeline[0].channel == "web"
    assert rec.provider_id is None
    assert journal.pending() == {"web": 1}


@pytest.mark.parametrize("size", [1, 3, 1023, 1025, 2500])
@pytest.mark.parametrize("shape", ["plain", "every field", "one with every field"])
async def test_batches_of_any_size_and_shape_store_every_field(
    journal: Journal, size: int, shape: str
) -> None:
    # Inserts are multi-row statements of power-of-two sizes, in a plain and a full shape.
    later = now_ms() + 60_000
    extra: dict[str, Any] = {
        "sender": "Acme",
        "not_before": later,
        "expires_at": later + 60_000,
        "callback_url": HOOK,
        "metadata": {"order": "42"},
    }
    batch = [
        make(
            recipient=f"+1555{i:07d}",
            priority=Priority(i % 4),
            **(extra if shape == "every field" or (shape != "plain" and i == size - 1) else {}),
        )
        for i in range(size)
    ]
    result = await journal.insert(TENANT, batch)
    assert result.ids == [m.id for m in batch]
    assert journal.pending() == {"web": size}
    assert await journal.count_by_state() == {State.QUEUED: size}
    for m in (batch[0], batch[size // 2], batch[-1]):
        rec = await record(journal, m.id)
        assert rec.message == m
        assert rec.due_at == (later if m.not_before is not None else rec.updated_at)
        [found] = await journal.by_recipient(TENANT, m.recipient, None, 10)
        assert found.message.id == m.id


async def test_a_group_larger_than_one_index_statement(journal: Journal) -> None:
    batch = [make(recipient=f"+1555{i:07d}") for i in range(9_000)]
    await journal.insert(TENANT, batch)
    for m in (batch[0], batch[8_191], batch[8_192], batch[-1]):
        [found] = await journal.by_recipient(TENANT, m.recipient, None, 10)
        assert found.message.id == m.id


async def test_an_insert_past_its_deadline_stores_nothing(journal: Journal) -> None:
    late = make()
    with pytest.raises(DeadlinePassed):
        await journal.insert(TENANT, [late], "key-1", b"d" * 32, deadline=time.monotonic() - 1)
    assert await journal.get(TENANT, late.id) is None
    assert sum(journal.pending().values()) == 0
    # Nothing of it was kept, not even its idempotency key: the producer's retry is stored.
    retry = make()
    result = await journal.insert(
        TENANT, [retry], "key-1", b"d" * 32, deadline=time.monotonic() + 60
    )
    assert result.ids == [retry.id] and not result.replayed
    assert await journal.get(TENANT, retry.id) is not None


async def test_a_deadline_passing_in_the_queue_refuses_only_that_insert(
    sqlite_journal: SqliteJournal, tmp_path: Path
) -> None:
    """Another connection holds the write lock; the deadline passes while the group waits for
    it. Once the lock is free the late insert is refused, the one without a deadline stored."""
    blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    deadline = time.monotonic() + 0.05
    late, patient = make(), make()
    tasks = [
        asyncio.create_task(sqlite_journal.insert(TENANT, [late], deadline=deadline)),
        asyncio.create_task(sqlite_journal.insert(TENANT, [patient])),
    ]
    # Past the deadline by the clock it is on (asyncio's timers may fire a little early).
    await asyncio.sleep(deadline + 0.02 - time.monotonic())
    assert time.monotonic() > deadline
    blocker.execute("ROLLBACK")
    blocker.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], DeadlinePassed)
    assert await sqlite_journal.get(TENANT, late.id) is None
    assert await sqlite_journal.get(TENANT, patient.id) is not None


async def test_get_unknown_or_other_tenant_is_none(journal: Journal) -> None:
    message = await insert_one(journal)
    assert await journal.get("someone-else", message.id) is None
    assert await journal.get(TENANT, message.id + 1) is None


async def test_a_future_not_before_is_kept(journal: Journal) -> None:
    later = now_ms() + 60_000
    message = await insert_one(journal, not_before=later)
    rec = await record(journal, message.id)
    assert rec.due_at == later
    assert rec.message.not_before == later
    # A retry moves the due time but not what the producer asked for.
    [claimed] = await claim_all(journal, now=later)
    retry = completion(claimed, State.QUEUED, Outcome.TRANSIENT, due_at=later + 5_000)
    await journal.complete(OWNER, [retry])
    rec = await record(journal, message.id)
    assert (rec.due_at, rec.message.not_before) == (later + 5_000, later)


async def test_no_not_before_is_reported_when_none_was_given(journal: Journal) -> None:
    ids = IdGenerator(node=9, clock_ms=lambda: now_ms() - 50)  # id made 50 ms before the commit
    message = Message(ids.next(), TENANT, "web", "+1", "hi")
    await journal.insert(TENANT, [message])
    assert (await record(journal, message.id)).message.not_before is None


async def test_writes_before_open_are_refused(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "j.db")
    with pytest.raises(JournalError, match="not open"):
        await journal.insert(TENANT, [make()])
    with pytest.raises(JournalError, match="not open"):
        await journal.get(TENANT, 1)


# --- group commit ----------------------------------------------------------------------------


async def test_concurrent_inserts_share_commits(sqlite_journal: SqliteJournal) -> None:
    journal = sqlite_journal
    before = journal.commits
    messages = [make(recipient=f"+1555000{i:02d}") for i in range(50)]
    results = await asyncio.gather(*(journal.insert(TENANT, [m]) for m in messages))
    assert [r.ids for r in results] == [[m.id] for m in messages]
    assert journal.commits - before <= 10  # far fewer commits than the 50 calls
    assert journal.pending() == {"web": 50}
    counts = await journal.count_by_state()
    assert counts == {State.QUEUED: 50}


async def test_one_group_one_commit(sqlite_journal: SqliteJournal) -> None:
    journal = sqlite_journal
    messages = [make() for _ in range(50)]
    async with WriterGate(journal):
        before = journal.commits
        tasks = await queue_all([journal.insert(TENANT, [m]) for m in messages])
    await asyncio.gather(*tasks)
    assert journal.commits - before == 2  # the gate's group, then all 50 inserts at once
    assert journal.pending() == {"web": 50}


async def test_a_failing_op_fails_only_its_caller(sqlite_journal: SqliteJournal) -> None:
    journal = sqlite_journal
    first = await insert_one(journal, callback_url=HOOK)
    await journal.insert(TENANT, [make()], "key-1", b"digest-1")
    good = [make() for _ in range(20)]
    duplicate = make(recipient="+dup")
    duplicate.id = first.id  # the same primary key as a stored message
    conflict = make(recipient="+conflict")
    calls = [journal.insert(TENANT, [m]) for m in good[:10]]
    calls.append(journal.insert(TENANT, [duplicate]))
    calls.append(journal.insert(TENANT, [conflict], "key-1", b"digest-2"))
    calls += [journal.insert(TENANT, [m]) for m in good[10:]]

    async with WriterGate(journal):
        before = journal.commits
        tasks = await queue_all(calls)
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert journal.commits - before == 2  # everything went into one group
    assert isinstance(results[10], sqlite3.IntegrityError)
    assert isinstance(results[11], IdempotencyConflict)
    ok = results[:10] + results[12:]
    assert [r.ids for r in ok] == [[m.id] for m in good]  # type: ignore[union-attr]
    for m in good:
        assert await state_of(journal, m.id) == State.QUEUED
    assert await journal.get(TENANT, conflict.id) is None
    assert (await record(journal, first.id)).message.recipient == "+15550001"  # not overwritten
    assert journal.pending() == {"web": 2 + 20}
    # The group was retried op by op: each one's recipient index went with its own commit.
    history = await journal.by_recipient(TENANT, "+15550001", None, 100)
    assert {m.id for m in good} <= {r.message.id for r in history}


@pytest.mark.parametrize("fsync_outcomes", [False, True])
async def test_claims_commit_apart_from_the_producers_fsync_unless_outcomes_are_fsynced(
    tmp_path: Path, fsync_outcomes: bool
) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", fsync_outcomes=fsync_outcomes)
    await journal.open()
    try:
        queued = await insert_one(journal)
        new = make()
        async with WriterGate(journal):
            before = journal.commits
            tasks = await queue_all([journal.insert(TENANT, [new]), claim_all(journal)])
        inserted, claimed = await asyncio.gather(*tasks)
        assert inserted.ids == [new.id]
        if fsync_outcomes:  # the gate's group, then the insert and the claim in queue order
            assert journal.commits - before == 2
            assert {m.id for m in claimed} == {queued.id, new.id}
        else:  # the gate's group, the claim on its own first, then the insert
            assert journal.commits - before == 3
            assert [m.id for m in claimed] == [queued.id]
        assert journal.pending() == {"web": 2}
    finally:
        await journal.close()


async def test_a_lone_failing_op_leaves_the_journal_usable(journal: Journal) -> None:
    first = await insert_one(journal)
    again = make()
    again.id = first.id
    extra = make()
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await journal.insert(TENANT, [extra, again])  # all or nothing: `extra` is not stored
    assert await journal.get(TENANT, extra.id) is None
    assert journal.pending() == {"web": 1}
    await insert_one(journal)
    assert journal.pending() == {"web": 2}


# --- idempotency -----------------------------------------------------------------------------


async def test_a_repeated_key_returns_the_original_ids_and_stores_nothing(
    journal: Journal,
) -> None:
    batch = [make(), make()]
    first = await journal.insert(TENANT, batch, "order-42", b"d1")
    assert first.replayed is False
    retry = [make(), make()]  # a producer's retry gets fresh ids from ingress
    second = await journal.insert(TENANT, retry, "order-42", b"d1")
    assert second.replayed is True
    assert second.ids == [m.id for m in batch]
    assert journal.pending() == {"web": 2}
    for m in retry:
        assert await journal.get(TENANT, m.id) is None
    assert await journal.count_by_state() == {State.QUEUED: 2}


async def test_a_repeated_key_with_another_digest_is_a_conflict(journal: Journal) -> None:
    await journal.insert(TENANT, [make()], "order-42", b"d1")
    other = make()
    with pytest.raises(IdempotencyConflict, match="order-42"):
        await journal.insert(TENANT, [other], "order-42", b"d2")
    assert await journal.get(TENANT, other.id) is None
    assert journal.pending() == {"web": 1}


async def test_keys_are_per_tenant(journal: Journal) -> None:
    ours = await journal.insert(TENANT, [make()], "k", b"d1")
    theirs_message = make(tenant="zeta")
    theirs = await journal.insert("zeta", [theirs_message], "k", b"d2")
    assert theirs.replayed is False
    assert theirs.ids == [theirs_message.id] != ours.ids
    assert journal.pending() == {"web": 2}


async def test_keys_are_forgotten_after_the_ttl(journal: Journal) -> None:
    await journal.insert(TENANT, [make()], "k", b"d1")
    stored_at = now_ms()
    ttl = 60_000
    kept = await journal.sweep(stored_at, ttl)
    assert kept.forgotten_keys == 0
    assert (await journal.insert(TENANT, [make()], "k", b"d1")).replayed is True

    forgot = await journal.sweep(stored_at + ttl + 1_000, ttl)
    assert forgot.forgotten_keys == 1
    fresh = make()
    result = await journal.insert(TENANT, [fresh], "k", b"d2")  # no conflict any more
    assert result.replayed is False
    assert result.ids == [fresh.id]


# --- claim -----------------------------------------------------------------------------------


async def test_claim_leases_and_counts_the_attempt(journal: Journal) -> None:
    message = await insert_one(journal)
    now = now_ms()
    claimed = await journal.claim("web", 10, 10, OWNER, now, LEASE)
    assert [m.id for m in claimed] == [message.id]
    assert claimed[0].attempts == 1
    rec = await record(journal, message.id)
    assert rec.state == State.SENDING
    assert rec.message.attempts == 1
    sending = rec.timeline[-1]
    assert (sending.state, sending.channel, sending.attempt, sending.at) == (
        State.SENDING,
        "web",
        1,
        now,
    )
    assert await journal.claim("web", 10, 10, OTHER_OWNER, now, LEASE) == []  # leased
    assert journal.pending() == {"web": 1}  # sending still owes a delivery


async def test_claim_takes_only_its_channel(journal: Journal) -> None:
    web = await insert_one(journal, channel="web")
    sms = await insert_one(journal, channel="sms")
    assert [m.id for m in await claim_all(journal, "sms")] == [sms.id]
    assert [m.id for m in await claim_all(journal, "web")] == [web.id]
    assert await claim_all(journal, "push") == []


async def test_claim_order_is_urgent_then_high_then_normal_then_bulk(
    journal: Journal,
) -> None:
    t = now_ms()
    inserted = []
    for due, priority in enumerate(
        [Priority.BULK, Priority.NORMAL, Priority.HIGH, Priority.URGENT] * 2
    ):
        # Older due times for lower priorities: priority must win over age.
        inserted.append(await insert_one(journal, priority=priority, not_before=t - 100 + due))
    claimed = await claim_all(journal, now=t)
    assert [m.priority for m in claimed] == [
        Priority.URGENT,
        Priority.URGENT,
        Priority.HIGH,
        Priority.HIGH,
        Priority.NORMAL,
        Priority.NORMAL,
        Priority.BULK,
        Priority.BULK,
    ]
    # Oldest first within a priority.
    by_id = {m.id: i for i, m in enumerate(inserted)}
    for a, b in zip(claimed[::2], claimed[1::2], strict=True):
        assert by_id[a.id] < by_id[b.id]


async def test_non_urgent_limit_is_respected(journal: Journal) -> None:
    for priority in [Priority.URGENT] * 3 + [Priority.NORMAL] * 5 + [Priority.BULK] * 5:
        await insert_one(journal, priority=priority)
    now = now_ms()
    claimed = await journal.claim("web", 10, 2, OWNER, now, LEASE)
    assert [m.priority for m in claimed] == [Priority.URGENT] * 3 + [Priority.NORMAL] * 2
    none_left = await journal.claim("web", 10, 0, OWNER, now, LEASE)
    assert none_left == []  # only non-urgent left, and no room for them
    rest = await journal.claim("web", 4, 4, OWNER, now, LEASE)
    assert [m.priority for m in rest] == [Priority.NORMAL] * 3 + [Priority.BULK]


async def test_urgent_can_use_the_full_limit(journal: Journal) -> None:
    for priority in [Priority.URGENT] * 8 + [Priority.NORMAL] * 3:
        await insert_one(journal, priority=priority)
    claimed = await journal.claim("web", 5, 1, OWNER, now_ms(), LEASE)
    assert [m.priority for m in claimed] == [Priority.URGENT] * 5
    claimed = await journal.claim("web", 5, 1, OWNER, now_ms(), LEASE)
    assert [m.priority for m in claimed] == [Priority.URGENT] * 3 + [Priority.NORMAL]


async def test_not_before_in_the_future_is_not_claimed_until_due(journal: Journal) -> None:
    due = now_ms() + 60_000
    message = await insert_one(journal, not_before=due)
    assert await claim_all(journal, now=due - 1) == []
    assert await journal.next_due("web") == due
    assert await journal.next_due("sms") is None
    assert [m.id for m in await claim_all(journal, now=due)] == [message.id]


async def test_expired_messages_are_marked_expired_at_claim(journal: Journal) -> None:
    t = now_ms()
    expiring = await insert_one(journal, expires_at=t + 1_000, callback_url=HOOK)
    quiet = await insert_one(journal, expires_at=t + 1_000)  # no callback_url
    live = await insert_one(journal, expires_at=t + 10_000)
    claimed = await claim_all(journal, now=t + 1_000)
    assert [m.id for m in claimed] == [live.id]
    for m in (expiring, quiet):
        rec = await record(journal, m.id)
        assert rec.state == State.EXPIRED
        assert rec.timeline[-1].state == State.EXPIRED
    assert journal.pending() == {"web": 1}
    jobs = await callbacks(journal, t + 1_000)
    assert [(j.message_id, j.url) for j in jobs] == [(expiring.id, HOOK)]
    body = payload(jobs[0])
    assert body["id"] == format_id(expiring.id)
    assert body["state"] == "expired"
    assert body["tenant"] == TENANT
    assert body["to"] == "+15550001"


# --- complete --------------------------------------------------------------------------------


async def test_sent_then_delivered(journal: Journal) -> None:
    message = await insert_one(journal, callback_url=HOOK, metadata={"k": "v"})
    [claimed] = await claim_all(journal)
    await journal.complete(
        OWNER,
        [completion(claimed, State.SENT, Outcome.SENT, latency_ms=12.5, provider_id="p-1")],
    )
    rec = await record(journal, message.id)
    assert rec.state == State.SENT
    assert rec.provider_id == "p-1"
    sent = rec.timeline[-1]
    assert (sent.state, sent.outcome, sent.provider_id, sent.latency_ms, sent.attempt) == (
        State.SENT,
        Outcome.SENT,
        "p-1",
        12.5,
        1,
    )
    assert journal.pending() == {}

    # A receipt carries no lease: any owner may record it.
    receipt = completion(claimed, State.DELIVERED, Outcome.SENT, provider_id="p-1")
    await journal.complete(OTHER_OWNER, [receipt])
    assert await state_of(journal, message.id) == State.DELIVERED
    assert journal.pending() == {}
    jobs = sorted(await callbacks(journal), key=lambda j: j.id)
    assert [payload(j)["state"] for j in jobs] == ["sent", "delivered"]
    assert payload(jobs[0])["provider_id"] == "p-1"
    assert payload(jobs[0])["metadata"] == {"k": "v"}


async def test_delivered_straight_from_sending(journal: Journal) -> None:
    message = await insert_one(journal)
    [claimed] = await claim_all(journal)
    await journal.complete(OWNER, [completion(claimed, State.DELIVERED, Outcome.SENT)])
    assert await state_of(journal, message.id) == State.DELIVERED
    assert journal.pending() == {}


async def test_failed_is_final(journal: Journal) -> None:
    message = await insert_one(journal, callback_url=HOOK)
    [claimed] = await claim_all(journal)
    failed = completion(claimed, State.FAILED, Outcome.PERMANENT, detail="invalid number")
    await journal.complete(OWNER, [failed])
    rec = await record(journal, message.id)
    assert rec.state == State.FAILED
    assert rec.timeline[-1].detail == "invalid number"
    assert journal.pending() == {}
    assert await claim_all(journal, now=now_ms() + 10**9) == []
    [job] = await callbacks(journal)
    assert payload(job)["state"] == "failed"
    assert payload(job)["detail"] == "invalid number"
    assert payload(job)["attempts"] == 1


async def test_retry_is_not_claimable_before_it_is_due(journal: Journal) -> None:
    message = await insert_one(journal, callback_url=HOOK)
    [claimed] = await claim_all(journal)
    due = now_ms() + 5_000
    retry = completion(claimed, State.QUEUED, Outcome.TRANSIENT, due_at=due, detail="HTTP 503")
    await journal.complete(OWNER, [retry])
    rec = await record(journal, message.id)
    assert rec.state == State.QUEUED
    assert rec.due_at == due
    assert rec.timeline[-1].outcome == Outcome.TRANSIENT
    assert journal.pending() == {"web": 1}
    assert await callbacks(journal) == []  # not final: the producer hears nothing yet
    assert await claim_all(journal, now=due - 1) == []
    [again] = await claim_all(journal, now=due)
    assert again.id == message.id
    assert again.attempts == 2


async def test_an_uncounted_retry_gives_the_attempt_back(journal: Journal) -> None:
    await insert_one(journal)
    [claimed] = await claim_all(journal)
    throttled = completion(claimed, State.QUEUED, Outcome.THROTTLED, uncount=True)
    await journal.complete(OWNER, [throttled])
    [again] = await claim_all(journal)
    assert again.attempts == 1


async def test_reroute_to_moves_the_channel_and_the_pending_count(journal: Journal) -> None:
    message = await insert_one(journal)
    [claimed] = await claim_all(journal)
    moved = completion(claimed, State.QUEUED, Outcome.TRANSIENT, reroute_to="backup")
    await journal.complete(OWNER, [moved])
    assert journal.pending() == {"backup": 1}
    assert await claim_all(journal, "web") == []
    [again] = await claim_all(journal, "backup")
    assert (again.id, again.channel) == (message.id, "backup")


async def test_completion_from_a_non_owner_is_ignored(journal: Journal) -> None:
    message = await insert_one(journal)
    [claimed] = await claim_all(journal, owner=OWNER)
    before = await record(journal, message.id)
    for state in (State.SENT, State.FAILED, State.QUEUED):
        await journal.complete(OTHER_OWNER, [completion(claimed, state, Outcome.SENT)])
    after = await record(journal, message.id)
    assert after.state == State.SENDING
    assert after.timeline == before.timeline
    assert journal.pending() == {"web": 1}
    await journal.complete(OWNER, [completion(claimed, State.SENT, Outcome.SENT)])
    assert await state_of(journal, message.id) == State.SENT


async def test_a_completion_is_applied_once(journal: Journal) -> None:
    await insert_one(journal)
    [claimed] = await claim_all(journal)
    sent = completion(claimed, State.SENT, Outcome.SENT)
    await journal.complete(OWNER, [sent])
    await journal.complete(OWNER, [sent])  # e.g. a stage retrying its batch
    assert journal.pending() == {}


async def test_pending_is_exact_through_every_transition(journal: Journal) -> None:
    t = now_ms()
    a, b, c, d, e, f = [await insert_one(journal) for _ in range(6)]
    g = await insert_one(journal, channel="sms", expires_at=t + 1)
    h = await insert_one(journal, channel="sms", expires_at=t + 1, not_before=t + 50_000)
    assert journal.pending() == {"web": 6, "sms": 2}

    t1 = now_ms()  # every insert is due by now
    claimed = {m.id: m for m in await claim_all(journal, now=t1)}
    assert set(claimed) == {a.id, b.id, c.id, d.id, e.id, f.id}
    assert journal.pending() == {"web": 6, "sms": 2}  # sending still counts
    await journal.complete(
        OWNER,
        [
            completion(claimed[a.id], State.SENT, Outcome.SENT),
            completion(claimed[b.id], State.FAILED, Outcome.PERMANENT),
            completion(claimed[c.id], State.QUEUED, Outcome.TRANSIENT, due_at=t),
            completion(claimed[d.id], State.QUEUED, Outcome.TRANSIENT, reroute_to="sms"),
        ],
    )
    assert journal.pending() == {"web": 3, "sms": 3}  # a, b final; d moved to sms

    # g has expired by this claim, h is not due yet, d (rerouted) is.
    assert [m.id for m in await claim_all(journal, "sms", now=t1)] == [d.id]
    assert await state_of(journal, g.id) == State.EXPIRED
    assert journal.pending() == {"web": 3, "sms": 2}

    await journal.complete(OWNER, [completion(claimed[e.id], State.SENT, Outcome.SENT)])
    assert journal.pending() == {"web": 2, "sms": 2}
    await journal.complete(OWNER, [completion(claimed[e.id], State.DELIVERED, Outcome.SENT)])
    assert journal.pending() == {"web": 2, "sms": 2}
    assert await journal.cancel(TENANT, c.id, t) == CancelResult.CANCELLED
    assert journal.pending() == {"web": 1, "sms": 2}

    swept = await journal.sweep(t1 + LEASE + 1, 60_000)
    assert (swept.reclaimed, swept.expired) == (2, 1)  # f's and d's leases; h's expiry
    assert journal.pending() == {"web": 1, "sms": 1}
    assert await state_of(journal, h.id) == State.EXPIRED
    assert await journal.count_by_state() == {
        State.QUEUED: 2,  # f, d
        State.SENT: 1,
        State.FAILED: 1,
        State.DELIVERED: 1,
        State.CANCELLED: 1,
        State.EXPIRED: 2,
    }


async def test_one_batch_of_every_outcome(journal: Journal) -> None:
    elsewhere = await insert_one(journal)
    [other] = await claim_all(journal, owner=OTHER_OWNER)
    retried, sent, failed, delivered, quiet = [
        await insert_one(journal, callback_url=HOOK) for _ in range(5)
    ]
    assert await journal.apply_receipts("web", [Receipt("p-2", True, "stat:DELIVRD")]) == 0
    claimed = {m.id: m for m in await claim_all(journal)}
    later, parts = now_ms() + 60_000, ("p-1", "p-2")
    queued_callbacks = await journal.complete(
        OWNER,
        [
            completion(claimed[retried.id], State.QUEUED, Outcome.TRANSIENT, due_at=later),
            completion(claimed[sent.id], State.SENT, Outcome.SENT, provider_id="p-1", parts=parts),
            completion(claimed[failed.id], State.FAILED, Outcome.PERMANENT, detail="no route"),
            completion(claimed[delivered.id], State.DELIVERED, Outcome.SENT, provider_id="p-3"),
            completion(claimed[quiet.id], State.SENT, Outcome.SENT, provider_id="p-4"),
            completion(other, State.SENT, Outcome.SENT, provider_id="p-5"),  # another's lease
        ],
    )
    assert queued_callbacks == 4  # sent, failed, delivered, quiet
    assert [await state_of(journal, m.id) for m in (retried, sent, failed, delivered, quiet)] == [
        State.QUEUED,
        State.SENT,  # its early part's receipt is applied; the other part's is awaited
        State.FAILED,
        State.DELIVERED,
        State.SENT,
    ]
    assert await state_of(journal, elsewhere.id) == State.SENDING
    assert journal.pending() == {"web": 2}  # retried, elsewhere
    assert await journal.apply_receipts("web", [Receipt("p-1", True, "stat:DELIVRD")]) == 1
    timeline = (await record(journal, sent.id)).timeline
    assert [e.state for e in timeline][-2:] == [State.SENT, State.DELIVERED]
    states = sorted(payload(j)["state"] for j in await callbacks(journal))
    assert states == ["delivered", "delivered", "failed", "sent", "sent"]


# --- leases ----------------------------------------------------------------------------------


async def test_renew_leases_extends_them(journal: Journal) -> None:
    mine = await insert_one(journal)
    theirs = await insert_one(journal, channel="sms")
    t = now_ms()
    await journal.claim("web", 10, 10, OWNER, t, 1_000)
    await journal.claim("sms", 10, 10, OTHER_OWNER, t, 1_000)
    assert await journal.renew_leases(OWNER, t + 60_000, [mine.id, theirs.id]) == 1
    assert await journal.renew_leases(999, t + 60_000, [mine.id, theirs.id]) == 0
    assert await journal.renew_leases(OTHER_OWNER, t + 60_000, []) == 0

    swept = await journal.sweep(t + 1_001, 60_000)
    assert swept.reclaimed == 1  # only the lease that was not renewed
    assert await state_of(journal, mine.id) == State.SENDING
    assert await state_of(journal, theirs.id) == State.QUEUED

    assert (await journal.sweep(t + 60_000, 60_000)).reclaimed == 0
    assert (await journal.sweep(t + 60_001, 60_000)).reclaimed == 1
    assert await state_of(journal, mine.id) == State.QUEUED


async def test_a_lease_its_owner_no_longer_works_on_is_not_renewed(journal: Journal) -> None:
    # E.g. its SENT outcome was committed without a flush and lost with the server: the
    # owner believes it done, so it must expire and go out again rather than stay leased.
    forgotten, working = await insert_one(journal), await insert_one(journal)
    t = now_ms()
    await journal.claim("web", 10, 10, OWNER, t, 1_000)
    assert await journal.renew_leases(OWNER, t + 60_000, [working.id]) == 1
    assert (await journal.sweep(t + 1_001, 60_000)).reclaimed == 1
    assert await state_of(journal, forgotten.id) == State.QUEUED
    assert await state_of(journal, working.id) == State.SENDING


async def test_sweep_reclaims_expired_leases(journal: Journal) -> None:
    message = await insert_one(journal)
    t = now_ms()
    [claimed] = await journal.claim("web", 10, 10, OWNER, t, 1_000)
    assert (await journal.sweep(t + 1_000, 60_000)).reclaimed == 0  # lease still holds
    result = await journal.sweep(t + 1_001, 60_000)
    assert result.reclaimed == 1
    rec = await record(journal, message.id)
    assert rec.state == State.QUEUED
    assert rec.timeline[-1].state == State.QUEUED
    assert "lease" in (rec.timeline[-1].detail or "")
    assert journal.pending() == {"web": 1}

    # Someone else may take it now; the dead owner's late completion changes nothing.
    [again] = await journal.claim("web", 10, 10, OTHER_OWNER, t + 1_002, LEASE)
    assert again.id == message.id
    await journal.complete(OWNER, [completion(claimed, State.FAILED, Outcome.PERMANENT)])
    assert await state_of(journal, message.id) == State.SENDING
    await journal.complete(OTHER_OWNER, [completion(again, State.SENT, Outcome.SENT)])
    assert await state_of(journal, message.id) == State.SENT


async def test_sweep_expires_queued_messages(journal: Journal) -> None:
    t = now_ms()
    # Due after it expires: no claim will ever see it, only the sweeper.
    message = await insert_one(
        journal, not_before=t + 50_000, expires_at=t + 1_000, callback_url=HOOK
    )
    assert (await journal.sweep(t + 999, 60_000)).expired == 0
    result = await journal.sweep(t + 1_000, 60_000)
    assert result.expired == 1
    assert await state_of(journal, message.id) == State.EXPIRED
    assert journal.pending() == {}
    [job] = await callbacks(journal, t + 1_000)
    assert payload(job)["state"] == "expired"
    assert (await journal.sweep(t + 2_000, 60_000)).expired == 0


async def test_release_returns_only_this_owners_claims(journal: Journal) -> None:
    mine = [await insert_one(journal) for _ in range(2)]
    theirs = await insert_one(journal, channel="sms")
    t = now_ms()
    await journal.claim("web", 10, 10, OWNER, t, LEASE)
    await journal.claim("sms", 10, 10, OTHER_OWNER, t, LEASE)
    assert await journal.release(OWNER, t + 5) == 2
    for m in mine:
        rec = await record(journal, m.id)
        assert rec.state == State.QUEUED
        assert "released" in (rec.timeline[-1].detail or "")
    assert await state_of(journal, theirs.id) == State.SENDING
    assert await journal.release(OWNER, t + 6) == 0
    assert journal.pending() == {"web": 2, "sms": 1}
    assert len(await claim_all(journal, now=t + 7)) == 2


async def test_reroute_moves_due_queued_messages(journal: Journal) -> None:
    t = now_ms()
    due = [await insert_one(journal) for _ in range(3)]
    later = await insert_one(journal, not_before=t + 60_000)
    t1 = now_ms()  # every insert but `later` is due by now
    assert await journal.reroute("web", "backup", 2, t1) == 2
    assert await journal.reroute("web", "backup", 10, t1) == 1
    assert journal.pending() == {"web": 1, "backup": 3}
    moved = await claim_all(journal, "backup", now=t1)
    assert {m.id for m in moved} == {m.id for m in due}
    assert (await record(journal, later.id)).message.channel == "web"


# --- cancel ----------------------------------------------------------------------------------


async def test_cancel_a_queued_message(journal: Journal) -> None:
    message = await insert_one(journal, callback_url=HOOK)
    t = now_ms()
    assert await journal.cancel(TENANT, message.id, t) == CancelResult.CANCELLED
    rec = await record(journal, message.id)
    assert rec.state == State.CANCELLED
    assert rec.timeline[-1].state == State.CANCELLED
    assert journal.pending() == {}
    assert await claim_all(journal) == []
    [job] = await callbacks(journal)
    assert payload(job)["state"] == "cancelled"
    assert await journal.cancel(TENANT, message.id, t) == CancelResult.TOO_LATE


async def test_cancel_a_sending_message_is_too_late(journal: Journal) -> None:
    message = await insert_one(journal)
    await claim_all(journal)
    assert await journal.cancel(TENANT, message.id, now_ms()) == CancelResult.TOO_LATE
    assert await state_of(journal, message.id) == State.SENDING
    assert journal.pending() == {"web": 1}


async def test_cancel_another_tenants_message_is_not_found(journal: Journal) -> None:
    message = await insert_one(journal)
    assert await journal.cancel("zeta", message.id, now_ms()) == CancelResult.NOT_FOUND
    assert await journal.cancel(TENANT, message.id + 1, now_ms()) == CancelResult.NOT_FOUND
    assert await state_of(journal, message.id) == State.QUEUED
    assert journal.pending() == {"web": 1}


# --- history ---------------------------------------------------------------------------------


async def test_by_recipient_pages_newest_first_per_tenant(journal: Journal) -> None:
    ours = [await insert_one(journal, recipient="+1") for _ in range(5)]
    await insert_one(journal, recipient="+2")
    theirs = await insert_one(journal, recipient="+1", tenant="zeta")

    newest_first = [m.id for m in reversed(ours)]
    page = await journal.by_recipient(TENANT, "+1", None, 2)
    assert [r.message.id for r in page] == newest_first[:2]
    page = await journal.by_recipient(TENANT, "+1", page[-1].message.id, 2)
    assert [r.message.id for r in page] == newest_first[2:4]
    page = await journal.by_recipient(TENANT, "+1", page[-1].message.id, 2)
    assert [r.message.id for r in page] == newest_first[4:]
    assert await journal.by_recipient(TENANT, "+1", page[-1].message.id, 2) == []

    everything = await journal.by_recipient(TENANT, "+1", None, 100)
    assert [r.message.id for r in everything] == newest_first
    assert all(r.timeline[0].state == State.ACCEPTED for r in everything)
    zeta = await journal.by_recipient("zeta", "+1", None, 100)
    assert [r.message.id for r in zeta] == [theirs.id]
    assert await journal.by_recipient(TENANT, "+3", None, 100) == []


async def test_by_recipient_is_exact_for_colliding_recipients(journal: Journal) -> None:
    # Two numbers whose CRC-32 (with the tenant) is the same: a hashed index must not mix them.
    a, b = "+155529685295", "+155532060020"
    first = await insert_one(journal, recipient=a)
    second = await insert_one(journal, recipient=b)
    assert [r.message.id for r in await journal.by_recipient(TENANT, a, None, 10)] == [first.id]
    assert [r.message.id for r in await journal.by_recipient(TENANT, b, None, 10)] == [second.id]


async def test_by_recipient_history_survives_many_commits_and_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    recipients = ["+1", "+2", "+3"]
    expected: dict[str, list[int]] = {r: [] for r in recipients}

    async def check(journal: Journal) -> None:
        for recipient, ids in expected.items():
            newest_first = ids[::-1]
            whole = await journal.by_recipient(TENANT, recipient, None, 1000)
            assert [r.message.id for r in whole] == newest_first
            paged: list[int] = []
            before = None
            while page := await journal.by_recipient(TENANT, recipient, before, 4):
                paged += [r.message.id for r in page]
                before = page[-1].message.id
            assert paged == newest_first

    journal = SqliteJournal(path)
    await journal.open()
    for i in range(90):  # one commit each: many small index runs to merge
        message = await insert_one(journal, recipient=recipients[i % 3])
        expected[message.recipient].append(message.id)
    await check(journal)
    await journal.close()

    journal = SqliteJournal(path)
    await journal.open()
    try:
        await check(journal)
        batch = [make(recipient=recipients[i % 3]) for i in range(30)]
        await journal.insert(TENANT, batch)
        for m in batch:
            expected[m.recipient].append(m.id)
        await check(journal)
    finally:
        await journal.close()


# --- life cycle ------------------------------------------------------------------------------


async def test_reopening_recovers_messages_left_sending(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = SqliteJournal(path)
    await first.open()
    messages = [make() for _ in range(3)]
    await first.insert(TENANT, messages)
    claimed = await first.claim("web", 2, 2, OWNER, now_ms(), LEASE)
    assert len(claimed) == 2
    await first.close()  # as if the process died: claims never completed nor released

    second = SqliteJournal(path)
    await second.open()
    try:
        assert second.pending() == {"web": 3}
        for m in claimed:
            rec = await record(second, m.id)
            assert rec.state == State.QUEUED
            assert "recovered" in (rec.timeline[-1].detail or "")
        again = await second.claim("web", 10, 10, OTHER_OWNER, now_ms(), LEASE)
        assert {m.id for m in again} == {m.id for m in messages}
        await second.complete(OTHER_OWNER, [completion(m, State.SENT, Outcome.SENT) for m in again])
        assert second.pending() == {}
    finally:
        await second.close()


async def test_reopening_the_same_object_keeps_pending_exact(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    await insert_one(journal)
    await journal.close()
    await journal.open()
    try:
        assert journal.pending() == {"web": 1}
    finally:
        await journal.close()


async def test_a_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = SqliteJournal(path)
    await first.open()
    second = SqliteJournal(path)
    try:
        with pytest.raises(JournalBusy, match="in use"):
            await second.open()
    finally:
        await first.close()
    await second.open()  # free again once the owner closed it
    await second.close()


# --- callbacks -------------------------------------------------------------------------------


async def _three_callbacks(journal: Journal) -> None:
    for _ in range(3):
        await insert_one(journal, callback_url=HOOK)
    t = now_ms()
    for m in await claim_all(journal, now=t):
        await journal.complete(OWNER, [completion(m, State.SENT, Outcome.SENT)])


async def test_claim_callbacks_leases_them(journal: Journal) -> None:
    await _three_callbacks(journal)
    t = now_ms() + 1
    jobs = await journal.claim_callbacks(2, t, 10_000)
    assert len(jobs) == 2  # the limit holds
    assert all(j.attempts == 1 and j.url == HOOK for j in jobs)
    [third] = await journal.claim_callbacks(10, t, 10_000)
    assert third.id not in {j.id for j in jobs}
    assert await journal.claim_callbacks(10, t + 9_999, 10_000) == []  # all leased
    again = await journal.claim_callbacks(10, t + 10_000, 10_000)
    assert sorted(j.id for j in again) == sorted([*(j.id for j in jobs), third.id])
    assert all(j.attempts == 2 for j in again)


async def test_finish_callbacks(journal: Journal) -> None:
    await _three_callbacks(journal)
    t = now_ms() + 1
    done, retried, dropped = await journal.claim_callbacks(10, t, 10_000)
    await journal.finish_callbacks([done.id], [(retried.id, t + 500)], [dropped.id])
    assert await journal.claim_callbacks(10, t + 499, 10_000) == []
    [again] = await journal.claim_callbacks(10, t + 500, 10_000)
    assert (again.id, again.attempts) == (retried.id, 2)
    await journal.finish_callbacks([again.id], [], [])
    assert await journal.claim_callbacks(10, t + 10**9, 10_000) == []


async def test_writes_racing_close_fail_instead_of_hanging(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    before = [asyncio.ensure_future(journal.insert(TENANT, [make()])) for _ in range(5)]
    close_task = asyncio.ensure_future(journal.close())
    during: list[asyncio.Task[Any]] = []
    while not close_task.done() and len(during) < 10_000:
        # One write per event-loop turn while close() runs, so some land in each of its awaits.
        during.append(asyncio.ensure_future(journal.insert(TENANT, [make()])))
        await asyncio.sleep(0)  # a turn of the loop, not a wait for time to pass
    await close_task
    # The timeout only bounds a hang; a correct journal has answered every write by now.
    finished, hanging = await asyncio.wait([*before, *during], timeout=1)
    for task in hanging:
        task.cancel()
    errors = [task.exception() for task in finished]
    assert not hanging, f"{len(hanging)} writes never finished"
    assert all(task.exception() is None for task in before)  # queued before close: committed
    assert all(isinstance(e, JournalError) for e in errors[len(before) :] if e is not None)
    assert all(isinstance(task.exception(), JournalError) for task in during)


async def test_a_journal_file_from_before_not_before_still_takes_inserts(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path)
    await journal.open()
    old = await insert_one(journal)
    await journal.close()
    with sqlite3.connect(path) as conn:  # make it the file an earlier version left behind
        conn.execute("ALTER TABLE messages DROP COLUMN not_before")
        conn.execute("PRAGMA user_version = 1")
    conn.close()

    journal = SqliteJournal(path)
    await journal.open()
    try:
        assert (await record(journal, old.id)).state == State.QUEUED
        await insert_one(journal)
        assert journal.pending() == {"web": 2}
    finally:
        await journal.close()


async def test_a_statement_past_its_timeout_fails_the_call_not_the_journal(
    pg_schema: PgTarget,
) -> None:
    journal = PostgresJournal(pg_schema.url, schema=pg_schema.schema, statement_timeout_seconds=0.2)
    await journal.open()
    blocker = await asyncpg.connect(
        pg_schema.url, server_settings={"search_path": pg_schema.schema}
    )
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(JournalError, match="journal failed: QueryCanceledError"):
                await journal.insert(TENANT, [make()])  # waits for the lock past its timeout
        await insert_one(journal)  # the lock is gone: the journal works as before
        assert journal.pending() == {"web": 1}
    finally:
        await blocker.close()
        await journal.close()
