"""The SMSC simulator over real TCP, driven by a small ESME built on the sans-IO session."""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest

from sluice.protocols.smpp import (
    ESM_CLASS_DELIVERY_RECEIPT,
    ESM_CLASS_UDHI,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    Event,
    Fatal,
    MessageState,
    Pdu,
    PduReceived,
    ProtocolViolation,
    QuerySm,
    QuerySmResp,
    Role,
    SessionState,
    SmppSession,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    Unbind,
    UnbindResp,
    encode,
    is_request,
    message_state,
    network_error_code,
    receipted_message_id,
    response_for,
    tlv_u8,
    tlv_u16,
)
from sluice.protocols.smpp.gsm import decode_short_message, encode_gsm, encode_ucs2
from sluice.protocols.smpp.receipt import parse_receipt_text
from sluice.protocols.smpp.segmentation import split
from sluice.sim.smsc import (
    NoReceiverBound,
    SmscOptions,
    SmscSimulator,
    add_arguments,
    options_from_args,
    run_from_args,
)

pytestmark = pytest.mark.integration

_BINDS = {"transmitter": BindTransmitter, "receiver": BindReceiver, "transceiver": BindTransceiver}


class Esme(asyncio.Protocol):
    """A minimal ESME: requests matched to responses by sequence number, deliveries queued
    and answered with ``deliver_status`` (a status, a function of the PDU, or None to leave
    them unanswered until `answer`)."""

    def __init__(self, deliver_status: int | Callable[[DeliverSm], int] | None = 0) -> None:
        self.session = SmppSession(Role.ESME)
        self.deliver_status = deliver_status
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future[Pdu]] = {}
        self.deliveries: asyncio.Queue[DeliverSm] = asyncio.Queue()
        self.problems: list[Event] = []
        self.fatal = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, smsc: SmscSimulator, **kwargs: Any) -> Esme:
        loop = asyncio.get_running_loop()
        _transport, esme = await loop.create_connection(lambda: cls(**kwargs), *smsc.address)
        return esme

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.session.state is SessionState.CLOSED:
            return
        for event in self.session.receive_data(data):
            if not isinstance(event, PduReceived):
                self.problems.append(event)
                if isinstance(event, ProtocolViolation) and event.pdu is not None:
                    self.resolve(event.pdu)  # e.g. an answer to a request sent out of state
                if isinstance(event, Fatal):
                    self.fatal.set()
                    self.write(event.reply)
                    assert self.transport is not None
                    self.transport.close()
                continue
            pdu = event.pdu
            if not is_request(pdu):
                self.resolve(pdu)
            elif isinstance(pdu, DeliverSm):
                status = self.deliver_status
                if callable(status):
                    status = status(pdu)
                if status is not None:
                    self.answer(pdu, status)
                self.deliveries.put_nowait(pdu)
            elif isinstance(pdu, Unbind | EnquireLink):
                self.write(self.session.send(response_for(pdu)))

    def resolve(self, response: Pdu) -> None:
        future = self.waiting.pop(response.sequence_number, None)
        if future is not None and not future.done():
            future.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def answer(self, pdu: DeliverSm, status: int = 0) -> None:
        self.write(self.session.send(response_for(pdu, status)))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(data)

    def send(self, *pdus: Pdu) -> list[asyncio.Future[Pdu]]:
        """Write every request in one go; the futures resolve to their responses."""
        loop = asyncio.get_running_loop()
        futures = []
        chunks = []
        for pdu in pdus:
            chunks.append(self.session.send(pdu))
            future: asyncio.Future[Pdu] = loop.create_future()
            self.waiting[self.session.last_sequence] = future
            futures.append(future)
        self.write(b"".join(chunks))
        return futures

    async def request(self, pdu: Pdu, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        [future] = self.send(pdu)
        return await asyncio.wait_for(future, timeout)

    async def bind(
        self, kind: str = "transceiver", system_id: str = "sluice", password: str = "secret"
    ) -> Any:
        return await self.request(_BINDS[kind](system_id=system_id, password=password))

    async def next_delivery(self, timeout: float = 5.0) -> DeliverSm:  # noqa: ASYNC109
        return await asyncio.wait_for(self.deliveries.get(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


MakeSmsc = Callable[..., Awaitable[SmscSimulator]]


@pytest.fixture
async def make_smsc() -> AsyncIterator[MakeSmsc]:
    started: list[SmscSimulator] = []

    async def make(**options: Any) -> SmscSimulator:
        smsc = SmscSimulator(SmscOptions(**options))
        await smsc.start()
        started.append(smsc)
        return smsc

    yield make
    for smsc in started:
        await smsc.close()


@pytest.fixture
async def esmes() -> AsyncIterator[list[Esme]]:
    opened: list[Esme] = []
    yield opened
    for esme in opened:
        esme.close()


async def bound(
    smsc: SmscSimulator, esmes: list[Esme], kind: str = "transceiver", **kwargs: Any
) -> Esme:
    esme = await Esme.connect(smsc, **kwargs)
    esmes.append(esme)
    resp = await esme.bind(kind)
    assert resp.command_status == 0
    return esme


def submit(destination: str = "4915112345678", text: str = "hello", **fields: Any) -> SubmitSm:
    fields.setdefault("short_message", encode_gsm(text))
    return SubmitSm(source_addr="Sluice", destination_addr=destination, **fields)


def receipt_of(pdu: DeliverSm) -> Any:
    assert pdu.esm_class == ESM_CLASS_DELIVERY_RECEIPT
    return parse_receipt_text(decode_short_message(pdu.short_message, pdu.data_coding))


# -- binds -------------------------------------------------------------------------------------


async def test_binds_checked_against_accounts(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(
        accounts={"acme": "pw", "beta": "pw2"}, max_binds_per_account=1, close_on_bind_failure=False
    )
    esme = await Esme.connect(smsc)
    esmes.append(esme)
    wrong_password = await esme.bind("transmitter", "acme", "nope")
    assert wrong_password.command_status == CommandStatus.ESME_RINVPASWD
    unknown = await esme.bind("transmitter", "nobody", "pw")
    assert unknown.command_status == CommandStatus.ESME_RINVSYSID
    ok = await esme.bind("transceiver", "acme", "pw")  # the connection stays open to retry
    assert (ok.command_status, ok.system_id) == (0, "sluicesim")
    assert ok.tlvs[0] == tlv_u8(Tag.sc_interface_version, 0x34)
    second = await Esme.connect(smsc)
    esmes.append(second)
    over = await second.bind("receiver", "acme", "pw")
    assert over.command_status == CommandStatus.ESME_RBINDFAIL
    assert (await second.bind("receiver", "beta", "pw2")).command_status == 0
    await smsc.wait_for(binds=2)
    stats = smsc.stats()
    assert (stats.binds, stats.binds_total, stats.binds_refused) == (2, 2, 3)
    assert stats.binds_by_type == {"transmitter": 0, "receiver": 1, "transceiver": 1}
    assert {(b.system_id, b.bind_type) for b in stats.by_bind} == {
        ("acme", "transceiver"),
        ("beta", "receiver"),
    }


async def test_enquire_link_and_unbind(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    esme = await bound(smsc, esmes, "transmitter")
    assert isinstance(await esme.request(EnquireLink()), EnquireLinkResp)
    assert isinstance(await esme.request(Unbind()), UnbindResp)
    await asyncio.wait_for(esme.closed, 5)
    assert smsc.stats().binds == 0


async def test_submit_before_bind_is_refused_by_the_session(make_smsc: MakeSmsc):
    smsc = await make_smsc()
    esme = await Esme.connect(smsc)
    # The client session would not send it either: write the bytes by hand.
    future = asyncio.get_running_loop().create_future()
    esme.waiting[5] = future
    esme.write(encode(submit(sequence_number=5)))
    resp = await asyncio.wait_for(future, 5)
    assert resp.command_status == CommandStatus.ESME_RINVBNDSTS
    esme.close()


# -- submit_sm ---------------------------------------------------------------------------------


async def test_submit_answered_with_fresh_ids_and_recorded(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    esme = await bound(smsc, esmes, "transmitter")
    first, second = await asyncio.gather(*esme.send(submit(text="one"), submit(text="two")))
    assert isinstance(first, SubmitSmResp) and first.command_status == 0
    assert len(first.message_id) == 10 and int(first.message_id, 16) >= 1
    assert first.message_id != second.message_id
    records = smsc.received()
    assert [(r.message_id, r.text, r.system_id) for r in records] == [
        (first.message_id, "one", "sluice"),
        (second.message_id, "two", "sluice"),
    ]
    assert records[0].destination == "4915112345678" and records[0].concat is None
    stats = smsc.stats()
    assert (stats.submits, stats.accepted, stats.recorded) == (2, 2, 2)
    assert sum(stats.arrivals_per_second) == 2
    assert sum(stats.by_bind[0].arrivals_per_second) == 2


async def test_data_sm_and_unsupported_requests(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    esme = await bound(smsc, esmes)
    data = DataSm(
        source_addr="Sluice",
        destination_addr="4915112345678",
        data_coding=8,
        tlvs=(Tlv(Tag.message_payload, encode_ucs2("Привет")),),
    )
    resp = await esme.request(data)
    assert isinstance(resp, DataSmResp) and resp.command_status == 0 and resp.message_id
    assert smsc.received()[-1].text == "Привет"
    assert smsc.received()[-1].command == "data_sm"
    cancel = await esme.request(CancelSm(message_id=resp.message_id))
    assert cancel.command_status == CommandStatus.ESME_RCANCELFAIL


async def test_window_overflow_answered_at_once(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(max_window=2, latency_ms=100, latency_distribution="fixed")
    esme = await bound(smsc, esmes)
    futures = esme.send(*(submit(text=f"m{n}") for n in range(5)))
    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    first = done.pop().result()
    assert first.command_status == CommandStatus.ESME_RTHROTTLED
    results = await asyncio.gather(*futures)
    assert [r.command_status for r in results] == [0, 0, 0x58, 0x58, 0x58]
    stats = smsc.stats()
    assert (stats.throttled_window, stats.accepted, stats.max_outstanding) == (3, 2, 2)
    smsc.configure(window_status=CommandStatus.ESME_RMSGQFUL)
    results = await asyncio.gather(*esme.send(*(submit() for _ in range(3))))
    assert [r.command_status for r in results] == [0, 0, CommandStatus.ESME_RMSGQFUL]


async def test_tps_cap_per_bind(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(tps=5)  # burst max(1, 5 / 10) = 1
    esme = await bound(smsc, esmes)
    results = await asyncio.gather(*esme.send(*(submit() for _ in range(4))))
    assert [r.command_status for r in results] == [0, 0x58, 0x58, 0x58]
    other = await bound(smsc, esmes)  # the limit is per bind: a new bind has its own bucket
    assert (await other.request(submit())).command_status == 0
    smsc.configure(tps=0)
    assert (await esme.request(submit())).command_status == 0
    stats = smsc.stats()
    assert (stats.throttled_tps, stats.accepted) == (3, 3)


async def test_error_and_reject_ratios(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(error_ratio=1.0, seed=1)
    esme = await bound(smsc, esmes)
    assert (await esme.request(submit())).command_status == CommandStatus.ESME_RSYSERR
    smsc.configure(error_ratio=0.0, reject_ratio=1.0)
    assert (await esme.request(submit())).command_status == CommandStatus.ESME_RINVDSTADR
    smsc.configure(reject_ratio=1.0, reject_status=CommandStatus.ESME_RINVSRCADR)
    assert (await esme.request(submit())).command_status == CommandStatus.ESME_RINVSRCADR
    stats = smsc.stats()
    assert (stats.errors, stats.rejected, stats.accepted, stats.recorded) == (1, 2, 0, 0)


async def test_destinations_rejected(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(destinations_rejected=frozenset({"000"}))
    esme = await bound(smsc, esmes)
    bad, good = await asyncio.gather(*esme.send(submit("000"), submit("111")))
    assert (bad.command_status, good.command_status) == (CommandStatus.ESME_RINVDSTADR, 0)


async def test_disconnect_drops_the_link_unanswered(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(disconnect_ratio=1.0)
    esme = await bound(smsc, esmes)
    [future] = esme.send(submit())
    await asyncio.wait_for(esme.closed, 5)
    with pytest.raises(ConnectionError):
        await future
    stats = smsc.stats()
    assert (stats.disconnects, stats.accepted, stats.connections) == (1, 0, 0)


async def test_late_answers(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(late_ratio=1.0, late_ms=300)
    esme = await bound(smsc, esmes)
    loop = asyncio.get_running_loop()
    started = loop.time()
    [future] = esme.send(submit())
    await smsc.wait_for(submits=1)  # accepted on arrival, answered later
    assert not future.done()
    assert smsc.stats().by_bind[0].outstanding == 1
    resp = await asyncio.wait_for(future, 5)
    assert resp.command_status == 0 and loop.time() - started >= 0.29
    assert smsc.stats().late == 1


async def test_garbage_breaks_the_client_stream(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(garbage_ratio=1.0, seed=3)
    esme = await bound(smsc, esmes)
    esme.send(submit())
    await asyncio.wait_for(esme.fatal.wait(), 5)
    [fatal] = [event for event in esme.problems if isinstance(event, Fatal)]
    assert fatal.status == CommandStatus.ESME_RINVCMDLEN and "command_length" in fatal.reason
    await asyncio.wait_for(esme.closed, 5)
    assert smsc.stats().garbage == 1


async def test_latency_distributions(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(latency_ms=30, latency_jitter_ms=0, latency_distribution="uniform")
    esme = await bound(smsc, esmes)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await esme.request(submit())
    assert loop.time() - started >= 0.029
    smsc.configure(latency_ms=0, latency_jitter_ms=5, latency_distribution="exponential")
    results = await asyncio.gather(*esme.send(*(submit() for _ in range(20))))
    assert all(r.command_status == 0 for r in results)


async def test_the_answer_delay_served_is_reported(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(latency_ms=30)
    esme = await bound(smsc, esmes)
    assert smsc.stats().answer_delay_ms == 0.0  # nothing delayed yet
    await asyncio.gather(*esme.send(*(submit() for _ in range(10))))
    # On 1 ms ticks: each answer within half a tick of the set latency, plus timer lateness.
    assert 29.4 <= smsc.stats().answer_delay_ms < 40


# -- receipts ----------------------------------------------------------------------------------


async def test_receipt_text_and_tlvs(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    esme = await bound(smsc, esmes)
    resp = await esme.request(submit(text="Your code is 1234", registered_delivery=1))
    pdu = await esme.next_delivery()
    receipt = receipt_of(pdu)
    assert (receipt.message_id, receipt.stat, receipt.err) == (resp.message_id, "DELIVRD", "000")
    assert (receipt.text, receipt.delivered_count) == ("Your code is 1234", 1)
    assert receipted_message_id(pdu) == resp.message_id
    assert message_state(pdu) == MessageState.DELIVERED
    assert network_error_code(pdu) is None
    assert (pdu.source_addr, pdu.destination_addr) == ("4915112345678", "Sluice")
    await smsc.wait_for(receipts_acked=1)
    assert (await esme.request(submit(text="no receipt"))).command_status == 0
    assert esme.deliveries.empty()


async def test_failed_receipt_carries_network_error(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(receipt_states={"UNDELIV": 1.0})
    esme = await bound(smsc, esmes)
    resp = await esme.request(submit(registered_delivery=1))
    pdu = await esme.next_delivery()
    assert (receipt_of(pdu).stat, receipt_of(pdu).err) == ("UNDELIV", "001")
    assert receipted_message_id(pdu) == resp.message_id
    assert message_state(pdu) == MessageState.UNDELIVERABLE
    assert network_error_code(pdu) == (3, 1)
    # registered_delivery 2 asks for failures only; a delivered message gets none.
    smsc.configure(receipt_states={"DELIVRD": 1.0})
    await esme.request(submit(registered_delivery=2))
    smsc.configure(receipt_states={"EXPIRED": 1.0})
    await esme.request(submit(registered_delivery=2))
    assert receipt_of(await esme.next_delivery()).stat == "EXPIRED"
    assert esme.deliveries.empty()


async def test_receipt_states_follow_the_weights_and_the_seed(
    make_smsc: MakeSmsc, esmes: list[Esme]
):
    weights = {"DELIVRD": 0.6, "UNDELIV": 0.3, "EXPIRED": 0.1}
    outcomes = []
    for _ in range(2):
        smsc = await make_smsc(receipt_states=weights, seed=42)
        esme = await bound(smsc, esmes)
        await asyncio.gather(*esme.send(*(submit(registered_delivery=1) for _ in range(300))))
        await smsc.wait_for(receipts_acked=300)
        stats = [receipt_of(esme.deliveries.get_nowait()).stat for _ in range(300)]
        outcomes.append(stats)
    assert outcomes[0] == outcomes[1]  # same seed, same draws
    counts = {stat: outcomes[0].count(stat) for stat in weights}
    assert 140 <= counts["DELIVRD"] <= 220 and 60 <= counts["UNDELIV"] <= 120
    assert 10 <= counts["EXPIRED"] <= 55


async def test_receipts_wait_for_a_receiver(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(max_pending_receipts=2)
    sender = await bound(smsc, esmes, "transmitter")
    resps = await asyncio.gather(*sender.send(*(submit(registered_delivery=1) for _ in range(3))))
    stats = smsc.stats()
    assert (stats.receipts_pending, stats.receipts_dropped, stats.receipts_sent) == (2, 1, 0)
    receiver = await bound(smsc, esmes, "receiver")
    got = [receipt_of(await receiver.next_delivery()).message_id for _ in range(2)]
    assert got == [resps[1].message_id, resps[2].message_id]  # the oldest was dropped
    await smsc.wait_for(receipts_acked=2)
    assert smsc.stats().receipts_pending == 0


async def test_receipts_round_robin_over_receivers(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    sender = await bound(smsc, esmes, "transmitter")
    first = await bound(smsc, esmes, "receiver")
    second = await bound(smsc, esmes, "receiver")
    await asyncio.gather(*sender.send(*(submit(registered_delivery=1) for _ in range(4))))
    await smsc.wait_for(receipts_acked=4)
    assert (first.deliveries.qsize(), second.deliveries.qsize()) == (2, 2)


async def test_refused_receipts_are_retried(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(receipt_retry_ms=20, receipt_retries=1)
    answers = [CommandStatus.ESME_RX_T_APPN, 0]
    esme = await bound(smsc, esmes, deliver_status=lambda pdu: answers.pop(0))
    first = await esme.request(submit(registered_delivery=1))
    await smsc.wait_for(receipts_acked=1)
    ids = [receipted_message_id(await esme.next_delivery()) for _ in range(2)]
    assert ids == [first.message_id, first.message_id]
    stats = smsc.stats()
    assert (stats.receipts_sent, stats.receipts_refused, stats.receipts_retried) == (2, 1, 1)
    # Refused twice with one retry allowed: abandoned. A permanent refusal is not retried.
    esme.deliver_status = CommandStatus.ESME_RX_T_APPN
    await esme.request(submit(registered_delivery=1))
    await esme.next_delivery()
    await esme.next_delivery()
    esme.deliver_status = CommandStatus.ESME_RX_P_APPN
    await esme.request(submit(registered_delivery=1))
    await esme.next_delivery()
    await esme.request(EnquireLink())  # the answers above have been read by now
    stats = smsc.stats()
    assert (stats.receipts_abandoned, stats.receipts_retried, stats.receipts_acked) == (2, 2, 1)


async def test_enroute_receipt_then_final_and_query_sm(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(receipt_enroute=True, receipt_delay_ms=400)
    esme = await bound(smsc, esmes)
    resp = await esme.request(submit(registered_delivery=1))
    enroute = await esme.next_delivery()
    assert receipt_of(enroute).stat == "ENROUTE"
    assert message_state(enroute) == MessageState.ENROUTE
    query = await esme.request(QuerySm(message_id=resp.message_id, source_addr="Sluice"))
    assert isinstance(query, QuerySmResp)
    assert (query.message_state, query.final_date) == (MessageState.ENROUTE, "")
    final = await esme.next_delivery()
    assert receipt_of(final).stat == "DELIVRD"
    query = await esme.request(QuerySm(message_id=resp.message_id, source_addr="Sluice"))
    assert query.message_state == MessageState.DELIVERED and len(query.final_date) == 16
    unknown = await esme.request(QuerySm(message_id="nope", source_addr="Sluice"))
    assert unknown.command_status == CommandStatus.ESME_RQUERYFAIL


async def test_unacked_receipts_are_requeued_when_the_link_drops(
    make_smsc: MakeSmsc, esmes: list[Esme]
):
    smsc = await make_smsc()
    sender = await bound(smsc, esmes, "transmitter")
    silent = await bound(smsc, esmes, "receiver")
    silent.deliver_status = lambda pdu: silent.close() or 0  # closes instead of answering
    resp = await sender.request(submit(registered_delivery=1))
    await asyncio.wait_for(silent.closed, 5)
    receiver = await bound(smsc, esmes, "receiver")
    assert receipted_message_id(await receiver.next_delivery()) == resp.message_id
    assert smsc.stats().receipts_requeued == 1


async def test_deliver_window_holds_receipts_back(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(deliver_window=1)
    esme = await bound(smsc, esmes, deliver_status=None)
    first, second = await asyncio.gather(*esme.send(*(submit(registered_delivery=1),) * 2))
    held = await esme.next_delivery()
    assert receipted_message_id(held) == first.message_id
    stats = smsc.stats()
    assert (stats.receipts_sent, stats.receipts_pending) == (1, 1)
    assert stats.by_bind[0].deliveries_unanswered == 1
    esme.answer(held)
    assert receipted_message_id(await esme.next_delivery()) == second.message_id


async def test_receipts_unanswered_at_unbind_go_to_the_next_receiver(
    make_smsc: MakeSmsc, esmes: list[Esme]
):
    smsc = await make_smsc()
    leaving = await bound(smsc, esmes, deliver_status=None)
    resp = await leaving.request(submit(registered_delivery=1))
    await leaving.next_delivery()
    assert isinstance(await leaving.request(Unbind()), UnbindResp)
    await asyncio.wait_for(leaving.closed, 5)
    staying = await bound(smsc, esmes, "receiver")
    assert receipted_message_id(await staying.next_delivery()) == resp.message_id


# -- MO ----------------------------------------------------------------------------------------


async def test_mo_gsm_ucs2_and_long(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    with pytest.raises(NoReceiverBound):
        smsc.send_mo("4915112345678", "1234", "STOP")
    await bound(smsc, esmes, "transmitter")  # a transmitter cannot take MO
    with pytest.raises(NoReceiverBound):
        smsc.send_mo("4915112345678", "1234", "STOP")
    esme = await bound(smsc, esmes, "receiver")
    sent = smsc.send_mo("4915112345678", "1234", "STOP @ once")
    pdu = await esme.next_delivery()
    assert (pdu.esm_class, pdu.data_coding, pdu.short_message) == (0, 0, encode_gsm("STOP @ once"))
    assert (pdu.source_addr, pdu.destination_addr) == ("4915112345678", "1234")
    assert (sent.account, sent.data_coding, len(sent.sequence_numbers)) == ("sluice", 0, 1)
    smsc.send_mo("4915112345678", "1234", "Стоп")
    pdu = await esme.next_delivery()
    assert (pdu.data_coding, decode_short_message(pdu.short_message, 8)) == (8, "Стоп")
    smsc.send_mo("4915112345678", "1234", "ok", data_coding=8)
    assert (await esme.next_delivery()).short_message == encode_ucs2("ok")
    long_text = "Длинное сообщение " * 10  # 180 UCS-2 units: 3 parts of at most 67
    sent = smsc.send_mo("4915112345678", "1234", long_text)
    parts = [await esme.next_delivery() for _ in range(3)]
    assert len(sent.sequence_numbers) == 3
    assert all(p.esm_class == ESM_CLASS_UDHI and p.data_coding == 8 for p in parts)
    reference = parts[0].short_message[3]
    assert [p.short_message[:6] for p in parts] == [
        bytes((5, 0, 3, reference, 3, n)) for n in (1, 2, 3)
    ]
    text = "".join(decode_short_message(p.short_message[6:], 8) for p in parts)
    assert text == long_text
    with pytest.raises(ValueError, match="data_coding"):
        smsc.send_mo("1", "2", "x", data_coding=3)
    with pytest.raises(ValueError, match="not in the GSM"):
        smsc.send_mo("1", "2", "Стоп", data_coding=0)
    esme.deliver_status = CommandStatus.ESME_RX_P_APPN
    smsc.send_mo("4915112345678", "1234", "refused")
    await esme.next_delivery()
    await esme.request(EnquireLink())
    stats = smsc.stats()
    assert (stats.mo_sent, stats.mo_acked, stats.mo_refused) == (7, 6, 1)


# -- records -----------------------------------------------------------------------------------


async def test_received_and_messages_reassemble_parts(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    esme = await bound(smsc, esmes)
    udh_text = "a" * 150 + "€" * 20  # GSM with escapes, 2 parts
    sar_text = "ü" + "Ж" * 100  # UCS-2, SAR TLVs
    pdus = [
        submit(short_message=s.payload, esm_class=ESM_CLASS_UDHI, data_coding=s.data_coding)
        for s in split(udh_text, reference=300)
    ]
    pdus += [
        submit(
            short_message=s.payload,
            data_coding=s.data_coding,
            tlvs=(
                tlv_u16(Tag.sar_msg_ref_num, s.sar[0]),
                tlv_u8(Tag.sar_total_segments, s.sar[1]),
                tlv_u8(Tag.sar_segment_seqnum, s.sar[2]),
            ),
        )
        for s in split(sar_text, mode="sar", reference=7)
        if s.sar is not None
    ]
    pdus.insert(1, submit(text="plain"))  # interleaved with the first message's parts
    pdus.append(pdus[-1])  # a resubmitted part counts once
    results = await asyncio.gather(*esme.send(*pdus))
    assert all(r.command_status == 0 for r in results)
    records = smsc.received()
    assert [(r.concat.kind, r.concat.seq) if r.concat else None for r in records] == [
        ("udh16", 1),
        None,
        ("udh16", 2),
        ("sar", 1),
        ("sar", 2),
        ("sar", 2),
    ]
    assert records[3].data_coding == 8 and records[0].esm_class == ESM_CLASS_UDHI
    assert smsc.messages() == [udh_text, "plain", sar_text]
    assert [r.message_id for r in smsc.received(limit=2)] == [r.message_id for r in records[-2:]]


async def test_record_limit_keeps_the_newest(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(record_limit=3)
    esme = await bound(smsc, esmes)
    await asyncio.gather(*esme.send(*(submit(text=str(n)) for n in range(5))))
    assert [r.text for r in smsc.received()] == ["2", "3", "4"]
    smsc.configure(record_limit=1)
    assert [r.text for r in smsc.received()] == ["4"]
    smsc.reset()
    assert (smsc.received(), smsc.stats().accepted) == ([], 0)


async def test_wait_for_names_what_it_awaited(make_smsc: MakeSmsc):
    smsc = await make_smsc()
    with pytest.raises(TimeoutError, match=r"3 accepted submit_sm \(got 0\) and 1 binds \(got 0\)"):
        await smsc.wait_for(submits=3, binds=1, timeout=0.05)
    with pytest.raises(ValueError, match="at least one"):
        await smsc.wait_for()


async def test_zero_latency_throughput(make_smsc: MakeSmsc, esmes: list[Esme]):
    """A window of 100 kept full over one bind; prints the rate (``pytest -s``)."""
    smsc = await make_smsc(record_limit=0)
    esme = await bound(smsc, esmes, "transmitter")
    total, window = 10_000, 100
    pdu = submit()
    finished = asyncio.Event()
    counts = {"sent": window, "answered": 0}

    def answered(_future: asyncio.Future[Pdu]) -> None:
        counts["answered"] += 1
        if counts["sent"] < total:
            counts["sent"] += 1
            esme.send(pdu)[0].add_done_callback(answered)
        elif counts["answered"] == total:
            finished.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    for future in esme.send(*[pdu] * window):
        future.add_done_callback(answered)
    await asyncio.wait_for(finished.wait(), 10)
    elapsed = loop.time() - started
    stats = smsc.stats()
    assert stats.accepted == total and stats.max_outstanding <= window
    print(f"\nSMSC simulator: {total / elapsed:,.0f} submit_sm/s answered (window {window})")


# -- control endpoints -------------------------------------------------------------------------


async def test_control_endpoints(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc()
    url = await smsc.start_control()
    mo = {"from": "4915112345678", "to": "1234", "body": "STOP"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/_smsc/mo", json=mo) as response:
            assert response.status == 409 and "no receiver" in (await response.json())["error"]
        esme = await bound(smsc, esmes)
        await esme.request(submit(text="hi"))
        async with http.get(f"{url}/_smsc/stats") as response:
            stats = await response.json()
        assert (response.status, stats["accepted"], stats["binds"]) == (200, 1, 1)
        async with http.get(f"{url}/_smsc/received?limit=5") as response:
            [record] = await response.json()
        assert record["text"] == "hi" and record["system_id"] == "sluice"
        async with http.get(f"{url}/_smsc/received?limit=x") as response:
            assert response.status == 400 and "limit" in (await response.json())["error"]
        async with http.post(f"{url}/_smsc/config", json={"error_ratio": 1}) as response:
            assert response.status == 200
            assert (await response.json())["accounts"] == {"sluice": "***"}
        assert (await esme.request(submit())).command_status == CommandStatus.ESME_RSYSERR
        async with http.post(f"{url}/_smsc/config", json={"eror_ratio": 1}) as response:
            error = (await response.json())["error"]
            assert response.status == 400 and error.startswith("eror_ratio: unknown")
        async with http.post(f"{url}/_smsc/config", json={"tps": "fast"}) as response:
            error = (await response.json())["error"]
            assert response.status == 400 and error.startswith("tps: ")
        async with http.post(f"{url}/_smsc/config", data=b"[1]") as response:
            assert response.status == 400
        async with http.get(f"{url}/_smsc/config") as response:
            assert (await response.json())["error_ratio"] == 1
        async with http.post(f"{url}/_smsc/mo", json=mo) as response:
            sent = await response.json()
        assert response.status == 200 and sent["data_coding"] == 0
        assert (await esme.next_delivery()).short_message == b"STOP"
        async with http.post(f"{url}/_smsc/mo", json={**mo, "account": "other"}) as response:
            assert response.status == 400 and "account" in (await response.json())["error"]
        async with http.post(f"{url}/_smsc/mo", json={"to": "1"}) as response:
            assert response.status == 400 and (await response.json())["error"].startswith("from")
        async with http.post(f"{url}/_smsc/reset") as response:
            assert response.status == 200
        assert smsc.stats().accepted == 0
        async with http.get(f"{url}/_smsc/reset") as response:
            assert response.status == 405 and response.headers["Allow"] == "POST"
        async with http.get(f"{url}/_smsc/nothing") as response:
            assert response.status == 404 and "/_smsc/stats" in (await response.json())["error"]


# -- command line ------------------------------------------------------------------------------


class _Lines(io.StringIO):
    """stdout that signals when a line containing ``marker`` was printed."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.seen = asyncio.Event()

    def write(self, text: str) -> int:
        if self.marker in text:
            self.seen.set()
        return super().write(text)


def test_options_from_args():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port, defaults.control_port) == ("127.0.0.1", 2775, 2776)
    assert options_from_args(defaults) == SmscOptions()
    args = parser.parse_args(
        [
            "--account", "acme:pw", "--account", "beta:",
            "--receipt-state", "DELIVRD=0.9", "--receipt-state", "undeliv=0.1",
            "--window-status", "ESME_RMSGQFUL", "--error-status", "0x45",
            "--reject-destination", "000", "--latency-distribution", "exponential",
            "--receipt-enroute",
        ]
    )  # fmt: skip
    options = options_from_args(args)
    assert options.accounts == {"acme": "pw", "beta": ""}
    assert options.receipt_states == {"DELIVRD": 0.9, "UNDELIV": 0.1}
    assert (options.window_status, options.error_status) == (0x14, 0x45)
    assert options.destinations_rejected == frozenset({"000"})
    assert options.receipt_enroute and options.latency_distribution == "exponential"
    for argv, flag in (
        (["--account", "nopassword"], "--account"),
        (["--receipt-state", "LOST=1"], "--receipt-state"),
        (["--receipt-state", "DELIVRD=x"], "--receipt-state"),
        (["--error-ratio", "0.7", "--late-ratio", "0.7"], "--late-ratio"),
        (["--tps", "-1"], "--tps"),
    ):
        with pytest.raises(ValueError, match=f"^{flag}"):
            options_from_args(parser.parse_args(argv))


async def test_run_from_args(monkeypatch: pytest.MonkeyPatch):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--control-port", "0", "--account", "acme:pw"])
    out = _Lines("SMSC simulator listening on ")
    monkeypatch.setattr("sys.stdout", out)
    task = asyncio.create_task(run_from_args(args))
    await asyncio.wait_for(out.seen.wait(), 5)
    line = out.getvalue().split("listening on ", 1)[1]
    host, port = line.split()[0].rsplit(":", 1)
    assert host == "127.0.0.1" and "(control off)" in line
    loop = asyncio.get_running_loop()
    _transport, esme = await loop.create_connection(Esme, host, int(port))
    assert (await esme.bind("transmitter", "acme", "pw")).command_status == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(esme.closed, 5)
    assert "SMSC simulator closed: binds 0" in out.getvalue()


async def test_run_from_args_names_the_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=r"^--garbage-ratio: "):
        await run_from_args(parser.parse_args(["--garbage-ratio", "3"]))
    with pytest.raises(ValueError, match=r"^--control-port: "):
        await run_from_args(parser.parse_args(["--control-port", "70000"]))


async def test_close_unbinds_every_connection(make_smsc: MakeSmsc, esmes: list[Esme]):
    smsc = await make_smsc(latency_ms=10_000)
    esme = await bound(smsc, esmes)
    esme.send(submit())
    started = time.monotonic()
    await smsc.close()
    await asyncio.wait_for(esme.closed, 5)
    assert time.monotonic() - started < 2
    assert smsc.stats().connections == 0
