"""The HTTP server: uvicorn's HTTP/1.1 protocol (httptools) behind Sluice's own accept loop and
gate.

Why not `uvicorn.Server`: under load it failed the edge in two ways that were measured.
uvloop's server accepts one connection per turn of the event loop, so with the loop busy new
connections waited in the kernel's queue for seconds (19 of 500 accepted in the first second
beside a loop running 50 ms turns; all 500 with this accept loop, which takes up to
`server.accept_batch` per turn). And every request went through an ASGI task before anything
could refuse it (~68 µs a refusal), so refusals alone could saturate the loop. Here:

* `_Acceptor` takes connections in batches and refuses those beyond `server.max_connections`
  with a 503 written straight to the socket;
* `GatedProtocol` (uvicorn's protocol, one method changed) asks the gate (`gate.py`) about each
  request once its headers are parsed: health probes and refusals are written at once, without
  the application, and only admitted requests become ASGI tasks;
* a probe measures the event loop's lag for the adaptive limit, and the Date header is
  refreshed once a second.

Examples:
    server = HttpServer(app, sock, config)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.serve())
        ...
        server.stop()      # stop accepting; requests under way get up to 5 s
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import httptools
import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from sluice.config import Config
from sluice.ingress.http.gate import (
    ANSWER_KEY,
    TICKET_KEY,
    EdgeGate,
    FastAnswer,
    Ticket,
    error_answer,
    too_many_connections,
)
from sluice.ingress.http.head_limits import HeadLimits
from sluice.ingress.http.request_id import CLIENT_HEADER, REQUEST_ID_KEY, RequestIds

if TYPE_CHECKING:
    from sluice.ingress.http.app import ASGIApp

log = logging.getLogger("sluice.http")

#: Seconds requests under way get to finish after `stop`, before their tasks are cancelled.
GRACEFUL_SECONDS = 5.0


class DateHeader:
    """The Date header the server's answers carry, refreshed once a second (`tick`): `value`
    for uvicorn's default headers, `date_header` as the line the gate's answers write."""

    __slots__ = ("date_header", "value")

    def __init__(self) -> None:
        self.value = b""
        self.date_header = b""
        self.tick()

    def tick(self) -> None:
        self.value = formatdate(usegmt=True).encode()
        self.date_header = b"date: " + self.value + b"\r\n"


class _RefusalPacer:
    """Reads from refused clients, a batch per turn of the loop: the refusal stage's width.

    Under a flood, the loop read every connection in every turn, so a turn held thousands of
    refusals, and everything else that needs turns — admitted requests (about three turns
    each), the channels' claims, sends and outcomes — waited that long for each one: at 10x
    delivery fell to 147 messages/s and goodput to a third of capacity. A connection whose
    request was refused for load (`DEFERRED_CODES`) stops being read; up to `batch` of them
    are read again each turn, in the order they were refused, and any that waited `max_wait`
    seconds is read whatever the batch, so that refusals never fall behind a flood by more
    than that (with no bound they did, by seconds, until clients timed out)."""

    __slots__ = ("_batch", "_loop", "_max_wait", "_scheduled", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: int, max_wait: float) -> None:
        self._loop = loop
        self._batch = batch
        self._max_wait = max_wait
        self._waiting: deque[tuple[float, asyncio.Transport]] = deque()
        self._scheduled = False

    def defer(self, transport: asyncio.Transport) -> None:
        transport.pause_reading()
        self._waiting.append((self._loop.time(), transport))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        waiting = self._waiting
        overdue = self._loop.time() - self._max_wait
        resumed = 0
        while waiting and (resumed < self._batch or waiting[0][0] <= overdue):
            _, transport = waiting.popleft()
            if not transport.is_closing():
                transport.resume_reading()
            resumed += 1
        if waiting:
            self._loop.call_soon(self._resume)  # the next turn
        else:
            self._scheduled = False


#: Where a pipelined request keeps what the gate needs until its turn comes.
_PENDING_KEY = "sluice.pending"
#: Refusals for load: their connection's next request waits for the pacer.
DEFERRED_CODES = frozenset(("overloaded", "rate_limited", "backlog_full"))


class GatedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the gate consulted when a request's headers are in.

    A request the gate answers (a refusal, a health probe) is answered from here and its body,
    if any, is dropped as it arrives; the connection stays open for the next request unless
    the client asked to close it or announced a body with ``Expect: 100-continue``.

    Two costs of uvicorn's per-request path are left out, measured with py-spy under a
    refusal flood: the ASGI scope is built only for requests that reach the application, and
    no keep-alive timer is armed and cancelled per request (~10 % of the process): the server
    closes connections idle for longer than the keep-alive timeout in a sweep once a second
    (`idle_since`), which also holds before a connection's first request.

    A request's head is bounded (`HeadLimits`: 414, 431) and must arrive within the header
    deadline (408), its body within the body deadline; a request uvicorn's parser cannot read
    is answered 400 in the API's error envelope. Every answer carries a Request-Id: the
    client's own ``X-Request-Id`` when it sends a sound one, else one drawn here."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        gate: EdgeGate | None,
        clock: DateHeader,
        pacer: _RefusalPacer | None = None,
        *,
        limits: HeadLimits,
        request_ids: RequestIds,
    ) -> None:
        super().__init__(config=config, server_state=server_state, app_state={})
        self._gate = gate
        self._clock = clock
        self._pacer = pacer
        self._limits = limits
        self._request_ids = request_ids
        self._request_id = b""
        #: The client's X-Request-Id, as sent (b"" when none).
        self._client_id = b""
        self._started = 0.0
        self._answered = False
        #: Bytes of the current head: of its request line, of its header fields; and what a
        #: callback of the parser decided to refuse it with.
        self._line_bytes = 0
        self._header_bytes = 0
        self._refusal: FastAnswer | None = None
        #: Whether the bytes coming in belong to a request's head, and how many came so far.
        self._in_head = True
        self._head_read = 0
        self._began = False
        #: Monotonic times since which the current head, and the current body, are awaited.
        self.head_since: float | None = None
        self.body_since: float | None = None
        #: Loop time since which the connection has been idle (nothing asked, nothing owed);
        #: None while a request is being received or served.
        self.idle_since: float | None = self.loop.time()

    def _unset_keepalive_if_required(self) -> None:
        # Called by uvicorn at every read and every response: the connection is busy.
        self.idle_since = None

    def data_received(self, data: bytes) -> None:
        """Feed the parser, never more bytes of one head than a head within the limits can
        take: httptools buffers a header field until it ends, so a 100 MB header would be
        held whole before any callback could count it."""
        self.idle_since = None
        if self._in_head:
            if self.head_since is None:
                # The header deadline runs from the first byte of a head, whatever it is:
                # llhttp skips blank lines before a request without a callback, so a client
                # sending CRLFs would otherwise be neither idle nor in a request.
                self.head_since = time.monotonic()
            if len(data) <= self._limits.head_bytes - self._head_read:  # the common case
                self._head_read += len(data)
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    self._upgrade()
                except httptools.HttpParserError as exc:
                    self._parse_failed(exc)
                return
            rest = self._feed_head(data)
            if rest is None:
                return
            data = rest
        self._feed(data)

    def _feed_head(self, data: bytes) -> bytes | None:
        """Feed `data` a head's room at a time while a head is open; what is left to feed,
        or None when the connection was refused."""
        limit = self._limits.head_bytes
        while self._in_head and len(data) > limit - self._head_read:
            room = limit - self._head_read
            self._began = False
            if not self._feed(data[:room]):
                return None
            data = data[room:]
            if not self._in_head:
                return data  # the head ended within the slice; what follows is its body, or more
            if not self._began:  # the head began before the slice: `limit` bytes and open
                self._refuse(self._limits.headers_too_large)
                return None
            # A head began within the slice, after requests that ended in it: it holds some
            # of the slice, at most `room` bytes, counted as none (never a refusal too many).
            self._head_read = 0
        if self._in_head:
            self._head_read += len(data)
        return data

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when the connection was refused and closed."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
            return False
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return False
        return True

    def _upgrade(self) -> None:
        # uvicorn's: no WebSocket endpoint is served, so the warning and on as HTTP.
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        """Refuse the request the parser gave up on: with what a callback decided (414,
        431), else 400 naming what the parser found."""
        refusal = self._refusal
        if refusal is None:
            cause = exc.__context__ if exc.__context__ is not None else exc
            refusal = error_answer(
                400, "bad_request", f"the request is not valid HTTP/1.1: {cause}"
            )
        self._refuse(refusal)

    def _refuse(self, answer: FastAnswer) -> None:
        """Answer `answer` and close: the connection can carry no more requests."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a request under way answers first; then close
            self.transport.pause_reading()
            return
        request_id = self._request_id or self._request_ids.draw()
        self.transport.write(
            answer.render(self._clock.date_header, keep_alive=False, request_id=request_id)
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(error_answer(400, "bad_request", msg))

    def on_message_begin(self) -> None:
        self._began = True
        started = self.head_since  # the head's first byte (data_received)
        if started is None:  # the request began in the read that ended the one before
            started = self.head_since = time.monotonic()
        self._started = started
        self._answered = False
        self._line_bytes = self._header_bytes = 0
        self._request_id = b""
        self._client_id = b""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self._line_bytes += len(url)
        if self._line_bytes > self._limits.max_line:
            self._refusal = self._limits.line_too_long
            raise ValueError("request line too long")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's, inlined (one call a header fewer), with the limits and the client's id.
        size = self._header_bytes = self._header_bytes + len(name) + len(value)
        headers = self.headers
        limits = self._limits
        if size > limits.max_headers_bytes or len(headers) >= limits.max_headers:
            self._refusal = limits.headers_too_large
            raise ValueError("headers too large")
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == CLIENT_HEADER:
            self._client_id = value
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.head_since = None
        self.body_since = self._started
        gate = self._gate
        path = httptools.parse_url(self.url).path
        ids, client_id = self._request_ids, self._client_id
        request_id = self._request_id = ids.chosen(client_id) if client_id else ids.draw()
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Pipelined behind a request still being served: the gate is asked when this one's
            # turn comes (`_start_asgi_task`), so that a request waiting in the queue holds no
            # admission slot (a client that leaves would take the slot with it), and its answer
            # goes out in order.
            self._serve(request_id, pending=(self.parser.get_method(), path, self._started))
            return
        verdict = None
        if gate is not None:
            verdict = gate.at_headers(self.parser.get_method(), path, self.headers, self._started)
        if verdict is None or isinstance(verdict, tuple):
            self._serve(request_id, verdict)
            return
        self._answered = True
        keep_alive = self.parser.should_keep_alive() and not self.expect_100_continue
        self.transport.write(
            verdict.render(self._clock.date_header, keep_alive=keep_alive, request_id=request_id)
        )
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        elif self._pacer is not None and verdict.code in DEFERRED_CODES:
            self._pacer.defer(self.transport)

    def _serve(
        self,
        request_id: bytes,
        ticket: Ticket | None = None,
        *,
        pending: tuple[bytes, bytes, float] | None = None,
    ) -> None:
        """Hand the request to the application, through uvicorn's own path."""
        self.idle_since = None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": self.headers,
            "state": {},
            REQUEST_ID_KEY: request_id,
        }
        if ticket is not None:
            scope[TICKET_KEY] = ticket
        if pending is not None:
            scope[_PENDING_KEY] = pending
        self.scope = scope  # type: ignore[assignment]
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        pending = cycle.scope.pop(_PENDING_KEY, None)
        if pending is not None and self._gate is not None:
            method, path, started = pending
            verdict = self._gate.at_headers(method, path, cycle.scope["headers"], started)
            if isinstance(verdict, FastAnswer):
                cycle.scope[ANSWER_KEY] = verdict
            elif verdict is not None:
                cycle.scope[TICKET_KEY] = verdict
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_since = None
        self._in_head = True
        self._head_read = 0
        self._began = True  # what follows in the read may be the next head: counted afresh
        if self._answered:
            # The answered request is in whole (its body, if any, dropped): nothing is owed.
            self.idle_since = self.loop.time()
        else:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, less its keep-alive timer (see the class's docstring).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_since = self.loop.time()

    def overdue(self, now: float, loop_now: float) -> bool:
        """Close the connection if it outstayed a deadline: True when it was closed.
        `now` is monotonic time, `loop_now` the loop's."""
        limits = self._limits
        head_since = self.head_since
        if head_since is not None and now - head_since > limits.header_timeout:
            self._refuse(self._limits.header_timeout_answer)
            return True
        body_since = self.body_since
        if body_since is not None and now - body_since > limits.body_timeout:
            log.info("closing a connection whose request body did not arrive in %g s "
                     "(server.body_timeout_seconds)", limits.body_timeout)  # fmt: skip
            self.transport.close()
            return True
        idle_since = self.idle_since
        if idle_since is not None and loop_now - idle_since > limits.keep_alive:
            self.transport.close()
            return True
        return False


class ServerStats(msgspec.Struct, frozen=True):
    """Connections open now, accepted and refused at the door (server.max_connections)."""

    connections: int
    accepted: int
    refused: int


class HttpServer:
    """Serves an ASGI app (with its gate, when it has one) on a listening socket until `stop`."""

    def __init__(self, app: ASGIApp, sock: socket.socket, config: Config) -> None:
        self._sock = sock
        self._settings = config.server
        self._lag_interval = config.admission.interval_ms / 1000 / 5
        gate = getattr(app, "gate", None)
        self._gate: EdgeGate | None = gate if isinstance(gate, EdgeGate) else None
        self._uvicorn = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            http="httptools",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            date_header=False,  # the server keeps its own (`DateHeader`); idle connections too
        )
        self._uvicorn.load()
        self._state = ServerState()
        self._clock = DateHeader()
        self._tick_date()
        self._refusal = too_many_connections(config.server.max_connections)
        self._limits = HeadLimits(config.server)
        self._request_ids = RequestIds()
        self._pacer: _RefusalPacer | None = None
        self._stop = asyncio.Event()
        #: Set once the socket listens and connections are being accepted.
        self.listening = asyncio.Event()
        self._acceptor: _Acceptor | None = None

    def stats(self) -> ServerStats:
        acceptor = self._acceptor
        accepted, refused = (acceptor.accepted, acceptor.refused) if acceptor else (0, 0)
        return ServerStats(len(self._state.connections), accepted, refused)

    def stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self._sock
        if self._settings.refusal_batch > 0:
            self._pacer = _RefusalPacer(
                loop, self._settings.refusal_batch, self._settings.refusal_max_wait_ms / 1000
            )
        sock.listen(self._settings.listen_backlog)
        sock.setblocking(False)
        async with asyncio.TaskGroup() as tg:
            self._acceptor = accepting = _Acceptor(
                sock,
                loop,
                tg,
                protocol=self._protocol,
                open_connections=lambda: len(self._state.connections),
                refusal=lambda: self._refusal.render(
                    self._clock.date_header, keep_alive=False, request_id=self._request_ids.draw()
                ),
                batch=self._settings.accept_batch,
                maximum=self._settings.max_connections,
            )
            accepting.start()
            self.listening.set()
            try:
                tg.create_task(self._ticks())
                await self._stop.wait()
            finally:
                accepting.stop()
            await self._shutdown()

    def _protocol(self) -> GatedProtocol:
        return GatedProtocol(
            self._uvicorn,
            self._state,
            self._gate,
            self._clock,
            self._pacer,
            limits=self._limits,
            request_ids=self._request_ids,
        )

    async def _ticks(self) -> None:
        """Once a second the Date header and closing idle connections; the loop's lag for the
        adaptive limit each `_lag_interval` (a fifth of the limit's interval)."""
        loop = asyncio.get_running_loop()
        limit = self._gate.limit if self._gate is not None else None
        interval = self._lag_interval
        next_date = loop.time() + 1.0
        while not self._stop.is_set():
            before = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            now = loop.time()
            if limit is not None:
                limit.observe_lag(max(0.0, now - before - interval))
            if now >= next_date:
                self._tick_date()
                self._close_idle(now)
                next_date = now + 1.0

    def _tick_date(self) -> None:
        self._clock.tick()
        self._state.default_headers = [(b"date", self._clock.value)]

    def _close_idle(self, loop_now: float) -> None:
        """Close the connections that outstayed a deadline: idle for longer than the
        keep-alive timeout, or slow to send their headers or their body."""
        now = time.monotonic()
        for connection in list(self._state.connections):
            if isinstance(connection, GatedProtocol):
                connection.overdue(now, loop_now)

    async def _shutdown(self) -> None:
        state = self._state
        for connection in list(state.connections):
            connection.shutdown()
        deadline = time.monotonic() + GRACEFUL_SECONDS
        # uvicorn's sets of connections and tasks signal nothing when they empty: poll them.
        while (state.connections or state.tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            connection.transport.close()


class _Acceptor:
    """Takes up to `batch` connections off the listening socket per turn of the loop; beyond
    `maximum` open, a connection gets `refusal()` (a 503) and is closed."""

    #: Seconds accepting pauses after the process ran out of file descriptors (EMFILE): the
    #: listening socket stays readable, and retrying at once would spin the loop.
    PAUSE_SECONDS = 0.1

    def __init__(
        self,
        listener: socket.socket,
        loop: asyncio.AbstractEventLoop,
        tg: asyncio.TaskGroup,
        *,
        protocol: Callable[[], GatedProtocol],
        open_connections: Callable[[], int],
        refusal: Callable[[], bytes],
        batch: int,
        maximum: int,
    ) -> None:
        self._listener = listener
        self._loop = loop
        self._tg = tg
        self._protocol = protocol
        self._open_connections = open_connections
        self._refusal = refusal
        self._batch = batch
        self._max = maximum
        #: Connections accepted whose protocol does not exist yet (not yet counted as open).
        self._opening = 0
        self._listening = False
        self._closed = False
        self.accepted = 0
        self.refused = 0

    def start(self) -> None:
        self._loop.add_reader(self._listener.fileno(), self.accept)
        self._listening = True

    def stop(self) -> None:
        self._closed = True
        self._pause()

    def _pause(self) -> None:
        if self._listening:
            self._loop.remove_reader(self._listener.fileno())
            self._listening = False

    def accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the rest stay queued for a while
                log.warning("cannot accept a connection (%s); pausing for %.1f s", exc,
                            self.PAUSE_SECONDS)  # fmt: skip
                self._pause()
                self._loop.call_later(self.PAUSE_SECONDS, self._resume)
                return
            if self._open_connections() + self._opening >= self._max:
                self._refuse(conn)
                continue
            self.accepted += 1
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the client is gone already
                conn.close()
                continue
            self._opening += 1
            self._tg.create_task(self._open(conn))

    def _resume(self) -> None:
        if not self._closed and not self._listening:
            self.start()

    async def _open(self, conn: socket.socket) -> None:
        opening = True

        def protocol() -> GatedProtocol:
            # From here the connection counts among the server's own (connection_made).
            nonlocal opening
            opening = False
            self._opening -= 1
            return self._protocol()

        try:
            await self._loop.connect_accepted_socket(protocol, sock=conn)
        except OSError:
            conn.close()
        finally:
            if opening:
                self._opening -= 1

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(self._refusal())
            # What the client has sent already is read first: closing a socket with unread
            # data resets the connection, and the client might lose the answer to the reset.
            conn.recv(65536)
        conn.close()
