"""What ingress needs from the running gateway: the seam between protocols and the pipeline.

HTTP (and later SMTP) front ends parse, authenticate and admit; everything past that goes
through this interface, so a front end never touches the journal or channels directly.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from sluice.config import Config
from sluice.journal.audience import AudienceStore
from sluice.journal.base import CancelResult, MessageRecord, SubmitResult
from sluice.journal.broadcasts import BroadcastStore
from sluice.model import Message


class ChannelStatus(msgspec.Struct, frozen=True):
    name: str
    type: str
    width: int
    #: Configured messages/s (0 = unlimited) and the rate in force after throttling answers.
    rate: float
    current_rate: float
    burst: int
    in_flight: int
    #: Messages accepted for this channel and not yet final (the queue depth).
    pending: int
    breaker: str
    failover: str | None
    sent: int
    failed: int
    retried: int


class Gateway(Protocol):
    config: Config

    def next_id(self) -> int:
        """A fresh message id (unique, time-ordered)."""
        ...

    def backlog(self) -> int:
        """Messages accepted and not yet final, all channels together."""
        ...

    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        """Store messages durably; returns once committed. Raises IdempotencyConflict, and
        DeadlinePassed (nothing stored) when the commit would begin after `deadline`."""
        ...

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None: ...

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]: ...

    async def cancel(self, tenant: str, message_id: int) -> CancelResult: ...

    def channels(self) -> list[ChannelStatus]: ...

    def push_presence(self, tenant: str, subscriber: str | None, topic: str | None) -> int:
        """Live push connections now of a subscriber (or, `subscriber` None, of a topic)."""
        ...

    def refused(self, code: str) -> None:
        """Count a request refused with this error code (metrics)."""
        ...

    def ready(self) -> bool:
        """True once the journal is open and the channels run; False while shutting down or
        while the journal has a fault."""
        ...

    @property
    def audience(self) -> AudienceStore:
        """Subscribers and topics (the journal keeps them)."""
        ...

    @property
    def broadcasts(self) -> BroadcastStore:
        """Broadcasts, their cursors and counters (the journal keeps them)."""
        ...

    def broadcast_changed(self) -> None:
        """A broadcast was created or resumed here: expand it, and claim its messages, now."""
        ...

    def fault(self) -> str | None:
        """Why the journal cannot serve now (a damaged file, a disk below its reserve, a
        server out of reach), or None."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition text and its content type."""
        ...
