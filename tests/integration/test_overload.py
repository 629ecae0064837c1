"""A real `sluice serve` under a sustained offered load far above what it admits.

The load generator is the test's own: raw sockets on loopback, many keep-alive connections
each sending single-message POSTs back to back, bounded by a request count. The gateway's
adaptive limit is set small (a few requests in flight) so that the load is well above
capacity on any machine, whatever its speed. Everything asserted is a count or an order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import msgspec
import pytest
from harness import KEY, ServeProcess, eventually, gateway_config, webhook_channel

from services import free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

CONNECTIONS = 48
REQUESTS = 6000
#: Seconds a request may take before the generator counts it as timed out.
CLIENT_TIMEOUT = 10.0


class Answer(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def _post(to: str, urgent: bool = False) -> bytes:
    message = {"channel": "web", "to": to, "body": "hi"}
    extra = b""
    if urgent:
        message["priority"] = "urgent"
        extra = b"Sluice-Priority: urgent\r\n"
    body = msgspec.json.encode({"messages": [message]})
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\n" + extra + b"Content-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return Answer(status, headers, body)


async def _fresh(port: int, request: bytes) -> Answer:
    """One request on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(_read_answer(reader), CLIENT_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class Load:
    """The outcome of the flood, in the order requests were sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.statuses: list[int] = []  # by sequence number of the request
        self.acked: set[str] = set()
        self.without_retry_after = 0
        self.timeouts = 0


async def _flood(port: int, load: Load, stop: asyncio.Event) -> None:
    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while load.sent < REQUESTS and not stop.is_set():
                sequence = load.sent
                load.sent += 1
                load.statuses.append(0)
                writer.write(_post(f"+1555{sequence:07d}"))
                try:
                    answer = await asyncio.wait_for(_read_answer(reader), CLIENT_TIMEOUT)
                except TimeoutError:
                    load.timeouts += 1
                    return
                load.statuses[sequence] = answer.status
                if answer.status == 202:
                    load.acked.update(msgspec.json.decode(answer.body)["ids"])
                elif answer.status in (429, 503) and b"retry-after" not in answer.headers:
                    load.without_retry_after += 1
                if answer.headers.get(b"connection") == b"close":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    async with asyncio.TaskGroup() as tg:
        for _ in range(CONNECTIONS):
            tg.create_task(connection())


@contextlib.asynccontextmanager
async def _gateway(tmp_path: Path, sink: WebhookSink) -> AsyncIterator[ServeProcess]:
    port, health_port = free_port(), free_port()
    raw = gateway_config(
        tmp_path,
        {"web": webhook_channel(f"{sink.url}/hook", width=8)},
        server={"listen": f"127.0.0.1:{port}", "health_listen": f"127.0.0.1:{health_port}"},
        admission={"initial_limit": 3, "min_limit": 2, "max_limit": 3, "urgent_factor": 3.0},
    )
    path = tmp_path / "sluice.toml"
    path.write_text(dump_toml(raw))
    serve = ServeProcess(path, port, tmp_path / "serve.log")
    serve.health_port = health_port  # type: ignore[attr-defined]
    await serve.start()
    try:
        yield serve
    finally:
        await serve.terminate()


async def test_under_sustained_overload_the_edge_sheds_and_everything_acked_is_delivered(
    tmp_path: Path,
) -> None:
    async with WebhookSink(SinkOptions()) as sink, _gateway(tmp_path, sink) as serve:
        port = serve.port
        health_port: int = serve.health_port  # type: ignore[attr-defined]
        load = Load()
        stop = asyncio.Event()
        flood = asyncio.create_task(_flood(port, load, stop))
        try:
            # Wait until the flood is being shed, then probe and send urgent messages, each
            # on a connection of its own, while it goes on.
            await eventually(lambda: 503 in load.statuses, what="the first 503")
            delivered_when_shedding = len(sink.received("/hook"))
            probes = []
            urgent = []
            for i in range(10):
                probes.append(await _fresh(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
                probes.append(await _fresh(health_port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
                urgent.append(await _fresh(port, _post(f"+1666{i:07d}", urgent=True)))
            still_shedding = load.sent < REQUESTS
            delivered_during = len(sink.received("/hook")) - delivered_when_shedding
        finally:
            await flood
        assert still_shedding, "the flood ended before the probes: raise REQUESTS"

        # Every request was answered, none timed out; the excess got 503 with Retry-After.
        assert load.timeouts == 0
        assert 0 not in load.statuses
        assert set(load.statuses) <= {202, 503}
        assert load.statuses.count(503) > load.statuses.count(202) > 0
        assert load.without_retry_after == 0
        # 202s kept coming: every tenth of the flood, in the order sent, has some.
        tenth = len(load.statuses) // 10
        for part in range(10):
            assert 202 in load.statuses[part * tenth : (part + 1) * tenth], part
        # Probes on a fresh connection answered, on the main port and on the health port.
        assert [p.status for p in probes] == [200] * 20
        # Urgent messages were admitted over the limit that was shedding the bulk.
        assert [u.status for u in urgent] == [202] * 10
        # The channel kept delivering while the edge was shedding.
        assert delivered_during > 0

        # Afterwards, everything acknowledged is delivered, and nothing else was committed.
        urgent_ids = {msgspec.json.decode(u.body)["ids"][0] for u in urgent}
        expected = load.acked | urgent_ids
        await eventually(
            lambda: set(sink.received("/hook")) >= expected, within=60, what="all delivered"
        )
        assert set(sink.received("/hook")) == expected
