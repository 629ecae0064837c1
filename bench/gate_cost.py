"""What the HTTP edge spends, in Python, on a request it answers without the application.

    .venv/bin/python bench/gate_cost.py --requests 200000

The HTTP server's protocol (`ingress/http/server.py`, uvicorn's httptools protocol asking the
gate at headers) is fed the bytes of one request at a time over a transport that only counts
what is written: no sockets, no event loop turns, so the figure is the Python cost of parsing,
deciding and composing the answer, the part a refusal flood multiplies. Three requests:
a `POST /v1/messages` refused for a full backlog (429), a `GET /healthz`, and the same POST
refused by an unknown API key (401). The system calls of a real connection (a read and a write
per request, ~10-20 µs on loopback here) come on top.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from sluice.config import Config, from_dict, hash_api_key
from sluice.ingress.http.app import HttpApi
from sluice.ingress.http.head_limits import HeadLimits
from sluice.ingress.http.request_id import RequestIds
from sluice.ingress.http.server import DateHeader, GatedProtocol

KEY = "bench-key"
BODY = b'{"messages":[{"channel":"web","to":"+15550001","body":"hi"}]}'


class _FullGateway:
    """Just enough of the gateway for the gate: a backlog always full, always ready."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def backlog(self) -> int:
        return 10**12

    def ready(self) -> bool:
        return True

    def fault(self) -> str | None:
        return None

    def next_id(self) -> int:
        return 1


class _CountingTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _post(key: str) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )  # fmt: skip


def _protocol(app: HttpApi, transport: _CountingTransport, config: Config) -> GatedProtocol:
    settings = uvicorn.Config(
        app, lifespan="off", http="httptools", interface="asgi3", proxy_headers=False
    )
    settings.load()
    protocol = GatedProtocol(
        settings,
        ServerState(),
        app.gate,
        DateHeader(),
        limits=HeadLimits(config.server),
        request_ids=RequestIds(),
    )
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol


async def _measure(requests: int) -> None:
    config = from_dict(
        {
            "tenants": {"bench": {"api_keys": [hash_api_key(KEY)]}},
            "channels": {"web": {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}},
        }
    )
    app = HttpApi(_FullGateway(config))  # type: ignore[arg-type]
    cases = {
        "POST refused, backlog full (429)": _post(KEY),
        "GET /healthz": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "POST refused, unknown key (401)": _post("not-a-key"),
    }
    for name, data in cases.items():
        transport = _CountingTransport()
        protocol = _protocol(app, transport, config)
        for _ in range(1000):  # warm up
            protocol.data_received(data)
        started = time.perf_counter()
        for _ in range(requests):
            protocol.data_received(data)
        elapsed = time.perf_counter() - started
        assert transport.writes == requests + 1000, "every request must be answered"
        print(f"{name:36} {elapsed / requests * 1e6:6.2f} µs a request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(_measure(args.requests))


if __name__ == "__main__":
    main()
