"""The expander outlives journal faults: a chunk refused by a fault (a disk below its reserve,
a server out of reach) ends that broadcast's run, not the expander, and the next look goes on
from the committed cursor with nobody missed or planned twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sluice.audience.broadcast import BroadcastSpec, Content, encode_spec
from sluice.audience.expander import Expander
from sluice.audience.subscriber import Subscriber, encode
from sluice.config import AudienceConfig
from sluice.journal.audience import SubscriberRow
from sluice.journal.base import JournalError
from sluice.journal.broadcasts import NewBroadcast
from sluice.journal.sqlite import SqliteJournal
from sluice.model import IdGenerator, now_ms


class FaultyStore:
    """A journal whose `expand_broadcast` fails `faults` times (every other call)."""

    def __init__(self, journal: SqliteJournal, faults: int) -> None:
        self._journal = journal
        self.faults = faults
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    async def expand_broadcast(self, *args: Any) -> bool:
        self.calls += 1
        if self.faults and self.calls % 2 == 0:
            self.faults -= 1
            raise JournalError("the disk holding the journal is almost full")
        return await self._journal.expand_broadcast(*args)


async def test_a_journal_fault_pauses_expansion_and_it_resumes(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    try:
        rows = [
            SubscriberRow(f"s{i:03d}", encode(Subscriber(id=f"s{i:03d}", phone=f"+{i}")), ("t",))
            for i in range(50)
        ]
        await journal.upsert_subscribers("acme", rows, now_ms())
        spec = BroadcastSpec(
            tenant="acme",
            topics=("t",),
            channels=(("sms", "sms"),),
            content={"sms": Content(body="hi")},
            start_at=now_ms(),
        )
        await journal.create_broadcast(
            NewBroadcast(1, "acme", encode_spec(spec), ("t",), spec.start_at), None, None, 0
        )
        store = FaultyStore(journal, faults=3)
        config = AudienceConfig(expansion_chunk=5, min_lookahead=1000, expander_poll_seconds=0.05)
        expander = Expander(store, config, IdGenerator(node=3), 7, wake=lambda _: None)
        task = asyncio.create_task(expander.run())
        try:
            async with asyncio.timeout(20):
                while True:
                    await expander.progressed.wait()
                    expander.progressed.clear()
                    record = await journal.broadcast("acme", 1)
                    assert record is not None
                    if record.expanded:
                        break
        finally:
            expander.stop()
            await task
        assert store.faults == 0  # every fault was met, and the expander went on
        assert (record.examined, record.planned) == (50, 50)
        assert journal.pending() == {"sms": 50}
        page = await journal.by_recipient("acme", "+7", None, 10)
        assert len(page) == 1  # nobody twice
    finally:
        await journal.close()
