"""The journal contract: durable state of every message, shared by all backends.

The journal is the pipeline's buffer. Ingress inserts, channels claim due messages with a lease,
completions record each attempt's outcome, the sweeper returns work whose owner died. Every
write is acknowledged only after it is committed; concurrent writers share one commit.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from typing import Protocol

import msgspec

from sluice.journal.audience import AudienceStore
from sluice.journal.broadcasts import BroadcastStore
from sluice.model import Message, Outcome, State

#: How long a receipt for an unknown provider id waits for its SENT commit, in ms.
EARLY_RECEIPT_TTL_MS = 24 * 3600 * 1000


class JournalError(Exception):
    """The journal cannot do what was asked (a storage fault, not a caller's mistake)."""


class JournalBusy(JournalError):
    """Another process holds this journal."""


class JournalDamaged(JournalError):
    """The journal's file is damaged (pages that do not read back as written): the calls that
    touch them fail until it is recovered; nothing else does."""


class IdempotencyConflict(Exception):
    """An idempotency key was reused for a different request."""


class DeadlinePassed(Exception):
    """An insert's deadline passed before its commit began: nothing was stored."""


class SubmitResult(msgspec.Struct, frozen=True):
    ids: list[int]
    #: True when the idempotency key was seen before: ids are the original ones, nothing stored.
    replayed: bool


class Completion(msgspec.Struct, array_like=True, gc=False):
    """The journal update for one finished attempt."""

    message_id: int
    #: SENT, FAILED or QUEUED (a retry, due at `due_at`), or DELIVERED for a receipt.
    state: State
    channel: str
    attempt: int
    outcome: Outcome
    latency_ms: float = 0.0
    provider_id: str | None = None
    detail: str | None = None
    due_at: int = 0
    #: Move the message to this channel (failover) when it is queued again.
    reroute_to: str | None = None
    #: Do not count this attempt (the peer throttled us before trying).
    uncount: bool = False
    #: Provider ids of every part of a SENT message whose receipts will come back (SMPP).
    parts: tuple[str, ...] = ()


class Receipt(msgspec.Struct, array_like=True, gc=False):
    """A delivery receipt for one part, as the peer reported it."""

    provider_id: str
    delivered: bool
    #: The peer's words: "stat:UNDELIV err:001".
    detail: str | None = None


class TimelineEntry(msgspec.Struct, frozen=True):
    at: int
    state: State
    channel: str | None = None
    attempt: int | None = None
    outcome: Outcome | None = None
    provider_id: str | None = None
    latency_ms: float | None = None
    detail: str | None = None


class MessageRecord(msgspec.Struct, frozen=True):
    message: Message
    state: State
    created_at: int
    updated_at: int
    due_at: int
    provider_id: str | None
    timeline: list[TimelineEntry]


class CancelResult(enum.Enum):
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    TOO_LATE = "too_late"


class SweepResult(msgspec.Struct, frozen=True):
    reclaimed: int
    expired: int
    forgotten_keys: int


class CallbackJob(msgspec.Struct, frozen=True):
    id: int
    message_id: int
    url: str
    payload: bytes
    attempts: int


class JournalStats(msgspec.Struct, frozen=True):
    """What a journal tells of itself (for metrics)."""

    #: Messages accepted and not yet final, per channel.
    pending: dict[str, int]
    #: Transactions committed, operations in them, and seconds spent in them.
    commits: int
    ops: int
    busy_seconds: float
    #: Operations waiting for the journal (a writer or a connection).
    queue_depth: int


class Journal(AudienceStore, BroadcastStore, Protocol):
    """What every journal backend provides. Times are integer ms since the Unix epoch."""

    #: Transactions committed, operations in them, and seconds spent in them (for metrics).
    commits: int
    ops: int
    busy_seconds: float

    def queue_depth(self) -> int:
        """Operations waiting for the journal (a writer or a connection)."""
        ...

    def stats(self) -> JournalStats: ...

    def fault(self) -> str | None:
        """What keeps the journal from serving now (a damaged file, a disk below its free-space
        reserve, a server out of reach), or None: a process whose journal has a fault is not
        ready. It clears by itself when the cause goes away (a damaged file excepted)."""
        ...

    async def count_by_state(self) -> dict[State, int]: ...

    def watch_due(self, wake: Callable[[str, bool], None]) -> None:
        """Call `wake(channel, urgent)` when another process makes messages due (a journal
        shared by several processes); a process's own inserts wake its runners directly."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        """Store messages as queued; with a key, a repeat returns the first call's ids. With a
        `deadline` (a `time.monotonic()` value), raises DeadlinePassed instead of committing
        when the commit would begin after it (its producer has likely given up by then)."""
        ...

    async def claim(
        self, channel: str, limit: int, non_urgent_limit: int, owner: int, now: int, lease_ms: int
    ) -> list[Message]:
        """Lease up to `limit` due messages, urgent first; at most `non_urgent_limit` of them
        may be below urgent priority. Expired ones are marked expired instead."""
        ...

    async def save_state(self, name: str, data: bytes) -> None:
        """Keep a component's state (the SMTP client memory, the greylist) across restarts."""
        ...

    async def load_state(self, name: str) -> bytes | None:
        """The state last saved under `name`, or None."""
        ...

    async def complete(self, owner: int, completions: list[Completion]) -> int:
        """Apply outcomes of attempts by `owner` (those whose lease it lost are skipped).
        Returns the number of status callbacks queued."""
        ...

    async def renew_leases(self, owner: int, until: int, ids: Collection[int]) -> int:
        """Extend to `until` the leases `owner` holds on `ids`, the messages it is still
        working on. Only those: a message it holds a lease on but forgot (its outcome lost in
        a crash of the server) must expire and be sent again, not stay leased for ever."""
        ...

    async def release(self, owner: int, now: int) -> int:
        """Give back every message this owner holds (graceful shutdown)."""
        ...

    async def sweep(self, now: int, idempotency_ttl_ms: int) -> SweepResult: ...

    async def reroute(self, from_channel: str, to_channel: str, limit: int, now: int) -> int:
        """Move due queued messages of a parked channel to its failover channel."""
        ...

    async def cancel(self, tenant: str, message_id: int, now: int) -> CancelResult: ...

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None: ...

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]: ...

    async def next_due(self, channel: str) -> int | None: ...

    def pending(self) -> dict[str, int]:
        """Messages accepted and not yet final, per channel (kept in memory, exact)."""
        ...

    async def apply_receipts(self, channel: str, receipts: list[Receipt]) -> int:
        """Record delivery receipts; a message is delivered once every part is, failed once
        any part failed. A receipt that overtakes its own SENT commit is kept until the
        commit arrives. Returns the number of messages that reached a final state."""
        ...

    async def expire_receipts(
        self, channel: str, sent_before: int, now: int, detail: str, limit: int = 10_000
    ) -> int:
        """SENT messages of `channel`, sent before `sent_before`, whose receipts never all
        came: EXPIRED with `detail` (and their status callbacks), at most `limit` of them.
        Returns how many."""
        ...

    async def claim_callbacks(self, limit: int, now: int, lease_ms: int) -> list[CallbackJob]: ...

    async def finish_callbacks(
        self, done: list[int], retry: list[tuple[int, int]], dropped: list[int]
    ) -> None: ...
