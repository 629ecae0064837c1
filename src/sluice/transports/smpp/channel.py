"""SMPP transport: several binds to one SMSC account, each kept exactly full.

A message is split into segments (GSM 7-bit or UCS-2, UDH or SAR, as a phone counts them),
the segments go out as submit_sm on the bind with the most free window, and the answers map
to outcomes: ESME_ROK → sent (the SMSC's message ids are kept for the receipts); throttling
(ESME_RTHROTTLED, ESME_RMSGQFUL) → throttled — that bind slows down (AIMD) and the message is
retried without counting the attempt; address and parameter errors → permanent; anything else,
a timeout or a dropped link → transient.

Each bind reconnects by itself with exponential backoff and jitter while binds fail; a bind
that succeeded resets it to `reconnect_min_seconds`, the floor against bind storms (an SMSC
that unbinds every 3 s costs 0.5 s per rebind, not a gap doubling to 30 s). Delivery receipts
arriving on transceiver binds, as deliver_sm or data_sm, go to the journal (acknowledged once
committed); mobile-originated messages are POSTed to `smpp.mo_webhook`. A message whose
receipts have not all come `smpp.receipt_deadline_seconds` after it was sent is EXPIRED in the
journal, saying so (swept every `smpp.receipt_sweep_seconds`). A submit_sm_resp that
accepts a message without a usable message_id still means sent: the message is not sent again,
and the attempt says that no receipt can be matched to it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec

from sluice.config import SmppConfig
from sluice.flow.stage import Stage, StageClosed
from sluice.journal.base import Receipt
from sluice.model import IdGenerator, Message, Outcome, Priority, format_id, now_ms
from sluice.protocols.smpp import (
    CommandStatus,
    DeliverSm,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    describe,
    is_permanent,
    tlv_cstring_value,
    tlv_u8,
    tlv_u8_value,
    tlv_u16,
    tlv_value,
)
from sluice.protocols.smpp.constants import ESM_CLASS_DELIVERY_RECEIPT, ESM_CLASS_TYPE_MASK
from sluice.protocols.smpp.gsm import decode_short_message
from sluice.protocols.smpp.receipt import merge, parse_receipt_text, receipt_from_tlvs
from sluice.protocols.smpp.segmentation import Segment, TooLong, split
from sluice.transports.base import OnReceipts, SendResult
from sluice.transports.signing import MESSAGE_ID_HEADER
from sluice.transports.smpp.bind import (
    BindError,
    Delivery,
    LinkLost,
    NotSent,
    ResponseTimeout,
    SmppBind,
    SmppFaults,
)

log = logging.getLogger("sluice.smpp")

#: Receipts waiting for their commit before the binds stop reading more (backpressure).
RECEIPT_QUEUE = 20_000
#: Messages expired per journal call of the receipt sweep (one transaction each).
RECEIPT_SWEEP_BATCH = 10_000
_ACCEPTED = "1 segment accepted"
_NO_MESSAGE_ID = "accepted without a message_id: no receipt can be matched to it"
THROTTLING = frozenset({CommandStatus.ESME_RTHROTTLED, CommandStatus.ESME_RMSGQFUL})


class SmppStats(msgspec.Struct, frozen=True):
    """What an SMPP channel tells of itself: binds up, receipts and MO messages taken, and the
    SMSC's faults by kind since start (`SmppFaults.KINDS`)."""

    binds: int
    receipts: int
    inbound: int
    faults: dict[str, int]


#: `Journal.expire_receipts`: (channel, sent_before, now, detail, limit) -> how many expired.
ExpireReceipts = Callable[[str, int, int, str, int], Awaitable[int]]


class InboundMessage(msgspec.Struct, omit_defaults=True):
    """What the MO webhook receives for a mobile-originated message."""

    #: Unique per inbound message (an SMSC may deliver the same MO twice; this id is new).
    id: str
    channel: str
    sender: str = msgspec.field(name="from")
    to: str
    body: str
    received_at: int
    data_coding: int
    udh: str | None = None


class SmppTransport:
    #: Each bind finds and keeps its own rate under the SMSC's cap.
    paces_itself = True

    def __init__(
        self,
        channel: str,
        config: SmppConfig,
        on_receipts: OnReceipts,
        expire_receipts: ExpireReceipts | None = None,
    ) -> None:
        self._channel = channel
        self._config = config
        self._on_receipts = on_receipts
        self._expire_receipts = expire_receipts
        self.binds: list[SmppBind] = []
        self._bind_up = asyncio.Event()
        self._closing = asyncio.Event()
        self._references = itertools.count(random.randrange(1 << 16))
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random()
        self._inbound_ids = IdGenerator()
        #: Receipts wait here to be committed together: one journal write for many.
        self._receipts: Stage[tuple[Receipt, Callable[[int], None]]] = Stage(
            f"receipts:{channel}",
            self._commit_receipts,
            capacity=RECEIPT_QUEUE,
            max_batch=1000,
            retries=0,
        )
        self.receipts = 0
        self.inbound = 0
        self.faults = SmppFaults()

    def stats(self) -> SmppStats:
        return SmppStats(
            binds=sum(1 for bind in self.binds if bind.bound),
            receipts=self.receipts,
            inbound=self.inbound,
            faults=self.faults.counts(),
        )

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        if self._config.mo_webhook is not None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            receipts = tg.create_task(self._receipts.run())
            if self._expire_receipts is not None and self._config.receipts:
                tg.create_task(self._sweep_receipts(self._expire_receipts))
            binds = [
                tg.create_task(self._keep_bound(index, tg)) for index in range(self._config.binds)
            ]
            await asyncio.gather(*binds)
            self._receipts.close()
            await receipts

    def drop_queued(self) -> int:
        """Give up the submits waiting in the binds' queues: they never reach the SMSC, and
        their messages go back to the queue unattempted (a stopping channel)."""
        return sum(bind.drop_queued() for bind in list(self.binds))

    async def close(self) -> None:
        self._closing.set()
        self.drop_queued()
        for bind in list(self.binds):
            await bind.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _keep_bound(self, index: int, tg: asyncio.TaskGroup) -> None:
        name = f"{self._channel}#{index}"
        delay = self._config.reconnect_min_seconds
        while not self._closing.is_set():
            bind = SmppBind(
                name,
                self._config,
                self._on_deliver,
                tg.create_task,
                self._receipt_now,
                faults=self.faults,
            )
            try:
                await bind.open()
            except BindError as exc:
                log.warning("%s: %s; retrying in %.1f s", name, exc, delay)
            except Exception:  # a bug must not take every bind of the channel down
                log.exception("%s: bind failed unexpectedly; retrying in %.1f s", name, delay)
                await bind.close()
            else:
                log.info("%s: bound to %s:%d", name, self._config.host, self._config.port)
                self.binds.append(bind)
                self._bind_up.set()
                keepalive = tg.create_task(bind.keepalive())
                closing = tg.create_task(self._closing.wait())
                ending: set[asyncio.Future[Any]] = {bind.closed, closing}
                await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
                closing.cancel()
                keepalive.cancel()
                self.binds.remove(bind)
                if not self.binds:
                    self._bind_up.clear()
                if self._closing.is_set():
                    await bind.close()
                    return
                log.warning("%s: connection lost; reconnecting", name)
                # The bind succeeded: the SMSC is there, only this link ended. Start the
                # backoff again from its floor.
                await self._pause(self._config.reconnect_min_seconds)
                delay = self._config.reconnect_min_seconds
                continue
            await self._pause(delay)
            delay = min(delay * 2, self._config.reconnect_max_seconds)

    async def _sweep_receipts(self, expire: ExpireReceipts) -> None:
        """Expire, every `receipt_sweep_seconds` until closed, the messages whose receipts
        are overdue (several processes may sweep one journal: each takes its own rows)."""
        config = self._config
        deadline_ms = int(config.receipt_deadline_seconds * 1000)
        detail = (
            f"no delivery receipt within {config.receipt_deadline_seconds:g} s "
            "(smpp.receipt_deadline_seconds)"
        )
        while not self._closing.is_set():
            now = now_ms()
            try:
                while (
                    await expire(self._channel, now - deadline_ms, now, detail, RECEIPT_SWEEP_BATCH)
                    == RECEIPT_SWEEP_BATCH
                ):
                    pass
            except Exception as exc:  # the journal retried already; so will we, next sweep
                log.warning("%s: receipt deadline sweep failed: %s", self._channel, exc)
            try:
                async with asyncio.timeout(config.receipt_sweep_seconds):
                    await self._closing.wait()
            except TimeoutError:
                pass

    async def _pause(self, seconds: float) -> None:
        jittered = seconds * self._rng.uniform(0.8, 1.2)
        try:
            async with asyncio.timeout(jittered):
                await self._closing.wait()
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ sending

    def _split(self, message: Message) -> list[Segment] | SendResult:
        """The message's segments, or the refusal of a text too long for smpp.max_segments."""
        config = self._config
        try:
            return split(
                message.body,
                mode=config.segmentation,
                reference=next(self._references) & 0xFFFF,
                max_segments=config.max_segments,
            )
        except TooLong as exc:
            return SendResult(Outcome.PERMANENT, detail=f"{exc} (smpp.max_segments)")

    async def send(self, message: Message) -> SendResult:
        config = self._config
        segments = self._split(message)
        if isinstance(segments, SendResult):
            return segments
        bind = await self._pick_bind()
        if bind is None:
            return SendResult(
                Outcome.TRANSIENT,
                detail=f"no bind to {config.host}:{config.port} is up",
                attempted=False,
            )
        pdus = [self._submit_sm(message, segment) for segment in segments]
        urgent = message.priority == Priority.URGENT
        try:
            if len(pdus) == 1:
                responses = [await bind.submit(pdus[0], urgent=urgent)]
            else:
                responses = list(
                    await asyncio.gather(*(bind.submit(p, urgent=urgent) for p in pdus))
                )
        except ResponseTimeout as exc:
            return SendResult(Outcome.TRANSIENT, detail=str(exc))
        except NotSent as exc:  # given up in the queue: never reached the SMSC
            return SendResult(Outcome.TRANSIENT, detail=str(exc), attempted=False)
        except LinkLost as exc:
            return SendResult(Outcome.TRANSIENT, detail=str(exc))
        return self._outcome(bind, responses)

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        """The task-free path for the common case: one part, a bound link with a free window
        slot and, if it is paced, a token now. False (nothing sent) otherwise; the runner then
        uses `send`."""
        segments = self._split(message)
        if isinstance(segments, SendResult) or len(segments) != 1:  # `send` words a refusal
            return False
        bind = self._best_bind()
        if bind is None:
            return False
        answer = functools.partial(self._answered, bind, done)
        if bind.bucket.rate > 0:
            # A paced bind (a configured bind_rate, or the SMSC's cap found): the submit waits
            # in the bind's queue for its token and slot, urgent ones first, without a task
            # (a task and a sleep per message cost a paced channel ~40% of its throughput).
            try:
                bind.submit_paced(
                    self._submit_sm(message, segments[0]),
                    answer,
                    urgent=message.priority == Priority.URGENT,
                )
            except LinkLost:
                return False
            return True
        if bind.free <= 0:
            return False
        try:
            bind.submit_soon(self._submit_sm(message, segments[0]), answer)
        except LinkLost:
            return False
        return True

    def _answered(
        self, bind: SmppBind, done: Callable[[SendResult], None], response: Pdu | Exception
    ) -> None:
        if isinstance(response, NotSent):  # never reached the SMSC: no attempt was made
            done(SendResult(Outcome.TRANSIENT, detail=str(response), attempted=False))
        elif isinstance(response, Exception):
            done(SendResult(Outcome.TRANSIENT, detail=str(response)))
        else:
            done(self._outcome(bind, [response]))

    def _outcome(self, bind: SmppBind, responses: list[Pdu]) -> SendResult:
        """The message's outcome from the answers to its parts (submit_sm_resp, or a
        generic_nack from an SMSC that refused the PDU itself)."""
        ids: list[str] = []
        for response in responses:
            status = response.command_status
            if status == CommandStatus.ESME_ROK:
                if not isinstance(response, SubmitSmResp):
                    return SendResult(
                        Outcome.TRANSIENT,
                        detail=f"unexpected answer {type(response).__name__} to submit_sm",
                    )
                ids.append(response.message_id)
                continue
            detail = describe(status)
            if status in THROTTLING:
                bind.on_throttled()
                return SendResult(Outcome.THROTTLED, detail=detail)
            if is_permanent(status):
                return SendResult(Outcome.PERMANENT, detail=detail)
            return SendResult(Outcome.TRANSIENT, detail=detail)
        bind.on_accepted()
        detail = _ACCEPTED if len(ids) == 1 else f"{len(ids)} segments accepted"
        if not all(ids):  # the SMSC took it, but a receipt could never be matched
            return SendResult(
                Outcome.SENT, provider_id=ids[0] or None, detail=f"{detail}, {_NO_MESSAGE_ID}"
            )
        return SendResult(
            Outcome.SENT,
            provider_id=ids[0],
            detail=detail,
            parts=tuple(ids) if self._config.receipts else (),
        )

    async def _pick_bind(self) -> SmppBind | None:
        """The bound link with the most free window; wait a while if none is up or free."""
        deadline = time.monotonic() + self._config.response_timeout_seconds
        while True:
            best = self._best_bind()
            if best is not None and best.free > 0:
                return best
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return best  # all full: queue on the best one (its window bounds it)
            try:
                async with asyncio.timeout(remaining):
                    if best is None:
                        # A link that just dropped may still be listed: wait for a new bind,
                        # never spin on an event left set by the old one.
                        self._bind_up.clear()
                        await self._bind_up.wait()
                    else:
                        await best.wait_slot()
            except TimeoutError:
                if best is None:
                    return None

    def _best_bind(self) -> SmppBind | None:
        """The bound link that can send soonest (its token bucket), then with the most free
        window; ties go round-robin so every bind carries its share of the load."""
        binds = self.binds
        n = len(binds)
        if n == 0:
            return None
        start = next(self._turn) % n
        best: SmppBind | None = None
        best_key = (math.inf, 0)
        for i in range(n):
            bind = binds[(start + i) % n]
            if not bind.bound:
                continue
            free = bind.free
            rate = bind.bucket.rate
            if rate > 0:
                # Paced: the bind whose queue empties soonest (its submits waiting, then
                # its window); the turn breaks ties.
                key = (bind.queued / rate, -free)
            else:
                if free * 2 >= bind.window > 0:
                    # Can send now with half its window free: taken at once, the turn going
                    # round (scanning every bind for every message cost a sixth of the
                    # event loop's time on 10 binds).
                    return bind
                key = (0.0 if free > 0 else math.inf, -free)
            if best is None or key < best_key:
                best, best_key = bind, key
        return best

    def _submit_sm(self, message: Message, segment: Segment) -> SubmitSm:
        config = self._config
        tlvs: tuple[Tlv, ...] = ()
        if segment.sar is not None:
            ref, total, seq = segment.sar
            tlvs = (
                tlv_u16(Tag.sar_msg_ref_num, ref),
                tlv_u8(Tag.sar_total_segments, total),
                tlv_u8(Tag.sar_segment_seqnum, seq),
            )
        return SubmitSm(
            sequence_number=0,
            service_type="",
            source_addr_ton=config.source_ton,
            source_addr_npi=config.source_npi,
            source_addr=message.sender or config.source_addr,
            dest_addr_ton=config.dest_ton,
            dest_addr_npi=config.dest_npi,
            destination_addr=message.recipient,
            esm_class=0x40 if segment.needs_udhi else 0,
            protocol_id=0,
            priority_flag=1 if message.priority == 0 else 0,
            schedule_delivery_time="",
            validity_period="",
            registered_delivery=1 if config.receipts else 0,
            replace_if_present_flag=0,
            data_coding=segment.data_coding,
            sm_default_msg_id=0,
            short_message=segment.payload,
            tlvs=tlvs,
        )

    # ------------------------------------------------------------------ incoming

    async def _on_deliver(self, pdu: Delivery) -> int:
        if pdu.esm_class & ESM_CLASS_TYPE_MASK == ESM_CLASS_DELIVERY_RECEIPT:
            return await self._receipt(pdu)
        return await self._inbound(pdu)

    def _receipt_now(self, pdu: Delivery, reply: Callable[[int], None]) -> bool:
        """The task-free path for receipts: parsed now, answered by `reply` once committed
        (in a batch). False for anything else, or when the receipt queue is full."""
        if pdu.esm_class & ESM_CLASS_TYPE_MASK != ESM_CLASS_DELIVERY_RECEIPT:
            return False
        receipt = self._parse_receipt(pdu)
        if receipt is None:
            reply(CommandStatus.ESME_ROK)
            return True
        try:
            return self._receipts.offer((receipt, reply))
        except StageClosed:
            return False  # shutting down: the task path answers "try again later"

    async def _receipt(self, pdu: Delivery) -> int:
        receipt = self._parse_receipt(pdu)
        if receipt is None:
            return CommandStatus.ESME_ROK
        answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._receipts.put((receipt, answered.set_result))
        return await answered  # answered only once the receipt is committed

    def _parse_receipt(self, pdu: Delivery) -> Receipt | None:
        """The final outcome a receipt reports, or None when there is nothing to record (not
        final yet, or no id or state; logged).

        Raises:
            SmppProtocolError: a TLV of the receipt is malformed (the bind answers the error).
        """
        from_tlvs = receipt_from_tlvs(
            tlv_cstring_value(pdu, Tag.receipted_message_id),
            tlv_u8_value(pdu, Tag.message_state),
            tlv_value(pdu, Tag.network_error_code),
        )
        receipt = from_tlvs
        if from_tlvs is None or not from_tlvs.stat:  # the text is the only (or fuller) source
            text = decode_short_message(_payload(pdu), 0)
            receipt = merge(parse_receipt_text(text), from_tlvs)
        if receipt is None:
            log.warning("%s: a receipt without an id or state: %r", self._channel,
                        _payload(pdu)[:80])  # fmt: skip
            return None  # nothing to do with it; answered so that it does not come back
        self.receipts += 1
        if receipt.final is None:
            return None  # ENROUTE / ACCEPTD: not final yet
        detail = f"stat:{receipt.stat}" + (f" err:{receipt.err}" if receipt.err else "")
        return Receipt(receipt.message_id, receipt.final == "delivered", detail)

    async def _commit_receipts(self, batch: list[tuple[Receipt, Callable[[int], None]]]) -> None:
        try:
            await self._on_receipts(self._channel, [receipt for receipt, _ in batch])
        except Exception:
            log.exception("%s: committing %d receipts failed", self._channel, len(batch))
            status = CommandStatus.ESME_RX_T_APPN  # temporary: the SMSC will send them again
        else:
            status = CommandStatus.ESME_ROK
        for _, reply in batch:
            reply(status)

    async def _inbound(self, pdu: Delivery) -> int:
        if self._session is None or self._config.mo_webhook is None:
            log.warning("%s: mobile-originated message refused: no smpp.mo_webhook", self._channel)
            return CommandStatus.ESME_RX_R_APPN
        data = _payload(pdu)
        udh: bytes | None = None
        if pdu.esm_class & 0x40 and data:
            header_length = data[0] + 1
            udh, data = data[:header_length], data[header_length:]
        inbound = InboundMessage(
            id=format_id(self._inbound_ids.next()),
            channel=self._channel,
            sender=pdu.source_addr,
            to=pdu.destination_addr,
            body=decode_short_message(data, pdu.data_coding),
            received_at=int(time.time() * 1000),
            data_coding=pdu.data_coding,
            udh=udh.hex() if udh else None,
        )
        try:
            async with self._session.post(
                self._config.mo_webhook,
                data=msgspec.json.encode(inbound),
                headers={"Content-Type": "application/json", MESSAGE_ID_HEADER: inbound.id},
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s: MO webhook unreachable: %s", self._channel, exc)
            ok = False
        if not ok:
            return CommandStatus.ESME_RX_T_APPN  # temporary: the SMSC will deliver it again
        self.inbound += 1
        return CommandStatus.ESME_ROK


def _payload(pdu: Delivery) -> bytes:
    """The text of a deliver_sm (short_message, else message_payload) or of a data_sm
    (message_payload only)."""
    short = pdu.short_message if isinstance(pdu, DeliverSm) else b""
    return short or (tlv_value(pdu, Tag.message_payload) or b"")
