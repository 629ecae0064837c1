"""Broadcast expansion: topic members → messages, a chunk at a time, durably, just ahead of
the channels.

A process that delivers runs one `Expander`. It leases running broadcasts whose start has
come (`BroadcastStore.lease_broadcasts`; on PostgreSQL the lease is what keeps a broadcast
to one expander among the processes, and another takes over once it lapses) and runs each in
a task: read `expansion_chunk` members after the cursor, plan them (`Planner`), and commit
the messages with the cursor moved past them (`expand_broadcast`): all or nothing, so a
crash at any point resumes where the last commit left the cursor — no member skipped, none
planned twice.

**The bound on lookahead.** Expansion goes on while one of the broadcast's channels has fewer
of its messages queued or in flight than its lookahead: `lookahead_seconds` (5 s) of what
that channel has lately finished of them, but never fewer than `min_lookahead` (5,000: the
windows of wide channels stay full from the first second, before any rate is known); and
never past `max_lookahead` queued or in flight in all. Any channel, not every one: which
channel a member takes is known only once it is planned, so a slow channel (a webhook
at 200/s beside an SMSC at 5,000/s) would otherwise hold the fast one to its pace; its
queue grows instead, up to `max_lookahead`. Five seconds because
that keeps the channels fed across a planning step (a 1,000-member chunk takes ~10 ms) and a
slow commit, while a pause or cancel acts on at most five seconds of queued messages (held or
cancelled in one statement) and the journal holds a few thousand rows of a million-recipient
broadcast rather than all of them. A channel that slows (a throttling peer) lowers the rate
and so the lookahead: back-pressure, never failure. Messages planned for later (quiet hours,
local-time waves) do not count against the bound until they are due; the expander remembers
them by the minute they fall due (after a restart it forgets them, and plans at most that
many more ahead).

A broadcast's `rate` caps its planning, and so its sending, below what the channels carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

import msgspec

from sluice.audience.broadcast import Planner, decode_spec
from sluice.config import AudienceConfig
from sluice.journal.base import JournalError
from sluice.journal.broadcasts import (
    BroadcastRecord,
    BroadcastStatus,
    BroadcastStore,
    ExpansionChunk,
)
from sluice.model import FINAL_STATES, PENDING_STATES, IdGenerator, now_ms

log = logging.getLogger("sluice.broadcasts")

#: How often a broadcast whose lookahead is full looks again (its counters, a cheap read).
_FULL_WAIT_SECONDS = 0.05
_MINUTE_MS = 60_000


class ExpanderStats(msgspec.Struct, frozen=True):
    """What an expander tells of itself (for metrics)."""

    #: Broadcasts this process expands now.
    expanding: int
    #: Chunks committed, messages planned, and chunks refused (a pause, a cancel, a lease
    #: taken over) since the process started.
    chunks: int
    planned: int
    refused: int


class Expander:
    """Examples:
    expander = Expander(journal, config.audience, ids, owner, wake=delivery.wake)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(expander.run())
        expander.poke()          # a broadcast was created here: look now
        expander.stop()
    """

    def __init__(
        self,
        journal: BroadcastStore,
        config: AudienceConfig,
        ids: IdGenerator,
        owner: int,
        *,
        wake: Callable[[str], None],
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._config = config
        self._ids = ids
        self._owner = owner
        self._wake = wake
        self._clock = clock
        self._monotonic = monotonic
        self._poke = asyncio.Event()
        self._stopping = False
        self._runs: set[int] = set()
        #: Chunks committed and messages planned by this process.
        self.chunks = 0
        self.planned = 0
        self.refused = 0
        #: Set after each committed chunk (whoever waits clears it).
        self.progressed = asyncio.Event()

    def stats(self) -> ExpanderStats:
        return ExpanderStats(len(self._runs), self.chunks, self.planned, self.refused)

    def poke(self) -> None:
        """Look for broadcasts to expand now (one was created or resumed)."""
        self._poke.set()

    def stop(self) -> None:
        self._stopping = True
        self._poke.set()

    async def run(self) -> None:
        config = self._config
        lease_ms = int(config.expander_lease_seconds * 1000)
        # Leases are renewed well before they lapse, whatever the poll interval.
        interval = min(config.expander_poll_seconds, config.expander_lease_seconds / 3)
        try:
            async with asyncio.TaskGroup() as tg:
                while not self._stopping:
                    self._poke.clear()
                    try:
                        leased = await self._journal.lease_broadcasts(
                            self._owner, self._clock(), lease_ms, config.max_expanding
                        )
                    except JournalError as exc:
                        log.warning("broadcasts: cannot lease: %s", exc)
                        leased = []
                    for record in leased:
                        if record.id not in self._runs:
                            self._runs.add(record.id)
                            tg.create_task(self._expand(record))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._poke.wait(), interval)
        finally:
            try:
                await self._journal.release_broadcasts(self._owner)
            except JournalError as exc:  # the leases lapse by themselves
                log.warning("broadcasts: cannot release leases: %s", exc)

    async def _expand(self, record: BroadcastRecord) -> None:
        """One broadcast's run. A fault ends the run, never the expander (nor the delivery
        side it runs in): the broadcast is still leased and running, so the next look leases
        it again and the run resumes from the committed cursor."""
        try:
            await _Run(self, record).run()
        except* JournalError as faults:  # a disk below its reserve, a server out of reach
            log.warning(
                "broadcast %d: expansion paused by a journal fault: %s; it resumes",
                record.id,
                faults.exceptions[0],
            )
        except* Exception:  # a bug must not stop delivery; the run is tried again
            log.exception("broadcast %d: expansion failed; it is tried again", record.id)
        finally:
            self._runs.discard(record.id)


class _Run:
    """The expansion of one broadcast by this process, while it holds the lease."""

    def __init__(self, expander: Expander, record: BroadcastRecord) -> None:
        self.x = expander
        self.record = record
        self.spec = decode_spec(record.spec)
        self.planner = Planner(self.spec, expander._ids)
        #: Messages planned for later, by the minute they fall due.
        self.later: Counter[int] = Counter()
        #: Messages finished per second lately, by channel.
        self.rates: dict[str, float] = {}
        self._sample: tuple[float, dict[str, int]] | None = None
        self._started = expander._monotonic()
        self._planned_here = 0

    async def run(self) -> None:
        """Plan chunk after chunk; each is planned while the one before it commits (the
        writer's thread and the planner then use both cores). A chunk names the cursor it was
        read from, which is where the one before it leaves the cursor once committed: if that
        one is refused (a pause, a cancel, a lost lease), so is every chunk after it."""
        x, config = self.x, self.x._config
        index, cursor = self.record.topic_index, self.record.cursor
        committing: asyncio.Task[bool] | None = None
        async with asyncio.TaskGroup() as tg:
            while not x._stopping:
                record = await x._journal.broadcast(self.record.tenant, self.record.id)
                if (
                    record is None
                    or record.status is not BroadcastStatus.RUNNING
                    or record.expanded
                ):
                    break
                self.record = record
                expires_at = self.spec.expires_at
                if expires_at is not None and x._clock() >= expires_at:
                    # Every message it would make now expires at once: the members not read
                    # yet get none, and the broadcast ends with those it made.
                    if committing is not None and not await committing:
                        break
                    committing = tg.create_task(self._commit(self._last_chunk(index, cursor)))
                    break
                room = min(self._room(), self._allowance())
                if room <= 0:
                    if committing is not None and not await committing:
                        break
                    committing = None
                    await asyncio.sleep(_FULL_WAIT_SECONDS)
                    continue
                chunk = await self._plan(index, cursor, min(room, config.expansion_chunk))
                # Counted as planned now, not once committed: the next chunk is planned
                # while this one commits, and the rate bounds both.
                self._planned_here += len(chunk.messages)
                if committing is not None and not await committing:
                    break
                committing = tg.create_task(self._commit(chunk))
                if chunk.finished:
                    break
                if chunk.next_topic_index != index:
                    # The next topic's duplicates are read from what this chunk reached:
                    # it must be committed before they are read.
                    if not await committing:
                        break
                    committing = None
                index, cursor = chunk.next_topic_index, chunk.next_cursor
            if committing is not None:
                await committing

    def _last_chunk(self, index: int, cursor: int) -> ExpansionChunk:
        """The chunk that ends expansion where the cursor is (the broadcast expired)."""
        end = len(self.record.topic_keys)
        return ExpansionChunk(self.record.id, index, cursor, end, 0, True, [], 0, {})

    async def _plan(self, index: int, cursor: int, limit: int) -> ExpansionChunk:
        """The next `limit` members after the cursor, planned."""
        x, record = self.x, self.record
        members = await x._journal.broadcast_members(
            record.id, record.topic_keys, index, cursor, limit
        )
        topic = self.spec.topics[index]
        # Whom it reached matters while later topics remain: their duplicates are those.
        reached: list[int] | None = [] if index + 1 < len(record.topic_keys) else None
        messages, suppressed = self.planner.plan(
            members, topic=topic, now=x._clock(), reached=reached
        )
        if len(members) < limit:  # this topic is read to its end
            next_index, next_cursor = index + 1, 0
        else:
            next_index, next_cursor = index, members[-1].key
        return ExpansionChunk(
            record.id,
            index,
            cursor,
            next_index,
            next_cursor,
            next_index >= len(record.topic_keys),
            messages,
            len(members),
            dict(suppressed),
            tuple(reached or ()),
        )

    async def _commit(self, chunk: ExpansionChunk) -> bool:
        """Commit a chunk; False when the broadcast is no longer this run's to expand
        (paused, cancelled, taken over)."""
        x = self.x
        now = x._clock()
        if not await x._journal.expand_broadcast(x._owner, chunk, now):
            x.refused += 1
            return False
        messages = chunk.messages
        x.chunks += 1
        x.planned += len(messages)
        x.progressed.set()
        for m in messages:
            if m.not_before is not None and m.not_before > now:
                self.later[m.not_before // _MINUTE_MS] += 1
        for channel in {m.channel for m in messages}:
            x._wake(channel)
        return True

    def _room(self) -> int:
        """Members the next step may plan: while any of the broadcast's channels has fewer
        queued or in flight than its lookahead (a slow channel must not starve a fast one),
        and never past `max_lookahead` in all."""
        config = self.x._config
        minute = self.x._clock() // _MINUTE_MS
        for due in [m for m in self.later if m <= minute]:
            del self.later[due]
        record = self.record
        later = sum(self.later.values())
        now = self.x._monotonic()
        if self._sample is None or now - self._sample[0] >= 0.5:
            self._rates(now)
        total_ahead = max(0, record.in_state(*PENDING_STATES) - later)
        room = 0
        for name, _ in self.spec.channels:
            by_state = record.counts.get(name, {})
            ahead = sum(by_state.get(s, 0) for s in PENDING_STATES)
            wanted = int(self.rates.get(name, 0.0) * config.lookahead_seconds)
            lookahead = max(config.min_lookahead, min(config.max_lookahead, wanted))
            room = max(room, lookahead - ahead)
        # Messages planned for later are counted once, against the total.
        return min(room + later, config.max_lookahead - total_ahead)

    def _rates(self, now: float) -> None:
        """Update each channel's rate of finished messages (a moving average)."""
        done = {
            name: sum(by_state.get(s, 0) for s in FINAL_STATES)
            for name, by_state in self.record.counts.items()
        }
        if self._sample is not None:
            then, before = self._sample
            for name, n in done.items():
                current = (n - before.get(name, 0)) / (now - then)
                old = self.rates.get(name, 0.0)
                self.rates[name] = current if old == 0 else 0.7 * old + 0.3 * current
        self._sample = (now, done)

    def _allowance(self) -> int:
        """Members this run may still plan under the broadcast's rate (a second's burst)."""
        rate = self.spec.rate
        if not rate:
            return 1 << 62
        elapsed = self.x._monotonic() - self._started
        return int(rate * elapsed + max(1.0, rate)) - self._planned_here
