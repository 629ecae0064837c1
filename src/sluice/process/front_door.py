"""The SMTP front door as a part of a gateway process, with what it learnt kept across runs.

The client memory (which clients passed the screening tests, and until when) and the greylist
are what makes a restart cheap for returning clients. They are restored from the journal when
the part starts, saved every `smtp.screening.save_every_seconds` while it runs, and saved once
more after the door has stopped.

Examples:
    part = FrontDoorPart(SmtpFrontDoor(config, gateway), journal, config.smtp.screening)
    await part.start()                   # the saved client memory and greylist, if any
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(part.run())
        ...
        part.stop()                      # the door closes; the state is saved; run returns
        await running
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sluice.config import ScreeningConfig
from sluice.journal.base import Journal

if TYPE_CHECKING:
    from sluice.ingress.smtp.door import SmtpFrontDoor

log = logging.getLogger("sluice")

#: Names of the SMTP front door's state in the journal.
CLIENT_MEMORY_STATE = "smtp.client_memory"
#: How often clients past their retention are forgotten (and the greylist cleaned).
CLEANUP_SECONDS = 3600.0
GREYLIST_STATE = "smtp.greylist"


class FrontDoorPart:
    def __init__(
        self,
        door: SmtpFrontDoor,
        journal: Journal,
        screening: ScreeningConfig,
        sock: socket.socket | None = None,
    ) -> None:
        self.door = door
        self._journal = journal
        self._screening = screening
        #: The inherited listening socket; None: the door binds smtp.listen.
        self._sock = sock
        self._saver: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Restore the client memory and greylist saved by the last run."""
        door = self.door
        restorers: dict[str, Callable[[bytes], None]] = {CLIENT_MEMORY_STATE: door.restore_memory}
        if door.greylist is not None:
            restorers[GREYLIST_STATE] = door.restore_greylist
        for name, restore in restorers.items():
            saved = await self._journal.load_state(name)
            if saved is None:
                continue
            try:
                restore(saved)
            except ValueError as exc:
                log.warning("%s: the saved state is unreadable (%s); starting empty", name, exc)

    async def run(self) -> None:
        """Serve until `stop`, saving the state meanwhile; save it once more at the end."""
        async with asyncio.TaskGroup() as tg:
            self._saver = tg.create_task(self._save_every())
            await self.door.run(self._sock)
            self._saver.cancel()
        await self._save_state()

    def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
        self.door.close()

    async def close(self) -> None:
        pass  # the socket belongs to the process's listeners; the state was saved by `run`

    async def _save_every(self) -> None:
        """Save the client memory and greylist every save_every_seconds; forget clients past
        their retention once every CLEANUP_SECONDS (a scan of every client on the event loop:
        ~0.6 s per million)."""
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time() + CLEANUP_SECONDS
        while True:
            await asyncio.sleep(self._screening.save_every_seconds)
            cleanup = loop.time() >= next_cleanup
            if cleanup:
                next_cleanup = loop.time() + CLEANUP_SECONDS
            await self._save_state(cleanup=cleanup)

    async def _save_state(self, *, cleanup: bool = True) -> None:
        door = self.door
        if cleanup:
            retention = self._screening.client_retention_seconds
            forgotten = door.memory.forget_before(int(time.time() - retention))
            if forgotten:
                log.info("smtp: forgot %d clients not seen for %.0f s", forgotten, retention)
            if door.greylist is not None:
                door.greylist.cleanup()
        await self._journal.save_state(CLIENT_MEMORY_STATE, door.memory.snapshot())
        if door.greylist is not None:
            await self._journal.save_state(GREYLIST_STATE, door.greylist.snapshot())
