"""The HTTP edge's bounds, against raw sockets on a real server: the size of a request's head
(414, 431), its deadlines (408, closed), protocol errors in the API's envelope, Request-Id on
every answer and in the logs, and who may read /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fixtures_http import KEY_A, JournalGateway, make_config, open_gateway
from test_http_server import (
    MESSAGE,
    WAIT_SECONDS,
    Answer,
    Client,
    connected,
    on_uvloop,
    request,
    serving,
    with_server_settings,
)

from sluice.config import Config
from sluice.ingress.http.app import HttpApi
from sluice.journal.base import JournalError, SubmitResult
from sluice.model import Message

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def edge(tmp_path: Path, **server: Any) -> AsyncIterator[tuple[tuple[str, int], Any]]:
    """A server with `server` settings; yields its address and the gateway."""
    config = with_server_settings(make_config(), **server)
    async with (
        open_gateway(tmp_path, config) as gateway,
        serving(HttpApi(gateway), config) as running,
    ):
        yield running.address, gateway


async def send_until_refused(client: Client, head: bytes, filler: bytes, total: int) -> Answer:
    """Send `head` then `filler` up to `total` bytes, as a client that does not read; the
    server's answer once it refuses (and closes)."""
    loop = asyncio.get_running_loop()
    sent = 0
    with contextlib.suppress(ConnectionError):
        await client.send(head)
        while sent < total:
            await asyncio.wait_for(loop.sock_sendall(client.sock, filler), WAIT_SECONDS)
            sent += len(filler)
    answer = await client.answer()
    assert sent < total, "the server read the whole head"
    return answer


def error_code(answer: Answer) -> str:
    assert answer.headers[b"content-type"] == b"application/json"
    code: str = json.loads(answer.body)["error"]["code"]
    return code


# ------------------------------------------------------------------------------ head size


def test_a_request_line_over_the_limit_is_414(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with edge(tmp_path, max_request_line_bytes=1024) as (address, _):
            async with connected(address) as client:
                await client.send(request("GET", "/healthz?" + "a" * 1000, None))
                assert (await client.answer()).status == 200
            async with connected(address) as client:
                await client.send(request("GET", "/healthz?" + "a" * 1100, None))
                answer = await client.answer()
                assert (answer.status, error_code(answer)) == (414, "request_line_too_long")
                assert b"server.max_request_line_bytes" in answer.body
                assert answer.headers[b"connection"] == b"close"
                assert await client.closed_by_server()

    on_uvloop(scenario())


def test_a_huge_header_is_refused_431_without_being_read(tmp_path: Path) -> None:
    """A 100 MB header on an unauthenticated probe: refused after the limit, not read whole."""

    async def scenario() -> None:
        async with edge(tmp_path, max_header_bytes=32 * 1024) as (address, _):
            async with connected(address) as client:
                answer = await send_until_refused(
                    client, b"GET /healthz HTTP/1.1\r\nx-big: ", b"a" * 65536, 100 << 20
                )
                assert (answer.status, error_code(answer)) == (431, "headers_too_large")
                assert b"server.max_header_bytes" in answer.body
                assert await client.closed_by_server()
            # Within the limit, the same request is served.
            async with connected(address) as client:
                await client.send(request("GET", "/healthz", None, b"", "x-big: " + "a" * 30_000))
                assert (await client.answer()).status == 200

    on_uvloop(scenario())


def test_pipelined_requests_past_the_head_limit_in_one_read_are_all_served(
    tmp_path: Path,
) -> None:
    """The head limit counts one head's bytes, not a read's: 3,000 pipelined probes in one
    write (~117 KB, far past the ~41 KB a head may take) are each answered."""

    async def scenario() -> None:
        async with edge(tmp_path) as (address, _), connected(address) as client:
            probes = request("GET", "/healthz", None) * 3000
            assert len(probes) > 100_000
            await client.send(probes)
            assert await client.answers(3000) == [200] * 3000

    on_uvloop(scenario())


def test_many_small_headers_over_the_limit_are_431(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with edge(tmp_path, max_headers=20, max_header_bytes=1024) as (address, _):
            async with connected(address) as client:
                fields = [f"x-{i}: {i}" for i in range(18)]
                await client.send(request("GET", "/healthz", None, b"", *fields))
                assert (await client.answer()).status == 200
            async with connected(address) as client:
                fields = [f"x-{i}: {i}" for i in range(25)]  # few bytes, too many fields
                await client.send(request("GET", "/healthz", None, b"", *fields))
                assert (await client.answer()).status == 431
            async with connected(address) as client:
                fields = [f"x-{i}: {'v' * 100}" for i in range(12)]  # few fields, too many bytes
                await client.send(request("GET", "/healthz", None, b"", *fields))
                assert (await client.answer()).status == 431

    on_uvloop(scenario())


# ------------------------------------------------------------------------------- deadlines


def test_headers_sent_a_byte_at_a_time_meet_the_header_deadline(tmp_path: Path) -> None:
    """Slowloris: every byte resets no timer; the head as a whole has its deadline."""

    async def scenario() -> None:
        async with (
            edge(tmp_path, header_timeout_seconds=0.5) as (address, _),
            connected(address) as slow,
            connected(address) as quick,
        ):
            await slow.send(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            # A byte every 0.1 s (the slow client's pace) until the server has answered: no
            # byte after that, or the reset it provokes could discard the answer unread.
            while slow.nothing_arrived():
                assert time.monotonic() - started < 3 * WAIT_SECONDS, "never cut off"
                await slow.send(b"x")
                await asyncio.sleep(0.1)
            answer = await slow.answer()
            assert (answer.status, error_code(answer)) == (408, "request_timeout")
            assert await slow.closed_by_server()
            # Others are served meanwhile.
            await quick.send(request("GET", "/healthz", None))
            assert (await quick.answer()).status == 200

    on_uvloop(scenario())


def test_a_body_that_stops_coming_is_cut_off_and_nothing_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with edge(tmp_path, body_timeout_seconds=0.3) as (address, gateway):
            async with connected(address) as client:
                head = request("POST", "/v1/messages", KEY_A, MESSAGE)
                await client.send(head[: -len(MESSAGE) // 2])
                assert await client.closed_by_server()
            assert gateway.submits == 0

    on_uvloop(scenario())


def test_the_keep_alive_deadline_holds_before_the_first_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            edge(tmp_path, keep_alive_seconds=0.2) as (address, _),
            connected(address) as silent,
        ):
            assert await silent.closed_by_server()

    on_uvloop(scenario())


# ------------------------------------------------------------------- errors and request ids


def test_a_request_that_is_not_http_gets_400_in_the_error_envelope(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with edge(tmp_path) as (address, _), connected(address) as client:
            await client.send(b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n")
            answer = await client.answer()
            assert (answer.status, error_code(answer)) == (400, "bad_request")
            assert json.loads(answer.body)["error"]["message"].startswith(
                "the request is not valid HTTP/1.1"
            )
            assert answer.headers[b"request-id"].startswith(b"req_")
            assert await client.closed_by_server()

    on_uvloop(scenario())


def test_every_answer_carries_a_request_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with edge(tmp_path) as (address, _), connected(address) as client:
            await client.send(
                request("GET", "/healthz", None)  # the gate's probe
                + request("GET", "/v1/channels", "wrong-key")  # the gate's refusal
                + request("GET", "/v1/channels")  # the application
                + request("GET", "/nowhere")  # the application's 404
                + request("GET", "/healthz", None, b"", "x-request-id: lb-7781.a")  # the client's
                + request("GET", "/healthz", None, b"", "x-request-id: no spaces allowed")
            )
            answers = [await client.answer() for _ in range(6)]
            assert [a.status for a in answers] == [200, 401, 200, 404, 200, 200]
            ids = [a.headers[b"request-id"] for a in answers]
            assert ids[4] == b"lb-7781.a"
            drawn = ids[:4] + ids[5:]
            assert all(i.startswith(b"req_") for i in drawn)
            assert len(set(drawn)) == 5

    on_uvloop(scenario())


class FailingGateway(JournalGateway):
    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        raise JournalError("disk I/O error")


def test_the_request_id_is_in_the_log_of_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        config = make_config()
        async with open_gateway(tmp_path, config) as opened:
            gateway = FailingGateway(config, opened.journal)
            async with (
                serving(HttpApi(gateway), config) as running,
                connected(running.address) as client,
            ):
                await client.send(request("POST", "/v1/messages", KEY_A, MESSAGE))
                answer = await client.answer()
        assert answer.status == 503
        request_id = answer.headers[b"request-id"].decode()
        records = [r for r in caplog.records if r.name == "sluice.http"]
        assert any(request_id in r.getMessage() for r in records), records
        # One line, with the journal's words, no traceback: an outage meets every request.
        assert all(r.exc_info is None for r in records)
        assert any("disk I/O error" in r.getMessage() for r in records)

    with caplog.at_level(logging.WARNING, logger="sluice.http"):
        on_uvloop(scenario())


# --------------------------------------------------------------------------------- metrics


def config_with(**server: Any) -> Config:
    return with_server_settings(make_config(), **server)


def test_metrics_behind_a_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = config_with(metrics_token="scrape-secret")
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            connected(running.address) as client,
        ):
            await client.send(
                request("GET", "/metrics", None)
                + request("GET", "/metrics", KEY_A)  # a tenant's key is not the token
                + request("GET", "/metrics", "scrape-secret")
            )
            answers = [await client.answer() for _ in range(3)]
            assert [a.status for a in answers] == [401, 401, 200]
            assert b"server.metrics_token" in answers[0].body
            assert b"sluice_test_accepted" in answers[2].body

    on_uvloop(scenario())


def test_metrics_on_the_admin_port_only(tmp_path: Path) -> None:
    """A whole gateway with server.admin_listen: /metrics there, 404 naming it on the API."""
    from sluice.process.gateway import SluiceGateway

    async def scenario() -> None:
        config = config_with(listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
        config = msgspec.structs.replace(
            config, journal=msgspec.structs.replace(config.journal, path=str(tmp_path / "j.db"))
        )
        gateway = SluiceGateway(config)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(gateway.run())
            await asyncio.wait_for(gateway.started.wait(), WAIT_SECONDS)
            assert gateway.port is not None and gateway.admin_port is not None
            main = ("127.0.0.1", gateway.port)
            admin = ("127.0.0.1", gateway.admin_port)
            async with connected(main) as api, connected(admin) as scraper:
                await api.send(request("GET", "/metrics", None) + request("GET", "/healthz", None))
                refused, probe = await api.answer(), await api.answer()
                assert (refused.status, probe.status) == (404, 200)
                assert b"server.admin_listen" in refused.body
                await scraper.send(request("GET", "/metrics", None))
                scraped = await scraper.answer()
                assert scraped.status == 200 and b"sluice_" in scraped.body
                await scraper.send(request("POST", "/v1/messages", KEY_A, MESSAGE))
                assert (await scraper.answer()).status == 404  # no message API there
            gateway.request_stop()
            await task

    on_uvloop(scenario())


def test_blank_lines_before_a_request_meet_the_header_deadline(tmp_path: Path) -> None:
    """llhttp skips CRLFs before a request without a callback: a client sending them forever
    was neither idle nor in a request, and never closed."""

    async def scenario() -> None:
        async with (
            edge(tmp_path, header_timeout_seconds=0.3, keep_alive_seconds=0.3) as (address, _),
            connected(address) as client,
        ):
            started = time.monotonic()
            closed = False
            while not closed and time.monotonic() - started < WAIT_SECONDS:
                try:
                    await client.send(b"\r\n")
                except ConnectionError:
                    break
                with contextlib.suppress(TimeoutError):
                    closed = await asyncio.wait_for(client.closed_by_server(), 0.1)
            assert closed or time.monotonic() - started < WAIT_SECONDS, "never closed"

    on_uvloop(scenario())


def test_a_metrics_token_with_any_bytes_is_refused_not_500(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = config_with(metrics_token="scrape-secret")
        async with (
            open_gateway(tmp_path, config) as gateway,
            serving(HttpApi(gateway), config) as running,
            connected(running.address) as client,
        ):
            await client.send(
                b"GET /metrics HTTP/1.1\r\nhost: s\r\nauthorization: Bearer caf\xe9\r\n\r\n"
            )
            assert (await client.answer()).status == 401

    on_uvloop(scenario())


class _Transport:
    """What the protocol writes, without a socket."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_head_ending_where_a_read_is_cut_is_not_refused(tmp_path: Path) -> None:
    """The head limit feeds a long read a head's room at a time: a request that began in an
    earlier read and ends exactly where the slice does is no head too large."""
    import uvicorn
    from uvicorn.server import ServerState

    from sluice.ingress.http.head_limits import HeadLimits
    from sluice.ingress.http.request_id import RequestIds
    from sluice.ingress.http.server import DateHeader, GatedProtocol

    async def scenario() -> None:
        config = config_with(max_request_line_bytes=64, max_header_bytes=256, max_headers=8)
        limits = HeadLimits(config.server)
        async with open_gateway(tmp_path, config) as gateway:
            app = HttpApi(gateway)
            settings = uvicorn.Config(app, lifespan="off", http="httptools", interface="asgi3")
            settings.load()
            protocol = GatedProtocol(
                settings, ServerState(), app.gate, DateHeader(), limits=limits,
                request_ids=RequestIds(),
            )  # fmt: skip
            transport = _Transport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            # A probe whose head takes every byte the limits allow: line and headers full.
            line = b"GET /healthz?" + b"a" * 42 + b" HTTP/1.1\r\n"
            assert len(line) == limits.max_line + 2
            fields = [(b"host", b"sluice")] + [(b"x-%d" % i, b"") for i in range(7)]
            spare = limits.max_headers_bytes - sum(len(n) + len(v) for n, v in fields)
            fields[-1] = (fields[-1][0], b"v" * spare)
            head = line + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
            assert len(head) == limits.head_bytes
            protocol.data_received(head[:50])
            protocol.data_received(head[50:] + b"GET /healthz HTTP/1.1\r\nhost: s\r\n\r\n")
            assert transport.written.count(b"HTTP/1.1 200 OK") == 2, transport.written
            assert not transport.closed

    on_uvloop(scenario())
