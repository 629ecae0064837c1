"""The life cycle every part of a gateway process follows, and the parts that need a shell to
follow it.

    start ─► run (all parts together, in one TaskGroup) ─► stop … run returns ─► close

A gateway starts its parts one after the other, runs them together, stops them in the order
that keeps every message (the doors first, then delivery, then what both use) and closes
every one of them, whether it got to run or not. The delivery side (`Delivery`) has this life
cycle of its own; the HTTP server and the Redis sharing (which runs until cancelled)
get it from the shells below, and the SMTP front door from `process/front_door.py`.

Examples:
    part: Part = HttpServerPart(app, sock, config)
    await part.start()
    async with asyncio.TaskGroup() as tg:
        running = tg.create_task(part.run())
        ...
        part.stop()                      # run returns once the server has stopped
        await running
    await part.close()
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Protocol

from sluice.config import Config, PushConfig
from sluice.ingress.http.gate import EdgeGate
from sluice.ingress.http.health import HealthListener
from sluice.ingress.http.server import HttpServer
from sluice.ingress.push.listener import PushListener
from sluice.ingress.push.tokens import PushTokens
from sluice.sharing.build import Sharing
from sluice.transports.push.hub import PushHub

if TYPE_CHECKING:
    from sluice.ingress.http.app import ASGIApp


class Part(Protocol):
    async def start(self) -> None:
        """Get ready to run (connect, restore saved state), before any part runs."""

    async def run(self) -> None:
        """Work until `stop`; return once stopped gracefully."""

    def stop(self) -> None:
        """Begin the graceful stop: `run` returns when it is done."""

    async def close(self) -> None:
        """Let go of what the part holds, whether it ran or not."""


class HttpServerPart:
    """The HTTP server (`ingress/http/server.py`) on a listening socket: it stops taking
    requests at `stop` and finishes those under way (for up to 5 s) before `run` returns."""

    def __init__(self, app: ASGIApp, sock: socket.socket, config: Config) -> None:
        self.server = HttpServer(app, sock, config)

    async def start(self) -> None:
        pass  # the server binds nothing: it serves on the socket it is given

    async def run(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        self.server.stop()

    async def close(self) -> None:
        pass  # the socket belongs to the process's listeners


class HealthPart:
    """Health probes on a listener and thread of their own (`server.health_listen`)."""

    def __init__(self, sock: socket.socket, gate: EdgeGate) -> None:
        self._listener = HealthListener(sock, gate)
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._listener.start()

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await asyncio.to_thread(self._listener.stop)


class SharingPart:
    """What the process shares through Redis (`Sharing`), which runs until cancelled: `stop`
    cancels it; `close` closes the Redis client."""

    def __init__(self, sharing: Sharing) -> None:
        self._sharing = sharing
        self._stop = asyncio.Event()

    async def start(self) -> None:
        pass  # the Redis client connects at its first command

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(self._sharing.run())
            await self._stop.wait()
            running.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await self._sharing.close()


class PushPart:
    """The live push listener and its hub's acknowledgements: at `stop` clients are told
    1001 (reconnect elsewhere or later) and the acknowledgements already in are committed."""

    def __init__(self, hub: PushHub, config: PushConfig, sock: socket.socket) -> None:
        self._hub = hub
        self._listener = PushListener(hub, PushTokens(config.token_secret.encode()), sock)

    async def start(self) -> None:
        await self._listener.start()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            acks = tg.create_task(self._hub.run())
            await self._listener.run()
            acks.cancel()

    def stop(self) -> None:
        self._listener.stop()

    async def close(self) -> None:
        await self._listener.close()
