"""One batch of outcomes of every kind at once, on both journals: each kind is applied by its
own statement, and the batch's events, parts and callbacks come out of them together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from journal_backends import BACKENDS, open_journal
from sluice.journal.base import Completion, Journal, Receipt
from sluice.model import IdGenerator, Message, Outcome, State, now_ms

TENANT = "acme"
OWNER = 11
LEASE = 30_000
HOOK = "https://app.example.com/hook"

_ids = IdGenerator(node=6)


@pytest.fixture(params=BACKENDS)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(request.param, tmp_path) as j:
        yield j


def done(message: Message, state: State, outcome: Outcome, **fields: Any) -> Completion:
    return Completion(message.id, state, message.channel, message.attempts, outcome, **fields)


async def test_a_batch_of_every_kind_of_outcome_applies_each(journal: Journal) -> None:
    retried, sent, failed, delivered, moved = (
        Message(_ids.next(), TENANT, "web", "+15550001", "hello", callback_url=HOOK)
        for _ in range(5)
    )
    await journal.insert(TENANT, [retried, sent, failed, delivered, moved])
    now = now_ms()
    claimed = await journal.claim("web", 10, 10, OWNER, now, LEASE)
    assert len(claimed) == 5
    queued_now = await journal.complete(
        OWNER,
        [
            done(retried, State.QUEUED, Outcome.TRANSIENT, due_at=now + 60_000),
            done(sent, State.SENT, Outcome.SENT, provider_id="p1", parts=("p1", "p2")),
            done(failed, State.FAILED, Outcome.PERMANENT, detail="no such number"),
            done(delivered, State.DELIVERED, Outcome.SENT, provider_id="d1"),
            done(moved, State.QUEUED, Outcome.TRANSIENT, due_at=now, reroute_to="sms"),
        ],
    )
    assert queued_now == 3  # one per final state among them: SENT, FAILED and DELIVERED
    states = {m.id: (await journal.get(TENANT, m.id)) for m in claimed}
    assert {i: (r.state if r else None) for i, r in states.items()} == {
        retried.id: State.QUEUED,
        sent.id: State.SENT,
        failed.id: State.FAILED,
        delivered.id: State.DELIVERED,
        moved.id: State.QUEUED,
    }
    record = states[moved.id]
    assert record is not None and record.message.channel == "sms"
    for message_id, entry in states.items():
        assert entry is not None and entry.timeline[-1].state == entry.state, message_id
    assert journal.pending() == {"web": 1, "sms": 1}  # the retried one and the moved one

    # The parts that SENT recorded meet their receipts.
    assert await journal.apply_receipts("web", [Receipt("p1", True), Receipt("p2", True)]) == 1
    final = await journal.get(TENANT, sent.id)
    assert final is not None and final.state == State.DELIVERED
    jobs = await journal.claim_callbacks(10, now_ms() + 1, 60_000)
    assert sorted(j.message_id for j in jobs) == sorted([failed.id, delivered.id, sent.id, sent.id])


async def test_outcomes_of_messages_whose_lease_was_lost_change_nothing(
    journal: Journal,
) -> None:
    messages = [Message(_ids.next(), TENANT, "web", "+15550001", "hello") for _ in range(3)]
    await journal.insert(TENANT, messages)
    now = now_ms()
    first, second, third = await journal.claim("web", 10, 10, OWNER, now, LEASE)
    batch = [
        done(first, State.QUEUED, Outcome.TRANSIENT, due_at=now),
        done(second, State.SENT, Outcome.SENT, provider_id="x"),
        done(third, State.DELIVERED, Outcome.SENT, provider_id="y"),
    ]
    assert await journal.complete(OWNER + 1, batch[:2]) == 0  # another owner's: not applied
    await journal.complete(OWNER, batch)
    again = await journal.get(TENANT, first.id)
    assert again is not None
    events = len(again.timeline)
    await journal.complete(OWNER, batch[:2])  # the same outcomes twice: the second finds no lease
    twice = await journal.get(TENANT, first.id)
    assert twice is not None and len(twice.timeline) == events
    assert journal.pending() == {"web": 1}
