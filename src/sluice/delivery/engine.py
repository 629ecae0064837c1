"""The delivery side of a gateway process: channel runners and their transports, the completion
stage, the callback sender, and the journal upkeep (lease heartbeat, sweeps).

    journal ─► channel runners (claim, send) ─► transports ─► peers
       ▲                     │ outcome
       └── completion stage ◄┘   ─► callback sender

A process of role "all" or "worker" runs one; a process of role "api" runs none, and the
processes that deliver hear of its inserts from the shared journal (`Journal.watch_due`).

Examples:
    delivery = Delivery(config, journal)
    await delivery.start()                    # transports connect
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(delivery.run())
        ...
        delivery.stop()                       # drain: see `run`
    await delivery.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from sluice.audience.expander import Expander
from sluice.config import ChannelConfig, Config
from sluice.delivery.callbacks import CallbackSender
from sluice.delivery.runner import ChannelRunner
from sluice.flow.stage import Stage
from sluice.ingress.contract import ChannelStatus
from sluice.journal.base import Completion, Journal, JournalError, Receipt
from sluice.model import IdGenerator, now_ms
from sluice.sharing.build import Sharing
from sluice.transports.base import OnReceipts, Transport
from sluice.transports.webhook import WebhookTransport

log = logging.getLogger("sluice")

#: Completions waiting for their commit before senders are made to wait (backpressure).
COMPLETION_CAPACITY = 100_000
COMPLETION_BATCH = 5_000
#: The breaker state shown for a channel that this process does not deliver on.
NOT_DELIVERED_HERE = "none"


def build_transport(
    name: str, config: ChannelConfig, on_receipts: OnReceipts, journal: Journal | None = None
) -> Transport:
    """The transport of channel `name`; an SMPP channel expires, through `journal`, the sent
    messages whose receipts never came (smpp.receipt_deadline_seconds)."""
    # Both sub-tables are checked against the type when the config is loaded.
    if config.type == "webhook" and config.webhook is not None:
        return WebhookTransport(name, config.webhook, config.width)
    if config.type == "smpp" and config.smpp is not None:
        from sluice.transports.smpp.channel import SmppTransport

        expire = journal.expire_receipts if journal is not None else None
        return SmppTransport(name, config.smpp, on_receipts, expire)
    if config.type == "email" and config.email is not None:
        from sluice.transports.email import EmailTransport

        return EmailTransport(name, config.email, config.width)
    raise ValueError(f"channels.{name}.type: no transport for {config.type!r}")


class Delivery:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        transports: Mapping[str, Transport] | None = None,
        sharing: Sharing | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        #: The lease owner: this process, in the journal's eyes.
        self.owner = int.from_bytes(os.urandom(8), "big") >> 2
        self.completions: Stage[Completion] = Stage(
            "completions", self._commit, capacity=COMPLETION_CAPACITY, max_batch=COMPLETION_BATCH
        )
        self.callbacks = CallbackSender(journal, config.callbacks)
        transports = transports or {}
        sharing = sharing or Sharing(config)
        self.runners: dict[str, ChannelRunner] = {}
        for name, channel in config.channels.items():
            runner = self.runners[name] = ChannelRunner(
                name,
                channel,
                transports.get(name) or build_transport(name, channel, self._receipts, journal),
                journal,
                self.completions,
                owner=self.owner,
                lease_ms=int(config.journal.lease_seconds * 1000),
                max_claim=config.journal.max_claim,
                on_failover=self.wake,
                bucket=sharing.bucket(name, channel),
                on_breaker_open=sharing.breaker_opened(name),
            )
            sharing.watch_breaker(name, runner.breaker)
        journal.watch_due(self.wake)
        #: Broadcasts' expansion (their messages are ids of this process: `ids` is the
        #: process's one generator, shared with its ingress).
        self.expander = Expander(
            journal,
            config.audience,
            ids or IdGenerator(config.server.node),
            self.owner,
            wake=self.wake,
        )
        self._stop = asyncio.Event()

    def wake(self, channel: str, urgent: bool = False) -> None:
        """Messages became due on `channel` (an insert here or, through a shared journal's
        notification, in another process; a failover)."""
        runner = self.runners.get(channel)
        if runner is not None:
            runner.wake(urgent=urgent)

    async def start(self) -> None:
        """Start the transports (before `run`)."""
        for runner in self.runners.values():
            await runner.transport.start()

    async def run(self) -> None:
        """Deliver until `stop`, then drain: runners stop claiming, in-flight sends get up to
        `server.shutdown_grace_seconds`, their outcomes are committed, the callback sender
        stops, the transports close, and whatever is still leased goes back to the queue."""
        transports = [r.transport for r in self.runners.values()]
        async with asyncio.TaskGroup() as tg:
            completions = tg.create_task(self.completions.run())
            callbacks = tg.create_task(self.callbacks.run())
            links = [tg.create_task(t.run()) for t in transports]
            runners = [tg.create_task(r.run()) for r in self.runners.values()]
            upkeep = tg.create_task(self._upkeep())
            expander = tg.create_task(self.expander.run())
            await self._stop.wait()
            self.expander.stop()  # its chunk in progress commits or not at all
            await expander
            for runner in self.runners.values():
                runner.stop()
            _, late = await asyncio.wait(runners, timeout=self.config.server.shutdown_grace_seconds)
            # Sends still waiting inside a transport (a paced bind's queue) must not go out
            # once their runner is gone: they are answered unattempted while the completion
            # stage still takes outcomes, and their messages go back to the queue.
            for runner in self.runners.values():
                runner.transport.drop_queued()
            for task in late:
                task.cancel()
            self.completions.close()
            await completions
            self.callbacks.stop()
            await callbacks
            for transport in transports:  # receipts could still arrive until here
                await transport.close()
            await asyncio.gather(*links)
            upkeep.cancel()
        released = await self.journal.release(self.owner, now_ms())
        if released:
            log.info("released %d in-flight messages back to the queue", released)

    def stop(self) -> None:
        """Begin the drain (see `run`)."""
        self._stop.set()

    async def close(self) -> None:
        """Close the transports, whether or not `run` got to it."""
        for runner in self.runners.values():
            await runner.transport.close()

    # ------------------------------------------------------------------ pipeline

    async def _receipts(self, channel: str, receipts: list[Receipt]) -> None:
        """Delivery receipts from a transport; returns once they are committed."""
        if await self.journal.apply_receipts(channel, receipts):
            self.callbacks.wake()

    async def _commit(self, batch: list[Completion]) -> None:
        if await self.journal.complete(self.owner, batch):
            self.callbacks.wake()
        for channel in {c.reroute_to for c in batch if c.reroute_to}:
            self.wake(channel)

    async def _upkeep(self) -> None:
        """Heartbeat our leases; reclaim dead owners' leases; expire overdue messages."""
        journal_config = self.config.journal
        lease_ms = int(journal_config.lease_seconds * 1000)
        ttl_ms = int(self.config.limits.idempotency_ttl_seconds * 1000)
        tick = min(journal_config.heartbeat_seconds, journal_config.sweep_seconds)
        next_beat = next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                next_beat, next_sweep = await self._upkeep_once(
                    loop.time(), next_beat, next_sweep, lease_ms, ttl_ms
                )
            except JournalError as exc:  # the journal retried already; so will we, next tick
                log.warning("journal upkeep: %s", exc)
            await asyncio.sleep(tick)

    async def _upkeep_once(
        self, now: float, next_beat: float, next_sweep: float, lease_ms: int, ttl_ms: int
    ) -> tuple[float, float]:
        journal_config = self.config.journal
        if now >= next_beat:
            holding = [i for runner in self.runners.values() for i in runner.holding]
            await self.journal.renew_leases(self.owner, now_ms() + lease_ms, holding)
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
        return next_beat, next_sweep


def channel_statuses(
    config: Config, runners: Mapping[str, ChannelRunner], pending: Mapping[str, int]
) -> list[ChannelStatus]:
    """Every configured channel: its limits, its queue depth, and what this process's runner
    for it is doing."""
    return [
        _status(name, channel, runners.get(name), pending.get(name, 0))
        for name, channel in config.channels.items()
    ]


def _status(
    name: str, channel: ChannelConfig, runner: ChannelRunner | None, pending: int
) -> ChannelStatus:
    if runner is None:  # a process of role "api": nothing is sent from here
        return ChannelStatus(
            name=name,
            type=channel.type,
            width=channel.width,
            rate=channel.rate,
            current_rate=channel.rate,
            burst=channel.burst or max(1, int(channel.rate / 10)),
            in_flight=0,
            pending=pending,
            breaker=NOT_DELIVERED_HERE,
            failover=channel.failover,
            sent=0,
            failed=0,
            retried=0,
        )
    stats = runner.stats()
    return ChannelStatus(
        name=name,
        type=channel.type,
        width=channel.width,
        rate=channel.rate,
        current_rate=stats.rate,
        burst=int(stats.burst),
        in_flight=stats.in_flight,
        pending=pending,
        breaker=stats.breaker.state.name.lower(),
        failover=channel.failover,
        sent=stats.sent,
        failed=stats.failed,
        retried=stats.retried,
    )
