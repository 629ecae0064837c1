"""The receipt deadline in both journals: a SENT message whose receipts never all come is
EXPIRED, says why in its timeline and its callback, and a late receipt changes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from journal_backends import BACKENDS, open_journal
from sluice.journal.base import Completion, Journal, Receipt
from sluice.model import IdGenerator, Message, Outcome, State, now_ms

OWNER = 5
HOOK = "https://app.example.com/status"
DETAIL = "no delivery receipt within 172800 s"
_ids = IdGenerator(node=4)


@pytest.fixture(params=BACKENDS)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(request.param, tmp_path) as j:
        yield j


async def sent(journal: Journal, parts: tuple[str, ...], channel: str = "sms") -> int:
    message = Message(_ids.next(), "acme", channel, "+1555", "hi", callback_url=HOOK)
    await journal.insert("acme", [message])
    [claimed] = await journal.claim(channel, 1, 1, OWNER, now_ms(), 30_000)
    provider_id = parts[0] if parts else "untracked"
    await journal.complete(
        OWNER,
        [
            Completion(
                claimed.id, State.SENT, channel, 1, Outcome.SENT, 1.0, provider_id, parts=parts
            )
        ],
    )
    return message.id


async def state(journal: Journal, message_id: int) -> State:
    record = await journal.get("acme", message_id)
    assert record is not None
    return record.state


async def test_sent_messages_past_the_deadline_expire_and_say_why(journal: Journal) -> None:
    before = now_ms() - 1
    single = await sent(journal, ("a1",))
    long = await sent(journal, ("b1", "b2"))
    delivered = await sent(journal, ("c1",))
    untracked = await sent(journal, ())  # no receipt asked for: SENT is its final state
    elsewhere = await sent(journal, ("d1",), channel="sms2")
    assert await journal.apply_receipts("sms", [Receipt("c1", True), Receipt("b1", True)]) == 1

    # Sent after the cut-off: nothing is due yet.
    assert await journal.expire_receipts("sms", before, now_ms(), DETAIL) == 0
    assert await journal.expire_receipts("sms", now_ms() + 1, now_ms(), DETAIL) == 2
    assert await state(journal, single) == State.EXPIRED
    assert await state(journal, long) == State.EXPIRED
    assert await state(journal, delivered) == State.DELIVERED
    assert await state(journal, untracked) == State.SENT
    assert await state(journal, elsewhere) == State.SENT
    record = await journal.get("acme", single)
    assert record is not None
    last = record.timeline[-1]
    assert (last.state, last.provider_id, last.detail) == (State.EXPIRED, "a1", DETAIL)

    jobs = await journal.claim_callbacks(100, now_ms() + 1, 60_000)
    expired = [json.loads(job.payload) for job in jobs if job.message_id == single]
    assert [payload["state"] for payload in expired] == ["sent", "expired"]

    # The receipt that finally comes finds nothing to settle; a second sweep finds nothing.
    assert await journal.apply_receipts("sms", [Receipt("a1", True), Receipt("b2", True)]) == 0
    assert await state(journal, single) == State.EXPIRED
    assert await journal.expire_receipts("sms", now_ms() + 1, now_ms(), DETAIL) == 0


async def test_the_deadline_takes_at_most_limit_messages_a_call(journal: Journal) -> None:
    ids = [await sent(journal, (f"p{n}",)) for n in range(3)]
    assert await journal.expire_receipts("sms", now_ms() + 1, now_ms(), DETAIL, limit=2) == 2
    assert await journal.expire_receipts("sms", now_ms() + 1, now_ms(), DETAIL, limit=2) == 1
    assert [await state(journal, mid) for mid in ids] == [State.EXPIRED] * 3
