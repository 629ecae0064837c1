"""The callback sender against a real HTTP server on loopback, with the outbox in a SQLite
journal and the sender's clock in the test's hands."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from fake_clock import FakeClock
from sluice.config import CallbacksConfig
from sluice.delivery.callbacks import CallbackSender, CallbackStats
from sluice.flow.retry import RetryPolicy
from sluice.journal.base import Completion
from sluice.journal.sqlite import SqliteJournal
from sluice.model import Message, Outcome, State, format_id, now_ms
from sluice.transports.signing import (
    MESSAGE_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

OWNER = 3
SECRET = "callback-secret"
#: A callback answered "hang" gets no answer until the test ends.
HANG = 0


class Receiver:
    """A producer's callback endpoint: answers each request with the next status of
    `answers` (200 once they run out) and keeps what it was sent."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.received = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/status", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/status"

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.received.set()
        status = self.answers.pop(0) if self.answers else 200
        if status == HANG:
            await self._release.wait()
            status = 200
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "journal.db")
    await j.open()
    try:
        yield j
    finally:
        await j.close()


@pytest.fixture
def clock() -> FakeClock:
    """Wall-clock seconds, a second ahead of the journal's: callbacks queued are due."""
    return FakeClock(now_ms() / 1000 + 1)


def sender_for(
    journal: SqliteJournal, clock: FakeClock, *, seed: int = 1, **config: object
) -> CallbackSender:
    settings = msgspec.convert(
        {"secret": SECRET, "timeout_seconds": 5.0, **config}, CallbacksConfig
    )
    # round, not int: the fake clock holds float seconds near 1.8e9, and advancing it by a
    # millisecond could truncate to one millisecond less, depending on where it started.
    return CallbackSender(
        journal, settings, random.Random(seed), clock=lambda: round(clock() * 1000)
    )


async def queue_callback(journal: SqliteJournal, url: str, message_id: int = 1) -> Message:
    """A message with a callback URL, sent: its callback waits in the outbox."""
    message = Message(message_id, "acme", "web", "+15550100", "hi", callback_url=url)
    await journal.insert("acme", [message])
    [claimed] = await journal.claim("web", 10, 10, OWNER, now_ms(), 60_000)
    await journal.complete(
        OWNER, [Completion(message.id, State.SENT, "web", claimed.attempts, Outcome.SENT)]
    )
    return message


async def send_due(sender: CallbackSender) -> int:
    async with sender.session() as session:
        return await sender.send_due(session)


async def outbox(journal: SqliteJournal) -> int:
    """Callbacks still in the outbox, due or not (claimed far in the future)."""
    return len(await journal.claim_callbacks(100, now_ms() + 10**9, 1))


async def test_a_callback_answered_2xx_is_delivered_and_signed(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    message = await queue_callback(journal, receiver.url)
    sender = sender_for(journal, clock)
    assert await send_due(sender) == 1
    assert sender.stats() == CallbackStats(delivered=1, retried=0, dropped=0)
    [(headers, body)] = receiver.requests
    timestamp = str(int(clock()))
    assert headers["Content-Type"] == "application/json"
    assert headers[MESSAGE_ID_HEADER] == format_id(message.id)
    assert headers[TIMESTAMP_HEADER] == timestamp
    assert headers[SIGNATURE_HEADER] == signature(SECRET.encode(), timestamp, body)
    assert msgspec.json.decode(body)["state"] == "sent"
    assert await outbox(journal) == 0


async def test_without_a_secret_callbacks_go_unsigned(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    await queue_callback(journal, receiver.url)
    sender = sender_for(journal, clock, secret=None)
    assert await send_due(sender) == 1
    [(headers, _)] = receiver.requests
    assert SIGNATURE_HEADER not in headers
    assert TIMESTAMP_HEADER in headers


async def test_a_5xx_is_retried_after_its_backoff(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    await queue_callback(journal, receiver.url)
    receiver.answers = [503]
    sender = sender_for(journal, clock, seed=5, base_seconds=2.0)
    assert await send_due(sender) == 1
    assert sender.stats() == CallbackStats(delivered=0, retried=1, dropped=0)
    # The same draw of the jitter the sender made: base 2 s for the first retry, ±20 %.
    backoff_ms = math.ceil(RetryPolicy(10, 2.0, 600, 0.2, random.Random(5)).delay(1) * 1000)
    clock.advance((backoff_ms - 1) / 1000)
    assert await send_due(sender) == 0  # not due yet
    clock.advance(0.001)
    assert await send_due(sender) == 1
    assert sender.stats() == CallbackStats(delivered=1, retried=1, dropped=0)
    assert len(receiver.requests) == 2
    assert await outbox(journal) == 0


async def test_a_timeout_is_retried(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    await queue_callback(journal, receiver.url)
    receiver.answers = [HANG]
    sender = sender_for(journal, clock, timeout_seconds=0.2)
    assert await send_due(sender) == 1  # returns once the client gives up on the answer
    assert sender.stats() == CallbackStats(delivered=0, retried=1, dropped=0)
    assert await outbox(journal) == 1


async def test_a_refused_connection_is_retried(journal: SqliteJournal, clock: FakeClock) -> None:
    closed = Receiver()
    await closed.start()
    url = closed.url
    await closed.close()  # nothing listens there any more
    await queue_callback(journal, url)
    sender = sender_for(journal, clock)
    assert await send_due(sender) == 1
    assert sender.stats() == CallbackStats(delivered=0, retried=1, dropped=0)


async def test_a_callback_is_dropped_after_its_last_attempt(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    await queue_callback(journal, receiver.url)
    receiver.answers = [500, 502]
    sender = sender_for(journal, clock, max_attempts=2, base_seconds=1.0, max_seconds=1.0)
    assert await send_due(sender) == 1
    clock.advance(1.2)  # past the first backoff, jitter included
    assert await send_due(sender) == 1
    assert sender.stats() == CallbackStats(delivered=0, retried=1, dropped=1)
    assert len(receiver.requests) == 2
    assert await outbox(journal) == 0
    clock.advance(3600)
    assert await send_due(sender) == 0


async def test_run_sends_what_is_due_until_stopped(
    journal: SqliteJournal, receiver: Receiver, clock: FakeClock
) -> None:
    sender = sender_for(journal, clock)
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(sender.run())
        await queue_callback(journal, receiver.url)
        sender.wake()
        await receiver.received.wait()
        sender.stop()  # the round under way finishes first
        await running
    assert sender.stats() == CallbackStats(delivered=1, retried=0, dropped=0)
    assert await outbox(journal) == 0
