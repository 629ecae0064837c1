"""What every simulator is: started and closed (also as ``async with``), with a name for its
errors and the command line's output, and stats that sum up in one line."""

from __future__ import annotations

import abc
from typing import ClassVar, Protocol, Self


class Summarised(Protocol):
    def summary(self) -> str: ...


class Simulator(abc.ABC):
    """The life cycle the SMSC, the webhook sink and the SMTP sink share."""

    #: How it names itself in errors and on the terminal ("SMTP sink").
    NAME: ClassVar[str]
    #: The port it listens on, set by `start`.
    _port: int = 0

    @property
    def port(self) -> int:
        """The port it listens on, once started."""
        self._check_started()
        return self._port

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """Listening (between `start` and `close`)."""

    @abc.abstractmethod
    async def start(self) -> int:
        """Listen (on a free port unless told otherwise) and return the bound port."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening and end open connections; closing twice is harmless."""

    @abc.abstractmethod
    def stats(self) -> Summarised:
        """What it did since it started or was last reset."""

    async def __aenter__(self) -> Self:
        if not self.started:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_started(self) -> None:
        if not self.started:
            raise RuntimeError(f"{self.NAME} is not started: call start() first")
