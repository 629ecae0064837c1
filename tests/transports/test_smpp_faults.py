"""The SMPP channel against a hostile SMSC of the test's own: a receipt that cannot be read,
receipts as data_sm, an SMSC that unbinds after every bind, an accepted submit without an id.

The SMSC speaks raw PDUs on loopback; each test scripts its answers. Nothing waits on time:
the tests wait for what the SMSC hears, and the reconnect pauses are recorded, not slept.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sluice.config import SmppConfig
from sluice.journal.base import Receipt
from sluice.model import Message, Outcome
from sluice.protocols.smpp import (
    ESM_CLASS_DELIVERY_RECEIPT,
    BindTransceiver,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    Pdu,
    PduParser,
    SubmitSm,
    Tag,
    Tlv,
    Unbind,
    encode,
    response_for,
    tlv_cstring,
    tlv_u8,
)
from sluice.transports.smpp.channel import SmppTransport

S = CommandStatus
#: What the SMSC writes back for each PDU it reads (None: nothing).
Script = Callable[[Pdu], bytes | None]


class HostileSmsc:
    """An SMSC on 127.0.0.1 that answers binds, hands every other PDU to the test (`heard`)
    and writes what `script` returns for it; `send` writes to the latest connection."""

    def __init__(self, script: Script = lambda pdu: None, *, unbind_at_once: bool = False) -> None:
        self.script = script
        self.unbind_at_once = unbind_at_once
        self.heard: asyncio.Queue[Pdu] = asyncio.Queue()
        self.binds = 0
        self.port = 0
        self._writer: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writer = writer
        parser = PduParser()
        try:
            while data := await reader.read(65536):
                for pdu in parser.feed(data):
                    if isinstance(pdu, BindTransceiver):
                        self.binds += 1
                        writer.write(encode(response_for(pdu, system_id="HOSTILE")))
                        if self.unbind_at_once:
                            writer.write(encode(Unbind(sequence_number=self.binds)))
                        continue
                    reply = self.script(pdu)
                    if reply is not None:
                        writer.write(reply)
                    self.heard.put_nowait(pdu)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def next(self) -> Pdu:
        """The next PDU the SMSC hears (binds excepted), within 10 s."""
        async with asyncio.timeout(10):
            return await self.heard.get()

    def send(self, pdu: Pdu) -> None:
        assert self._writer is not None
        self._writer.write(encode(pdu))

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[HostileSmsc]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            if self._writer is not None:
                self._writer.close()
            await asyncio.gather(*self._handlers)
            await server.wait_closed()


class RecordingTransport(SmppTransport):
    """Records each reconnect pause instead of waiting it; closes after `pauses` of them."""

    def __init__(self, *args: Any, pauses: int = 1_000_000) -> None:
        super().__init__(*args)
        self.pauses: list[float] = []
        self._max_pauses = pauses

    async def _pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if len(self.pauses) >= self._max_pauses:
            self._closing.set()
        await asyncio.sleep(0)  # a turn of the loop, as a real pause would give


def config(smsc: HostileSmsc, **fields: Any) -> SmppConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": smsc.port,
        "system_id": "sluice",
        "password": "secret",
        "reconnect_min_seconds": 0.5,
        "reconnect_max_seconds": 30.0,
    }
    values.update(fields)
    return SmppConfig(**values)


@asynccontextmanager
async def running(transport: SmppTransport) -> AsyncIterator[SmppTransport]:
    await transport.start()
    task = asyncio.create_task(transport.run())
    try:
        yield transport
    finally:
        await transport.close()
        async with asyncio.timeout(10):
            await task


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `condition` holds, looking every 10 ms (for states only visible by asking)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {within} s"
        await asyncio.sleep(0.01)


def receipt(sequence: int, message_id: str, state: bytes) -> DeliverSm:
    return DeliverSm(
        sequence_number=sequence,
        esm_class=ESM_CLASS_DELIVERY_RECEIPT,
        short_message=f"id:{message_id} sub:001 dlvrd:001 stat:DELIVRD err:000".encode(),
        tlvs=(tlv_cstring(Tag.receipted_message_id, message_id), Tlv(Tag.message_state, state)),
    )


async def test_a_receipt_that_cannot_be_read_is_refused_and_the_next_one_goes_through() -> None:
    committed: list[Receipt] = []

    async def on_receipts(channel: str, receipts: list[Receipt]) -> None:
        committed.extend(receipts)

    async with HostileSmsc().serving() as smsc:
        transport = SmppTransport("sms", config(smsc), on_receipts)
        async with running(transport):
            await until(lambda: smsc.binds == 1 and any(bind.bound for bind in transport.binds))
            smsc.send(receipt(5, "m1", b"\x00\x02"))  # message_state is one octet, not two
            assert await smsc.next() == DeliverSmResp(5, S.ESME_RINVPARLEN)
            smsc.send(receipt(6, "m2", b"\x02"))  # the same connection goes on
            assert await smsc.next() == DeliverSmResp(6)
            assert committed == [Receipt("m2", True, "stat:DELIVRD")]
            assert smsc.binds == 1
            assert transport.stats().faults["bad_request"] == 1


async def test_a_receipt_as_data_sm_is_committed() -> None:
    committed: list[Receipt] = []

    async def on_receipts(channel: str, receipts: list[Receipt]) -> None:
        committed.extend(receipts)

    async with HostileSmsc().serving() as smsc:
        transport = SmppTransport("sms", config(smsc), on_receipts)
        async with running(transport):
            await until(lambda: any(bind.bound for bind in transport.binds))
            smsc.send(
                DataSm(
                    sequence_number=7,
                    esm_class=ESM_CLASS_DELIVERY_RECEIPT,
                    tlvs=(
                        tlv_cstring(Tag.receipted_message_id, "m7"),
                        tlv_u8(Tag.message_state, 5),  # UNDELIVERABLE
                    ),
                )
            )
            answer = await smsc.next()
            assert isinstance(answer, DataSmResp) and answer.command_status == S.ESME_ROK
            assert [(r.provider_id, r.delivered) for r in committed] == [("m7", False)]


async def test_the_backoff_starts_again_after_every_successful_bind() -> None:
    async def no_receipts(channel: str, receipts: list[Receipt]) -> None:
        pass

    async with HostileSmsc(unbind_at_once=True).serving() as smsc:
        transport = RecordingTransport("sms", config(smsc), no_receipts, pauses=6)
        await transport.start()
        async with asyncio.timeout(30):
            await transport.run()  # ends once the sixth pause closes it
        await transport.close()
    assert smsc.binds == 6
    assert transport.pauses == [0.5] * 6  # the floor every time, never 1, 2, 4, 8 …


async def test_a_submit_accepted_without_a_message_id_is_sent_once() -> None:
    def accept_without_id(pdu: Pdu) -> bytes | None:
        if isinstance(pdu, SubmitSm):
            return struct.pack(">IIII", 16, 0x80000004, 0, pdu.sequence_number)
        return None

    async def no_receipts(channel: str, receipts: list[Receipt]) -> None:
        pass

    async with HostileSmsc(accept_without_id).serving() as smsc:
        transport = SmppTransport("sms", config(smsc), no_receipts)
        async with running(transport):
            await until(lambda: any(bind.bound for bind in transport.binds))
            message = Message(1, "acme", "sms", "+491510000001", "hello")
            result = await transport.send(message)
            assert result.outcome is Outcome.SENT
            assert result.parts == ()
            assert result.detail is not None and "no receipt can be matched" in result.detail
            assert isinstance(await smsc.next(), SubmitSm)
            assert smsc.heard.empty()  # sent once: nothing went again
            assert transport.stats().faults["no_message_id"] == 1


async def test_the_receipt_deadline_sweep_asks_the_journal_to_expire_overdue_messages() -> None:
    calls: list[tuple[str, int, int, str, int]] = []
    swept = asyncio.Event()

    async def expire_receipts(channel: str, before: int, now: int, detail: str, limit: int) -> int:
        calls.append((channel, before, now, detail, limit))
        if len(calls) == 1:
            return limit  # a full batch: the sweep asks again at once
        swept.set()
        return 3

    async def no_receipts(channel: str, receipts: list[Receipt]) -> None:
        pass

    async with HostileSmsc().serving() as smsc:
        smpp = config(smsc, receipt_deadline_seconds=600, receipt_sweep_seconds=3600)
        transport = SmppTransport("sms", smpp, no_receipts, expire_receipts)
        async with running(transport):
            async with asyncio.timeout(10):
                await swept.wait()
    assert len(calls) == 2
    for channel, before, now, detail, limit in calls:
        assert channel == "sms"
        assert now - before == 600_000
        assert detail == "no delivery receipt within 600 s (smpp.receipt_deadline_seconds)"
        assert limit == 10_000
