"""The journal's owner serving its journal to the edge processes of its machine.

An embedded journal has one owner: one process holds the SQLite file, its writer thread and
the counts kept in memory. With `server.api_processes` the HTTP and SMTP edges run in other
processes (on other cores); each reaches the owner's journal through `JournalClient` on a Unix
socket beside the file (no access for group or others: only the gateway's user connects).
Calls from every connection are queued to the same writer as the owner's own, so they share
its group commits: a 202 still means committed, and nothing is acknowledged by the edge
before the owner's commit has answered.

The owner pushes what the contract answers without a call (`pending`, `fault`, `stats`) every
`state_interval_seconds`, and an *annex* — bytes the process layer fills, the delivery side's
channel figures and metrics — every `annex_interval_seconds`.

Examples:
    server = JournalServer(journal, Path("var/sluice.db.sock"), after_call=wake_runners)
    await server.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.run())
        ...
        server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sluice.journal.base import Journal, JournalError
from sluice.journal.remote.wire import FAILURES, CallTable, FrameReader, OwnerState, WireError

log = logging.getLogger("sluice.journal")

#: How often the owner pushes pending counts, its fault and its stats to every edge process.
STATE_INTERVAL_SECONDS = 0.1
#: How often it renders the annex (channel figures, metrics) for them.
ANNEX_INTERVAL_SECONDS = 1.0
#: The longest the owner stays silent on a connection: its state is pushed at least this
#: often, changed or not (the edges' sign that it lives; they wait several times as long).
HEARTBEAT_SECONDS = 0.5

#: Called after each call that succeeded: (method, positional arguments, value).
AfterCall = Callable[[str, tuple[Any, ...], Any], None]


class _Connection(asyncio.Protocol):
    """One edge process's connection: frames in, calls started, replies out once per turn."""

    def __init__(self, server: JournalServer) -> None:
        self._server = server
        self._reader = FrameReader(server.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._server.connections.add(self)
        self._server.connections_changed()
        self.send(self._server.first_state_frame())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        self._server.connections_changed()

    def data_received(self, data: bytes) -> None:
        try:
            for body in self._reader.feed(data):
                self._server.start_call(self, *self._server.table.decode_call(body))
        except WireError as exc:
            log.error("journal socket: %s; closing the connection", exc)
            self.close()

    def send(self, frame: bytes, *, push: bool = False) -> None:
        """Queue a frame for this turn's write; a state push is skipped while the edge does
        not read (its socket buffer full: a stopped or wedged process), so nothing piles up
        for it but the replies to its own calls."""
        if self.closed or (push and self._paused):
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def stop_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def _flush(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class JournalServer:
    def __init__(
        self,
        journal: Journal,
        path: Path,
        *,
        max_frame_bytes: int,
        after_call: AfterCall | None = None,
        annex: Callable[[], bytes] | None = None,
        state_interval_seconds: float = STATE_INTERVAL_SECONDS,
        annex_interval_seconds: float = ANNEX_INTERVAL_SECONDS,
        grace_seconds: float = 10.0,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.journal = journal
        self.path = path
        self.max_frame_bytes = max_frame_bytes
        self.table = CallTable()
        self.connections: set[_Connection] = set()
        self._after_call = after_call
        self._annex = annex
        self._state_interval = state_interval_seconds
        self._annex_interval = annex_interval_seconds
        self._annex_bytes = b""
        self._annex_at = -1e9
        self._server: asyncio.AbstractServer | None = None
        self._calls: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        #: Set while no edge process is connected.
        self._idle = asyncio.Event()
        self._idle.set()
        self._grace = grace_seconds
        self._last: tuple[dict[str, int], str | None, int] | None = None
        self._pushed_at = -1e9
        self._heartbeat = heartbeat_seconds
        #: Calls served and calls that failed (the journal refused, or a bug), for stats.
        self.calls = 0
        self.failures = 0

    async def start(self) -> None:
        """Listen on the socket (a stale one left by a killed owner is replaced: the journal's
        lock, taken before this, proves no other owner lives)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self), str(self.path)
            )
        finally:
            os.umask(old_umask)

    def stop(self) -> None:
        """Take no new connections; serve those there are until their processes close them
        (they drain their own requests first) or `grace_seconds` pass; `run` returns once
        the calls in progress are answered."""
        self._stopping.set()

    async def run(self) -> None:
        assert self._server is not None, "start() first"
        try:
            async with asyncio.TaskGroup() as tg:
                self._calls = tg
                while not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._state_interval):
                            await self._stopping.wait()
                    self._push_state()
                self._server.close()
                deadline = time.monotonic() + self._grace
                while self.connections and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._state_interval):
                            await self._idle.wait()
                    self._push_state()
                # No new calls from the edges still connected; those under way finish (the
                # TaskGroup waits for them) and their replies are written before the close.
                for connection in list(self.connections):
                    connection.stop_reading()
            await asyncio.sleep(0)  # the last replies' flush (scheduled with call_soon)
            for connection in list(self.connections):
                connection.close()
        finally:
            self._calls = None
            await self.close()

    async def close(self) -> None:
        """Close the socket (whether it served or not)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def connections_changed(self) -> None:
        if self.connections:
            self._idle.clear()
        else:
            self._idle.set()

    # ---------------------------------------------------------------- calls

    def start_call(
        self,
        connection: _Connection,
        call_id: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if self._calls is None:  # before run() or after its end: the journal is closing
            closing = JournalError("the journal is closing")
            connection.send(self.table.encode_failure(call_id, closing))
            return
        self._calls.create_task(self._serve(connection, call_id, method, args, kwargs))

    async def _serve(
        self,
        connection: _Connection,
        call_id: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.calls += 1
        try:
            value = await getattr(self.journal, method)(*args, **kwargs)
        except Exception as exc:  # every failure goes back to its caller, none ends the owner
            self.failures += 1
            if type(exc).__name__ not in FAILURES:  # the others are answers, not bugs
                log.exception("journal call %s failed", method)
            connection.send(self.table.encode_failure(call_id, exc))
            return
        connection.send(self.table.encode_reply(call_id, value))
        if self._after_call is not None:
            try:
                self._after_call(method, args, value)
            except Exception:  # a wake-up that failed must not end the owner's calls
                log.exception("after the journal call %s", method)

    # ---------------------------------------------------------------- state

    def first_state_frame(self) -> bytes:
        """The state for a connection just made, with the annex last rendered (rendered now if
        none was yet)."""
        annex = self._annex_due(time.monotonic()) if self._annex_at < 0 else self._annex_bytes
        return self._state_frame(annex)

    def _state_frame(self, annex: bytes | None) -> bytes:
        journal = self.journal
        return self.table.encode_state(
            OwnerState(journal.pending(), journal.fault(), journal.stats(), annex)
        )

    def _annex_due(self, now: float) -> bytes | None:
        """The annex rendered anew when `annex_interval_seconds` have passed, else None."""
        if self._annex is None or now - self._annex_at < self._annex_interval:
            return None
        self._annex_at = now
        try:
            self._annex_bytes = self._annex()
        except Exception:
            log.exception("rendering the journal owner's annex failed")
        return self._annex_bytes

    def _push_state(self) -> None:
        """Push the state to every connection when it changed, when the annex is due, and at
        least every `heartbeat_seconds`: an edge that hears nothing for much longer takes
        the owner for wedged (`JournalClient`)."""
        if not self.connections:
            return
        journal = self.journal
        key = (dict(journal.pending()), journal.fault(), journal.stats().commits)
        now = time.monotonic()
        annex = self._annex_due(now)
        if annex is None and now - self._pushed_at < self._heartbeat and key == self._last:
            return
        self._last = key
        self._pushed_at = now
        frame = self._state_frame(annex)
        for connection in list(self.connections):
            connection.send(frame, push=True)
