"""The SMSC simulator against a third-party client: smpplib (PyPI), blocking, in a thread.

smpplib is a different SMPP implementation from ours, so these tests catch encodings that our
own client would read back the same wrong way. Its socket timeout and a deadline bound every
blocking read, so a missing answer fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm

from sluice.protocols.smpp.receipt import parse_receipt_text
from sluice.sim.smsc import SmscOptions, SmscSimulator

pytestmark = pytest.mark.integration

SOCKET_TIMEOUT_SECONDS = 2.0
DEADLINE_SECONDS = 10.0
SHORT_TEXT = "Hello from smpplib: 5€ [ok]"
LONG_TEXT = "Длинное сообщение из smpplib, " * 6  # UCS-2, 180 units: 3 parts


@pytest.fixture
async def smsc() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(SmscOptions(accounts={"acme": "pw"}, receipt_delay_ms=20, seed=5))
    await simulator.start()
    yield simulator
    await simulator.close()


def _client(smsc: SmscSimulator) -> Any:
    host, port = smsc.address
    return smpplib.client.Client(
        host, port, timeout=SOCKET_TIMEOUT_SECONDS, allow_unknown_opt_params=True
    )


def _send_and_collect_receipts(smsc: SmscSimulator) -> tuple[list[str], list[Any]]:
    """Bind as transceiver, send both texts with receipts asked, read until every part's
    submit_sm_resp and receipt are in; returns (message ids, receipt deliver_sm PDUs)."""
    client = _client(smsc)
    ids: list[str] = []
    receipts: list[Any] = []
    client.set_message_sent_handler(lambda pdu: ids.append(pdu.message_id.decode()))
    client.set_message_received_handler(lambda pdu: receipts.append(pdu))
    client.connect()
    try:
        client.bind_transceiver(system_id="acme", password="pw")
        sent = 0
        for text in (SHORT_TEXT, LONG_TEXT):
            parts, data_coding, esm_class = smpplib.gsm.make_parts(text)
            for part in parts:
                client.send_message(
                    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
                    source_addr="Sluice",
                    dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                    destination_addr="4915112345678",
                    short_message=part,
                    data_coding=data_coding,
                    esm_class=esm_class,
                    registered_delivery=True,
                )
                sent += 1
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(ids) < sent or len(receipts) < sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"got {len(ids)} ids and {len(receipts)} receipts of {sent}")
            client.read_once(auto_send_enquire_link=False)
        client.unbind()
    finally:
        client.disconnect()
    return ids, receipts


async def test_smpplib_submits_and_gets_receipts(smsc: SmscSimulator):
    ids, receipts = await asyncio.wait_for(
        asyncio.to_thread(_send_and_collect_receipts, smsc), DEADLINE_SECONDS + 5
    )
    assert len(ids) == 4 and len(set(ids)) == 4  # 1 GSM part + 3 UCS-2 parts
    assert smsc.messages() == [SHORT_TEXT, LONG_TEXT]
    records = smsc.received()
    assert [r.data_coding for r in records] == [0, 8, 8, 8]
    assert [r.message_id for r in records] == ids
    receipted = []
    for pdu in receipts:
        assert pdu.esm_class == 0x04
        receipt = parse_receipt_text(pdu.short_message.decode("ascii"))
        assert receipt is not None and receipt.stat == "DELIVRD"
        assert pdu.receipted_message_id.decode() == receipt.message_id
        assert pdu.message_state == 2
        receipted.append(receipt.message_id)
    assert sorted(receipted) == sorted(ids)
    stats = smsc.stats()
    assert (stats.accepted, stats.receipts_sent, stats.receipts_acked) == (4, 4, 4)


def _bind_with_wrong_password(smsc: SmscSimulator) -> int:
    client = _client(smsc)
    client.connect()
    try:
        with pytest.raises(smpplib.exceptions.PDUError) as raised:
            client.bind_transceiver(system_id="acme", password="wrong")
    finally:
        client.disconnect()
    return int(raised.value.args[1])


async def test_smpplib_bind_error(smsc: SmscSimulator):
    status = await asyncio.wait_for(
        asyncio.to_thread(_bind_with_wrong_password, smsc), DEADLINE_SECONDS
    )
    assert status == smpplib.consts.SMPP_ESME_RINVPASWD == 0x0E
