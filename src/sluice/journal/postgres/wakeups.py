"""Wake-ups across processes: an insert notifies, every process listens.

An insert notifies (`NOTIFY sluice_due`, delivered at commit) every process listening; an idle
worker claims at once instead of at its next poll. Each process keeps one connection of its
own listening, outside the pool, and opens a new one after a fault.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from sluice.journal.postgres.connection import SERVER_FAULTS, describe
from sluice.journal.postgres.pending import PendingCounts

log = logging.getLogger("sluice.journal")

#: The channel of wake-up notifications.
DUE_CHANNEL = "sluice_due"
#: Sent in the transaction that made messages due: one payload per channel, "<channel>" or
#: "<channel> urgent".
NOTIFY_DUE = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"

Wake = Callable[[str, bool], None]


class DueListener:
    """The listening connection of one process; calls its watchers on every wake-up."""

    def __init__(self, url: str, pending: PendingCounts) -> None:
        self._url = url
        self._pending = pending
        self.watchers: list[Wake] = []

    async def run(self) -> None:
        """Keep one connection listening for wake-ups; reconnect after a fault."""
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": "sluice-listen"}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set_event, lost))
                # asyncpg-stubs type a notification's payload as object; asyncpg passes the
                # str the server sent, which `_notified` takes.
                await conn.add_listener(DUE_CHANNEL, self._notified)  # type: ignore[arg-type]
                delay = 0.1
                # Anything inserted while we were not listening is due now.
                for wake in self.watchers:
                    for channel in self._pending.view:
                        wake(channel, False)
                await lost.wait()
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except SERVER_FAULTS as exc:
                log.debug("journal: listener down: %s", describe(exc))
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        name, _, flag = payload.partition(" ")
        for wake in self.watchers:
            wake(name, flag == "urgent")


def _set_event(event: asyncio.Event, *_: Any) -> None:
    event.set()
