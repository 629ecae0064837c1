"""The embedded journal reached from another process: its owner serves it on a Unix socket
(`server`), edge processes call it through a `Journal` of their own (`client`), and `wire` is
the framing and the typed encoding of the calls, without I/O."""

from sluice.journal.remote.client import JournalClient
from sluice.journal.remote.server import JournalServer

__all__ = ["JournalClient", "JournalServer"]
