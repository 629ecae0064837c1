"""SMPP session state machine: bind flows, the legality table, answers to illegal PDUs, unbind,
fatal framing errors and sequence numbers, driven with bytes only.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.protocols.smpp import (
    MAY_RECEIVE,
    MAY_SEND,
    RESPONSE_BIT,
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    DataSm,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Fatal,
    GenericNack,
    LocalProtocolError,
    Outbind,
    Pdu,
    PduReceived,
    ProtocolViolation,
    QuerySm,
    Rejected,
    Role,
    SessionState,
    SmppSession,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    decode,
    encode,
    response_for,
)

S = CommandStatus
ST = SessionState


def exchange(sender: SmppSession, receiver: SmppSession, pdu: Pdu) -> PduReceived:
    [event] = receiver.receive_data(sender.send(pdu))
    assert isinstance(event, PduReceived), event
    return event


def bound_pair(bind: Pdu) -> tuple[SmppSession, SmppSession]:
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    request = exchange(esme, smsc, bind).pdu
    exchange(smsc, esme, response_for(request, system_id="SMSC"))
    return esme, smsc


# --- binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "state"),
    [
        (BindTransmitter(system_id="acme", password="pw"), ST.BOUND_TX),
        (BindReceiver(system_id="acme", password="pw"), ST.BOUND_RX),
        (BindTransceiver(system_id="acme", password="pw"), ST.BOUND_TRX),
    ],
)
def test_bind_flow_both_roles(bind: Pdu, state: SessionState) -> None:
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    assert esme.state is smsc.state is ST.OPEN
    data = esme.send(bind)
    assert decode(data).sequence_number == 1  # assigned, since the PDU had 0
    assert esme.state is ST.OPEN  # bound only once the response says so
    [event] = smsc.receive_data(data)
    assert isinstance(event, PduReceived) and event.pdu.command_id == bind.command_id
    assert smsc.state is ST.OPEN
    reply = smsc.send(response_for(event.pdu, system_id="SMSC"))
    assert smsc.state is state
    [answer] = esme.receive_data(reply)
    assert isinstance(answer, PduReceived) and answer.pdu.sequence_number == 1
    assert esme.state is state and esme.is_bound


def test_failed_bind_stays_open_and_may_retry() -> None:
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    request = exchange(esme, smsc, BindTransmitter(system_id="acme", password="bad")).pdu
    exchange(smsc, esme, response_for(request, S.ESME_RINVPASWD))
    assert esme.state is smsc.state is ST.OPEN
    request = exchange(esme, smsc, BindTransmitter(system_id="acme", password="good")).pdu
    exchange(smsc, esme, response_for(request))
    assert esme.state is smsc.state is ST.BOUND_TX


def test_generic_nack_to_a_bind_leaves_the_esme_open() -> None:
    esme = SmppSession(Role.ESME)
    esme.send(BindTransmitter())
    [event] = esme.receive_data(encode(GenericNack(1, S.ESME_RINVCMDID)))
    assert isinstance(event, PduReceived)
    assert esme.state is ST.OPEN


def test_outbind_flow() -> None:
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    exchange(smsc, esme, Outbind(system_id="SMSC", password="pw"))
    assert esme.state is smsc.state is ST.OUTBOUND
    with pytest.raises(LocalProtocolError):
        esme.send(BindTransmitter())  # after an outbind the ESME binds to receive
    request = exchange(esme, smsc, BindReceiver(system_id="acme")).pdu
    exchange(smsc, esme, response_for(request))
    assert esme.state is smsc.state is ST.BOUND_RX
    exchange(smsc, esme, DeliverSm(short_message=b"hi"))


# --- illegal requests are answered for the owner ---------------------------------------------


def test_submit_sm_before_bind_gets_submit_sm_resp_invbndsts() -> None:
    smsc = SmppSession(Role.SMSC)
    submit = SubmitSm(sequence_number=7, source_addr="a", destination_addr="b")
    [event] = smsc.receive_data(encode(submit))
    assert isinstance(event, Rejected)
    assert event.pdu == submit
    assert event.status == S.ESME_RINVBNDSTS
    assert (event.command_id, event.sequence_number) == (CommandId.submit_sm, 7)
    assert event.reply == bytes.fromhex("00000010 80000004 00000004 00000007")
    assert "OPEN" in event.reason
    assert smsc.state is ST.OPEN


def test_second_bind_gets_already_bound() -> None:
    _esme, smsc = bound_pair(BindTransceiver(system_id="acme"))
    [event] = smsc.receive_data(encode(BindTransmitter(sequence_number=9)))
    assert isinstance(event, Rejected)
    assert event.status == S.ESME_RALYBND
    assert decode(event.reply) == BindTransmitterResp(9, S.ESME_RALYBND)
    assert smsc.state is ST.BOUND_TRX


def test_deliver_sm_to_a_transmitter_only_bind_is_refused() -> None:
    esme, _smsc = bound_pair(BindTransmitter(system_id="acme"))
    [event] = esme.receive_data(encode(DeliverSm(sequence_number=3, short_message=b"mo")))
    assert isinstance(event, Rejected)
    assert event.status == S.ESME_RINVBNDSTS
    assert decode(event.reply) == DeliverSmResp(3, S.ESME_RINVBNDSTS)
    assert esme.state is ST.BOUND_TX


def test_submit_sm_on_a_receiver_bind_is_refused() -> None:
    _esme, smsc = bound_pair(BindReceiver(system_id="acme"))
    [event] = smsc.receive_data(encode(SubmitSm(sequence_number=4)))
    assert isinstance(event, Rejected)
    assert decode(event.reply) == SubmitSmResp(4, S.ESME_RINVBNDSTS)


def test_a_command_the_role_never_receives_is_an_invalid_command_id() -> None:
    esme, _smsc = bound_pair(BindTransceiver(system_id="acme"))
    [event] = esme.receive_data(encode(SubmitSm(sequence_number=5)))
    assert isinstance(event, Rejected)
    assert event.status == S.ESME_RINVCMDID
    assert decode(event.reply) == SubmitSmResp(5, S.ESME_RINVCMDID)


def test_request_without_response_type_gets_generic_nack() -> None:
    esme = SmppSession(Role.ESME)  # alert_notification needs a receiver bind
    [event] = esme.receive_data(encode(AlertNotification(sequence_number=6)))
    assert isinstance(event, Rejected)
    assert decode(event.reply) == GenericNack(6, S.ESME_RINVBNDSTS)


def test_unexpected_response_is_a_protocol_violation() -> None:
    esme, _smsc = bound_pair(BindTransmitter(system_id="acme"))
    [event] = esme.receive_data(encode(BindTransmitterResp(sequence_number=1)))
    assert isinstance(event, ProtocolViolation)
    assert event.command_id == CommandId.bind_transmitter_resp
    assert esme.state is ST.BOUND_TX
    [event] = SmppSession(Role.ESME).receive_data(encode(SubmitSmResp(sequence_number=3)))
    assert isinstance(event, ProtocolViolation) and event.sequence_number == 3


def test_undecodable_request_is_answered_with_its_own_response_type() -> None:
    esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    body = b"\x00\x05\x00" + b"1" * 30
    data = (16 + len(body)).to_bytes(4, "big") + bytes.fromhex("00000004 00000000 0000000c")
    [event] = smsc.receive_data(data + body)
    assert isinstance(event, Rejected)
    assert event.pdu is None
    assert event.status == S.ESME_RINVSRCADR
    assert decode(event.reply) == SubmitSmResp(12, S.ESME_RINVSRCADR)
    assert "source_addr" in event.reason
    exchange(esme, smsc, SubmitSm())  # the session goes on


def test_unknown_command_id_gets_generic_nack_and_the_session_goes_on() -> None:
    _esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    unknown = bytes.fromhex("00000010 00000099 00000000 0000000d")
    events = smsc.receive_data(unknown + encode(EnquireLink(sequence_number=14)))
    assert isinstance(events[0], Rejected)
    assert decode(events[0].reply) == GenericNack(13, S.ESME_RINVCMDID)
    assert isinstance(events[1], PduReceived)


def test_undecodable_response_is_not_answered() -> None:
    esme = SmppSession(Role.ESME)
    bad = bytes.fromhex("00000012 80000015 00000000 00000002 abcd")
    [event] = esme.receive_data(bad)
    assert isinstance(event, ProtocolViolation)
    assert event.pdu is None and event.status == S.ESME_RINVCMDLEN
    assert event.sequence_number == 2


# --- sending illegal PDUs is our bug --------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "pdu"),
    [
        (Role.ESME, SubmitSm()),  # before bind
        (Role.ESME, DeliverSm()),  # never from an ESME
        (Role.SMSC, BindTransmitter()),  # never from an SMSC
        (Role.SMSC, DeliverSm()),  # not bound
        (Role.ESME, Unbind()),  # not bound
        (Role.ESME, SubmitSmResp(sequence_number=1)),  # nobody asked
    ],
)
def test_sending_an_illegal_pdu_raises_local_protocol_error(role: Role, pdu: Pdu) -> None:
    session = SmppSession(role)
    assert not session.can_send(pdu.command_id)
    with pytest.raises(LocalProtocolError, match=CommandId(pdu.command_id).name.lower()):
        session.send(pdu)
    assert session.state is ST.OPEN


def test_receiver_bind_may_not_submit() -> None:
    esme, _smsc = bound_pair(BindReceiver(system_id="acme"))
    with pytest.raises(LocalProtocolError, match="BOUND_RX"):
        esme.send(SubmitSm())
    esme.send(DeliverSmResp(sequence_number=1))  # answering a delivery is fine


# --- unbind -------------------------------------------------------------------------------------


def test_unbind_from_the_esme() -> None:
    esme, smsc = bound_pair(BindTransceiver(system_id="acme"))
    request = exchange(esme, smsc, Unbind()).pdu
    assert esme.state is smsc.state is ST.UNBOUND
    with pytest.raises(LocalProtocolError):
        esme.send(SubmitSm())
    exchange(smsc, esme, response_for(request))
    assert esme.state is smsc.state is ST.CLOSED
    with pytest.raises(LocalProtocolError, match="CLOSED"):
        esme.receive_data(encode(EnquireLink(sequence_number=1)))
    with pytest.raises(LocalProtocolError):
        smsc.send(EnquireLink())


def test_unbind_from_the_smsc_drains_the_window() -> None:
    esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    submit = exchange(esme, smsc, SubmitSm(short_message=b"in flight")).pdu
    exchange(smsc, esme, Unbind())
    assert esme.state is smsc.state is ST.UNBOUND
    # The submit_sm sent before the unbind is still answered, and the answer still accepted.
    exchange(smsc, esme, response_for(submit, message_id="m1"))
    # New requests are refused in both directions.
    [event] = smsc.receive_data(encode(SubmitSm(sequence_number=99)))
    assert isinstance(event, Rejected) and event.status == S.ESME_RINVBNDSTS
    exchange(esme, smsc, UnbindResp(sequence_number=2))
    assert esme.state is smsc.state is ST.CLOSED


def test_unbind_collision() -> None:
    esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    from_esme = esme.send(Unbind())
    from_smsc = smsc.send(Unbind())
    [at_smsc] = smsc.receive_data(from_esme)
    [at_esme] = esme.receive_data(from_smsc)
    assert isinstance(at_smsc, PduReceived) and isinstance(at_esme, PduReceived)
    esme.receive_data(smsc.send(response_for(at_smsc.pdu)))
    assert esme.state is smsc.state is ST.CLOSED


def test_close_refuses_everything() -> None:
    session = SmppSession(Role.ESME)
    session.close()
    assert session.state is ST.CLOSED
    with pytest.raises(LocalProtocolError):
        session.send(EnquireLink())
    with pytest.raises(LocalProtocolError):
        session.receive_data(b"")


# --- fatal framing errors -----------------------------------------------------------------------


def test_bad_command_length_is_fatal_with_a_generic_nack() -> None:
    _esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    bad = (2_000_000).to_bytes(4, "big") + bytes.fromhex("00000004 00000000 00000021")
    events = smsc.receive_data(encode(EnquireLink(sequence_number=32)) + bad)
    assert isinstance(events[0], PduReceived)
    fatal = events[1]
    assert isinstance(fatal, Fatal)
    assert fatal.status == S.ESME_RINVCMDLEN
    assert "2000000" in fatal.reason
    assert fatal.reply == bytes.fromhex("00000010 80000000 00000002 00000021")
    assert smsc.state is ST.CLOSED
    with pytest.raises(LocalProtocolError):
        smsc.receive_data(encode(EnquireLink(sequence_number=1)))


def test_fatal_when_the_bad_header_arrives_in_pieces() -> None:
    session = SmppSession(Role.SMSC, max_command_length=1024)
    bad = (4096).to_bytes(4, "big") + bytes(12)
    assert session.receive_data(bad[:10]) == []
    [fatal] = session.receive_data(bad[10:] + b"more")
    assert isinstance(fatal, Fatal)
    assert decode(fatal.reply) == GenericNack(0, S.ESME_RINVCMDLEN)


def test_requests_read_with_a_fatal_header_may_still_be_answered_in_order() -> None:
    bad_header = (8).to_bytes(4, "big") + bytes(12)
    smsc = SmppSession(Role.SMSC)
    bind, fatal = smsc.receive_data(encode(BindTransmitter(sequence_number=1)) + bad_header)
    assert isinstance(bind, PduReceived) and isinstance(fatal, Fatal)
    assert smsc.state is ST.CLOSED
    # The bind came in before the broken header: its answer may go out, once, before the nack.
    assert decode(smsc.send(response_for(bind.pdu))) == BindTransmitterResp(1)
    with pytest.raises(LocalProtocolError):
        smsc.send(response_for(bind.pdu))
    with pytest.raises(LocalProtocolError):
        smsc.send(EnquireLink())


def test_two_binds_in_one_read_are_both_answered() -> None:
    smsc = SmppSession(Role.SMSC)
    first, second = smsc.receive_data(
        encode(BindTransmitter(sequence_number=1)) + encode(BindReceiver(sequence_number=2))
    )
    assert isinstance(first, PduReceived)
    assert isinstance(second, Rejected)
    assert second.reply == encode(BindReceiverResp(2, S.ESME_RBINDFAIL))
    assert "unanswered" in second.reason
    smsc.send(response_for(first.pdu))  # the first bind is answered: no LocalProtocolError
    assert smsc.state is ST.BOUND_TX
    [again] = smsc.receive_data(encode(BindTransmitter(sequence_number=3)))
    assert isinstance(again, Rejected) and again.status == S.ESME_RALYBND


def test_a_bind_after_a_refused_one_is_judged_afresh() -> None:
    smsc = SmppSession(Role.SMSC)
    [first] = smsc.receive_data(encode(BindTransmitter(sequence_number=1)))
    assert isinstance(first, PduReceived)
    smsc.send(response_for(first.pdu, S.ESME_RINVPASWD))
    [second] = smsc.receive_data(encode(BindTransmitter(sequence_number=2)))
    assert isinstance(second, PduReceived)


# --- sequence numbers -------------------------------------------------------------------------


def test_sequence_numbers_count_and_wrap() -> None:
    session = SmppSession(Role.ESME, first_sequence=0x7FFFFFFE)
    assert [session.next_sequence() for _ in range(4)] == [0x7FFFFFFE, 0x7FFFFFFF, 1, 2]


def test_send_assigns_fresh_numbers_to_requests_only() -> None:
    esme, _smsc = bound_pair(BindTransceiver(system_id="acme"))  # the bind took 1
    assert decode(esme.send(SubmitSm())).sequence_number == 2
    assert esme.last_sequence == 2
    assert decode(esme.send(SubmitSm(sequence_number=500))).sequence_number == 500
    assert decode(esme.send(EnquireLink())).sequence_number == 3
    assert decode(esme.send(DeliverSmResp(sequence_number=0))).sequence_number == 0
    assert esme.next_sequence() == 4


def test_first_sequence_is_checked() -> None:
    with pytest.raises(ValueError):
        SmppSession(Role.ESME, first_sequence=0)


def test_send_all_joins() -> None:
    esme, smsc = bound_pair(BindTransmitter(system_id="acme"))
    data = esme.send_all([SubmitSm(), SubmitSm(), EnquireLink()])
    events = smsc.receive_data(data)
    assert [e.pdu.sequence_number for e in events] == [2, 3, 4]  # type: ignore[attr-defined]


# --- the tables ---------------------------------------------------------------------------------


def test_tables_are_consistent() -> None:
    for role, peer in ((Role.ESME, Role.SMSC), (Role.SMSC, Role.ESME)):
        for state in SessionState:
            sendable = MAY_SEND[role][state]
            receivable = MAY_RECEIVE[peer][state]
            # What one side may send, the other may receive in the same state.
            assert sendable == receivable, (role, state)
    for role in Role:
        assert MAY_SEND[role][ST.CLOSED] == frozenset()
        for state in (ST.OPEN, ST.BOUND_TX, ST.BOUND_RX, ST.BOUND_TRX):
            assert CommandId.enquire_link in MAY_SEND[role][state]
            assert CommandId.enquire_link_resp in MAY_SEND[role][state]
            assert CommandId.generic_nack in MAY_SEND[role][state]
    assert CommandId.submit_sm not in MAY_SEND[Role.ESME][ST.BOUND_RX]
    assert CommandId.deliver_sm in MAY_SEND[Role.SMSC][ST.BOUND_RX]
    assert CommandId.deliver_sm not in MAY_SEND[Role.SMSC][ST.BOUND_TX]


_ESME_REQUESTS = [SubmitSm(), DataSm(), QuerySm(), EnquireLink()]
_SMSC_REQUESTS = [DeliverSm(), DataSm(), EnquireLink(), AlertNotification()]


@settings(max_examples=150)
@given(st.data())
def test_two_sessions_stay_in_step(data: st.DataObject) -> None:
    """Random legal traffic between an ESME and an SMSC: every PDU is received as legal, and
    both sides always agree on the state."""
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    owed: dict[SmppSession, list[Pdu]] = {esme: [], smsc: []}  # requests to answer
    bind = data.draw(st.sampled_from([BindTransmitter(), BindReceiver(), BindTransceiver()]))
    status = data.draw(st.sampled_from([0, 0, 0, S.ESME_RBINDFAIL]))
    exchange(smsc, esme, response_for(exchange(esme, smsc, bind).pdu, status))
    for _ in range(data.draw(st.integers(0, 25))):
        assert esme.state is smsc.state
        if esme.state is ST.CLOSED:
            break
        side = data.draw(st.sampled_from([esme, smsc]))
        other = smsc if side is esme else esme
        pool = _ESME_REQUESTS if side is esme else _SMSC_REQUESTS
        choices = [p for p in [*pool, Unbind()] if side.can_send(p.command_id)]
        choices += [
            response_for(p) for p in owed[side] if side.can_send(p.command_id | RESPONSE_BIT)
        ]
        if not choices:
            break
        pdu = data.draw(st.sampled_from(choices))
        event = exchange(side, other, pdu)
        if pdu.command_id & RESPONSE_BIT:
            owed[side] = [p for p in owed[side] if p.sequence_number != pdu.sequence_number]
        elif pdu.command_id not in (CommandId.alert_notification,):
            owed[other].append(event.pdu)
    assert esme.state is smsc.state


def test_enquire_link_before_bind() -> None:
    esme, smsc = SmppSession(Role.ESME), SmppSession(Role.SMSC)
    request = exchange(esme, smsc, EnquireLink()).pdu
    exchange(smsc, esme, response_for(request))
    exchange(smsc, esme, EnquireLink())
    assert isinstance(response_for(request), EnquireLinkResp)


def test_bind_resp_must_answer_our_bind_type() -> None:
    # A bind_receiver_resp to an ESME that asked for a transmitter bind moves it to BOUND_RX:
    # the session trusts the command id the SMSC answered with, which is what it will enforce.
    esme = SmppSession(Role.ESME)
    esme.send(BindTransmitter())
    [event] = esme.receive_data(encode(BindReceiverResp(sequence_number=1)))
    assert isinstance(event, PduReceived)
    assert esme.state is ST.BOUND_RX


_framed_garbage = st.builds(
    lambda cid, status, seq, body: (
        (16 + len(body)).to_bytes(4, "big")
        + cid.to_bytes(4, "big")
        + status.to_bytes(4, "big")
        + seq.to_bytes(4, "big")
        + body
    ),
    st.sampled_from([int(c) for c in CommandId] + [0x99, 0x80000099]),
    st.sampled_from([0, 0x58]),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=80),
)


@settings(max_examples=300)
@given(
    role=st.sampled_from(list(Role)),
    bind_first=st.booleans(),
    chunks=st.lists(st.binary(max_size=120) | _framed_garbage, max_size=12),
)
def test_garbage_only_produces_events(role: Role, bind_first: bool, chunks: list[bytes]) -> None:
    """Whatever the peer sends, the session answers with events, never with an exception;
    every reply it prepares is a well-formed response."""
    session = SmppSession(role, max_command_length=256)
    if bind_first and role is Role.SMSC:
        session.receive_data(encode(BindTransceiver(sequence_number=1)))
        session.send(response_for(BindTransceiver(sequence_number=1)))
    for chunk in chunks:
        if session.state is ST.CLOSED:
            break
        for event in session.receive_data(chunk):
            if isinstance(event, Rejected | Fatal):
                reply = decode(event.reply)
                assert reply.command_id & RESPONSE_BIT
                assert reply.command_status == event.status != 0
            if isinstance(event, Fatal):
                assert session.state is ST.CLOSED
