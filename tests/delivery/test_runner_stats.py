"""A channel runner's snapshot: its tallies, its breaker and its send latencies, counted as it
delivers from a journal on SQLite to a transport that answers from a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sluice.config import BreakerConfig, ChannelConfig, RetryConfig
from sluice.delivery.runner import ChannelRunner
from sluice.flow.breaker import BreakerState
from sluice.flow.stage import Stage
from sluice.journal.base import Completion
from sluice.journal.sqlite import SqliteJournal
from sluice.model import Message, Outcome
from sluice.transports.base import SendResult

CHANNEL = "web"
OWNER = 7

#: The answer to each recipient.
SCRIPT = {
    "+15550001": SendResult(Outcome.SENT, provider_id="a"),
    "+15550002": SendResult(Outcome.SENT, provider_id="b"),
    "+15550003": SendResult(Outcome.PERMANENT, detail="HTTP 400"),
    "+15550004": SendResult(Outcome.THROTTLED, retry_after=600),
    "+15550005": SendResult(Outcome.TRANSIENT, detail="HTTP 503"),
}


class ScriptedTransport:
    """Answers on the task-free path, one loop turn later, as the script says."""

    paces_itself = False

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, message: Message) -> SendResult:
        return SCRIPT[message.recipient]

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        asyncio.get_running_loop().call_soon(done, SCRIPT[message.recipient])
        return True

    def drop_queued(self) -> int:
        return 0


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    j = SqliteJournal(tmp_path / "journal.db")
    await j.open()
    try:
        yield j
    finally:
        await j.close()


async def test_a_runner_tells_its_tallies_breaker_and_latencies(journal: SqliteJournal) -> None:
    committed: list[Completion] = []
    all_done = asyncio.Event()

    async def commit(batch: list[Completion]) -> None:
        await journal.complete(OWNER, batch)
        committed.extend(batch)
        if len(committed) == len(SCRIPT):
            all_done.set()

    completions: Stage[Completion] = Stage("completions", commit, capacity=100)
    config = ChannelConfig(
        type="webhook",
        width=4,
        # Nothing comes due again while the test runs.
        retry=RetryConfig(base_seconds=600, max_seconds=600),
        breaker=BreakerConfig(failure_threshold=5),
    )
    runner = ChannelRunner(
        CHANNEL,
        config,
        ScriptedTransport(),
        journal,
        completions,
        owner=OWNER,
        lease_ms=60_000,
        max_claim=100,
    )
    before = runner.stats()
    assert (before.sent, before.failed, before.latency) == (0, 0, {})
    await journal.insert(
        "acme", [Message(i, "acme", CHANNEL, to, "hi") for i, to in enumerate(SCRIPT, 1)]
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(completions.run())
        tg.create_task(runner.run())
        runner.wake()
        await all_done.wait()
        runner.stop()
        completions.close()

    stats = runner.stats()
    assert (stats.name, stats.width, stats.in_flight, stats.claimed) == (CHANNEL, 4, 0, 0)
    assert (stats.sent, stats.failed, stats.throttled, stats.retried) == (2, 1, 1, 1)
    assert stats.breaker.state is BreakerState.CLOSED
    assert stats.breaker.consecutive_failures == 1
    assert {outcome: latency.observations for outcome, latency in stats.latency.items()} == {
        "sent": 2,
        "permanent": 1,
        "throttled": 1,
        "transient": 1,
    }
    assert all(latency.total >= 0 for latency in stats.latency.values())
    # A snapshot is a value: what the runner does next does not change it.
    runner.sent += 1
    assert stats.sent == 2
