"""What the journal keeps of broadcasts: one row each, its cursor, and its counts.

A broadcast is one row: the tenant, the audience layer's encoding of what to send (opaque
here, `audience/broadcast.py`), its topics (by key, in order), a status, and a cursor: the
topic being read and the last member key planned in it. Expansion writes a chunk of messages
and moves the cursor in one transaction (`expand_broadcast`), and only if the cursor is where
the expander last saw it and the broadcast is still running under its lease: a crash at any
moment resumes with no gap and no recipient twice, and a pause or a cancel committed between
two chunks stops the next one.

Counts are counters, never scans: the broadcast's row counts what expansion read, planned and
suppressed (by reason); `broadcast_counts` counts its messages per channel and state, kept by
the journal itself with every change of a message's state (a trigger in both journals, so
that no path that moves a message can forget them).

Both journals implement `BroadcastStore` with the same semantics (tests/journal/
test_broadcast_store.py runs on both).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from sluice.model import Message, State

#: Idempotency keys of broadcasts share the messages' table under this prefix: a message's key
#: is printable ASCII (`limits`), so none can begin with U+0001 and meet a broadcast's.
IDEMPOTENCY_PREFIX = "\x01broadcast:"
#: A paused broadcast's queued messages are held by adding this to their due time: claimed by
#: nobody until resumed, when it is taken off again (a retry keeps its backoff). Held due
#: times are at least `PAUSED_DUE_MS`, the single value earlier versions held them at.
HELD_DUE_MS = 1 << 62
PAUSED_DUE_MS = HELD_DUE_MS - 1


class BroadcastStatus(enum.Enum):
    """What the producer asked; `BroadcastRecord.phase` tells where the broadcast is."""

    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class UnknownTopics(Exception):
    """A broadcast names topics the tenant does not have."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("unknown topics: " + ", ".join(names))
        self.names = names


class NewBroadcast(NamedTuple):
    id: int
    tenant: str
    #: The audience layer's encoding of what to send and how.
    spec: bytes
    #: Topic names, in the order they are read (duplicates removed by the caller).
    topics: tuple[str, ...]
    #: When expansion may begin (ms since the epoch).
    start_at: int


class BroadcastRecord(msgspec.Struct, frozen=True):
    """A broadcast as the journal keeps it, with its counters."""

    id: int
    tenant: str
    spec: bytes
    status: BroadcastStatus
    created_at: int
    updated_at: int
    start_at: int
    #: Members of its topics when it was created (before duplicates across topics).
    audience: int
    #: The cursor: the index of the topic being read and the last member key planned in it.
    topic_index: int
    cursor: int
    #: True once every member of every topic has been read.
    expanded: bool
    #: Members read, messages planned, and recipients suppressed by reason.
    examined: int
    planned: int
    suppressed: dict[str, int]
    #: Messages per channel and state (state: `State` value).
    counts: dict[str, dict[int, int]]
    #: When expansion wrote its first chunk (0: not yet) and when it read its last member.
    started_at: int = 0
    expanded_at: int = 0
    #: The topic keys, in order (the cursor's `topic_index` points into them).
    topic_keys: tuple[int, ...] = ()

    def in_state(self, *states: State) -> int:
        return sum(by_state.get(s, 0) for by_state in self.counts.values() for s in states)

    @property
    def phase(self) -> str:
        """scheduled, expanding, sending, paused, cancelled or completed."""
        if self.status is BroadcastStatus.CANCELLED:
            return "cancelled" if not self.in_state(State.SENDING) else "cancelling"
        if self.status is BroadcastStatus.PAUSED:
            return "paused"
        if not self.expanded:
            return "expanding" if self.started_at else "scheduled"
        if self.in_state(State.QUEUED, State.SENDING, State.ACCEPTED):
            return "sending"
        return "completed"


#: The columns of a broadcast both journals select, in the order `record_of` reads them.
RECORD_COLUMNS = (
    "id, tenant, spec, status, created_at, updated_at, start_at, audience, topic_index, "
    "cursor, expanded, examined, planned, suppressed, started_at, expanded_at, topic_keys"
)


def record_of(
    row: Sequence[Any],
    suppressed: dict[str, int],
    counts: dict[str, dict[int, int]],
    topic_keys: Sequence[int],
) -> BroadcastRecord:
    """A broadcast's record from a row of `RECORD_COLUMNS`; its blobs (`suppressed`,
    `topic_keys`) decoded by the journal that stores them, its counts read beside it."""
    return BroadcastRecord(
        row[0],
        row[1],
        bytes(row[2]),
        BroadcastStatus(row[3]),
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        bool(row[10]),
        row[11],
        row[12],
        suppressed,
        counts,
        row[14],
        row[15],
        tuple(topic_keys),
    )


class ExpansionChunk(NamedTuple):
    """One step of a broadcast's expansion, committed whole or not at all."""

    broadcast: int
    #: Where the cursor must be for the chunk to apply (what the expander read from).
    topic_index: int
    cursor: int
    #: Where it moves to, and whether that was the last member of the last topic.
    next_topic_index: int
    next_cursor: int
    finished: bool
    messages: list[Message]
    examined: int
    suppressed: dict[str, int]
    #: Keys of the members the messages are for, kept while later topics remain: a member
    #: of a later topic is a duplicate exactly when it is here (`broadcast_members`).
    reached: tuple[int, ...] = ()


class BroadcastMember(NamedTuple):
    """A member of a broadcast's topic: its key (the cursor), id and encoded record, and
    whether the broadcast reached it already through an earlier topic."""

    key: int
    external_id: str
    data: bytes
    duplicate: bool


class StatusChange(NamedTuple):
    """What a pause, resume or cancel did: the broadcast after it, and the queued messages
    it held, released or cancelled."""

    record: BroadcastRecord
    messages: int


class BroadcastStore(Protocol):
    async def create_broadcast(
        self, new: NewBroadcast, idempotency_key: str | None, digest: bytes | None, now: int
    ) -> tuple[int, bool]:
        """Store a broadcast (UnknownTopics if a topic is missing); with a key, a repeat
        returns the first call's id and True (IdempotencyConflict for another request)."""
        ...

    async def broadcast(self, tenant: str, broadcast_id: int) -> BroadcastRecord | None: ...

    async def broadcasts(
        self, tenant: str, before_id: int | None, limit: int
    ) -> list[BroadcastRecord]:
        """The tenant's broadcasts, newest first, those older than `before_id`."""
        ...

    async def lease_broadcasts(
        self, owner: int, now: int, lease_ms: int, limit: int
    ) -> list[BroadcastRecord]:
        """Running broadcasts still to expand whose start has come and that no other owner
        holds: leased to `owner` until `now + lease_ms` (its own ones renewed)."""
        ...

    async def expand_broadcast(self, owner: int, chunk: ExpansionChunk, now: int) -> bool:
        """Insert the chunk's messages and move the cursor, in one transaction; False (and
        nothing written) when the cursor moved, the lease is lost or the broadcast is not
        running any more."""
        ...

    async def broadcast_members(
        self, broadcast: int, topic_keys: tuple[int, ...], index: int, after: int, limit: int
    ) -> list[BroadcastMember]:
        """Up to `limit` members of topic `topic_keys[index]` with a key above `after`, by key,
        each marked duplicate if the broadcast reached it already (an earlier chunk's
        `reached`): not by its subscriptions now, which may have changed since (an
        unsubscribe from an earlier topic must not bring a second message, an opt-out of one
        topic must not cost the member the other, a late subscriber must not be missed)."""
        ...

    async def release_broadcasts(self, owner: int) -> None:
        """Give up every lease `owner` holds (a graceful stop)."""
        ...

    async def change_broadcast(
        self, tenant: str, broadcast_id: int, status: BroadcastStatus, now: int
    ) -> StatusChange | None:
        """Pause (queued messages held), resume (released, due now or at their own time) or
        cancel (queued messages cancelled) a broadcast; None: no such broadcast. A cancelled
        broadcast stays cancelled."""
        ...
