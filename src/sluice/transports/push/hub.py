"""The push hub: a process's live connections by subscriber, presence counters, and the
acknowledgements on their way to the journal.

The push channel's transport asks the hub to write a message to every connection of its
recipient (`deliver`); each connection's client acknowledges what it got, and the hub
commits those acknowledgements as delivery receipts in batches (one journal call for all
that came in while the previous one committed). Presence ("how many connections has this
subscriber, this topic now") is a pair of counters kept as connections come and go, never a
scan.

Examples:
    hub = PushHub(config.push, on_acks=journal_receipts)
    hub.attach(connection)          # after its token was verified
    hub.deliver(message)            # how many connections it was written to
    hub.presence("acme", "u1")      # 1
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from sluice.config import PushConfig
from sluice.journal.base import Receipt
from sluice.model import Message

log = logging.getLogger("sluice.push")

#: Where acknowledged pushes go, by channel: returns once they are committed.
OnAcks = Callable[[str, list[Receipt]], Awaitable[None]]
#: The journal's read for a replay: (tenant, subscriber, after this id) → the push messages
#: addressed to the subscriber since, oldest first, and whether some before them fell out of
#: the replay window (or past push.max_replay).
Replay = Callable[[str, str, int], Awaitable[tuple[list[Message], bool]]]
#: Replays read from the journal at once: a reconnect storm waits its turn here.
REPLAY_WIDTH = 8


class Client(Protocol):
    """A connection as the hub sees it (transports/push/connection.py)."""

    tenant: str
    subscriber: str
    topics: tuple[str, ...]

    def push(self, message: Message, event_id: str) -> bool:
        """Write the message; False when the connection cannot take it (closing, or cut off
        as a slow consumer)."""
        ...

    def close_for(self, code: int, reason: str) -> None: ...

    def replayed(self, messages: list[Message], missed: bool) -> None:
        """What the client missed, read from the journal (see `PushHub.replay`)."""
        ...


class HubStats(msgspec.Struct, frozen=True):
    connections: int
    subscribers: int
    pushed: int
    acked: int
    slow_consumers: int
    refused: Counter[str]


class PushHub:
    """The connections of one process (see the module)."""

    def __init__(
        self, config: PushConfig, on_acks: OnAcks | None = None, replay: Replay | None = None
    ) -> None:
        self.config = config
        self._on_acks = on_acks
        self._replay = replay
        self._replays: asyncio.Queue[tuple[Client, int]] = asyncio.Queue()
        self.replays = 0
        self._by_subscriber: dict[tuple[str, str], list[Client]] = {}
        self._by_topic: Counter[tuple[str, str]] = Counter()
        self._connections = 0
        self._acks: dict[str, list[Receipt]] = {}
        self._ack_ready = asyncio.Event()
        self.pushed = 0
        self.acked = 0
        self.slow_consumers = 0
        self.refused: Counter[str] = Counter()

    # ------------------------------------------------------------------ connections

    def admit(self, tenant: str, subscriber: str) -> str | None:
        """Why a new connection of `subscriber` cannot be taken now, or None."""
        if self._connections >= self.config.max_connections:
            return f"this process holds push.max_connections = {self.config.max_connections}"
        held = self._by_subscriber.get((tenant, subscriber))
        if held is not None and len(held) >= self.config.max_connections_per_subscriber:
            return (
                f"the subscriber holds push.max_connections_per_subscriber = "
                f"{self.config.max_connections_per_subscriber} connections"
            )
        return None

    def attach(self, client: Client) -> None:
        self._by_subscriber.setdefault((client.tenant, client.subscriber), []).append(client)
        for topic in client.topics:
            self._by_topic[client.tenant, topic] += 1
        self._connections += 1

    def detach(self, client: Client) -> None:
        key = client.tenant, client.subscriber
        held = self._by_subscriber.get(key)
        if held is None or client not in held:
            return
        held.remove(client)
        if not held:
            del self._by_subscriber[key]
        for topic in client.topics:
            self._by_topic[client.tenant, topic] -= 1
            if not self._by_topic[client.tenant, topic]:
                del self._by_topic[client.tenant, topic]
        self._connections -= 1

    def presence(self, tenant: str, subscriber: str) -> int:
        """Connections the subscriber has to this process now."""
        return len(self._by_subscriber.get((tenant, subscriber), ()))

    def topic_presence(self, tenant: str, topic: str) -> int:
        """Connections whose token may read `topic`, on this process now."""
        return self._by_topic.get((tenant, topic), 0)

    def close_all(self, code: int, reason: str) -> None:
        for held in list(self._by_subscriber.values()):
            for client in list(held):
                client.close_for(code, reason)

    # ------------------------------------------------------------------ delivery

    def deliver(self, message: Message, event_id: str) -> int:
        """Write `message` to every connection of its recipient; how many took it."""
        held = self._by_subscriber.get((message.tenant, message.recipient))
        if not held:
            return 0
        written = sum(1 for client in list(held) if client.push(message, event_id))
        self.pushed += written
        return written

    def acknowledged(self, channel: str, event_ids: list[str]) -> None:
        """A client acknowledged these pushes of `channel`: committed by `run` in a batch."""
        self._acks.setdefault(channel, []).extend(
            Receipt(i, True, "acknowledged") for i in event_ids
        )
        self.acked += len(event_ids)
        self._ack_ready.set()

    def replay(self, client: Client, after_id: int) -> None:
        """Read from the journal what `client`'s subscriber was sent after `after_id` and hand
        it to `client.replayed` (from `run`, `REPLAY_WIDTH` reads at a time)."""
        self._replays.put_nowait((client, after_id))

    async def run(self) -> None:
        """Commit acknowledgements and serve replays until cancelled (acknowledgements
        pending then are committed first)."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(REPLAY_WIDTH):
                tg.create_task(self._replaying())
            tg.create_task(self._acknowledging())

    async def _replaying(self) -> None:
        while True:
            client, after_id = await self._replays.get()
            if self._replay is None:
                client.replayed([], False)
                continue
            try:
                messages, missed = await self._replay(client.tenant, client.subscriber, after_id)
            except Exception:  # the journal retried already: the client tries again later
                log.exception("push: replay for %s failed", client.subscriber)
                client.close_for(1011, "replay failed; reconnect")
                continue
            self.replays += 1
            client.replayed(messages, missed)

    async def _acknowledging(self) -> None:
        try:
            while True:
                await self._ack_ready.wait()
                await self._flush()
        finally:
            if self._acks:
                await asyncio.shield(self._flush())

    async def _flush(self) -> None:
        self._ack_ready.clear()
        acks, self._acks = self._acks, {}
        if self._on_acks is None:
            return
        for channel, receipts in acks.items():
            try:
                await self._on_acks(channel, receipts)
            except Exception:  # the journal retried already; the pushes stay "sent"
                log.exception("push: %d acknowledgements not recorded", len(receipts))

    def stats(self) -> HubStats:
        return HubStats(
            connections=self._connections,
            subscribers=len(self._by_subscriber),
            pushed=self.pushed,
            acked=self.acked,
            slow_consumers=self.slow_consumers,
            refused=Counter(self.refused),
        )
