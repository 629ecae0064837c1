"""Sluice's HTTP server on real sockets: its accept loop, its connection cap, and what the gate's
answers do to keep-alive, pipelining and shutdown.

Every test runs on uvloop, what production runs (the suite's own loop is asyncio's): the
accept test in a thread of its own, since its clients must not share the loop it keeps busy;
the others through `uvloop.run`. Responses are read by h11, a second HTTP implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import selectors
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple

import h11
import msgspec
import pytest
import uvloop
from fixtures_http import KEY_A, JournalGateway, make_config, open_gateway

from journal_backends import open_journal
from sluice.config import Config
from sluice.ingress.http import server as http_server
from sluice.ingress.http.app import HttpApi
from sluice.ingress.http.server import HttpServer
from sluice.journal.base import Journal, SubmitResult
from sluice.model import Message
from sluice.process.listeners import bind_tcp

pytestmark = pytest.mark.integration

#: Seconds any single wait in these tests may take before it fails the test.
WAIT_SECONDS = 5.0
MESSAGE = json.dumps({"channel": "web", "to": "+447900000001", "body": "hello"}).encode()


def on_uvloop(scenario: Coroutine[Any, Any, None]) -> None:
    uvloop.run(scenario)


def with_server_settings(config: Config, **settings: Any) -> Config:
    return msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, **settings)
    )


def request(
    method: str,
    path: str,
    key: str | None = KEY_A,
    body: bytes = b"",
    *headers: str,
) -> bytes:
    """One HTTP/1.1 request's bytes; `headers` are extra "name: value" lines."""
    lines = [f"{method} {path} HTTP/1.1", "host: sluice"]
    if key is not None:
        lines.append(f"authorization: Bearer {key}")
    if body or method == "POST":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------------ reading responses


class Answer(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    #: Status codes of the 1xx responses that came before this one.
    informational: tuple[int, ...]


class ResponseStream:
    """The responses on one connection, in order, each read by a fresh h11 client; sans-IO."""

    def __init__(self) -> None:
        self._buffer = b""
        self.closed = False
        self.answers: list[Answer] = []

    def feed(self, data: bytes) -> None:
        """Bytes received; b"" when the peer closed."""
        if data:
            self._buffer += data
        else:
            self.closed = True
        while self._buffer and self._next():
            pass

    def _next(self) -> bool:
        reader = h11.Connection(h11.CLIENT)
        reader.send(h11.Request(method="GET", target="/", headers=[("host", "sluice")]))
        reader.send(h11.EndOfMessage())
        reader.receive_data(self._buffer)
        if self.closed:
            reader.receive_data(b"")
        informational: list[int] = []
        response: h11.Response | None = None
        body = b""
        while True:
            event = reader.next_event()
            if event is h11.NEED_DATA:
                return False  # wait for more bytes
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                self.answers.append(
                    Answer(response.status_code, dict(response.headers), body, tuple(informational))
                )
                self._buffer = reader.trailing_data[0]
                return True
            else:
                raise AssertionError(f"unexpected {event!r} from the server")


class Client:
    """A raw TCP connection to the server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._stream = ResponseStream()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def answer(self) -> Answer:
        """The next response, waiting for it if need be."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_SECONDS):
            while not self._stream.answers:
                assert not self._stream.closed, "the server closed the connection"
                self._stream.feed(await loop.sock_recv(self.sock, 65536))
        return self._stream.answers.pop(0)

    async def answers(self, n: int) -> list[int]:
        """The statuses of the next `n` responses."""
        return [(await self.answer()).status for _ in range(n)]

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection without sending anything more."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_SECONDS):
            while not self._stream.closed:
                self._stream.feed(await loop.sock_recv(self.sock, 65536))
        return not self._stream.answers

    def nothing_arrived(self) -> bool:
        try:
            return not self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True


@contextlib.asynccontextmanager
async def connected(address: tuple[str, int]) -> AsyncIterator[Client]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
        yield Client(sock)
    finally:
        sock.close()


# ------------------------------------------------------------------------------- the server


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.002)


class Running(NamedTuple):
    server: HttpServer
    address: tuple[str, int]
    serving: asyncio.Task[None]


@contextlib.asynccontextmanager
async def serving(app: HttpApi, config: Config) -> AsyncIterator[Running]:
    """`HttpServer` on a free port of 127.0.0.1, listening; stopped on exit."""
    sock = bind_tcp("127.0.0.1:0")
    server = HttpServer(app, sock, config)
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(server.serve())
            try:
                await until(
                    lambda: bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
                    "the server listens",
                )
                host, port = sock.getsockname()[:2]
                yield Running(server, (host, port), task)
            finally:
                server.stop()
    finally:
        sock.close()


class HeldGateway(JournalGateway):
    """Holds every submit until `go` is set; `entered` says one is being held."""

    def __init__(self, config: Config, journal: Journal) -> None:
        super().__init__(config, journal)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        self.entered.set()
        await self.go.wait()
        return await super().submit(tenant, messages, idempotency_key, digest, deadline=deadline)


class Held(NamedTuple):
    gateway: HeldGateway
    app: HttpApi
    running: Running


@contextlib.asynccontextmanager
async def held_api(tmp_path: Path, config: Config | None = None) -> AsyncIterator[Held]:
    """The real API over a gateway that holds submits, served."""
    config = config or make_config()
    async with open_journal("sqlite", tmp_path) as journal:
        gateway = HeldGateway(config, journal)
        app = HttpApi(gateway)
        async with serving(app, config) as running:
            yield Held(gateway, app, running)


# ------------------------------------------------------------------- accepting while busy

#: The busy chain: callbacks of ~1 ms of CPU, this many ready at any time, for this long.
BUSY_READY = 50
BUSY_SECONDS = 2.0
BUSY_WORK_SECONDS = 0.001
CONNECTIONS = 300


class BusyLoop:
    """Keeps an event loop's turns long: `BUSY_READY` chains of callbacks, each link ~1 ms of
    hashing (which releases the GIL, so the test's clients in another thread still run), each
    scheduling the next until `BUSY_SECONDS` have passed. Counts the loop's turns meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        self._loop = loop
        self._on_end = on_end
        self._work = bytes(_hash_bytes_per(BUSY_WORK_SECONDS))
        self._end = 0.0
        self._live = 0
        self.turns = 0
        self.links = 0

    def start(self) -> None:
        self._end = self._loop.time() + BUSY_SECONDS
        self._live = BUSY_READY
        for _ in range(BUSY_READY):
            self._loop.call_soon(self._link)
        self._loop.call_soon(self._turn)

    def _link(self) -> None:
        hashlib.sha256(self._work)
        self.links += 1
        if self._loop.time() < self._end:
            self._loop.call_soon(self._link)
            return
        self._live -= 1
        if self._live == 0:
            self._on_end()

    def _turn(self) -> None:
        # A callback scheduled from a callback runs on the next turn: one count per turn.
        if self._live:
            self.turns += 1
            self._loop.call_soon(self._turn)


def _hash_bytes_per(seconds: float) -> int:
    """How many bytes sha256 hashes in `seconds` on this machine (the fastest of 5 tries)."""
    sample = bytes(1 << 20)
    best = min(_time_hash(sample) for _ in range(5))
    return max(4096, int(len(sample) * seconds / best))


def _time_hash(sample: bytes) -> float:
    started = time.perf_counter()
    hashlib.sha256(sample)
    return time.perf_counter() - started


class BusyRun:
    """What the server thread and the test share."""

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.address: tuple[str, int] = ("", 0)
        #: Health probes the gate had answered when the busy chain ended.
        self.answered_while_busy = -1
        self.turns = 0
        self.links = 0
        self.error: BaseException | None = None


async def serve_while_busy(tmp_path: Path, run: BusyRun) -> None:
    config = make_config()
    async with open_gateway(tmp_path, config) as gateway:
        app = HttpApi(gateway)
        async with serving(app, config) as running:
            loop = asyncio.get_running_loop()
            ended = loop.create_future()
            busy = BusyLoop(loop, lambda: ended.set_result(app.gate.stats().probes))
            run.address = running.address
            busy.start()
            run.busy.set()
            run.answered_while_busy = await ended
            run.turns, run.links = busy.turns, busy.links


def run_server_thread(tmp_path: Path, run: BusyRun) -> None:
    try:
        on_uvloop(serve_while_busy(tmp_path, run))
    except BaseException as error:  # reported by the test, in its own thread
        run.error = error
    finally:
        run.busy.set()


def probe_all(address: tuple[str, int]) -> list[Answer]:
    """Open `CONNECTIONS` connections, send ``GET /healthz`` on each, read every answer."""
    probe = request("GET", "/healthz", None)
    streams: dict[socket.socket, ResponseStream] = {}
    with selectors.DefaultSelector() as selector:
        try:
            for _ in range(CONNECTIONS):
                sock = socket.create_connection(address, timeout=WAIT_SECONDS)
                sock.sendall(probe)
                sock.setblocking(False)
                streams[sock] = ResponseStream()
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + BUSY_SECONDS + WAIT_SECONDS
            waiting = len(streams)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    stream = streams[ready]
                    stream.feed(ready.recv(65536))
                    if stream.answers or stream.closed:
                        selector.unregister(ready)
                        waiting -= 1
        finally:
            for sock in streams:
                sock.close()
    return [answer for stream in streams.values() for answer in stream.answers]


def test_connections_are_accepted_in_batches_while_the_loop_is_busy(tmp_path: Path) -> None:
    """With ~50 ms loop turns for 2 s there are only ~40 turns: accepting one connection per
    turn (uvloop's own server) would leave most of 300 waiting; batches take them all."""
    run = BusyRun()
    thread = threading.Thread(target=run_server_thread, args=(tmp_path, run), name="busy-server")
    thread.start()
    try:
        assert run.busy.wait(WAIT_SECONDS * 2)
        assert run.error is None, run.error
        answers = probe_all(run.address)
    finally:
        thread.join(BUSY_SECONDS + WAIT_SECONDS * 2)
    assert not thread.is_alive()
    if run.error is not None:
        raise run.error
    assert [a.status for a in answers] == [200] * CONNECTIONS
    assert all(json.loads(a.body) == {"status": "ok"} for a in answers)
    assert run.links >= BUSY_READY * 10, "the loop was not kept busy"
    assert run.turns < CONNECTIONS, f"{run.turns} turns: one accept per turn could keep up"
    assert run.answered_while_busy == CONNECTIONS, (
        f"{run.answered_while_busy} of {CONNECTIONS} answered in {run.turns} busy turns"
    )


# ----------------------------------------------------------------------- the connection cap


def test_connections_over_the_cap_get_503_and_are_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = with_server_settings(make_config(), max_connections=3)
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            contextlib.AsyncExitStack() as stack,
        ):
            held = []
            for _ in range(3):  # one after another, each served and kept open
                client = await stack.enter_async_context(connected(running.address))
                await client.send(request("GET", "/healthz", None))
                assert (await client.answer()).status == 200
                held.append(client)

            async with connected(running.address) as fourth:
                answer = await fourth.answer()
                assert answer.status == 503
                assert json.loads(answer.body)["error"]["code"] == "too_many_connections"
                assert answer.headers[b"connection"] == b"close"
                assert await fourth.closed_by_server()

            held[0].sock.close()
            await until(lambda: running.server.stats().connections == 2, "one has closed")
            async with connected(running.address) as newcomer:
                await newcomer.send(request("GET", "/healthz", None))
                assert (await newcomer.answer()).status == 200
            stats = running.server.stats()
            assert (stats.accepted, stats.refused) == (4, 1)

    on_uvloop(scenario())


#: Rounds of three connections opened at once; the race they probe is hit in most rounds.
ROUNDS = 10


def test_connections_opened_at_once_up_to_the_cap_are_all_served(tmp_path: Path) -> None:
    """A connection just opened must count once towards server.max_connections, not twice
    (as one opening and as one open) until the task that opened it resumes."""

    async def scenario() -> None:
        config = with_server_settings(make_config(), max_connections=3)
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
        ):
            for _ in range(ROUNDS):
                async with contextlib.AsyncExitStack() as stack:
                    clients = [
                        await stack.enter_async_context(connected(running.address))
                        for _ in range(3)
                    ]
                    for client in clients:
                        await client.send(request("GET", "/healthz", None))
                    assert [(await c.answer()).status for c in clients] == [200] * 3
                await until(lambda: running.server.stats().connections == 0, "all closed")
            assert running.server.stats().refused == 0

    on_uvloop(scenario())


# ------------------------------------------------------------------ refusals and keep-alive


def test_refused_requests_keep_their_keep_alive_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_config()
        async with open_gateway(tmp_path, config) as gateway:
            app = HttpApi(gateway)
            async with serving(app, config) as running, connected(running.address) as client:
                # Pipelined in one write: the refused POST's body must be skipped, not parsed.
                await client.send(
                    request("POST", "/v1/messages", "wrong-key", MESSAGE)
                    + request("GET", "/v1/channels", None)
                    + request("GET", "/v1/channels")
                )
                answers = [await client.answer() for _ in range(3)]
                assert [a.status for a in answers] == [401, 401, 200]
                assert all(b"connection" not in a.headers for a in answers)
                assert "channels" in json.loads(answers[2].body)
                # And one at a time, as a keep-alive client sends them.
                for key, status in (("wrong-key", 401), (KEY_A, 202)):
                    await client.send(request("POST", "/v1/messages", key, MESSAGE))
                    assert (await client.answer()).status == status
            assert app.gate.stats().refusals == {"unauthorized": 3}
            assert gateway.refusals == {}  # none went through the application
            assert gateway.submits == 1

    on_uvloop(scenario())


def test_a_refusal_closes_the_connection_the_client_asked_to_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_config()
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            connected(running.address) as client,
        ):
            await client.send(request("GET", "/v1/channels", None, b"", "connection: close"))
            answer = await client.answer()
            assert answer.status == 401
            assert answer.headers[b"connection"] == b"close"
            assert await client.closed_by_server()

    on_uvloop(scenario())


def test_a_refusal_of_an_expect_100_continue_request_closes_without_100(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_config()
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            connected(running.address) as client,
        ):
            head = request("POST", "/v1/messages", "wrong-key", MESSAGE, "expect: 100-continue")
            await client.send(head[: -len(MESSAGE)])  # the headers only: the body waits for 100
            answer = await client.answer()
            assert answer.status == 401
            assert answer.informational == ()
            assert answer.headers[b"connection"] == b"close"
            assert await client.closed_by_server()

    on_uvloop(scenario())


# ------------------------------------------------------------------------------ pipelining


@pytest.mark.parametrize("together", [True, False], ids=["one-write", "behind"])
def test_a_refusal_behind_a_request_under_way_is_answered_in_order(
    tmp_path: Path, together: bool
) -> None:
    async def scenario() -> None:
        async with held_api(tmp_path) as held, connected(held.running.address) as client:
            gateway, gate = held.gateway, held.app.gate
            admitted = request("POST", "/v1/messages", KEY_A, MESSAGE)
            refused = request("GET", "/v1/channels", "wrong-key")
            await client.send(admitted + refused if together else admitted)
            async with asyncio.timeout(WAIT_SECONDS):
                await gateway.entered.wait()
            if not together:
                await client.send(refused)
            assert client.nothing_arrived()  # no answer before the first one's
            gateway.go.set()
            first, second = await client.answer(), await client.answer()
            assert (first.status, second.status) == (202, 401)
            # Decided when its turn came, by the gate: written by the application, in order.
            assert gate.stats().refusals == {"unauthorized": 1}
            assert json.loads(second.body)["error"]["code"] == "unauthorized"
            assert second.headers[b"www-authenticate"] == b'Bearer realm="sluice"'

    on_uvloop(scenario())


def test_requests_pipelined_by_a_client_that_leaves_hold_no_admission_slot(
    tmp_path: Path,
) -> None:
    """Three POSTs pipelined behind one being served, then the client goes: the queued ones
    never reach the application, and they took no slot of the adaptive limit with them."""

    async def scenario() -> None:
        config = make_config(admission={"initial_limit": 8, "min_limit": 4})
        async with held_api(tmp_path, config) as held:
            limit = held.app.gate.limit
            assert limit is not None
            async with connected(held.running.address) as client:
                await client.send(request("POST", "/v1/messages", KEY_A, MESSAGE) * 4)
                async with asyncio.timeout(WAIT_SECONDS):
                    await held.gateway.entered.wait()
                assert limit.stats().in_flight == 1  # the one being served, only
            held.gateway.go.set()
            await until(lambda: limit.stats().in_flight == 0, "every slot is free again")

    on_uvloop(scenario())


# ------------------------------------------------------------------------- idle connections


def test_idle_connections_are_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    """Idle after a refusal, or silent since opening: closed by the once-a-second sweep. A
    connection whose request is being served is not idle, however long it takes."""
    config = with_server_settings(make_config(), keep_alive_seconds=0.2)

    async def scenario() -> None:
        async with (
            held_api(tmp_path, config) as held,
            connected(held.running.address) as refused,
            connected(held.running.address) as silent,
            connected(held.running.address) as served,
        ):
            await refused.send(request("GET", "/v1/channels", "wrong-key"))
            assert (await refused.answer()).status == 401
            await served.send(request("POST", "/v1/messages", KEY_A, MESSAGE))
            async with asyncio.timeout(WAIT_SECONDS):
                await held.gateway.entered.wait()
            assert await refused.closed_by_server()
            assert await silent.closed_by_server()
            await until(
                lambda: held.running.server.stats().connections == 1, "the idle ones are gone"
            )
            held.gateway.go.set()
            assert (await served.answer()).status == 202

    on_uvloop(scenario())


# ---------------------------------------------------------------------------- the Date header


def test_fast_answers_and_app_answers_carry_a_date_header(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = make_config()
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            connected(running.address) as client,
        ):
            await client.send(
                request("GET", "/healthz", None)  # the gate's
                + request("GET", "/v1/channels", "wrong-key")  # the gate's refusal
                + request("GET", "/v1/channels")  # the application's
            )
            answers = [await client.answer() for _ in range(3)]
            assert [a.status for a in answers] == [200, 401, 200]
            for answer in answers:
                assert b"date" in answer.headers, answer
                assert answer.headers[b"date"].endswith(b" GMT")

    on_uvloop(scenario())


# --------------------------------------------------------------------------- graceful stop


def test_stop_lets_a_request_under_way_finish_then_serve_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with held_api(tmp_path) as held, connected(held.running.address) as client:
            gateway, running = held.gateway, held.running
            await client.send(request("POST", "/v1/messages", KEY_A, MESSAGE))
            async with asyncio.timeout(WAIT_SECONDS):
                await gateway.entered.wait()
            running.server.stop()
            done, _ = await asyncio.wait({running.serving}, timeout=0.2)
            assert not done, "serve() returned with a request under way"
            gateway.go.set()
            answer = await client.answer()
            assert answer.status == 202
            assert answer.headers.get(b"connection") == b"close"  # no further requests
            done, _ = await asyncio.wait({running.serving}, timeout=WAIT_SECONDS)
            assert done, "serve() did not return once the request was answered"
            assert await client.closed_by_server()

    on_uvloop(scenario())


def test_connections_refused_for_load_are_read_again_a_batch_per_turn(tmp_path: Path) -> None:
    """With a refusal batch of 2, clients refused for their tenant's rate wait their turn to
    be read again; every request is still answered, in order, on its connection."""

    async def scenario() -> None:
        config = with_server_settings(
            make_config(tenants={"a": {"rate": 0.001, "burst": 1}}),
            refusal_batch=2,
            refusal_max_wait_ms=10_000,
        )
        async with open_gateway(tmp_path, config) as gateway:
            app = HttpApi(gateway)
            async with serving(app, config) as running, contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(connected(running.address)) for _ in range(12)
                ]
                # The burst's one token goes to the first request; every other one is refused.
                statuses: list[list[int]] = [[] for _ in clients]
                for _ in range(3):
                    for client in clients:
                        await client.send(request("POST", "/v1/messages", KEY_A, MESSAGE))
                    for i, client in enumerate(clients):
                        statuses[i].append((await client.answer()).status)
                flat = [status for answers in statuses for status in answers]
                assert flat.count(202) == 1
                assert flat.count(429) == len(flat) - 1
            # Refused at the gate, or (those let in while the token was still there) after
            # their body was read: all of them, none lost while their connection waited.
            at_gate = app.gate.stats().refusals["rate_limited"]
            assert at_gate + gateway.refusals.get("rate_limited", 0) == 35

    on_uvloop(scenario())


class OutOfDescriptorsOnce(socket.socket):
    """A listening socket whose first accept fails as a process out of descriptors does."""

    failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(24, "Too many open files")  # EMFILE
        return super().accept()


def test_accepting_resumes_after_the_process_ran_out_of_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server._Acceptor, "PAUSE_SECONDS", 0.01)

    async def scenario() -> None:
        config = make_config()
        bound = bind_tcp("127.0.0.1:0")
        sock = OutOfDescriptorsOnce(fileno=bound.detach())
        try:
            async with open_gateway(tmp_path, config) as gateway, asyncio.TaskGroup() as tg:
                server = HttpServer(HttpApi(gateway), sock, config)
                tg.create_task(server.serve())
                await until(
                    lambda: bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
                    "the server listens",
                )
                async with connected(sock.getsockname()[:2]) as client:
                    await client.send(request("GET", "/healthz", None))
                    assert (await client.answer()).status == 200
                assert sock.failed
                server.stop()
        finally:
            sock.close()

    on_uvloop(scenario())
