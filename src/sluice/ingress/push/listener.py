"""The push listener: accepts WebSocket clients on `push.listen` and keeps them honest.

A part of the gateway process (`process/parts.py`'s life cycle). One sweep a second, not a
timer per connection, closes handshakes and closing handshakes past their time, pings clients
silent for push.ping_seconds and drops those silent for twice that: a timer per connection
would cost 100,000 timer handles re-armed on every frame.

Examples:
    listener = PushListener(hub, tokens, sock)
    await listener.start()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(listener.run())
        ...
        listener.stop()           # clients are told 1001 and the server closes
    await listener.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sluice.ingress.push.connection import CLOSE_GOING_AWAY, PushConnection
from sluice.ingress.push.tokens import PushTokens

if TYPE_CHECKING:
    from sluice.transports.push.hub import PushHub

#: Seconds a client has to answer our close frame before its connection is dropped.
CLOSING_SECONDS = 5.0


class PushListener:
    def __init__(
        self,
        hub: PushHub,
        tokens: PushTokens,
        sock: socket.socket,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self._tokens = tokens
        self._sock = sock
        self._clock = clock
        self._connections: set[PushConnection] = set()
        self._closing_since: dict[PushConnection, float] = {}
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._all_gone = asyncio.Event()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, sock=self._sock, backlog=4096)

    def _connection(self) -> PushConnection:
        connection = PushConnection(self.hub, self._tokens, self._clock, self._forget)
        self._connections.add(connection)
        return connection

    def _forget(self, connection: PushConnection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._all_gone.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close_for(CLOSE_GOING_AWAY, "the gateway is stopping; reconnect")
        # Clients get a moment to answer the close frame, then the rest are dropped.
        if self._connections:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), timeout=1.0)
        for connection in list(self._connections):
            connection.abort()

    def sweep(self) -> None:
        """Deadlines of every connection (once a second from `run`)."""
        config = self.hub.config
        now = self._clock()
        closing = self._closing_since
        for connection in list(self._connections):
            if connection.closing:
                since = closing.setdefault(connection, now)
                if now - since > CLOSING_SECONDS:
                    connection.abort()
                continue
            if not connection.opened:
                if now - connection.started > config.handshake_seconds:
                    self.hub.refused["handshake_timeout"] += 1
                    connection.abort()
                continue
            silent = now - connection.last_seen
            if silent > 2 * config.ping_seconds:
                connection.close_for(CLOSE_GOING_AWAY, "no answer to pings")
            elif silent > config.ping_seconds and not connection.pinged:
                connection.ping()
        for connection in [c for c in closing if c not in self._connections]:
            del closing[connection]

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
