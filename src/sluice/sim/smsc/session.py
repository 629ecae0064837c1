"""One ESME connection to the SMSC simulator: its session state and how its PDUs are handled.

Binds: ``bind_transmitter``, ``bind_receiver`` and ``bind_transceiver`` against ``accounts``
(system_id -> password): an unknown system_id is answered ESME_RINVSYSID, a wrong password
ESME_RINVPASWD, a bind beyond ``max_binds_per_account`` ESME_RBINDFAIL; the connection is
then closed, or stays open for another try when ``close_on_bind_failure`` is off. A request
whose sequence_number is out of range is refused (`sluice.sim.smsc.checks`); the bind
deadline and the enquire_link sent to silent binds are `sluice.sim.smsc.liveness`'s.
enquire_link is answered; unbind is answered and the connection closed.
cancel_sm, replace_sm and submit_multi are refused (ESME_RCANCELFAIL, ESME_RREPLACEFAIL,
ESME_RINVCMDID); anything the session table forbids is refused by the session itself.
submit_sm and data_sm are answered as `sluice.sim.smsc.policy` says; query_sm as
`sluice.sim.smsc.receipts` says.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from sluice.flow.rate import TokenBucket
from sluice.protocols.smpp import (
    MAX_SEQUENCE_NUMBER,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    CommandStatus,
    DataSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Fatal,
    GenericNack,
    MessageState,
    Pdu,
    PduReceived,
    QuerySm,
    QuerySmResp,
    Rejected,
    ReplaceSm,
    Role,
    SessionState,
    SmppSession,
    SubmitMulti,
    SubmitSm,
    Unbind,
    UnbindResp,
    response_for,
)
from sluice.sim.arrivals import ArrivalCounts
from sluice.sim.smsc.checks import refuse_bad_sequence
from sluice.sim.smsc.receipts import NETWORK_ERRORS, STATE_CODES, Account, Delivery

if TYPE_CHECKING:
    from sluice.sim.smsc.server import SmscSimulator

#: The bind requests and the bind type each opens.
BIND_TYPES: dict[type[Pdu], str] = {
    BindTransmitter: "transmitter",
    BindReceiver: "receiver",
    BindTransceiver: "transceiver",
}
_UNSUPPORTED: dict[type[Pdu], int] = {
    CancelSm: CommandStatus.ESME_RCANCELFAIL,
    ReplaceSm: CommandStatus.ESME_RREPLACEFAIL,
    SubmitMulti: CommandStatus.ESME_RINVCMDID,
}


class EsmeLink(asyncio.Protocol):
    """One ESME connection: its session, what it owes and is owed, and its output buffer."""

    __slots__ = (
        "account",
        "arrivals",
        "bind_type",
        "bucket",
        "closing",
        "inflight",
        "is_open",
        "last_read",
        "max_outstanding",
        "number",
        "out",
        "outstanding",
        "peer",
        "session",
        "sim",
        "submits",
        "transport",
    )

    def __init__(self, sim: SmscSimulator, number: int) -> None:
        self.sim = sim
        self.number = number
        self.session = SmppSession(Role.SMSC)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.is_open = False
        self.closing = False
        self.out: list[bytes] = []
        self.account: Account | None = None
        self.bind_type = ""
        self.bucket: TokenBucket | None = None
        self.outstanding = 0
        self.max_outstanding = 0
        self.submits = 0
        self.inflight: dict[int, Delivery] = {}
        self.arrivals = ArrivalCounts(int(time.time()))
        #: Loop time of the last read: what `Liveness` calls silence is measured from it.
        self.last_read = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.is_open = True
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.sim._on_connect(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session.state is SessionState.CLOSED or not self.is_open:
            return
        events = session.receive_data(data)
        sim = self.sim
        if not self.out:
            sim._dirty.append(self)
        out = self.out
        loop = sim._loop
        assert loop is not None
        now = loop.time()
        self.last_read = now
        before = self.submits
        counts = sim._counts
        accepted = counts.accepted
        answer = sim._answer
        answered_now = 0
        for event in events:
            if type(event) is PduReceived:
                pdu = event.pdu
                if not 0 < pdu.sequence_number <= MAX_SEQUENCE_NUMBER and refuse_bad_sequence(
                    self, pdu
                ):
                    if self.closing:
                        break
                    continue
                # type() twice rather than once into a name: mypy narrows `pdu` only this way,
                # and a submit_sm, the common PDU, still costs one call.
                if type(pdu) is SubmitSm or type(pdu) is DataSm:
                    answered = answer(self, pdu, now)
                    if answered < 0:
                        break  # the connection was dropped
                    answered_now += answered
                    continue
                kind = type(pdu)
                if kind is DeliverSmResp or kind is GenericNack:
                    sim._on_delivery_answer(self, pdu, now)
                elif kind in BIND_TYPES:
                    sim._bind(self, pdu)
                    if self.closing:
                        break  # refused, and close_on_bind_failure: nothing more is read
                elif kind is EnquireLink:
                    out.append(session.send(response_for(pdu)))
                elif type(pdu) is QuerySm:
                    self._on_query(pdu, now)
                elif kind is Unbind:
                    out.append(session.send(response_for(pdu)))
                    sim._unregister(self)
                    self.closing = True
                    break
                elif kind is EnquireLinkResp and sim._liveness.answered(self, pdu):
                    pass  # the answer to our enquire_link on a silent bind
                elif kind is UnbindResp:
                    pass  # the answer to our unbind while closing: the connection goes next
                elif kind in _UNSUPPORTED:
                    counts.protocol_errors += 1
                    out.append(session.send(response_for(pdu, _UNSUPPORTED[kind])))
                else:  # a response to nothing we sent
                    counts.protocol_errors += 1
            elif type(event) is Rejected:
                counts.protocol_errors += 1
                out.append(event.reply)
            elif type(event) is Fatal:
                counts.protocol_errors += 1
                out.append(event.reply)
                sim._unregister(self)
                self.closing = True
                break
            else:  # ProtocolViolation: an unexpected or undecodable response
                counts.protocol_errors += 1
        self.outstanding -= answered_now
        arrived = self.submits - before
        if arrived:
            second = int(time.time())
            self.arrivals.add(second, arrived)
            sim._arrivals.add(second, arrived)
        sim._flush()
        if sim._waiters and counts.accepted != accepted:
            sim._wake()

    def eof_received(self) -> bool:
        return False  # the ESME closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        self.sim._on_lost(self)

    def _on_query(self, pdu: QuerySm, now: float) -> None:
        sim = self.sim
        sim._counts.queries += 1
        record = sim._receipts.by_id.get(pdu.message_id)
        if record is None:
            resp: Pdu = response_for(pdu, CommandStatus.ESME_RQUERYFAIL)
        elif now < record.final_at:
            resp = QuerySmResp(pdu.sequence_number, 0, record.message_id, "", MessageState.ENROUTE)
        else:
            done = time.time() - (now - record.final_at)
            resp = QuerySmResp(
                pdu.sequence_number,
                0,
                record.message_id,
                datetime.fromtimestamp(done, UTC).strftime("%y%m%d%H%M%S") + "000+",
                STATE_CODES[record.final_stat],
                NETWORK_ERRORS.get(record.final_stat, 0) & 0xFF,
            )
        sim._emit(self, self.session.send(resp))
