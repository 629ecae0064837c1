"""SMPP session state machine, sans-IO: bytes in, events out; PDUs in, bytes out.

``SmppSession`` owns what one side of one SMPP connection knows: its role (ESME or SMSC), the
bind state, and the next sequence number. ``receive_data(bytes)`` returns events;
``send(pdu)`` returns the bytes to write. There is no socket, loop or clock inside: the transport
reads and writes, runs the enquire_link timer and counts the window of outstanding requests.

What may be sent and received in each state is a table (SMPP v3.4 section 2 lists which side
issues each PDU in which session state), not a thicket of ifs:

- ``_REQUESTS[role][state]``: the requests each role may send;
- the peer may send what its own role may send in the same state, and each side may answer
  what the other may ask; in UNBOUND the responses to anything asked while bound may still
  arrive (the window drains);
- ``_TRANSITIONS[(state, command_id)]``: the state change a PDU causes, whoever sends it
  (a bind_resp only when its command_status is 0).

A request the peer may not send in the current state is answered for the owner: a
``Rejected`` event carries the response bytes (ESME_RINVBNDSTS; ESME_RALYBND for a second bind;
ESME_RINVCMDID for a command this role never receives). A response we did not ask for is a
``ProtocolViolation``: there is nothing to answer. A bad command_length is ``Fatal``: the stream
cannot be resynchronised, so the event carries a generic_nack to write before closing, and the
session is CLOSED. Sending a PDU the table forbids raises ``LocalProtocolError``: that is our bug.

One read may carry several PDUs, and their events are judged before the owner has answered any
of them, so two rules keep every one of them answerable, in order:

- the requests that came in the same read as a ``Fatal`` may still be answered after it (the
  session is CLOSED for everything else): an ESME that pipelines a bind and a broken header
  hears its bind_resp, then the generic_nack;
- a bind that arrives while an earlier bind is still unanswered is refused ESME_RBINDFAIL (an
  ESME waits for its bind_resp, SMPP v3.4 section 2.2): answering both as bound would send a
  bind_resp the table forbids.

Examples:
    >>> from sluice.protocols.smpp.pdu import BindTransmitter, SubmitSm, encode, response_for
    >>> esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    >>> [bind] = smsc.receive_data(esme.send(BindTransmitter(system_id="acme", password="pw")))
    >>> esme.receive_data(smsc.send(response_for(bind.pdu, system_id="smsc")))[0].pdu.system_id
    'smsc'
    >>> esme.state, smsc.state
    (<SessionState.BOUND_TX: 'bound_tx'>, <SessionState.BOUND_TX: 'bound_tx'>)
    >>> [early] = SmppSession(Role.SMSC).receive_data(encode(SubmitSm(sequence_number=9)))
    >>> early.reply.hex()  # submit_sm_resp, ESME_RINVBNDSTS, sequence 9
    '00000010800000040000000400000009'
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import msgspec

from sluice.protocols.smpp.constants import RESPONSE_BIT, CommandId, CommandStatus
from sluice.protocols.smpp.errors import LocalProtocolError, SmppProtocolError
from sluice.protocols.smpp.parser import DEFAULT_MAX_COMMAND_LENGTH, PduParser
from sluice.protocols.smpp.pdu import (
    MAX_SEQUENCE_NUMBER,
    GenericNack,
    Pdu,
    decode,
    encode,
    reply_for,
    response_class,
)

_C = CommandId


class Role(enum.Enum):
    """Which side of the link this session is."""

    ESME = "esme"  # the client: binds, submits, receives deliveries
    SMSC = "smsc"  # the server: accepts binds, delivers


class SessionState(enum.Enum):
    """Bind state of an SMPP session (SMPP v3.4 section 2)."""

    OPEN = "open"  # connected, not bound
    OUTBOUND = "outbound"  # the SMSC sent outbind; the ESME is expected to bind as a receiver
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBOUND = "unbound"  # an unbind was sent or received; waiting for unbind_resp
    CLOSED = "closed"  # unbind_resp exchanged, a fatal error, or the connection was lost


_S = SessionState
_BOUND_STATES = (_S.BOUND_TX, _S.BOUND_RX, _S.BOUND_TRX)
_BINDS = frozenset({_C.bind_transmitter, _C.bind_receiver, _C.bind_transceiver})

# Requests each role may send, by state (SMPP v3.4 section 2). enquire_link is also allowed
# before binding: it costs nothing and lets a transport check the link as soon as it connects.
_ESME_SUBMIT = frozenset(
    {_C.submit_sm, _C.submit_multi, _C.data_sm, _C.query_sm, _C.cancel_sm, _C.replace_sm}
)
_SMSC_DELIVER = frozenset({_C.deliver_sm, _C.data_sm, _C.alert_notification})
_LINK = frozenset({_C.enquire_link, _C.unbind})
_REQUESTS: dict[Role, dict[SessionState, frozenset[int]]] = {
    Role.ESME: {
        _S.OPEN: _BINDS | {_C.enquire_link},
        # v3.4 says bind_receiver after an outbind; bind_transceiver is common and harmless.
        _S.OUTBOUND: frozenset({_C.bind_receiver, _C.bind_transceiver, _C.enquire_link}),
        _S.BOUND_TX: _ESME_SUBMIT | _LINK,
        _S.BOUND_RX: _LINK,
        _S.BOUND_TRX: _ESME_SUBMIT | _LINK,
        # Both sides may unbind at once; each then answers the other's unbind.
        _S.UNBOUND: frozenset({_C.unbind}),
        _S.CLOSED: frozenset(),
    },
    Role.SMSC: {
        _S.OPEN: frozenset({_C.outbind, _C.enquire_link}),
        _S.OUTBOUND: frozenset({_C.enquire_link}),
        _S.BOUND_TX: _LINK,
        _S.BOUND_RX: _SMSC_DELIVER | _LINK,
        _S.BOUND_TRX: _SMSC_DELIVER | _LINK,
        _S.UNBOUND: frozenset({_C.unbind}),
        _S.CLOSED: frozenset(),
    },
}

# The state change a PDU causes, whichever side sends it.
_TRANSITIONS: dict[tuple[SessionState, int], SessionState] = {
    (_S.OPEN, _C.outbind): _S.OUTBOUND,
    (_S.OPEN, _C.bind_transmitter_resp): _S.BOUND_TX,
    (_S.OPEN, _C.bind_receiver_resp): _S.BOUND_RX,
    (_S.OPEN, _C.bind_transceiver_resp): _S.BOUND_TRX,
    (_S.OUTBOUND, _C.bind_receiver_resp): _S.BOUND_RX,
    (_S.OUTBOUND, _C.bind_transceiver_resp): _S.BOUND_TRX,
    (_S.BOUND_TX, _C.unbind): _S.UNBOUND,
    (_S.BOUND_RX, _C.unbind): _S.UNBOUND,
    (_S.BOUND_TRX, _C.unbind): _S.UNBOUND,
    # Whatever its status, unbind_resp ends the session: neither side may send requests after
    # an unbind, so there is nothing left to do but close.
    (_S.UNBOUND, _C.unbind_resp): _S.CLOSED,
}
# A bind_resp with an error status leaves the session where it was (OPEN or OUTBOUND).
_ONLY_ON_SUCCESS = frozenset(
    {_C.bind_transmitter_resp, _C.bind_receiver_resp, _C.bind_transceiver_resp}
)
_CHANGES_STATE = frozenset(command_id for _state, command_id in _TRANSITIONS)


def _peer(role: Role) -> Role:
    return Role.SMSC if role is Role.ESME else Role.ESME


def _responses(requests: Iterable[int]) -> frozenset[int]:
    return frozenset(cls.command_id for cls in map(response_class, requests) if cls is not None) | {
        _C.generic_nack
    }


def _answers(role: Role, state: SessionState, asker: Role) -> frozenset[int]:
    """Responses ``role`` may exchange in ``state`` for requests that ``asker`` sends."""
    if state is _S.CLOSED:
        return frozenset()
    asked = set(_REQUESTS[asker][state])
    if state is _S.UNBOUND:
        # Requests sent while bound are answered while the unbind drains the window.
        for bound in _BOUND_STATES:
            asked |= _REQUESTS[asker][bound]
    return _responses(asked)


def _build_tables() -> tuple[
    dict[Role, dict[SessionState, frozenset[int]]], dict[Role, dict[SessionState, frozenset[int]]]
]:
    may_send: dict[Role, dict[SessionState, frozenset[int]]] = {}
    may_receive: dict[Role, dict[SessionState, frozenset[int]]] = {}
    for role in Role:
        peer = _peer(role)
        may_send[role] = {
            state: _REQUESTS[role][state] | _answers(role, state, peer) for state in SessionState
        }
        may_receive[role] = {
            state: _REQUESTS[peer][state] | _answers(role, state, role) for state in SessionState
        }
    return may_send, may_receive


#: Command ids each role may send / receive in each state, derived from the tables above.
MAY_SEND, MAY_RECEIVE = _build_tables()
_EVER_RECEIVED = {role: frozenset().union(*MAY_RECEIVE[role].values()) for role in Role}


# Each event repeats frozen=True: msgspec would inherit it from Event, but a type checker reads
# only the class's own keywords and would otherwise take the event for mutable.
class Event(msgspec.Struct, frozen=True, gc=False):
    """Something the owner of a session must act on."""


class PduReceived(Event, frozen=True):
    """A valid PDU, legal in the session state: handle it (and answer it, if a request)."""

    pdu: Pdu


class Rejected(Event, frozen=True):
    """A request we refuse, already answered: write ``reply`` and carry on.

    ``pdu`` is ``None`` when the PDU did not decode (the reply then still echoes its
    sequence_number, with the status the decoding error called for).
    """

    pdu: Pdu | None
    reply: bytes
    reason: str
    status: int
    command_id: int
    sequence_number: int


class ProtocolViolation(Event, frozen=True):
    """A response we did not expect, or one that does not decode; nothing is answered.

    A transport still holding a request with this ``sequence_number`` in its window should
    release it as failed, unless ``command_status`` (the header's, which a response that does
    not decode still carries) says the request was accepted.
    """

    pdu: Pdu | None
    reason: str
    status: int
    command_id: int
    sequence_number: int
    command_status: int = 0


class Fatal(Event, frozen=True):
    """The byte stream is broken (a bad command_length): write ``reply``, then close."""

    status: int
    reason: str
    reply: bytes


class SmppSession:
    """One side of one SMPP connection.

    ``send`` assigns the next sequence number to a request whose ``sequence_number`` is 0 and
    ``last_sequence`` then tells which; a transport may as well take ``next_sequence()`` itself
    and build the PDU with it.
    Responses keep the sequence number they were given (``response_for`` echoes the request's).
    """

    __slots__ = (
        "_bind_pending",
        "_may_receive",
        "_may_send",
        "_owed",
        "_parser",
        "_receive_table",
        "_role",
        "_send_table",
        "_seq",
        "_state",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH,
        first_sequence: int = 1,
    ) -> None:
        if not 1 <= first_sequence <= MAX_SEQUENCE_NUMBER:
            raise ValueError(
                f"first_sequence must be in 1..0x{MAX_SEQUENCE_NUMBER:X}, got {first_sequence}"
            )
        self._role = role
        self._parser = PduParser(max_command_length)
        self._seq = first_sequence - 1
        self._send_table = MAY_SEND[role]
        self._receive_table = MAY_RECEIVE[role]
        #: A bind was received and its bind_resp is not sent yet.
        self._bind_pending = False
        #: (command_id, sequence_number) of requests that came in with a Fatal, still to answer.
        self._owed: set[tuple[int, int]] = set()
        self._set_state(_S.OPEN)

    def _set_state(self, state: SessionState) -> None:
        # The current state's tables are cached so the hot path makes no enum-keyed lookups.
        self._state = state
        self._may_send = self._send_table[state]
        self._may_receive = self._receive_table[state]

    @property
    def role(self) -> Role:
        return self._role

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def is_bound(self) -> bool:
        return self._state in _BOUND_STATES

    def can_send(self, command_id: int) -> bool:
        """Whether ``send`` would accept a PDU with this command_id now."""
        return command_id in self._may_send

    def can_receive(self, command_id: int) -> bool:
        """Whether the peer may send a PDU with this command_id now."""
        return command_id in self._may_receive

    @property
    def last_sequence(self) -> int:
        """The number ``next_sequence`` (or ``send``, for a request with 0) handed out last."""
        return self._seq

    def next_sequence(self) -> int:
        """A fresh sequence number: 1, 2, … 0x7FFFFFFF, then 1 again."""
        seq = self._seq + 1 if self._seq < MAX_SEQUENCE_NUMBER else 1
        self._seq = seq
        return seq

    def close(self) -> None:
        """The connection is gone (or about to be closed): refuse everything from now on."""
        self._set_state(_S.CLOSED)

    # --- outgoing ----------------------------------------------------------------------------

    def send(self, pdu: Pdu) -> bytes:
        """The bytes of ``pdu``, after checking it is legal and applying its state change.

        Raises:
            LocalProtocolError: this role may not send this PDU in the current state.
            ValueError: a field does not fit the wire format.
        """
        command_id = pdu.command_id
        if command_id not in self._may_send:
            if self._owed and self._settles_owed(pdu):
                return encode(pdu)
            raise LocalProtocolError(
                f"{self._role.name} may not send {_command_name(command_id)} "
                f"in state {self._state.name}"
            )
        if pdu.sequence_number == 0 and not command_id & RESPONSE_BIT:
            data = encode(pdu, self.next_sequence())
        else:
            data = encode(pdu)
        if command_id in _CHANGES_STATE:
            self._transition(command_id, pdu.command_status)
            if command_id in _ONLY_ON_SUCCESS:
                self._bind_pending = False
        return data

    def _settles_owed(self, pdu: Pdu) -> bool:
        """Whether ``pdu`` answers a request that came in with the Fatal (and may go out)."""
        key = (pdu.command_id & ~RESPONSE_BIT, pdu.sequence_number)
        if not pdu.command_id & RESPONSE_BIT or key not in self._owed:
            return False
        self._owed.discard(key)
        return True

    def send_all(self, pdus: Iterable[Pdu]) -> bytes:
        """``send`` for several PDUs, joined for one write."""
        return b"".join([self.send(pdu) for pdu in pdus])

    def _transition(self, command_id: int, status: int) -> None:
        new = _TRANSITIONS.get((self._state, command_id))
        if new is not None and (status == 0 or command_id not in _ONLY_ON_SUCCESS):
            self._set_state(new)

    # --- incoming ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events for the PDUs completed by ``data``, in order.

        Raises:
            LocalProtocolError: the session is CLOSED; the transport should have stopped reading.
        """
        if self._state is _S.CLOSED:
            raise LocalProtocolError("the session is CLOSED; no more data can be received")
        frames, error = self._parser.frames(data)
        events: list[Event] = [self._receive_frame(frame) for frame in frames]
        if error is not None:
            self._owed = {
                (event.pdu.command_id, event.pdu.sequence_number)
                for event in events
                if type(event) is PduReceived and not event.pdu.command_id & RESPONSE_BIT
            }
            nack = GenericNack(error.sequence_number or 0, error.status)
            events.append(Fatal(error.status, error.message, encode(nack)))
            self._set_state(_S.CLOSED)
        return events

    def _receive_frame(self, frame: bytes) -> Event:
        try:
            pdu = decode(frame)
        except SmppProtocolError as exc:
            return self._undecodable(exc, frame)
        command_id = pdu.command_id
        if command_id in self._may_receive:
            if command_id in _BINDS:
                if self._bind_pending:
                    return self._refuse(
                        pdu,
                        CommandStatus.ESME_RBINDFAIL,
                        f"{_command_name(command_id)} while an earlier bind is unanswered",
                    )
                self._bind_pending = True
            elif command_id in _CHANGES_STATE:
                self._transition(command_id, pdu.command_status)
            return PduReceived(pdu)
        name = _command_name(command_id)
        if command_id & RESPONSE_BIT:
            return ProtocolViolation(
                pdu,
                f"unexpected {name} in state {self._state.name} (sequence_number "
                f"{pdu.sequence_number})",
                CommandStatus.ESME_RINVBNDSTS,
                command_id,
                pdu.sequence_number,
                pdu.command_status,
            )
        if command_id not in _EVER_RECEIVED[self._role]:
            status = CommandStatus.ESME_RINVCMDID
            reason = f"an {self._role.name} never receives {name}"
        elif command_id in _BINDS and self._state in _BOUND_STATES:
            status = CommandStatus.ESME_RALYBND
            reason = f"{name} while already {self._state.name}"
        else:
            status = CommandStatus.ESME_RINVBNDSTS
            reason = f"{name} is not allowed in state {self._state.name}"
        return self._refuse(pdu, status, reason)

    def _refuse(self, pdu: Pdu, status: int, reason: str) -> Rejected:
        command_id = pdu.command_id
        reply = encode(reply_for(command_id, pdu.sequence_number, status))
        return Rejected(pdu, reply, reason, status, command_id, pdu.sequence_number)

    def _undecodable(self, exc: SmppProtocolError, frame: bytes) -> Event:
        command_id = exc.command_id or 0
        seq = exc.sequence_number or 0
        if command_id & RESPONSE_BIT:
            # Never answer a response: a generic_nack to a generic_nack could ping-pong forever.
            header_status = int.from_bytes(frame[8:12], "big")
            return ProtocolViolation(None, exc.message, exc.status, command_id, seq, header_status)
        reply = encode(reply_for(command_id, seq, exc.status))
        return Rejected(None, reply, exc.message, exc.status, command_id, seq)


def _command_name(command_id: int) -> str:
    try:
        return CommandId(command_id).name
    except ValueError:
        return f"command 0x{command_id:08X}"
