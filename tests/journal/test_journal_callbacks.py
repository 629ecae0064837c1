"""Status callbacks on both journals: every way a message reaches a final state queues one, and
its payload tells of the message the same way (tenant, channel, recipient, attempts, metadata),
whichever statement found the message's row."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from journal_backends import BACKENDS, open_journal
from sluice.journal.base import Completion, Journal, Receipt
from sluice.model import IdGenerator, Message, Outcome, State, format_id, now_ms

TENANT = "acme"
OWNER = 17
LEASE = 30_000
HOOK = "https://app.example.com/status"
METADATA = {"order": "42", "shop": "north"}

_ids = IdGenerator(node=9)


@pytest.fixture(params=BACKENDS)
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(request.param, tmp_path) as j:
        yield j


def new_message(**fields: Any) -> Message:
    return Message(_ids.next(), TENANT, "sms", "+15550007", "hello", callback_url=HOOK, **fields)


async def claimed(journal: Journal, message: Message) -> Message:
    await journal.insert(TENANT, [message])
    [taken] = await journal.claim("sms", 1, 1, OWNER, now_ms(), LEASE)
    return taken


def outcome(m: Message, state: State, result: Outcome, **fields: Any) -> Completion:
    return Completion(m.id, state, m.channel, m.attempts, result, **fields)


async def sent_callback_done(journal: Journal) -> None:
    """The SENT state's callback, sent: out of the way of the final one."""
    [job] = await journal.claim_callbacks(10, now_ms() + 1, 60_000)
    assert msgspec.json.decode(job.payload)["state"] == "sent"
    await journal.finish_callbacks([job.id], [], [])


# Each route takes a message (not yet inserted) to a final state; returns (state, attempts).
async def failed(journal: Journal, message: Message) -> tuple[str, int]:
    m = await claimed(journal, message)
    await journal.complete(OWNER, [outcome(m, State.FAILED, Outcome.PERMANENT, detail="no")])
    return "failed", 1


async def delivered_from_sending(journal: Journal, message: Message) -> tuple[str, int]:
    m = await claimed(journal, message)
    await journal.complete(OWNER, [outcome(m, State.DELIVERED, Outcome.SENT, provider_id="d")])
    return "delivered", 1


async def delivered_by_receipt(journal: Journal, message: Message) -> tuple[str, int]:
    m = await claimed(journal, message)
    pid = f"r{m.id}"
    await journal.complete(
        OWNER, [outcome(m, State.SENT, Outcome.SENT, provider_id=pid, parts=(pid,))]
    )
    await sent_callback_done(journal)
    await journal.apply_receipts("sms", [Receipt(pid, True)])
    return "delivered", 1


async def delivered_in_parts(journal: Journal, message: Message) -> tuple[str, int]:
    m = await claimed(journal, message)
    parts = (f"a{m.id}", f"b{m.id}")
    await journal.complete(
        OWNER, [outcome(m, State.SENT, Outcome.SENT, provider_id=parts[0], parts=parts)]
    )
    await sent_callback_done(journal)
    await journal.apply_receipts("sms", [Receipt(p, True) for p in parts])
    return "delivered", 1


async def expired_at_claim(journal: Journal, message: Message) -> tuple[str, int]:
    message.expires_at = now_ms() - 1
    await journal.insert(TENANT, [message])
    assert await journal.claim("sms", 1, 1, OWNER, now_ms(), LEASE) == []
    return "expired", 0


async def expired_by_sweep(journal: Journal, message: Message) -> tuple[str, int]:
    t = now_ms()
    message.not_before, message.expires_at = t + 60_000, t + 1_000
    await journal.insert(TENANT, [message])
    assert (await journal.sweep(t + 1_000, 60_000)).expired == 1
    return "expired", 0


async def cancelled(journal: Journal, message: Message) -> tuple[str, int]:
    await journal.insert(TENANT, [message])
    await journal.cancel(TENANT, message.id, now_ms())
    return "cancelled", 0


Route = Callable[[Journal, Message], Awaitable[tuple[str, int]]]
ROUTES: list[Route] = [
    failed,
    delivered_from_sending,
    delivered_by_receipt,
    delivered_in_parts,
    expired_at_claim,
    expired_by_sweep,
    cancelled,
]


@pytest.mark.parametrize("route", ROUTES, ids=[r.__name__ for r in ROUTES])
@pytest.mark.parametrize("metadata", [METADATA, None], ids=["metadata", "none"])
async def test_a_final_state_queues_one_callback_that_tells_of_its_message(
    journal: Journal, route: Route, metadata: dict[str, str] | None
) -> None:
    message = new_message(metadata=metadata)
    state, attempts = await route(journal, message)
    [job] = await journal.claim_callbacks(10, now_ms() + 120_000, 60_000)
    assert (job.message_id, job.url) == (message.id, HOOK)
    body = msgspec.json.decode(job.payload)
    assert {k: body[k] for k in ("id", "state", "channel", "attempts", "tenant", "to")} == {
        "id": format_id(message.id),
        "state": state,
        "channel": "sms",
        "attempts": attempts,
        "tenant": TENANT,
        "to": "+15550007",
    }
    assert body.get("metadata") == metadata


async def test_a_message_without_a_callback_url_queues_none(journal: Journal) -> None:
    message = Message(_ids.next(), TENANT, "sms", "+15550007", "hello", metadata=METADATA)
    await failed(journal, message)
    assert await journal.claim_callbacks(10, now_ms() + 1, 60_000) == []
