"""Wiring: one gateway process — the parts its role runs, and their life cycle.

    producers ─► HTTP, SMTP ─► journal (group commit) ─► channel runners (claim, send) ─► peers
                                  ▲                               │
                                  └──── completion stage ◄────────┘  ─► callback sender

`server.role` picks the parts (`roles`): "all" takes messages and delivers them; "api" only
takes them (the HTTP message API, the SMTP front door); "worker" only delivers them (the
delivery side, `sluice.delivery.engine`) and serves nothing on HTTP but /healthz, /readyz and
/metrics. Processes that share a machine's ports under a supervisor (`supervisor`) are given
their listening sockets instead of binding them.

Every part has one life cycle (`parts`: start, run, stop, close) and every task is owned by
one TaskGroup. Shutdown (SIGTERM) closes the doors first (HTTP and SMTP stop taking requests,
readiness turns false), then the delivery side drains: in-flight sends get up to
`server.shutdown_grace_seconds`, their outcomes are committed, and whatever is still leased
returns to the queue, so a restart picks it up at once. The journal closes last.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sluice.config import Config
from sluice.delivery.callbacks import CallbackSender
from sluice.delivery.engine import Delivery, channel_statuses
from sluice.delivery.runner import ChannelRunner
from sluice.ingress.contract import ChannelStatus
from sluice.journal.audience import AudienceStore
from sluice.journal.backends import (
    build_journal,
    build_remote_journal,
    frame_limit,
    journal_socket,
    split_journal,
)
from sluice.journal.base import CancelResult, MessageRecord, Receipt, SubmitResult
from sluice.journal.broadcasts import BroadcastStore
from sluice.journal.remote import JournalClient, JournalServer
from sluice.journal.remote.server import HEARTBEAT_SECONDS
from sluice.model import IdGenerator, Message, Priority, first_id_at, now_ms
from sluice.observe.metrics import GatewayMetrics
from sluice.process.front_door import FrontDoorPart
from sluice.process.listeners import Listeners, bind_tcp
from sluice.process.parts import HealthPart, HttpServerPart, Part, PushPart, SharingPart
from sluice.process.roles import role_of, serves_smtp
from sluice.process.split import OwnerAnnex, decode_annex, encode_annex, merge_metrics
from sluice.sharing.build import Sharing
from sluice.transports.base import Transport
from sluice.transports.push.hub import PushHub
from sluice.transports.push.transport import PushTransport

if TYPE_CHECKING:
    from sluice.ingress.smtp.door import SmtpFrontDoor

#: Messages read from the recipient index per page of a push replay.
REPLAY_PAGE = 200

log = logging.getLogger("sluice")


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
        push_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.role = role_of(config)
        self._ids = IdGenerator(config.server.node)
        self.telemetry = GatewayMetrics()
        #: With `server.api_processes` on SQLite: this process is an edge that reaches the
        #: journal's owner through its socket, or the owner that serves it (`split`).
        self.split = split_journal(config)
        self.edge_of_split = self.split and not self.role.delivers
        self._journal_server: JournalServer | None = None
        if self.edge_of_split:
            self.journal = build_remote_journal(config)
        else:
            self.journal = build_journal(config.journal)
            self.telemetry.watch_journal(self.journal, config.channels)
        #: What this process shares with the others through Redis (nothing without it).
        self.sharing = Sharing(config)
        self.telemetry.watch_sharing(self.sharing)
        #: The delivery side, in a process that delivers (role "all" or "worker").
        self.delivery: Delivery | None = None
        #: The live push connections of this process (one that delivers, with [push]).
        self.push_hub: PushHub | None = None
        self._push_socket = push_socket
        self.push_port: int | None = None
        if config.push is not None and self.role.delivers:
            self.push_hub = PushHub(config.push, self._push_acks, self._push_replay)
            pushing: dict[str, Transport] = {
                name: PushTransport(name, self.push_hub)
                for name, channel in config.channels.items()
                if channel.type == "push"
            }
            transports = pushing | (transports or {})
        if self.role.delivers:
            self.delivery = Delivery(config, self.journal, transports, self.sharing, self._ids)
            self.telemetry.watch_delivery(
                self.delivery.runners.values(),
                [self.delivery.completions],
                self.delivery.callbacks,
            )
            self.telemetry.watch_expander(self.delivery.expander)
            from sluice.transports.smpp.channel import SmppTransport

            self.telemetry.watch_smpp(
                {
                    name: runner.transport
                    for name, runner in self.delivery.runners.items()
                    if isinstance(runner.transport, SmppTransport)
                }
            )
        #: The channel runners of this process, by channel (none in a process of role "api").
        self.runners: dict[str, ChannelRunner] = self.delivery.runners if self.delivery else {}
        if self.split and self.role.delivers:
            self._journal_server = JournalServer(
                self.journal,
                journal_socket(config.journal),
                max_frame_bytes=frame_limit(config),
                after_call=self._after_edge_call,
                annex=self._annex,
                grace_seconds=config.server.shutdown_grace_seconds,
                # The edges drop a link silent for ingress_wait_seconds: speak well within it.
                heartbeat_seconds=min(HEARTBEAT_SECONDS, config.journal.ingress_wait_seconds / 4),
            )
        #: Sockets handed over by a supervisor; None: bind server.listen (and smtp.listen).
        self._listeners = listeners
        self._stop = asyncio.Event()
        self._ready = False
        self.started = asyncio.Event()
        self.port: int | None = None
        #: The ports of `server.health_listen` and `server.admin_listen`, once bound.
        self.health_port: int | None = None
        self.admin_port: int | None = None
        #: The SMTP front door, when this process runs it (created in `run`; its saved state is
        #: restored once the journal is open).
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
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        cache = self.sharing.idempotency
        if cache is not None and idempotency_key is not None:
            ids = await cache.lookup(tenant, idempotency_key, digest)  # IdempotencyConflict
            if ids is not None:
                return SubmitResult(ids, True)  # a replay, answered without a transaction
        result = await self.journal.insert(
            tenant, messages, idempotency_key, digest, deadline=deadline
        )
        if cache is not None and idempotency_key is not None and digest is not None:
            await cache.remember(tenant, idempotency_key, digest, result.ids)
        if not result.replayed:
            self.telemetry.accepted.labels(tenant).inc(len(messages))
            self._wake_for(messages)
        return result

    def _wake_for(self, messages: list[Message]) -> None:
        """Wake the runners of the messages' channels (urgent ones ahead of their turn)."""
        urgent = {m.channel for m in messages if m.priority == Priority.URGENT}
        for channel in {m.channel for m in messages}:
            runner = self.runners.get(channel)
            if runner is not None:
                runner.wake(urgent=channel in urgent)

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
        if self.edge_of_split:
            annex = self._owner_annex()
            if annex is not None:
                return annex.channels
        return channel_statuses(self.config, self.runners, self.journal.pending())

    def refused(self, code: str) -> None:
        self.telemetry.refused.labels(code).inc()

    def ready(self) -> bool:
        """Serving, and the journal can take messages (no damaged file, no disk below its
        reserve, no server out of reach: `Journal.fault`)."""
        return self._ready and self.journal.fault() is None

    def fault(self) -> str | None:
        return self.journal.fault()

    @property
    def audience(self) -> AudienceStore:
        return self.journal

    @property
    def broadcasts(self) -> BroadcastStore:
        return self.journal

    def broadcast_changed(self) -> None:
        if self.delivery is not None:
            self.delivery.expander.poke()
            for runner in self.runners.values():
                runner.wake()

    def metrics(self) -> tuple[bytes, str]:
        own = generate_latest(self.telemetry.registry)
        if self.edge_of_split:
            annex = self._owner_annex()
            if annex is not None:
                own = merge_metrics(own, annex.metrics)
        return own, CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ the journal's split

    def _owner_annex(self) -> OwnerAnnex | None:
        assert isinstance(self.journal, JournalClient)
        return decode_annex(self.journal.annex)

    def _annex(self) -> bytes:
        """What the owner tells its edges beyond the journal (`process/split.py`)."""
        channels = channel_statuses(self.config, self.runners, self.journal.pending())
        return encode_annex(OwnerAnnex(channels, generate_latest(self.telemetry.registry)))

    def _after_edge_call(self, method: str, args: tuple[Any, ...], value: Any) -> None:
        """What the owner does after an edge's call, as `submit`, `cancel` and the broadcast
        API do in a process that is both: wake who has new work."""
        if method == "insert":
            if not value.replayed:
                self._wake_for(args[1])
        elif method == "cancel":
            if value is CancelResult.CANCELLED and self.delivery is not None:
                self.delivery.callbacks.wake()
        elif method in ("create_broadcast", "change_broadcast"):
            self.broadcast_changed()

    # ------------------------------------------------------------------ life cycle

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> None:
        # Probes on a port of their own are answered until the very end (/readyz says 503
        # while the gateway drains): they stop with what every part uses.
        shared: list[Part] = [SharingPart(self.sharing)]
        listeners: Listeners | None = None
        if self._journal_server is not None:
            # The journal's owner in a split: its doors are the edge processes' calls, served
            # while they drain their own requests; it listens on no port.
            doors: list[Part] = [self._journal_server]
            where = f"the journal's socket {self._journal_server.path}"
        else:
            listeners = self._listeners or self._bind()
            doors, health = self._doors(listeners)
            shared += health
            where = "{}:{}".format(*listeners.http.getsockname()[:2])
        if self.push_hub is not None:
            assert self.config.push is not None
            sock = self._push_socket or bind_tcp(self.config.push.listen)
            self.push_port = sock.getsockname()[1]
            doors.append(PushPart(self.push_hub, self.config.push, sock))
        # In the order they stop: the doors (no new messages), delivery (drains what is in
        # flight), then what both use. They start the other way round.
        tiers: list[list[Part]] = [
            doors,
            [self.delivery] if self.delivery is not None else [],
            shared,
        ]
        parts = [part for tier in reversed(tiers) for part in tier]
        # The journal is no part: every part uses it, so it opens before the first one starts
        # and closes after the last one is closed.
        await self.journal.open()
        try:
            if self.edge_of_split and not await self._owner_answers():
                return  # told to stop before the journal's owner was up
            for part in parts:
                await part.start()
            if self.smtp is not None:
                self.telemetry.watch_front_door(self.smtp)
            async with asyncio.TaskGroup() as tg:
                running = {part: tg.create_task(part.run()) for part in parts}
                if self.smtp is not None:
                    await self.smtp.listening.wait()
                self._ready = True
                self.started.set()
                log.info("sluice serving on %s (role %s)", where, self.config.server.role)
                await self._stop.wait()
                log.info("shutting down: no new requests, finishing in-flight work")
                self._ready = False
                for tier in tiers:
                    for part in tier:
                        part.stop()
                    for part in tier:
                        await running[part]
        finally:
            for part in reversed(parts):
                await part.close()
            await self.journal.close()
            if listeners is not None:
                listeners.close()

    async def _owner_answers(self) -> bool:
        """Wait until the journal's owner answers (it may still be checking the file or
        recovering: the SMTP front door restores its memory from the journal at its start,
        and nothing here can serve without it), or until told to stop: False."""
        assert isinstance(self.journal, JournalClient)
        log.info("waiting for the journal's process on %s", self.journal.path)
        async with asyncio.TaskGroup() as tg:
            up = tg.create_task(self.journal.wait_up())
            stop = tg.create_task(self._stop.wait())
            await asyncio.wait({up, stop}, return_when=asyncio.FIRST_COMPLETED)
            up.cancel()
            stop.cancel()
        return not self._stop.is_set()

    async def _push_acks(self, channel: str, receipts: list[Receipt]) -> None:
        """Pushes their clients acknowledged: delivered once committed."""
        if await self.journal.apply_receipts(channel, receipts) and self.delivery is not None:
            self.delivery.callbacks.wake()

    async def _push_replay(
        self, tenant: str, subscriber: str, after_id: int
    ) -> tuple[list[Message], bool]:
        """What push channels sent `subscriber` after `after_id`, oldest first, from the
        journal (the recipient index, newest first, a page at a time), and whether some of it
        lies beyond push.replay_window_seconds or push.max_replay."""
        push = self.config.push
        assert push is not None
        channels = {n for n, c in self.config.channels.items() if c.type == "push"}
        oldest = first_id_at(now_ms() - int(push.replay_window_seconds * 1000))
        floor = max(after_id + 1, oldest)
        missed = after_id + 1 < oldest
        found: list[Message] = []
        before: int | None = None
        reading = True
        while reading:
            page = await self.journal.by_recipient(tenant, subscriber, before, REPLAY_PAGE)
            reading = len(page) == REPLAY_PAGE
            for record in page:
                message = record.message
                if message.id < floor:
                    reading = False
                    break
                if message.channel in channels:
                    if len(found) >= push.max_replay:
                        missed, reading = True, False
                        break
                    found.append(message)
            if page:
                before = page[-1].message.id
        found.reverse()  # the index reads newest first
        return found, missed

    def push_presence(self, tenant: str, subscriber: str | None, topic: str | None) -> int:
        """Live push connections of a subscriber, or of a topic, on this process."""
        hub = self.push_hub
        if hub is None:
            return 0
        if subscriber is not None:
            return hub.presence(tenant, subscriber)
        return hub.topic_presence(tenant, topic or "")

    def _bind(self) -> Listeners:
        server = self.config.server
        listeners = Listeners(bind_tcp(server.listen))
        if server.health_listen is not None:
            listeners = listeners._replace(health=bind_tcp(server.health_listen))
        if server.admin_listen is not None:
            listeners = listeners._replace(admin=bind_tcp(server.admin_listen))
        return listeners

    def _doors(self, listeners: Listeners) -> tuple[list[Part], list[Part]]:
        """The HTTP server (with /metrics on the admin port when there is one), the SMTP
        front door; and the health listener, which stops last."""
        from sluice.ingress.http.app import HttpApi

        sock = listeners.http
        self.port = sock.getsockname()[1]
        app = HttpApi(self, message_api=self.role.takes_messages, metrics=listeners.admin is None)
        http = HttpServerPart(app, sock, self.config)
        self.telemetry.watch_edge(app.gate, http.server)
        doors: list[Part] = [http]
        if listeners.admin is not None:  # /metrics (and probes) on a port of its own
            self.admin_port = listeners.admin.getsockname()[1]
            admin = HttpApi(self, message_api=False)
            doors.append(HttpServerPart(admin, listeners.admin, self.config))
        health: list[Part] = []
        if listeners.health is not None:
            self.health_port = listeners.health.getsockname()[1]
            health.append(HealthPart(listeners.health, app.gate))
        if serves_smtp(self.config):
            doors.append(self._front_door(listeners.smtp))
        return doors, health

    def _front_door(self, sock: socket.socket | None) -> FrontDoorPart:
        """The SMTP front door (`self.smtp`), as a part that keeps its client memory and
        greylist in the journal."""
        from sluice.ingress.smtp.door import SmtpFrontDoor

        assert self.config.smtp is not None
        self.smtp = SmtpFrontDoor(self.config, self)
        return FrontDoorPart(self.smtp, self.journal, self.config.smtp.screening, sock)
