"""Wiring: one gateway process — the parts its role runs, and their life cycle.

    producers ─► HTTP, SMTP ─► journal (group commit) ─► channel runners (claim, send) ─► peers
                                  ▲                               │
                                  └──── completion stage ◄────────┘  ─► callback sender

`server.role` picks the parts (`roles`): "all" takes messages and delivers them; "api" only
takes them (the HTTP message API, the SMTP front door); "worker" only delivers them (the
delivery side, `sluice.delivery.engine`) and serves nothing on HTTP but /healthz, /readyz and /metrics.
Processes that share a machine's ports under a supervisor (`supervisor`) are given their
listening sockets instead of binding them.

Every task is owned by one TaskGroup. Shutdown (SIGTERM) closes the doors first (HTTP and SMTP
stop taking requests, readiness turns false), then the delivery side drains: in-flight sends
get up to `server.shutdown_grace_seconds`, their outcomes are committed, and whatever is still
leased returns to the queue, so a restart picks it up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice.config import Config
from sluice.delivery.callbacks import CallbackSender
from sluice.delivery.engine import Delivery, channel_statuses
from sluice.delivery.runner import ChannelRunner
from sluice.ingress.contract import ChannelStatus
from sluice.journal.backends import build_journal
from sluice.journal.base import CancelResult, MessageRecord, SubmitResult
from sluice.model import IdGenerator, Message, Priority, now_ms
from sluice.observe.metrics import GatewayMetrics
from sluice.process.listeners import Listeners, bind_tcp
from sluice.process.roles import role_of, serves_smtp
from sluice.sharing.build import Sharing
from sluice.transports.base import Transport

if TYPE_CHECKING:
    from sluice.ingress.smtp.door import SmtpFrontDoor

log = logging.getLogger("sluice")


#: Names of the SMTP front door's state in the journal.
CLIENT_MEMORY_STATE = "smtp.client_memory"
#: How often clients past their retention are forgotten (and the greylist cleaned).
CLEANUP_SECONDS = 3600.0
GREYLIST_STATE = "smtp.greylist"


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

    def __init__(
        self,
        config: Config,
        *,
        transports: dict[str, Transport] | None = None,
        listeners: Listeners | None = None,
    ) -> None:
        self.config = config
        self.role = role_of(config)
        self._ids = IdGenerator(config.server.node)
        self.telemetry = GatewayMetrics()
        self.journal = build_journal(config.journal)
        self.telemetry.watch_journal(self.journal, config.channels)
        #: What this process shares with the others through Redis (nothing without it).
        self.sharing = Sharing(config)
        self.telemetry.watch_sharing(self.sharing)
        #: The delivery side, in a process that delivers (role "all" or "worker").
        self.delivery: Delivery | None = None
        if self.role.delivers:
            self.delivery = Delivery(config, self.journal, self.telemetry, transports, self.sharing)
        #: The channel runners of this process, by channel (none in a process of role "api").
        self.runners: dict[str, ChannelRunner] = self.delivery.runners if self.delivery else {}
        #: Sockets handed over by a supervisor; None: bind server.listen (and smtp.listen).
        self._listeners = listeners
        self._stop = asyncio.Event()
        self._ready = False
        self.started = asyncio.Event()
        self.port: int | None = None
        #: The SMTP front door, when this process runs it (created in `run`, once the journal
        #: is open).
        self.smtp: SmtpFrontDoor | None = None

    @property
    def callbacks(self) -> CallbackSender:
        """The status callback sender (of a process that delivers)."""
        if self.delivery is None:
            raise AttributeError(
                f"a process of role {self.config.server.role!r} sends no callbacks"
            )
        return self.delivery.callbacks

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
        cache = self.sharing.idempotency
        if cache is not None and idempotency_key is not None:
            ids = await cache.lookup(tenant, idempotency_key, digest)  # IdempotencyConflict
            if ids is not None:
                return SubmitResult(ids, True)  # a replay, answered without a transaction
        result = await self.journal.insert(tenant, messages, idempotency_key, digest)
        if cache is not None and idempotency_key is not None and digest is not None:
            await cache.remember(tenant, idempotency_key, digest, result.ids)
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
        if result is CancelResult.CANCELLED and self.delivery is not None:
            self.delivery.callbacks.wake()
        return result

    def channels(self) -> list[ChannelStatus]:
        return channel_statuses(self.config, self.runners, self.journal.pending())

    def refused(self, code: str) -> None:
        self.telemetry.refused.labels(code).inc()

    def ready(self) -> bool:
        return self._ready

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.telemetry.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ SMTP front door

    async def _open_front_door(self) -> SmtpFrontDoor:
        """The front door with the client memory and greylist saved by the last run."""
        from sluice.ingress.smtp.door import SmtpFrontDoor

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

    # ------------------------------------------------------------------ life cycle

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> None:
        from sluice.ingress.http.app import build_app

        listeners = self._listeners
        if listeners is None:
            listeners = Listeners(bind_tcp(self.config.server.listen))
        sock = listeners.http
        self.port = sock.getsockname()[1]
        await self.journal.open()
        try:
            if self.delivery is not None:
                await self.delivery.start()
            server = _EmbeddedServer(
                uvicorn.Config(
                    build_app(self, message_api=self.role.takes_messages),  # type: ignore[arg-type]
                    lifespan="off",
                    log_level="warning",
                    access_log=False,
                    http="httptools",
                    timeout_graceful_shutdown=5,
                )
            )
            async with asyncio.TaskGroup() as tg:
                sharing = tg.create_task(self.sharing.run())
                delivering = None
                if self.delivery is not None:
                    delivering = tg.create_task(self.delivery.run())
                http = tg.create_task(server.serve(sockets=[sock]))
                front_door = saver = None
                if serves_smtp(self.config):
                    self.smtp = await self._open_front_door()
                    self.telemetry.watch_front_door(self.smtp)
                    front_door = tg.create_task(self.smtp.run(listeners.smtp))
                    saver = tg.create_task(self._save_front_door(self.smtp))
                    await self.smtp.listening.wait()
                self._ready = True
                self.started.set()
                log.info(
                    "sluice serving on %s:%d (role %s)",
                    sock.getsockname()[0],
                    self.port,
                    self.config.server.role,
                )
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
                if self.delivery is not None and delivering is not None:
                    self.delivery.stop()
                    await delivering
                sharing.cancel()
        finally:
            await self.sharing.close()
            if self.delivery is not None:
                await self.delivery.close()
            await self.journal.close()
            listeners.close()
