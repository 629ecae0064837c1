"""The SMSC simulator behaving like a real SMSC: bind deadline, enquire_link on silent binds,
closing after a refused bind, checked time fields, SAR TLVs and sequence numbers, and no TLVs
for an SMPP v3.3 bind.

Each behaviour is driven over real TCP by a raw-socket ESME (PDUs written and read by hand,
so a request the sans-IO session would refuse to send still goes out) or by smpplib, a
third-party client, in a thread. The timers run with small configured timeouts; every wait
is bounded by a deadline, and what a test awaits is an event (a PDU, the end of the stream),
never elapsed time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from sluice.protocols.smpp import (
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DataSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    Unbind,
    UnbindResp,
    decode,
    encode,
    response_for,
    tlv_u8,
    tlv_u16,
)
from sluice.protocols.smpp.gsm import encode_gsm
from sluice.protocols.smpp.time_fields import AbsoluteTime, RelativeTime, parse_time
from sluice.sim.smsc import SmscOptions, SmscSimulator, add_arguments, options_from_args

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 10.0
SOCKET_TIMEOUT_SECONDS = 2.0
_S = CommandStatus


class RawEsme:
    """An ESME that writes the PDUs it is given as they are and reads the SMSC's one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_sequence = 1

    @classmethod
    async def connect(cls, smsc: SmscSimulator) -> RawEsme:
        reader, writer = await asyncio.open_connection(*smsc.address)
        return cls(reader, writer)

    def send(self, *pdus: Pdu) -> None:
        """Write ``pdus`` in one write, numbering those left at sequence_number 0 in turn."""
        chunks = []
        for pdu in pdus:
            if pdu.sequence_number:
                chunks.append(encode(pdu))
            else:
                chunks.append(encode(pdu, self.next_sequence))
                self.next_sequence += 1
        self.writer.write(b"".join(chunks))

    async def read(self) -> Pdu | None:
        """The next PDU from the SMSC, or None when it closed the connection."""
        async with asyncio.timeout(DEADLINE_SECONDS):
            try:
                header = await self.reader.readexactly(4)
                rest = await self.reader.readexactly(int.from_bytes(header, "big") - 4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
        return decode(header + rest)

    async def request(self, pdu: Pdu) -> Any:
        self.send(pdu)
        answer = await self.read()
        assert answer is not None, f"the SMSC closed the connection instead of answering {pdu}"
        return answer

    async def bind(self, system_id: str = "acme", password: str = "pw", **fields: Any) -> Any:
        return await self.request(BindTransceiver(system_id=system_id, password=password, **fields))

    async def read_until_closed(self) -> list[Pdu]:
        """Every PDU the SMSC still sends before it closes the connection."""
        pdus = []
        while (pdu := await self.read()) is not None:
            pdus.append(pdu)
        return pdus

    def close(self) -> None:
        self.writer.close()


MakeSmsc = Callable[..., Awaitable[SmscSimulator]]


@pytest.fixture
async def make_smsc() -> AsyncIterator[MakeSmsc]:
    started: list[SmscSimulator] = []

    async def make(**options: Any) -> SmscSimulator:
        options.setdefault("accounts", {"acme": "pw"})
        smsc = SmscSimulator(SmscOptions(**options))
        await smsc.start()
        started.append(smsc)
        return smsc

    yield make
    for smsc in started:
        await smsc.close()


@pytest.fixture
async def esmes() -> AsyncIterator[Callable[[SmscSimulator], Awaitable[RawEsme]]]:
    opened: list[RawEsme] = []

    async def connect(smsc: SmscSimulator) -> RawEsme:
        esme = await RawEsme.connect(smsc)
        opened.append(esme)
        return esme

    yield connect
    for esme in opened:
        esme.close()


Connect = Callable[[SmscSimulator], Awaitable[RawEsme]]


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {DEADLINE_SECONDS:g} s: {what}")
        await asyncio.sleep(0.01)


def smpplib_client(smsc: SmscSimulator) -> Any:
    host, port = smsc.address
    return smpplib.client.Client(
        host, port, timeout=SOCKET_TIMEOUT_SECONDS, allow_unknown_opt_params=True
    )


def submit(**fields: Any) -> SubmitSm:
    fields.setdefault("short_message", encode_gsm("hello"))
    return SubmitSm(source_addr="Sluice", destination_addr="4915112345678", **fields)


# -- a. the bind deadline ----------------------------------------------------------------------


async def test_a_connection_that_never_binds_is_closed(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(bind_timeout_ms=2000, enquire_link_ms=0)
    bound = await esmes(smsc)
    assert (await bound.bind()).command_status == 0
    idle = await esmes(smsc)  # connected after `bound`, so its deadline falls after bound's
    assert await idle.read_until_closed() == []
    # `bound` passed its own deadline before `idle` reached its: the bind disarmed it.
    assert isinstance(await bound.request(EnquireLink()), EnquireLinkResp)
    stats = smsc.stats()
    assert (stats.bind_timeouts, stats.binds) == (1, 1)
    await eventually(lambda: smsc.stats().connections == 1, "the idle connection gone")


async def test_the_deadline_holds_after_a_refused_bind(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(bind_timeout_ms=1500, close_on_bind_failure=False)
    esme = await esmes(smsc)
    assert (await esme.bind(password="nope")).command_status == _S.ESME_RINVPASWD
    assert await esme.read_until_closed() == []
    assert smsc.stats().bind_timeouts == 1


# -- b. enquire_link on silent binds -----------------------------------------------------------


async def test_a_silent_bind_is_probed_and_kept_while_it_answers(
    make_smsc: MakeSmsc, esmes: Connect
):
    smsc = await make_smsc(enquire_link_ms=200, enquire_link_timeout_ms=5000)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    for _ in range(2):
        probe = await esme.read()
        assert isinstance(probe, EnquireLink)
        esme.send(response_for(probe))
    assert isinstance(await esme.request(EnquireLink()), EnquireLinkResp)
    stats = smsc.stats()
    assert stats.enquire_links_sent >= 2
    assert (stats.enquire_link_timeouts, stats.binds, stats.protocol_errors) == (0, 1, 0)


async def test_a_bind_that_keeps_talking_is_not_probed(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(enquire_link_ms=1500)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    loop = asyncio.get_running_loop()
    until = loop.time() + 4.0  # over two idle intervals, talking all along
    answers = 0
    while loop.time() < until:
        answer = await esme.request(EnquireLink())
        assert isinstance(answer, EnquireLinkResp), "probed while talking"
        answers += 1
    assert answers > 1 and smsc.stats().enquire_links_sent == 0


async def test_an_unanswered_enquire_link_closes_the_bind(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(enquire_link_ms=200, enquire_link_timeout_ms=2000)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    assert isinstance(await esme.read(), EnquireLink)
    # Talking is no answer: only the enquire_link_resp is.
    assert (await esme.request(submit())).command_status == 0
    assert await esme.read_until_closed() == []
    stats = smsc.stats()
    assert (stats.enquire_links_sent, stats.enquire_link_timeouts, stats.binds) == (1, 1, 0)


async def test_switching_enquire_link_on_probes_the_binds_already_open(
    make_smsc: MakeSmsc, esmes: Connect
):
    smsc = await make_smsc(enquire_link_ms=0)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    smsc.configure(enquire_link_ms=100)
    assert isinstance(await esme.read(), EnquireLink)


# -- c. the connection closed after a refused bind ---------------------------------------------


def _bind_refused_then_read(smsc: SmscSimulator) -> tuple[int, str]:
    """smpplib binds with a wrong password, then reads on: (status, what the read met)."""
    client = smpplib_client(smsc)
    client.connect()
    try:
        with pytest.raises(smpplib.exceptions.PDUError) as refused:
            client.bind_transceiver(system_id="acme", password="wrong")
        try:
            client.read_pdu()
            after = "a PDU"
        except smpplib.exceptions.ConnectionError:
            after = "closed"
        except TimeoutError:
            after = "still open"
    finally:
        client.disconnect()
    return int(refused.value.args[1]), after


async def test_a_refused_bind_closes_the_connection(make_smsc: MakeSmsc):
    smsc = await make_smsc()
    status, after = await asyncio.wait_for(
        asyncio.to_thread(_bind_refused_then_read, smsc), DEADLINE_SECONDS
    )
    assert (status, after) == (_S.ESME_RINVPASWD, "closed")
    assert smsc.stats().binds_refused == 1


async def test_nothing_after_a_refused_bind_is_answered(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(max_binds_per_account=1)
    first = await esmes(smsc)
    assert (await first.bind()).command_status == 0
    second = await esmes(smsc)
    second.send(BindTransmitter(system_id="acme", password="pw"), EnquireLink())
    [resp] = await second.read_until_closed()
    assert (resp.command_id, resp.command_status) == (0x80000002, _S.ESME_RBINDFAIL)


async def test_a_refused_bind_may_be_retried_when_configured(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(close_on_bind_failure=False)
    esme = await esmes(smsc)
    assert (await esme.bind(system_id="nobody")).command_status == _S.ESME_RINVSYSID
    assert (await esme.bind()).command_status == 0


# -- d. time fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("991231235959948-", "2099-12-31T23:59:59.900000-12:00"),
        ("240229000000000+", "2024-02-29T00:00:00+00:00"),
        ("990000990000000R", RelativeTime(99, 0, 0, 99, 0, 0)),
    ],
)
def test_parse_time_reads_both_formats(text: str, expected: Any) -> None:
    parsed = parse_time(text)
    if isinstance(parsed, AbsoluteTime):
        assert parsed.when.isoformat() == expected
    else:
        assert parsed == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("25013112000000+", "expected 16 characters"),
        ("25013112000000é+", "expected 16 characters"),
        ("2501311200000x0+", "expected digits"),
        ("2501311200000000", "the last character must be '+' or '-'"),
        ("250001120000000+", "month 00 is not in 01..12"),
        ("250132120000000+", "day 32 is not in 01..31"),
        ("250229120000000+", "day 29 does not exist in 2025-02"),
        ("250131240000000+", "hour 24 is not in 00..23"),
        ("250131126000000+", "minute 60 is not in 00..59"),
        ("250131120060000+", "second 60 is not in 00..59"),
        ("250131120000049+", "UTC offset 49 quarter hours"),
        ("000001000000100R", "a relative time ends 000R"),
    ],
)
def test_parse_time_names_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_time(text)
    assert str(raised.value).startswith(f"{text!r}: ")
    assert message in str(raised.value)


async def test_time_fields_are_checked(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc()
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    cases = [
        ({"schedule_delivery_time": "250131120000004+"}, 0),
        ({"validity_period": "000001000000000R"}, 0),
        ({"schedule_delivery_time": "2501311200000000"}, _S.ESME_RINVSCHED),
        ({"schedule_delivery_time": "250229120000000+"}, _S.ESME_RINVSCHED),
        ({"validity_period": "251331120000000+"}, _S.ESME_RINVEXPIRY),
        ({"validity_period": "000001000000100R"}, _S.ESME_RINVEXPIRY),
    ]
    for fields, status in cases:
        assert (await esme.request(submit(**fields))).command_status == status, fields
    stats = smsc.stats()
    assert (stats.accepted, stats.invalid_fields) == (2, 4)
    assert len(smsc.received()) == 2


def _submit_with_smpplib(smsc: SmscSimulator, **fields: Any) -> int:
    """smpplib binds and sends one submit_sm with ``fields``; the status of its answer."""
    client = smpplib_client(smsc)
    statuses: list[int] = []
    client.set_message_sent_handler(lambda pdu: statuses.append(int(pdu.status)))
    client.set_error_pdu_handler(lambda pdu: statuses.append(int(pdu.status)))
    client.connect()
    try:
        client.bind_transmitter(system_id="acme", password="pw")
        client.send_message(
            source_addr="Sluice",
            destination_addr="4915112345678",
            short_message=b"hello",
            **fields,
        )
        while not statuses:
            client.read_once(auto_send_enquire_link=False)
    finally:
        client.disconnect()
    return statuses[0]


async def test_a_short_validity_period_from_smpplib_is_refused(make_smsc: MakeSmsc):
    smsc = await make_smsc()
    status = await asyncio.wait_for(
        asyncio.to_thread(_submit_with_smpplib, smsc, validity_period="1d"), DEADLINE_SECONDS
    )
    assert status == _S.ESME_RINVEXPIRY


async def test_time_field_check_can_be_turned_off(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(check_time_fields=False)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    answer = await esme.request(submit(schedule_delivery_time="2501311200000000"))
    assert answer.command_status == 0


# -- e. SAR TLVs and sequence numbers ----------------------------------------------------------


def _sar(ref: int | None = 7, total: int | None = 2, seqnum: int | None = 1) -> tuple[Tlv, ...]:
    tlvs = []
    if ref is not None:
        tlvs.append(tlv_u16(Tag.sar_msg_ref_num, ref))
    if total is not None:
        tlvs.append(tlv_u8(Tag.sar_total_segments, total))
    if seqnum is not None:
        tlvs.append(tlv_u8(Tag.sar_segment_seqnum, seqnum))
    return tuple(tlvs)


async def test_sar_fields_are_checked(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc()
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    cases = [
        (_sar(seqnum=1), 0),
        (_sar(seqnum=2), 0),
        (_sar(seqnum=None), _S.ESME_RMISSINGOPTPARAM),
        (_sar(ref=None), _S.ESME_RMISSINGOPTPARAM),
        (_sar(seqnum=3), _S.ESME_RINVOPTPARAMVAL),
        (_sar(seqnum=0), _S.ESME_RINVOPTPARAMVAL),
        (_sar(total=0, seqnum=0), _S.ESME_RINVOPTPARAMVAL),
        ((*_sar(total=None), Tlv(Tag.sar_total_segments, b"\x00\x02")), _S.ESME_RINVPARLEN),
    ]
    for tlvs, status in cases:
        assert (await esme.request(submit(tlvs=tlvs))).command_status == status, tlvs
    data_sm = DataSm(source_addr="Sluice", destination_addr="4915112345678", tlvs=_sar(total=None))
    assert (await esme.request(data_sm)).command_status == _S.ESME_RMISSINGOPTPARAM
    stats = smsc.stats()
    assert (stats.accepted, stats.invalid_fields) == (2, 7)
    assert smsc.messages() == ["hellohello"]


async def test_sar_check_can_be_turned_off(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(check_sar=False)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    assert (await esme.request(submit(tlvs=_sar(seqnum=None)))).command_status == 0


async def test_sequence_numbers_out_of_range_are_refused(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc()
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    for pdu in (
        submit(sequence_number=0x80000000),
        EnquireLink(sequence_number=0xFFFFFFFF),
    ):
        nack = await esme.request(pdu)
        assert isinstance(nack, GenericNack)
        assert (nack.sequence_number, nack.command_status) == (
            pdu.sequence_number,
            _S.ESME_RUNKNOWNERR,
        )
    assert (await esme.request(submit(sequence_number=0x7FFFFFFF))).command_status == 0
    # An unbind ends the session whatever its number: it is answered.
    assert isinstance(await esme.request(Unbind(sequence_number=0x80000001)), UnbindResp)
    stats = smsc.stats()
    assert (stats.bad_sequence_numbers, stats.submits, stats.accepted) == (2, 1, 1)


async def test_a_bind_numbered_zero_is_refused_and_closed(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(sequence_status=_S.ESME_RINVCMDLEN)
    esme = await esmes(smsc)
    # RawEsme.send would number it: write the bytes of sequence_number 0 by hand.
    esme.writer.write(encode(BindTransceiver(system_id="acme", password="pw")) + encode(submit()))
    [resp] = await esme.read_until_closed()
    assert (resp.command_id, resp.sequence_number) == (0x80000009, 0)
    assert resp.command_status == _S.ESME_RINVCMDLEN
    stats = smsc.stats()
    assert (stats.bad_sequence_numbers, stats.binds_refused, stats.binds_total) == (1, 1, 0)


async def test_sequence_check_can_be_turned_off(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(check_sequence_numbers=False)
    esme = await esmes(smsc)
    assert (await esme.bind()).command_status == 0
    answer = await esme.request(submit(sequence_number=0x80000000))
    assert (type(answer), answer.command_status) == (SubmitSmResp, 0)


# -- f. no TLVs for an SMPP v3.3 bind ----------------------------------------------------------


def _bind_with_smpplib(smsc: SmscSimulator, interface_version: int) -> tuple[int, Any]:
    """smpplib binds with ``interface_version``: (status, sc_interface_version) of the answer."""
    client = smpplib_client(smsc)
    client.connect()
    try:
        pdu = smpplib.smpp.make_pdu(
            "bind_transceiver", client=client, system_id="acme", password="pw"
        )
        pdu.interface_version = interface_version
        client.send_pdu(pdu)
        resp = client.read_pdu()
    finally:
        client.disconnect()
    return int(resp.status), resp.sc_interface_version


async def test_a_v33_bind_gets_no_tlvs(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc()
    v33, v34 = [
        await asyncio.wait_for(
            asyncio.to_thread(_bind_with_smpplib, smsc, version), DEADLINE_SECONDS
        )
        for version in (0x33, 0x34)
    ]
    assert (v33, v34) == ((0, None), (0, 0x34))
    esme = await esmes(smsc)
    resp = await esme.bind(interface_version=0x33)
    assert (resp.command_status, resp.tlvs) == (0, ())


async def test_v33_binds_may_get_the_tlv_when_configured(make_smsc: MakeSmsc, esmes: Connect):
    smsc = await make_smsc(bind_tlvs_for_v33=True)
    esme = await esmes(smsc)
    resp = await esme.bind(interface_version=0x33)
    assert resp.tlvs == (tlv_u8(Tag.sc_interface_version, 0x34),)


# -- options -----------------------------------------------------------------------------------


def test_the_options_have_real_smsc_defaults_and_flags():
    defaults = SmscOptions()
    assert defaults.close_on_bind_failure and not defaults.bind_tlvs_for_v33
    assert (defaults.bind_timeout_ms, defaults.enquire_link_ms) == (30_000.0, 30_000.0)
    assert defaults.enquire_link_timeout_ms == 10_000.0
    assert defaults.check_sequence_numbers and defaults.check_time_fields and defaults.check_sar
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])) == defaults
    args = parser.parse_args(
        [
            "--no-close-on-bind-failure", "--bind-timeout-ms", "0", "--enquire-link-ms", "500",
            "--enquire-link-timeout-ms", "250", "--bind-tlvs-for-v33",
            "--no-check-sequence-numbers", "--sequence-status", "ESME_RSYSERR",
            "--no-check-time-fields", "--no-check-sar",
        ]
    )  # fmt: skip
    options = options_from_args(args)
    assert not options.close_on_bind_failure and options.bind_tlvs_for_v33
    assert (options.bind_timeout_ms, options.enquire_link_ms) == (0.0, 500.0)
    assert (options.enquire_link_timeout_ms, options.sequence_status) == (250.0, 0x08)
    assert not (options.check_sequence_numbers or options.check_time_fields or options.check_sar)
    for argv, flag in (
        (["--bind-timeout-ms", "-1"], "--bind-timeout-ms"),
        (["--enquire-link-timeout-ms", "0"], "--enquire-link-timeout-ms"),
        (["--sequence-status", "0"], "--sequence-status"),
    ):
        with pytest.raises(ValueError, match=f"^{flag}: "):
            options_from_args(parser.parse_args(argv))
    with pytest.raises(ValueError, match=r"^check_sar: expected true or false, got 1$"):
        SmscOptions(check_sar=1)  # type: ignore[arg-type]
