"""The push channel's transport: a message goes to every live connection of its recipient.

A message to a subscriber with a connection here is `sent` once written to it, with its
message id as the provider id whose receipt the client's acknowledgement is: the journal
makes it `delivered` then (an acknowledgement that overtakes the `sent` commit waits for
it, as any early receipt does). A message to a subscriber with no live connection is `sent`
too, with the detail "no live connection": it waits in the journal, and the client's next
connection replays it (`last_id`) and acknowledges it.

Examples:
    transport = PushTransport("live", hub)
    result = await transport.send(message)     # SENT, parts=(format_id(message.id),)
"""

from __future__ import annotations

from collections.abc import Callable

from sluice.model import Message, Outcome, format_id
from sluice.transports.base import SendResult
from sluice.transports.push.hub import PushHub


class PushTransport:
    paces_itself = False

    def __init__(self, name: str, hub: PushHub) -> None:
        self.name = name
        self._hub = hub

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, message: Message) -> SendResult:
        event_id = format_id(message.id)
        written = self._hub.deliver(message, event_id)
        if not written:
            detail = "no live connection: kept for the next connection's replay"
        elif written == 1:
            detail = "pushed to 1 connection"
        else:
            detail = f"pushed to {written} connections"
        return SendResult(Outcome.SENT, event_id, detail, parts=(event_id,))

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        return False

    def drop_queued(self) -> int:
        return 0
