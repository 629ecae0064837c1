"""Health and readiness on a listener of their own, served from a thread with its own event loop.

On the main port, /healthz and /readyz are answered by the gate as soon as their headers are
in, which is prompt while the adaptive limit holds the loop's lag near its target. But the
loop can still be late (a refusal flood far above what it can answer, a long callback), and
a balancer that sees a probe time out ejects the node exactly when it is busy. With
`server.health_listen` set, probes are also answered here: a thread whose loop does nothing
else, so an answer waits at most for the GIL (handed over every
`server.gil_switch_interval_ms`), not for the main loop.

The answers are the gate's: /healthz says the process is up; /readyz says it is serving and,
with `admission.unready_while_shedding`, not shedding load. Anything else is a 404. Every
connection is closed after its answer, and one that has not sent its headers within
`HEADER_SECONDS` (or sends more than `MAX_HEADER_BYTES`) is closed unanswered.

Examples:
    health = HealthListener(bind_tcp("127.0.0.1:8081"), gate)
    health.start()
    ...
    health.stop()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from email.utils import formatdate

from sluice.ingress.http.gate import EdgeGate, FastAnswer, error_answer

log = logging.getLogger("sluice.http")

#: A probe's request line and headers must fit in this (balancers send a few hundred bytes).
MAX_HEADER_BYTES = 8 * 1024
#: Seconds a probe connection may take to send its headers.
HEADER_SECONDS = 5.0

_NOT_FOUND = error_answer(404, "not_found", "this port serves only /healthz and /readyz")


class _ProbeProtocol(asyncio.Protocol):
    """One probe connection: read up to the end of the headers, answer, close."""

    def __init__(self, gate: EdgeGate, loop: asyncio.AbstractEventLoop) -> None:
        self._gate = gate
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer = loop.call_later(HEADER_SECONDS, self._give_up)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEADER_BYTES:
                self._give_up()
            return
        line = self._buffer.split(b"\r\n", 1)[0]
        method, _, rest = line.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        answer = self._gate.at_headers(method, target, [], 0.0) if method == b"GET" else None
        if not isinstance(answer, FastAnswer) or target not in (b"/healthz", b"/readyz"):
            answer = _NOT_FOUND
        date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        assert self._transport is not None
        self._transport.write(answer.render(date, keep_alive=False))
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()

    def _give_up(self) -> None:
        self._close()

    def _close(self) -> None:
        self._timer.cancel()
        if self._transport is not None:
            self._transport.close()


class HealthListener:
    """Serves probes on `sock` from a thread of its own until `stop`."""

    def __init__(self, sock: socket.socket, gate: EdgeGate) -> None:
        self._sock = sock
        self._gate = gate
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-listener", daemon=True)
        self._thread.start()
        self._started.wait()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("the health listener failed")
        finally:
            self._started.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        server = await loop.create_server(
            lambda: _ProbeProtocol(self._gate, loop), sock=self._sock, backlog=1024
        )
        self._started.set()
        async with server:
            await self._stop.wait()
