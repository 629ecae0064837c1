"""Wiring: one gateway process — HTTP ingress, journal, channel runners, completions, callbacks.

    producers ─► HTTP ─► journal (group commit) ─► channel runners (claim, send) ─► peers
                                   ▲                         │
                                   └── completion stage ◄────┘  ─► callback sender

Every task is owned by one TaskGroup. Shutdown (SIGTERM) closes the door first (HTTP stops
taking requests, readiness turns false), lets in-flight sends finish for up to
`server.shutdown_grace_seconds`, commits their outcomes, and returns whatever is still leased
to the queue, so a restart picks it up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice.callbacks import CallbackSender
from sluice.channels.runner import ChannelRunner
from sluice.channels.transport import OnReceipts, Transport
from sluice.channels.webhook import WebhookTransport
from sluice.config import ChannelConfig, Config
from sluice.ingress.contract import ChannelStatus
from sluice.journal.backends import build_journal
from sluice.journal.base import CancelResult, Completion, MessageRecord, Receipt, SubmitResult
from sluice.metrics import GatewayMetrics
from sluice.model import IdGenerator, Message, Priority, now_ms
from sluice.stage import Stage

if TYPE_CHECKING:
    from sluice.ingress.smtp import SmtpFrontDoor

log = logging.getLogger("sluice")


#: Completions waiting for their commit before senders are made to wait (backpressure).
COMPLETION_CAPACITY = 100_000
COMPLETION_BATCH = 5_000
#: Names of the SMTP front door's state in the journal.
CLIENT_MEMORY_STATE = "smtp.client_memory"
#: How often clients past their retention are forgotten (and the greylist cleaned).
CLEANUP_SECONDS = 3600.0
GREYLIST_STATE = "smtp.greylist"


def build_transport(name: str, config: ChannelConfig, on_receipts: OnReceipts) -> Transport:
    # Both sub-tables are checked against the type when the config is loaded.
    if config.type == "webhook" and config.webhook is not None:
        return WebhookTransport(name, config.webhook, config.width)
    if config.type == "smpp" and config.smpp is not None:
        from sluice.channels.smpp import SmppTransport

        return SmppTransport(name, config.smpp, on_receipts)
    if config.type == "email" and config.email is not None:
        from sluice.channels.email import EmailTransport

        return EmailTransport(name, config.email, config.width)
    raise ValueError(f"channels.{name}.type: no transport for {config.type!r}")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SluiceGateway:
    """Examples:
    gateway = SluiceGateway(config.load("sluice.toml"))
    loop.add_signal_handler(signal.SIGTERM, gateway.request_stop)
    await gateway.run()
    """

    def __init__(self, config: Config, *, transports: dict[str, Transport] | None = None) -> None:
        self.config = config
        self.owner = int.from_bytes(os.urandom(8), "big") >> 2
        self._ids = IdGenerator(config.server.node)
        self.telemetry = GatewayMetrics()
        self.journal = build_journal(config.journal)
        self.completions: Stage[Completion] = Stage(
            "completions", self._commit, capacity=COMPLETION_CAPACITY, max_batch=COMPLETION_BATCH
        )
        self.callbacks = CallbackSender(self.journal, config.callbacks)
        transports = transports or {}
        self.runners: dict[str, ChannelRunner] = {}
        for name, channel in config.channels.items():
            self.runners[name] = ChannelRunner(
                name,
                channel,
                transports.get(name) or build_transport(name, channel, self._receipts),
                self.journal,
                self.completions,
                owner=self.owner,
                lease_ms=int(config.journal.lease_seconds * 1000),
                max_claim=config.journal.max_claim,
                on_failover=self._wake_channel,
                observe_latency=self.telemetry.observer(name),
            )
        self.journal.watch_due(self._due_elsewhere)
        self.telemetry.watch(
            self.runners.values(),
            [self.completions],  # type: ignore[list-item]
            self.journal,
            self.callbacks,
        )
        self._stop = asyncio.Event()
        self._ready = False
        self.started = asyncio.Event()
        self.port: int | None = None
        #: The SMTP front door, when configured (created in `run`, once the journal is open).
        self.smtp: SmtpFrontDoor | None = None

    # ------------------------------------------------------------------ Gateway contract

    def next_id(self) -> int:
        return self._ids.next()

    def backlog(self) -> int:
        return sum(self.journal.pending().values())

    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
    ) -> SubmitResult:
        result = await self.journal.insert(tenant, messages, idempotency_key, digest)
        if not result.replayed:
            self.telemetry.accepted.labels(tenant).inc(len(messages))
            urgent = {m.channel for m in messages if m.priority == Priority.URGENT}
            for channel in {m.channel for m in messages}:
                runner = self.runners.get(channel)
                if runner is not None:
                    runner.wake(urgent=channel in urgent)
        return result

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        return await self.journal.get(tenant, message_id)

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        return await self.journal.by_recipient(tenant, recipient, before_id, limit)

    async def cancel(self, tenant: str, message_id: int) -> CancelResult:
        result = await self.journal.cancel(tenant, message_id, now_ms())
        if result is CancelResult.CANCELLED:
            self.callbacks.wake()
        return result

    def channels(self) -> list[ChannelStatus]:
        pending = self.journal.pending()
        return [
            ChannelStatus(
                name=name,
                type=r.config.type,
                width=r.config.width,
                rate=r.config.rate,
                current_rate=r.bucket.rate,
                burst=int(r.bucket.burst),
                in_flight=r.in_flight,
                pending=pending.get(name, 0),
                breaker=r.breaker.state.name.lower(),
                failover=r.config.failover,
                sent=r.sent,
                failed=r.failed,
                retried=r.retried,
            )
            for name, r in self.runners.items()
        ]

    def refused(self, code: str) -> None:
        self.telemetry.refused.labels(code).inc()

    def ready(self) -> bool:
        return self._ready

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.telemetry.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ SMTP front door

    async def _open_front_door(self) -> SmtpFrontDoor:
        """The front door with the client memory and greylist saved by the last run."""
        from sluice.ingress.smtp import SmtpFrontDoor

        door = SmtpFrontDoor(self.config, self)
        restorers = {CLIENT_MEMORY_STATE: door.restore_memory}
        if door.greylist is not None:
            restorers[GREYLIST_STATE] = door.restore_greylist
        for name, restore in restorers.items():
            saved = await self.journal.load_state(name)
            if saved is None:
                continue
            try:
                restore(saved)
            except ValueError as exc:
                log.warning("%s: the saved state is unreadable (%s); starting empty", name, exc)
        return door

    async def _save_front_door(self, door: SmtpFrontDoor) -> None:
        """Save the client memory and greylist every save_every_seconds; forget clients past
        their retention once every CLEANUP_SECONDS (a scan of every client on the event loop:
        ~0.6 s per million)."""
        assert self.config.smtp is not None
        screening = self.config.smtp.screening
        loop = asyncio.get_running_loop()
        next_cleanup = loop.time() + CLEANUP_SECONDS
        while True:
            await asyncio.sleep(screening.save_every_seconds)
            cleanup = loop.time() >= next_cleanup
            if cleanup:
                next_cleanup = loop.time() + CLEANUP_SECONDS
            await self._save_state(door, cleanup=cleanup)

    async def _save_state(self, door: SmtpFrontDoor, *, cleanup: bool = True) -> None:
        assert self.config.smtp is not None
        if cleanup:
            retention = self.config.smtp.screening.client_retention_seconds
            forgotten = door.memory.forget_before(int(time.time() - retention))
            if forgotten:
                log.info("smtp: forgot %d clients not seen for %.0f s", forgotten, retention)
            if door.greylist is not None:
                door.greylist.cleanup()
        await self.journal.save_state(CLIENT_MEMORY_STATE, door.memory.snapshot())
        if door.greylist is not None:
            await self.journal.save_state(GREYLIST_STATE, door.greylist.snapshot())

    # ------------------------------------------------------------------ pipeline

    def _due_elsewhere(self, channel: str, urgent: bool) -> None:
        """Another process made messages due (a shared journal's notification)."""
        runner = self.runners.get(channel)
        if runner is not None:
            runner.wake(urgent=urgent)

    def _wake_channel(self, channel: str) -> None:
        runner = self.runners.get(channel)
        if runner is not None:
            runner.wake()

    async def _receipts(self, channel: str, receipts: list[Receipt]) -> None:
        """Delivery receipts from a transport; returns once they are committed."""
        if await self.journal.apply_receipts(channel, receipts):
            self.callbacks.wake()

    async def _commit(self, batch: list[Completion]) -> None:
        if await self.journal.complete(self.owner, batch):
            self.callbacks.wake()
        for channel in {c.reroute_to for c in batch if c.reroute_to}:
            self._wake_channel(channel)

    async def _maintain(self) -> None:
        """Heartbeat our leases; reclaim dead owners' leases; expire overdue messages."""
        journal_config = self.config.journal
        lease_ms = int(journal_config.lease_seconds * 1000)
        ttl_ms = int(self.config.limits.idempotency_ttl_seconds * 1000)
        tick = min(journal_config.heartbeat_seconds, journal_config.sweep_seconds)
        next_beat = next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now >= next_beat:
                await self.journal.renew_leases(self.owner, now_ms() + lease_ms)
                next_beat = now + journal_config.heartbeat_seconds
            if now >= next_sweep:
                swept = await self.journal.sweep(now_ms(), ttl_ms)
                if swept.reclaimed or swept.expired:
                    log.info(
                        "sweep: %d leases reclaimed, %d messages expired",
                        swept.reclaimed,
                        swept.expired,
                    )
                    self.callbacks.wake()
                    for runner in self.runners.values():
                        runner.wake()
                next_sweep = now + journal_config.sweep_seconds
            await asyncio.sleep(tick)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    def _bind(self) -> socket.socket:
        host, _, port = self.config.server.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listener says it is TCP, and without it a response written in two parts waits for a
        # delayed ACK (~40 ms per request).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, int(port)))
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        return sock

    async def run(self) -> None:
        from sluice.ingress.http import build_app

        sock = self._bind()
        await self.journal.open()
        transports = [r.transport for r in self.runners.values()]
        try:
            for transport in transports:
                await transport.start()
            server = _EmbeddedServer(
                uvicorn.Config(
                    build_app(self),  # type: ignore[arg-type]
                    lifespan="off",
                    log_level="warning",
                    access_log=False,
                    http="httptools",
                    timeout_graceful_shutdown=5,
                )
            )
            async with asyncio.TaskGroup() as tg:
                completions = tg.create_task(self.completions.run())
                callbacks = tg.create_task(self.callbacks.run())
                links = [tg.create_task(t.run()) for t in transports]
                runners = [tg.create_task(r.run()) for r in self.runners.values()]
                maintenance = tg.create_task(self._maintain())
                http = tg.create_task(server.serve(sockets=[sock]))
                front_door = saver = None
                if self.config.smtp is not None:
                    self.smtp = await self._open_front_door()
                    self.telemetry.watch_front_door(self.smtp)
                    front_door = tg.create_task(self.smtp.run())
                    saver = tg.create_task(self._save_front_door(self.smtp))
                    await self.smtp.listening.wait()
                self._ready = True
                self.started.set()
                log.info("sluice serving on %s:%d", sock.getsockname()[0], self.port)
                await self._stop.wait()
                log.info("shutting down: no new requests, finishing in-flight work")
                self._ready = False
                server.should_exit = True
                if self.smtp is not None and front_door is not None and saver is not None:
                    saver.cancel()
                    self.smtp.close()
                    await front_door
                    await self._save_state(self.smtp)
                await http
                for runner in self.runners.values():
                    runner.stop()
                _, late = await asyncio.wait(
                    runners, timeout=self.config.server.shutdown_grace_seconds
                )
                for task in late:
                    task.cancel()
                self.completions.close()
                await completions
                self.callbacks.stop()
                await callbacks
                for transport in transports:  # receipts could still arrive until here
                    await transport.close()
                await asyncio.gather(*links)
                maintenance.cancel()
            released = await self.journal.release(self.owner, now_ms())
            if released:
                log.info("released %d in-flight messages back to the queue", released)
        finally:
            for transport in transports:
                await transport.close()
            await self.journal.close()
            sock.close()
