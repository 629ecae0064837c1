"""The SMSC simulator itself: it listens for ESMEs, keeps their binds, and answers to a test.

It owns what its parts share: the options in force (`configure`), the counts (`stats`,
`reset`), the record of accepted messages (`received`, `messages`), the binds of each
account, and the output of every connection, written once per read or tick (`_flush`).
Each connection is an `EsmeLink`; a submit_sm is answered by the `AnswerPolicy`; receipts
are owed and sent by `Receipts`; MO messages go out through `send_mo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from dataclasses import dataclass

from aiohttp import web

from sluice.protocols.smpp import (
    ESM_CLASS_UDHI,
    SMPP_VERSION_34,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DeliverSm,
    LocalProtocolError,
    Pdu,
    Tag,
    Unbind,
    response_for,
    tlv_u8,
)
from sluice.sim.arrivals import ArrivalCounts
from sluice.sim.base import Simulator
from sluice.sim.control import http_host, start_http
from sluice.sim.smsc.control import smsc_routes
from sluice.sim.smsc.liveness import Liveness
from sluice.sim.smsc.mo import MoSent, mo_account, mo_parts
from sluice.sim.smsc.options import MAX_ADDRESS_LENGTH, SmscOptions
from sluice.sim.smsc.policy import AnswerPolicy
from sluice.sim.smsc.receipts import Account, Delivery, Receipts
from sluice.sim.smsc.records import Submitted, reassemble, submitted
from sluice.sim.smsc.session import BIND_TYPES, EsmeLink
from sluice.sim.smsc.stats import BindStats, Counts, SmscStats
from sluice.sim.smsc.timeline import Timeline

#: Listen backlog: a benchmark opening many binds at once must not see refused connects;
#: Linux caps it at net.core.somaxconn (4096 since 5.4).
LISTEN_BACKLOG = 1024
#: Seconds `SmscSimulator.close` waits for closed connections to report they are gone.
CLOSE_GRACE_SECONDS = 1.0

_SC_INTERFACE_VERSION = tlv_u8(Tag.sc_interface_version, 0x34)


@dataclass(slots=True)
class _Waiter:
    submits: int | None
    receipts_acked: int | None
    binds: int | None
    event: asyncio.Event


class SmscSimulator(Simulator):
    """The SMSC; see the `sluice.sim.smsc` docstring for what it answers, counts and records."""

    NAME = "SMSC simulator"

    def __init__(self, options: SmscOptions | None = None) -> None:
        self._rng = random.Random()
        self._options = SmscOptions()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeline: Timeline | None = None
        self._server: asyncio.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._host = ""
        self._port = 0
        self._control_url: str | None = None
        self._links: set[EsmeLink] = set()
        self._link_numbers = 0
        self._bound = 0
        self._mo_reference = 0
        self._dirty: list[EsmeLink] = []
        self._waiters: list[_Waiter] = []
        self._all_closed: asyncio.Event | None = None
        self._counts = Counts()
        self._arrivals = ArrivalCounts(int(time.time()))
        self._receipts = Receipts(self._counts, self._rng, self._emit, self._waiters, self._wake)
        self._policy = AnswerPolicy(
            self._counts,
            self._rng,
            self._receipts.accept,
            self._receipts.schedule,
            self._drop,
            self._emit,
        )
        # Bound once: a connection calls these per PDU, as one attribute each.
        self._answer = self._policy.answer
        self._on_delivery_answer = self._receipts.on_answer
        self._liveness = Liveness(self._counts, self._emit, self._flush, self._unregister)
        self._control = smsc_routes(self)
        self._apply(options if options is not None else SmscOptions(), None, reseed=True)
        self.reset()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for ESMEs on ``host:port`` (port 0 picks a free one); return the port."""
        if self._server is not None:
            raise RuntimeError(f"{self.NAME} already listening on {self._host}:{self._port}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        timeline = self._timeline = Timeline(loop, self._flush)
        self._policy.start(loop, timeline)
        self._liveness.start(loop)
        self._receipts.start(timeline)
        self._rebuild_buckets()
        server = await loop.create_server(
            self._new_link, host, port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        self._server = server
        self._host = host
        self._port = int(server.sockets[0].getsockname()[1])
        return self._port

    async def start_control(self, port: int = 0, host: str | None = None) -> str:
        """Serve the control endpoints on ``host`` (the SMPP host by default); return the URL."""
        if self._runner is not None:
            raise RuntimeError(f"SMSC control server already running on {self._control_url}")
        host = host if host is not None else (self._host or "127.0.0.1")
        self._runner, bound_port = await start_http(self._control.handle, host, port)
        self._control_url = f"http://{http_host(host)}:{bound_port}"
        return self._control_url

    async def close(self) -> None:
        """Stop listening, unbind and close every connection, stop the control server.

        Answers and receipts not yet due are dropped.
        """
        if self._timeline is not None:
            self._timeline.cancel()
        self._liveness.close()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            if link.is_open and link.session.is_bound:
                with contextlib.suppress(LocalProtocolError):
                    self._emit(link, link.session.send(Unbind()))
            self._unregister(link)
            link.closing = True
        self._flush()
        for link in list(self._links):
            if link.transport is not None:
                link.transport.close()
        if self._links:
            self._all_closed = asyncio.Event()
            try:
                async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                    await self._all_closed.wait()
            except TimeoutError:
                for link in list(self._links):
                    if link.transport is not None:
                        link.transport.abort()
        if server is not None:
            await server.wait_closed()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to connect an ESME to, once started."""
        return self._host, self.port

    @property
    def control_url(self) -> str | None:
        """``http://host:port`` of the control endpoints, or None when not started."""
        return self._control_url

    @property
    def options(self) -> SmscOptions:
        return self._options

    # -- in-process control ----------------------------------------------------------------

    def configure(self, **changes: object) -> SmscOptions:
        """Change options while running; ValueError names an unknown or bad field.

        Binds already open stay open whatever ``accounts`` says. Changing ``seed`` restarts
        the random sequence; changing ``tps`` or ``tps_burst`` refills every bind's bucket;
        a smaller ``record_limit`` forgets the oldest records. Returns the options in force.
        """
        self._apply(self._options.with_changes(changes), self._options, reseed="seed" in changes)
        return self._options

    def reset(self) -> None:
        """Zero every count and forget the record; binds, queued receipts and options stay."""
        now = int(time.time())
        self._counts.zero()
        self._arrivals = ArrivalCounts(now)
        for link in self._links:
            link.arrivals = ArrivalCounts(now)
            link.max_outstanding = link.outstanding
            link.submits = 0
        self._receipts.records.clear()
        self._receipts.by_id.clear()
        self._wake()

    def stats(self) -> SmscStats:
        now = int(time.time())
        counts = self._counts
        by_type = dict.fromkeys(BIND_TYPES.values(), 0)
        by_bind = []
        for link in sorted(self._links, key=lambda item: item.number):
            if link.account is not None:
                by_type[link.bind_type] += 1
            by_bind.append(
                BindStats(
                    number=link.number,
                    peer=link.peer,
                    bind_type=link.bind_type,
                    system_id=link.account.system_id if link.account is not None else "",
                    submits=link.submits,
                    outstanding=link.outstanding,
                    max_outstanding=link.max_outstanding,
                    deliveries_unanswered=len(link.inflight),
                    arrivals_per_second=link.arrivals.series(now),
                    arrivals_last_second=now,
                )
            )
        return SmscStats(
            connections=len(self._links),
            binds=self._bound,
            binds_by_type=by_type,
            binds_total=counts.binds_total,
            binds_refused=counts.binds_refused,
            submits=counts.submits,
            accepted=counts.accepted,
            throttled_window=counts.throttled_window,
            throttled_tps=counts.throttled_tps,
            errors=counts.errors,
            rejected=counts.rejected,
            disconnects=counts.disconnects,
            late=counts.late,
            garbage=counts.garbage,
            queries=counts.queries,
            protocol_errors=counts.protocol_errors,
            invalid_fields=counts.invalid_fields,
            bad_sequence_numbers=counts.bad_sequence_numbers,
            bind_timeouts=counts.bind_timeouts,
            enquire_links_sent=counts.enquire_links_sent,
            enquire_link_timeouts=counts.enquire_link_timeouts,
            receipts_sent=counts.receipts_sent,
            receipts_acked=counts.receipts_acked,
            receipts_refused=counts.receipts_refused,
            receipts_retried=counts.receipts_retried,
            receipts_abandoned=counts.receipts_abandoned,
            receipts_dropped=counts.receipts_dropped,
            answer_delay_ms=(
                counts.answer_delay_seconds / counts.delayed_answers * 1000
                if counts.delayed_answers
                else 0.0
            ),
            receipts_requeued=counts.receipts_requeued,
            receipts_pending=self._receipts.pending(),
            mo_sent=counts.mo_sent,
            mo_acked=counts.mo_acked,
            mo_refused=counts.mo_refused,
            mo_unanswered=counts.mo_unanswered,
            max_outstanding=max(
                counts.max_outstanding, *(link.max_outstanding for link in self._links), 0
            ),
            recorded=len(self._receipts.records),
            arrivals_per_second=self._arrivals.series(now),
            arrivals_last_second=now,
            by_bind=by_bind,
        )

    def received(self, limit: int | None = None) -> list[Submitted]:
        """Accepted messages in arrival order, the last ``limit`` of them (all by default)."""
        records = self._receipts.records
        if limit is not None and limit < len(records):
            newest = list(itertools.islice(reversed(records), max(0, limit)))
            return [submitted(record) for record in reversed(newest)]
        return [submitted(record) for record in records]

    def messages(self) -> list[str]:
        """Texts of the accepted messages, concatenated parts joined (see `reassemble`)."""
        return reassemble(self.received())

    async def wait_for(
        self,
        submits: int | None = None,
        receipts_acked: int | None = None,
        binds: int | None = None,
        # A test's wait always needs a bound and a message naming what was missing; a bare
        # asyncio.timeout around the call would lose the counts in the error.
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Return once every given count is reached: accepted submit_sm (and data_sm) since
        the last reset, receipts acknowledged since the last reset, binds open now.

        Raises TimeoutError naming what was awaited and what was reached after ``timeout`` s.
        """
        if submits is None and receipts_acked is None and binds is None:
            raise ValueError("wait_for: give at least one of submits, receipts_acked, binds")
        waiter = _Waiter(submits, receipts_acked, binds, asyncio.Event())
        if self._reached(waiter):
            return
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            wanted = []
            counts = self._counts
            if submits is not None:
                wanted.append(f"{submits} accepted submit_sm (got {counts.accepted})")
            if receipts_acked is not None:
                wanted.append(f"{receipts_acked} receipts acked (got {counts.receipts_acked})")
            if binds is not None:
                wanted.append(f"{binds} binds (got {self._bound})")
            raise TimeoutError(
                f"{self.NAME}: waited {timeout:g} s for {' and '.join(wanted)}; "
                f"{self.stats().summary()}"
            ) from None
        finally:
            self._waiters.remove(waiter)

    def send_mo(
        self,
        source: str,
        destination: str,
        text: str,
        account: str | None = None,
        data_coding: int | None = None,
    ) -> MoSent:
        """Send ``text`` from the handset ``source`` to ``destination`` as an MO deliver_sm.

        ``account`` picks whose receivers get it (default: the first account, in the order
        of ``accounts``, with one bound). ``data_coding`` None chooses GSM 7-bit when every
        character allows it, else UCS-2; 0 or 8 forces one. A text longer than one SMS goes
        in parts with a UDH. Raises `NoReceiverBound`, or ValueError for a bad argument.
        """
        for name, value in (("source", source), ("destination", destination)):
            if not isinstance(value, str) or not value.isascii() or len(value) > MAX_ADDRESS_LENGTH:
                raise ValueError(
                    f"{name}: expected up to {MAX_ADDRESS_LENGTH} ASCII characters, got {value!r}"
                )
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {text!r}")
        target = mo_account(self._receipts.accounts, self._options.accounts, account)
        self._mo_reference = (self._mo_reference + 1) & 0xFF
        parts = mo_parts(text, data_coding, self._mo_reference)
        receivers = target.receivers
        link = receivers[target.next_receiver % len(receivers)]
        target.next_receiver += 1
        sequence_numbers = []
        for payload, coding, udhi in parts:
            pdu = DeliverSm(
                source_addr=source,
                destination_addr=destination,
                esm_class=ESM_CLASS_UDHI if udhi else 0,
                data_coding=coding,
                short_message=payload,
            )
            sequence_numbers.append(self._receipts.send(link, Delivery(pdu, target, None)))
        self._counts.mo_sent += len(parts)
        self._flush()
        return MoSent(
            account=target.system_id,
            bind=link.number,
            source=source,
            destination=destination,
            data_coding=parts[0][1],
            sequence_numbers=sequence_numbers,
        )

    # -- options ---------------------------------------------------------------------------

    def _apply(self, options: SmscOptions, previous: SmscOptions | None, *, reseed: bool) -> None:
        self._options = options
        if reseed:
            self._rng.seed(options.seed)
        self._policy.apply(options)
        if previous is None or (options.tps, options.tps_burst) != (
            previous.tps,
            previous.tps_burst,
        ):
            self._rebuild_buckets()
        self._receipts.apply(options)
        self._liveness.apply(options)
        if self._dirty:
            self._flush()

    def _rebuild_buckets(self) -> None:
        new_bucket = self._policy.new_bucket
        for link in self._links:
            link.bucket = new_bucket() if link.account is not None else None

    # -- connections -----------------------------------------------------------------------

    def _new_link(self) -> EsmeLink:
        self._link_numbers += 1
        return EsmeLink(self, self._link_numbers)

    def _on_connect(self, link: EsmeLink) -> None:
        self._links.add(link)
        self._liveness.connected(link)

    def _on_lost(self, link: EsmeLink) -> None:
        self._links.discard(link)
        self._liveness.lost(link)
        self._unregister(link)
        counts = self._counts
        if counts.max_outstanding < link.max_outstanding:
            counts.max_outstanding = link.max_outstanding
        link.out.clear()
        # Receipts the ESME never answered go back to their account's queue (the SMSC still
        # owes them); MO parts are counted lost.
        requeued: dict[Account, list[Delivery]] = {}
        for delivery in link.inflight.values():
            if delivery.record is None:
                counts.mo_unanswered += 1
            else:
                requeued.setdefault(delivery.account, []).append(delivery)
        link.inflight.clear()
        receipts = self._receipts
        for account, deliveries in requeued.items():
            counts.receipts_requeued += len(deliveries)
            account.pending.extendleft(reversed(deliveries))
            receipts.trim_pending(account)
            receipts.dispatch(account)
        if requeued:
            self._flush()
        if not self._links and self._all_closed is not None:
            self._all_closed.set()

    def _bind(self, link: EsmeLink, pdu: Pdu) -> None:
        assert isinstance(pdu, BindTransmitter | BindReceiver | BindTransceiver)
        options = self._options
        password = options.accounts.get(pdu.system_id)
        account = self._receipts.accounts.get(pdu.system_id)
        if password is None:
            status = CommandStatus.ESME_RINVSYSID
        elif pdu.password != password:
            status = CommandStatus.ESME_RINVPASWD
        elif (
            options.max_binds_per_account
            and account is not None
            and account.binds >= options.max_binds_per_account
        ):
            status = CommandStatus.ESME_RBINDFAIL
        else:
            status = CommandStatus.ESME_ROK
        if status:
            self._counts.binds_refused += 1
            self._emit(link, link.session.send(response_for(pdu, status)))
            if options.close_on_bind_failure:
                link.closing = True  # closed once the answer is written
            return
        # SMPP v3.3 has no TLVs: an ESME binding as 3.3 gets a bind_resp without any.
        v34 = pdu.interface_version >= SMPP_VERSION_34 or options.bind_tlvs_for_v33
        tlvs = (_SC_INTERFACE_VERSION,) if v34 else ()
        resp = response_for(pdu, system_id=options.system_id, tlvs=tlvs)
        self._emit(link, link.session.send(resp))
        if account is None:
            account = self._receipts.account(pdu.system_id)
        link.account = account
        link.bind_type = BIND_TYPES[type(pdu)]
        link.bucket = self._policy.new_bucket()
        link.arrivals = ArrivalCounts(int(time.time()))
        account.binds += 1
        self._bound += 1
        self._counts.binds_total += 1
        if link.bind_type != "transmitter":
            account.receivers.append(link)
            self._receipts.dispatch(account)
        self._liveness.bound(link)
        self._wake()

    def _unregister(self, link: EsmeLink) -> None:
        account = link.account
        if account is None:
            return
        link.account = None
        account.binds -= 1
        self._bound -= 1
        if link in account.receivers:
            account.receivers.remove(link)
        self._wake()

    def _emit(self, link: EsmeLink, data: bytes) -> None:
        if not link.out:
            self._dirty.append(link)
        link.out.append(data)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for link in dirty:
            out = link.out
            if not out:
                continue
            transport = link.transport
            if link.is_open and transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
                if link.closing:
                    transport.close()
            out.clear()

    def _drop(self, link: EsmeLink) -> None:
        """Abort the connection: what is already answered goes out, the rest is lost."""
        transport = link.transport
        if link.out and transport is not None and not transport.is_closing():
            transport.write(b"".join(link.out))
        link.out.clear()
        link.is_open = False
        self._unregister(link)
        if transport is not None:
            transport.abort()

    # -- waiting ---------------------------------------------------------------------------

    def _reached(self, waiter: _Waiter) -> bool:
        counts = self._counts
        return (
            (waiter.submits is None or counts.accepted >= waiter.submits)
            and (waiter.receipts_acked is None or counts.receipts_acked >= waiter.receipts_acked)
            and (waiter.binds is None or self._bound >= waiter.binds)
        )

    def _wake(self) -> None:
        for waiter in self._waiters:
            if self._reached(waiter):
                waiter.event.set()
