"""Test doubles for the HTTP API: an honest Gateway over the real SQLite journal, a real
uvicorn server on a free port, and a clock the tests move by hand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client

from journal_backends import open_journal
from sluice import config as config_module
from sluice.audience.expander import Expander
from sluice.config import Config
from sluice.ingress.contract import ChannelStatus
from sluice.ingress.http.app import build_app
from sluice.ingress.http.server import HttpServer
from sluice.journal.audience import AudienceStore
from sluice.journal.base import CancelResult, Journal, MessageRecord, SubmitResult
from sluice.journal.broadcasts import BroadcastStore
from sluice.model import IdGenerator, Message, now_ms
from sluice.process.listeners import bind_tcp

KEY_A = "key-for-tenant-a"
KEY_B = "key-for-tenant-b"
KEY_SMS = "key-for-tenant-sms-only"


def make_config(
    limits: dict[str, Any] | None = None,
    tenants: dict[str, Any] | None = None,
    admission: dict[str, Any] | None = None,
) -> Config:
    """Two webhook channels (web, sms) and three tenants: a, b (all channels), smsonly. The
    adaptive limit is off unless `admission` turns it on: its cuts follow the machine's load,
    which tests of the API itself must not depend on."""
    hook = {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/hook"}}
    raw_tenants: dict[str, Any] = {
        "a": {"api_keys": [config_module.hash_api_key(KEY_A)]},
        "b": {"api_keys": [config_module.hash_api_key(KEY_B)]},
        "smsonly": {"api_keys": [config_module.hash_api_key(KEY_SMS)], "channels": ["sms"]},
    }
    for name, extra in (tenants or {}).items():
        raw_tenants[name] = {**raw_tenants[name], **extra}
    return config_module.from_dict(
        {
            "channels": {"web": hook, "sms": {**hook, "rate": 50, "width": 4}},
            "tenants": raw_tenants,
            "limits": limits or {},
            "admission": admission or {"enabled": False},
        }
    )


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class JournalGateway:
    """The Gateway protocol over a real Journal, with no channels running."""

    def __init__(self, config: Config, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.ids = IdGenerator(node=1)
        #: Times a broadcast was created or resumed (the expander would have been poked).
        self.broadcast_pokes = 0
        self.refusals: dict[str, int] = {}
        self.is_ready = True
        self.submits = 0
        self.registry = prometheus_client.CollectorRegistry()
        self._accepted = prometheus_client.Counter(
            "sluice_test_accepted", "Messages accepted", registry=self.registry
        )

    def next_id(self) -> int:
        return self.ids.next()

    def refused(self, code: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def backlog(self) -> int:
        return sum(self.journal.pending().values())

    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        self.submits += 1
        result = await self.journal.insert(
            tenant, messages, idempotency_key, digest, deadline=deadline
        )
        if not result.replayed:
            self._accepted.inc(len(messages))
        return result

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        return await self.journal.get(tenant, message_id)

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        return await self.journal.by_recipient(tenant, recipient, before_id, limit)

    async def cancel(self, tenant: str, message_id: int) -> CancelResult:
        return await self.journal.cancel(tenant, message_id, now_ms())

    def channels(self) -> list[ChannelStatus]:
        pending = self.journal.pending()
        return [
            ChannelStatus(
                name=name,
                type=channel.type,
                width=channel.width,
                rate=channel.rate,
                current_rate=channel.rate,
                burst=channel.burst,
                in_flight=0,
                pending=pending.get(name, 0),
                breaker="closed",
                failover=channel.failover,
                sent=0,
                failed=0,
                retried=0,
            )
            for name, channel in self.config.channels.items()
        ]

    def ready(self) -> bool:
        return self.is_ready

    def fault(self) -> str | None:
        return self.journal.fault()

    @property
    def audience(self) -> AudienceStore:
        return self.journal

    @property
    def broadcasts(self) -> BroadcastStore:
        return self.journal

    def broadcast_changed(self) -> None:
        self.broadcast_pokes += 1

    def metrics(self) -> tuple[bytes, str]:
        return prometheus_client.generate_latest(
            self.registry
        ), prometheus_client.CONTENT_TYPE_LATEST


@contextlib.asynccontextmanager
async def open_gateway(
    tmp_path: Path, config: Config, backend: str = "sqlite"
) -> AsyncIterator[JournalGateway]:
    async with open_journal(backend, tmp_path) as journal:
        yield JournalGateway(config, journal)


@contextlib.asynccontextmanager
async def serve(app: Any, config: Config | None = None) -> AsyncIterator[str]:
    """Run `app` on Sluice's own HTTP server (its gate, when the app has one) on a free port;
    yields its base URL."""
    sock = bind_tcp("127.0.0.1:0")
    server = HttpServer(app, sock, config or Config())
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(server.serve())
            await server.listening.wait()
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.stop()
                await task
    finally:
        sock.close()


class Api:
    """A running app, its gateway and a client session, for one test."""

    def __init__(self, base: str, gateway: JournalGateway, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.gateway = gateway
        self.session = session

    def request(self, method: str, path: str, key: str | None = KEY_A, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return self.session.request(method, self.base + path, headers=headers, **kwargs)

    async def call(
        self, method: str, path: str, key: str | None = KEY_A, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        """(status, decoded JSON body or text, headers)."""
        async with self.request(method, path, key, **kwargs) as response:
            if response.content_type == "application/json":
                body = await response.json()
            else:
                body = await response.text()
            return response.status, body, response.headers


@contextlib.asynccontextmanager
async def running_api(
    tmp_path: Path,
    config: Config | None = None,
    clock: Callable[[], float] | None = None,
    backend: str = "sqlite",
) -> AsyncIterator[Api]:
    config = config or make_config()
    async with open_gateway(tmp_path, config, backend) as gateway:
        app = build_app(gateway) if clock is None else build_app(gateway, clock)
        async with serve(app, config) as base, aiohttp.ClientSession() as session:
            yield Api(base, gateway, session)


@contextlib.asynccontextmanager
async def expanding(
    api: Api, monotonic: Callable[[], float] | None = None
) -> AsyncIterator[Expander]:
    """A real Expander over the API's journal (the app runs no delivery side of its own)."""
    expander = Expander(
        api.gateway.journal,
        api.gateway.config.audience,
        IdGenerator(node=2),
        1,
        wake=lambda c: None,
        **({"monotonic": monotonic} if monotonic is not None else {}),
    )
    task = asyncio.create_task(expander.run())
    try:
        yield expander
    finally:
        expander.stop()
        await task
