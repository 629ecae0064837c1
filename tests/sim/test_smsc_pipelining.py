"""Several PDUs in one read reach the SMSC simulator: each is answered, in order.

The ESME here is a raw socket that writes its PDUs in one `write`, the way a pipelining or
hostile client does; what comes back is read with the plain framer.
"""

from __future__ import annotations

import asyncio

import pytest

from sluice.protocols.smpp import (
    BindReceiver,
    BindReceiverResp,
    BindTransmitter,
    CommandStatus,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    PduParser,
    encode,
)
from sluice.sim.smsc import SmscOptions, SmscSimulator

pytestmark = pytest.mark.integration

S = CommandStatus
#: A header announcing 8 octets: shorter than the header itself, so the stream is broken.
BAD_HEADER = (8).to_bytes(4, "big") + bytes.fromhex("00000015 00000000 00000007")


async def answers(
    smsc: SmscSimulator, data: bytes, count: int, *, then_closed: bool = False
) -> list[Pdu]:
    """The first `count` PDUs the simulator writes back to `data` sent in one write; with
    `then_closed`, check that it closes the connection after them."""
    reader, writer = await asyncio.open_connection(*smsc.address)
    writer.write(data)
    parser = PduParser()
    got: list[Pdu] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            chunk = await reader.read(65536)
            assert chunk, f"the connection closed after {got}"
            got += parser.feed(chunk)
        if then_closed:
            assert await reader.read(65536) == b""
    writer.close()
    return got


async def test_a_bind_then_a_broken_header_gets_the_bind_resp_then_a_nack() -> None:
    smsc = SmscSimulator(SmscOptions(accounts={"acme": "pw"}))
    await smsc.start()
    try:
        bind = encode(BindTransmitter(sequence_number=1, system_id="acme", password="pw"))
        resp, nack = await answers(smsc, bind + BAD_HEADER, 2, then_closed=True)
        assert (type(resp).__name__, resp.sequence_number, resp.command_status) == (
            "BindTransmitterResp",
            1,
            S.ESME_ROK,
        )
        assert nack == GenericNack(7, S.ESME_RINVCMDLEN)
    finally:
        await smsc.close()


async def test_two_binds_and_an_enquire_link_in_one_write_are_answered_in_order() -> None:
    smsc = SmscSimulator(SmscOptions(accounts={"acme": "pw"}))
    await smsc.start()
    try:
        data = (
            encode(BindTransmitter(sequence_number=1, system_id="acme", password="pw"))
            + encode(BindReceiver(sequence_number=2, system_id="acme", password="pw"))
            + encode(EnquireLink(sequence_number=3))
        )
        first, second, link = await answers(smsc, data, 3)
        assert (first.sequence_number, first.command_status) == (1, S.ESME_ROK)
        assert second == BindReceiverResp(2, S.ESME_RBINDFAIL)
        assert link == EnquireLinkResp(3)
        assert smsc.stats().binds_total == 1
    finally:
        await smsc.close()
