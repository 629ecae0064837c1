"""The transport contract: how a channel hands one message to its peer.

A transport knows one protocol (HTTP webhook, SMPP, SMTP …) and nothing of limits, retries or
the journal: the channel runner owns those. It classifies every answer into an `Outcome`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from sluice.journal.base import Receipt
from sluice.model import Message, Outcome

#: Where a transport hands delivery receipts; returns once they are committed.
OnReceipts = Callable[[str, list[Receipt]], Awaitable[None]]


class SendResult(msgspec.Struct, frozen=True):
    outcome: Outcome
    provider_id: str | None = None
    #: The peer's answer in a few words ("HTTP 503", "timed out after 10 s") for the attempt log.
    detail: str | None = None
    #: Seconds the peer asked us to wait (Retry-After), if it said.
    retry_after: float | None = None
    #: Provider ids of each part, when the peer will send delivery receipts for them.
    parts: tuple[str, ...] = ()
    #: False when nothing reached the peer (no connection up): the try is not counted
    #: against the message's attempts, but it counts against the channel's breaker.
    attempted: bool = True


class Transport(Protocol):
    #: True when the transport slows itself down on throttling answers (per connection), so
    #: the channel must not also cut its own rate.
    paces_itself: bool

    async def start(self) -> None:
        """Prepare to send (sessions, pools). Must not wait for a peer that is down."""
        ...

    async def run(self) -> None:
        """Background work (connections, keepalives, reconnects) until `close`; the gateway's
        task group owns it. Transports without any return at once."""
        ...

    async def close(self) -> None:
        """Stop: `run` returns, connections close. Idempotent."""
        ...

    async def send(self, message: Message) -> SendResult:
        """Deliver one message; never raises for a peer's failure, only reports it."""
        ...

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        """Start delivering `message` now without a task of its own, and call `done` with the
        result later; or return False, having sent nothing, when this message needs `send`.

        The fast path of a busy channel: a task per message costs more than an SMPP submit.
        Transports with nothing to gain return False."""
        ...

    def drop_queued(self) -> int:
        """Give up the sends that wait inside the transport and have not reached the peer
        (a paced SMPP bind's queue): each is answered as not attempted, none is sent after
        this. The channel's runner calls it when it stops for good. Returns how many."""
        ...
