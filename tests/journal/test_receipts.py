"""Delivery receipts in both journals: parts, order of arrival, final states, callbacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from journal_backends import BACKENDS, open_journal
from sluice.journal.base import Completion, Journal, Receipt
from sluice.model import IdGenerator, Message, Outcome, State, now_ms

OWNER = 5
HOOK = "https://app.example.com/status"


@pytest.fixture(params=BACKENDS)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(request.param, tmp_path) as j:
        yield j


async def sent(journal: Journal, parts: tuple[str, ...]) -> int:
    message = Message(IdGenerator(node=3).next(), "acme", "sms", "+1555", "hi", callback_url=HOOK)
    await journal.insert("acme", [message])
    [claimed] = await journal.claim("sms", 1, 1, OWNER, now_ms(), 30_000)
    await journal.complete(
        OWNER,
        [Completion(claimed.id, State.SENT, "sms", 1, Outcome.SENT, 1.0, parts[0], parts=parts)],
    )
    return message.id


async def state(journal: Journal, message_id: int) -> State:
    record = await journal.get("acme", message_id)
    assert record is not None
    return record.state


async def callback_states(journal: Journal) -> list[str]:
    jobs = await journal.claim_callbacks(100, now_ms() + 1, 60_000)
    return [json.loads(job.payload)["state"] for job in jobs]


async def test_a_receipt_moves_a_sent_message_to_delivered(journal: Journal) -> None:
    mid = await sent(journal, ("abc123",))
    assert await journal.apply_receipts("sms", [Receipt("abc123", True, "stat:DELIVRD")]) == 1
    assert await state(journal, mid) == State.DELIVERED
    record = await journal.get("acme", mid)
    assert record is not None
    last = record.timeline[-1]
    assert (last.state, last.provider_id, last.detail) == (
        State.DELIVERED,
        "abc123",
        "stat:DELIVRD",
    )
    assert await callback_states(journal) == ["sent", "delivered"]


async def test_a_long_message_is_delivered_when_every_part_is(journal: Journal) -> None:
    mid = await sent(journal, ("p1", "p2", "p3"))
    assert await journal.apply_receipts("sms", [Receipt("p2", True)]) == 0
    assert await journal.apply_receipts("sms", [Receipt("p1", True)]) == 0
    assert await state(journal, mid) == State.SENT
    assert await journal.apply_receipts("sms", [Receipt("p3", True)]) == 1
    assert await state(journal, mid) == State.DELIVERED


async def test_one_undelivered_part_fails_the_message(journal: Journal) -> None:
    mid = await sent(journal, ("p1", "p2"))
    await journal.apply_receipts(
        "sms", [Receipt("p1", True), Receipt("p2", False, "stat:UNDELIV err:001")]
    )
    assert await state(journal, mid) == State.FAILED
    record = await journal.get("acme", mid)
    assert record is not None
    assert record.timeline[-1].detail == "part p2: stat:UNDELIV err:001"
    assert record.timeline[-1].outcome == Outcome.PERMANENT


async def test_a_receipt_that_overtakes_its_sent_commit_is_applied_on_arrival(
    journal: Journal,
) -> None:
    assert await journal.apply_receipts("sms", [Receipt("early", True, "stat:DELIVRD")]) == 0
    mid = await sent(journal, ("early",))
    assert await state(journal, mid) == State.DELIVERED
    record = await journal.get("acme", mid)
    assert record is not None
    assert [e.state for e in record.timeline][-2:] == [State.SENT, State.DELIVERED]


async def test_receipts_are_per_channel_and_repeats_change_nothing(
    journal: Journal,
) -> None:
    mid = await sent(journal, ("same",))
    assert await journal.apply_receipts("other", [Receipt("same", True)]) == 0
    assert await state(journal, mid) == State.SENT
    assert await journal.apply_receipts("sms", [Receipt("same", True)]) == 1
    assert await journal.apply_receipts("sms", [Receipt("same", False)]) == 0  # a repeat
    assert await state(journal, mid) == State.DELIVERED


async def test_unmatched_receipts_are_forgotten_after_a_day(journal: Journal) -> None:
    await journal.apply_receipts("sms", [Receipt("stranger", True)])
    await journal.sweep(now_ms() + 25 * 3600 * 1000, 86_400_000)
    mid = await sent(journal, ("stranger",))
    assert await state(journal, mid) == State.SENT


async def test_receipts_racing_their_sent_commits_are_never_lost(journal: Journal) -> None:
    # On a shared journal the SENT outcome and the receipt commit in two transactions at
    # once; whichever goes first, the message ends delivered (two parts: both orders too).
    ids = IdGenerator(node=4)
    messages = [Message(ids.next(), "acme", "sms", f"+1555{i}", "hi") for i in range(40)]
    await journal.insert("acme", messages)
    claimed = await journal.claim("sms", 100, 100, OWNER, now_ms(), 30_000)
    assert len(claimed) == len(messages)
    outcomes = []
    receipts = []
    for i, m in enumerate(claimed):
        parts = (f"r{i}a",) if i % 2 else (f"r{i}a", f"r{i}b")
        outcomes.append(
            journal.complete(
                OWNER,
                [Completion(m.id, State.SENT, "sms", 1, Outcome.SENT, 1.0, parts[0], parts=parts)],
            )
        )
        receipts += [journal.apply_receipts("sms", [Receipt(p, True)]) for p in parts]
    await asyncio.gather(*outcomes, *receipts)
    assert await journal.count_by_state() == {State.DELIVERED: len(messages)}
