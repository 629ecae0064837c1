"""SMPP v3.4 PDUs as immutable structs, and the codec between them and bytes.

One class per PDU, its mandatory fields named as in the specification (section 4), plus the
header's ``sequence_number`` and ``command_status``; PDUs that may carry optional parameters have
``tlvs``, a tuple of ``Tlv`` kept verbatim and in order so that unknown TLVs round-trip exactly.

``encode(pdu)`` gives the bytes of one PDU; ``decode(data)`` reads exactly one whole PDU. Each
PDU type has a layout (its fields in wire order, with each C-Octet String's maximum size and the
command_status that answers a bad value) and one generic codec interprets it. submit_sm,
deliver_sm and their responses, which carry nearly all traffic, also have hand-written fast paths
(one cached ``struct.Struct`` per combination of string lengths to encode, ``bytes.find`` and
indexing to decode, no per-field lookups); whenever a fast path meets anything unusual it
hands over to the generic codec, which then raises the precise error, so the two cannot disagree
on what is valid.

Errors in received bytes raise ``SmppProtocolError`` with the command_status to answer with.
Fields we cannot encode raise ``ValueError`` naming the PDU, the field and the limit.

Decoding is liberal where real peers differ from the text and nothing is lost by accepting
(a response with an error status and no body; a deliver_sm_resp without its NUL message_id; TLVs
on submit_sm_resp and deliver_sm_resp as SMPP 5.0 allows), and strict everywhere else. Encoding
is strict: what we send is what the specification says.

Examples:
    >>> pdu = SubmitSm(sequence_number=7, source_addr="Sluice", destination_addr="4915112345678",
    ...                short_message=b"hello")
    >>> data = encode(pdu)
    >>> data[:16].hex()  # command_length 57, submit_sm, status 0, sequence_number 7
    '00000039000000040000000000000007'
    >>> decode(data) == pdu
    True
    >>> decode(encode(response_for(pdu, message_id="m-1")))
    SubmitSmResp(sequence_number=7, message_id='m-1')
"""

from __future__ import annotations

import struct
from typing import ClassVar

import msgspec

from sluice.protocols.smpp.constants import (
    RESPONSE_BIT,
    SMPP_VERSION_34,
    CommandId,
    CommandStatus,
    MessageState,
    Tag,
)
from sluice.protocols.smpp.errors import SmppProtocolError

#: Every PDU starts with command_length, command_id, command_status and sequence_number,
#: 4 octets each.
HEADER_LENGTH = 16
#: sm_length is one octet and section 5.2.22 caps short_message at 254 octets; longer content
#: goes in the message_payload TLV or is segmented.
MAX_SHORT_MESSAGE_LENGTH = 254
#: A TLV's length field is two octets.
MAX_TLV_VALUE_LENGTH = 0xFFFF
#: Valid sequence numbers (section 5.1.4); 0 appears only on a generic_nack to an unreadable PDU.
MAX_SEQUENCE_NUMBER = 0x7FFFFFFF

_S = CommandStatus
_HEADER = struct.Struct(">IIII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_pack_bb = struct.Struct(">BB").pack
_pack_bbb = struct.Struct(">BBB").pack
_pack_b5 = struct.Struct(">BBBBB").pack
_tlv_head = struct.Struct(">HH")
_pack_tlv_head = _tlv_head.pack
_unpack_tlv_head = _tlv_head.unpack_from
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Tlv(msgspec.Struct, frozen=True, gc=False):
    """One optional parameter: a 16-bit tag and its raw value, exactly as on the wire."""

    tag: int
    value: bytes


class SmeAddress(msgspec.Struct, frozen=True, gc=False):
    """A submit_multi destination of dest_flag 1: one SME address."""

    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""


class DistributionList(msgspec.Struct, frozen=True, gc=False):
    """A submit_multi destination of dest_flag 2: a distribution list defined on the SMSC."""

    dl_name: str = ""


class UnsuccessSme(msgspec.Struct, frozen=True, gc=False):
    """A destination a submit_multi could not reach, with the command_status explaining why."""

    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    error_status_code: int = 0


class Pdu(msgspec.Struct, frozen=True, gc=False, repr_omit_defaults=True):
    """Base of every PDU: the header fields that are not implied by the class."""

    command_id: ClassVar[int]
    sequence_number: int = 0
    command_status: int = 0


# --- session management ----------------------------------------------------------------------


class GenericNack(Pdu):
    """Negative acknowledgement of a PDU whose header was unusable (section 4.3)."""

    command_id: ClassVar[int] = CommandId.generic_nack


class _Bind(Pdu):
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    interface_version: int = SMPP_VERSION_34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


class BindTransmitter(_Bind):
    """Bind to send messages (section 4.1.1)."""

    command_id: ClassVar[int] = CommandId.bind_transmitter


class BindReceiver(_Bind):
    """Bind to receive messages and receipts (section 4.1.3)."""

    command_id: ClassVar[int] = CommandId.bind_receiver


class BindTransceiver(_Bind):
    """Bind to send and receive over one connection (section 4.1.5)."""

    command_id: ClassVar[int] = CommandId.bind_transceiver


class _BindResp(Pdu):
    system_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class BindTransmitterResp(_BindResp):
    """Answer to bind_transmitter; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_transmitter_resp


class BindReceiverResp(_BindResp):
    """Answer to bind_receiver; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_receiver_resp


class BindTransceiverResp(_BindResp):
    """Answer to bind_transceiver; ``tlvs`` may carry sc_interface_version."""

    command_id: ClassVar[int] = CommandId.bind_transceiver_resp


class Outbind(Pdu):
    """The SMSC asks the ESME to bind as a receiver (section 4.1.7)."""

    command_id: ClassVar[int] = CommandId.outbind
    system_id: str = ""
    password: str = ""


class Unbind(Pdu):
    """End the session (section 4.2.1)."""

    command_id: ClassVar[int] = CommandId.unbind


class UnbindResp(Pdu):
    """Answer to unbind."""

    command_id: ClassVar[int] = CommandId.unbind_resp


class EnquireLink(Pdu):
    """Link check, either direction (section 4.11)."""

    command_id: ClassVar[int] = CommandId.enquire_link


class EnquireLinkResp(Pdu):
    """Answer to enquire_link."""

    command_id: ClassVar[int] = CommandId.enquire_link_resp


# --- messages --------------------------------------------------------------------------------


class _ShortMessage(Pdu):
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()


class SubmitSm(_ShortMessage):
    """A message from the ESME to the SMSC (section 4.4)."""

    command_id: ClassVar[int] = CommandId.submit_sm


class DeliverSm(_ShortMessage):
    """A message or delivery receipt from the SMSC to the ESME (section 4.6).

    schedule_delivery_time and validity_period exist on the wire but the SMSC sets them empty.
    """

    command_id: ClassVar[int] = CommandId.deliver_sm


class SubmitSmResp(Pdu):
    """Answer to submit_sm: the SMSC's message_id, which delivery receipts will quote."""

    command_id: ClassVar[int] = CommandId.submit_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class DeliverSmResp(Pdu):
    """Answer to deliver_sm; message_id is unused and normally empty."""

    command_id: ClassVar[int] = CommandId.deliver_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class DataSm(Pdu):
    """A message in either direction with its content in TLVs (section 4.7)."""

    command_id: ClassVar[int] = CommandId.data_sm
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0
    tlvs: tuple[Tlv, ...] = ()


class DataSmResp(Pdu):
    """Answer to data_sm; ``tlvs`` may carry delivery_failure_reason, network_error_code…"""

    command_id: ClassVar[int] = CommandId.data_sm_resp
    message_id: str = ""
    tlvs: tuple[Tlv, ...] = ()


class SubmitMulti(Pdu):
    """One message to up to 255 SME addresses or distribution lists (section 4.5)."""

    command_id: ClassVar[int] = CommandId.submit_multi
    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addresses: tuple[SmeAddress | DistributionList, ...] = ()
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: tuple[Tlv, ...] = ()


class SubmitMultiResp(Pdu):
    """Answer to submit_multi, listing the destinations that failed."""

    command_id: ClassVar[int] = CommandId.submit_multi_resp
    message_id: str = ""
    unsuccess_smes: tuple[UnsuccessSme, ...] = ()
    tlvs: tuple[Tlv, ...] = ()


class QuerySm(Pdu):
    """Ask the state of a previously submitted message (section 4.8)."""

    command_id: ClassVar[int] = CommandId.query_sm
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""


class QuerySmResp(Pdu):
    """Answer to query_sm: final_date, message_state (see ``MessageState``) and error_code."""

    command_id: ClassVar[int] = CommandId.query_sm_resp
    message_id: str = ""
    final_date: str = ""
    message_state: int = 0
    error_code: int = 0


class CancelSm(Pdu):
    """Cancel one or more pending messages (section 4.9)."""

    command_id: ClassVar[int] = CommandId.cancel_sm
    service_type: str = ""
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""


class CancelSmResp(Pdu):
    """Answer to cancel_sm."""

    command_id: ClassVar[int] = CommandId.cancel_sm_resp


class ReplaceSm(Pdu):
    """Replace a pending message (section 4.10)."""

    command_id: ClassVar[int] = CommandId.replace_sm
    message_id: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""


class ReplaceSmResp(Pdu):
    """Answer to replace_sm."""

    command_id: ClassVar[int] = CommandId.replace_sm_resp


class AlertNotification(Pdu):
    """The SMSC tells the ESME that a mobile became available (section 4.12); no response."""

    command_id: ClassVar[int] = CommandId.alert_notification
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    esme_addr_ton: int = 0
    esme_addr_npi: int = 0
    esme_addr: str = ""
    tlvs: tuple[Tlv, ...] = ()


# --- layouts: the wire order of each PDU's fields ---------------------------------------------

_U8 = 0  # one-octet integer
_CSTR = 1  # C-Octet String, size = maximum including the NUL
_TIME = 2  # C-Octet String of 1 or 17 octets (empty, or 16 characters YYMMDDhhmmsstnnp)
_SM = 3  # sm_length octet + short_message
_TLVS = 4  # optional parameters up to the end of the PDU
_DESTS = 5  # submit_multi: number_of_dests + dest_address list
_UNSUCCESS = 6  # submit_multi_resp: no_unsuccess + unsuccess_sme list

# (field, kind, maximum size, command_status answering a bad value)
_Layout = tuple[tuple[str, int, int, int], ...]
_U = (_U8, 1, _S.ESME_RINVCMDLEN)


def _u8(name: str) -> tuple[str, int, int, int]:
    return (name, *_U)


_SYSTEM_ID = ("system_id", _CSTR, 16, _S.ESME_RINVSYSID)
_PASSWORD = ("password", _CSTR, 9, _S.ESME_RINVPASWD)
_SERVICE_TYPE = ("service_type", _CSTR, 6, _S.ESME_RINVSERTYP)
_SOURCE_ADDR_21 = ("source_addr", _CSTR, 21, _S.ESME_RINVSRCADR)
_DEST_ADDR_21 = ("destination_addr", _CSTR, 21, _S.ESME_RINVDSTADR)
_MESSAGE_ID = ("message_id", _CSTR, 65, _S.ESME_RINVMSGID)
_SCHEDULE = ("schedule_delivery_time", _TIME, 17, _S.ESME_RINVSCHED)
_VALIDITY = ("validity_period", _TIME, 17, _S.ESME_RINVEXPIRY)
_SHORT_MESSAGE = ("short_message", _SM, MAX_SHORT_MESSAGE_LENGTH, _S.ESME_RINVMSGLEN)
_TLV_FIELD = ("tlvs", _TLVS, 0, _S.ESME_RINVOPTPARSTREAM)

_BIND_LAYOUT: _Layout = (
    _SYSTEM_ID,
    _PASSWORD,
    ("system_type", _CSTR, 13, _S.ESME_RINVSYSTYP),
    _u8("interface_version"),
    _u8("addr_ton"),
    _u8("addr_npi"),
    ("address_range", _CSTR, 41, _S.ESME_RBINDFAIL),
)
_SHORT_MESSAGE_LAYOUT: _Layout = (
    _SERVICE_TYPE,
    _u8("source_addr_ton"),
    _u8("source_addr_npi"),
    _SOURCE_ADDR_21,
    _u8("dest_addr_ton"),
    _u8("dest_addr_npi"),
    _DEST_ADDR_21,
    _u8("esm_class"),
    _u8("protocol_id"),
    _u8("priority_flag"),
    _SCHEDULE,
    _VALIDITY,
    _u8("registered_delivery"),
    _u8("replace_if_present_flag"),
    _u8("data_coding"),
    _u8("sm_default_msg_id"),
    _SHORT_MESSAGE,
    _TLV_FIELD,
)
_MESSAGE_ID_LAYOUT: _Layout = (_MESSAGE_ID, _TLV_FIELD)

_LAYOUTS: dict[type[Pdu], _Layout] = {
    GenericNack: (),
    BindTransmitter: _BIND_LAYOUT,
    BindReceiver: _BIND_LAYOUT,
    BindTransceiver: _BIND_LAYOUT,
    BindTransmitterResp: (_SYSTEM_ID, _TLV_FIELD),
    BindReceiverResp: (_SYSTEM_ID, _TLV_FIELD),
    BindTransceiverResp: (_SYSTEM_ID, _TLV_FIELD),
    Outbind: (_SYSTEM_ID, _PASSWORD),
    Unbind: (),
    UnbindResp: (),
    EnquireLink: (),
    EnquireLinkResp: (),
    SubmitSm: _SHORT_MESSAGE_LAYOUT,
    DeliverSm: _SHORT_MESSAGE_LAYOUT,
    SubmitSmResp: _MESSAGE_ID_LAYOUT,
    DeliverSmResp: _MESSAGE_ID_LAYOUT,
    DataSm: (
        _SERVICE_TYPE,
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        ("source_addr", _CSTR, 65, _S.ESME_RINVSRCADR),
        _u8("dest_addr_ton"),
        _u8("dest_addr_npi"),
        ("destination_addr", _CSTR, 65, _S.ESME_RINVDSTADR),
        _u8("esm_class"),
        _u8("registered_delivery"),
        _u8("data_coding"),
        _TLV_FIELD,
    ),
    DataSmResp: _MESSAGE_ID_LAYOUT,
    SubmitMulti: (
        _SERVICE_TYPE,
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _SOURCE_ADDR_21,
        ("dest_addresses", _DESTS, 255, _S.ESME_RINVNUMDESTS),
        *_SHORT_MESSAGE_LAYOUT[7:],
    ),
    SubmitMultiResp: (
        _MESSAGE_ID,
        ("unsuccess_smes", _UNSUCCESS, 255, _S.ESME_RINVNUMDESTS),
        _TLV_FIELD,
    ),
    QuerySm: (_MESSAGE_ID, _u8("source_addr_ton"), _u8("source_addr_npi"), _SOURCE_ADDR_21),
    QuerySmResp: (
        _MESSAGE_ID,
        ("final_date", _TIME, 17, _S.ESME_RQUERYFAIL),
        _u8("message_state"),
        _u8("error_code"),
    ),
    CancelSm: (
        _SERVICE_TYPE,
        _MESSAGE_ID,
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _SOURCE_ADDR_21,
        _u8("dest_addr_ton"),
        _u8("dest_addr_npi"),
        _DEST_ADDR_21,
    ),
    CancelSmResp: (),
    ReplaceSm: (
        _MESSAGE_ID,
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        _SOURCE_ADDR_21,
        _SCHEDULE,
        _VALIDITY,
        _u8("registered_delivery"),
        _u8("sm_default_msg_id"),
        _SHORT_MESSAGE,
    ),
    ReplaceSmResp: (),
    AlertNotification: (
        _u8("source_addr_ton"),
        _u8("source_addr_npi"),
        ("source_addr", _CSTR, 65, _S.ESME_RINVSRCADR),
        _u8("esme_addr_ton"),
        _u8("esme_addr_npi"),
        ("esme_addr", _CSTR, 65, _S.ESME_RINVDSTADR),
        _TLV_FIELD,
    ),
}

#: Every PDU class by its command_id.
PDU_CLASSES: dict[int, type[Pdu]] = {cls.command_id: cls for cls in _LAYOUTS}

# Request command_id -> the class answering it. outbind and alert_notification have no response;
# anything wrong with them is answered with generic_nack.
_RESPONSE_CLASSES: dict[int, type[Pdu]] = {
    cid & ~RESPONSE_BIT: cls
    for cid, cls in PDU_CLASSES.items()
    if cid & RESPONSE_BIT and cid != CommandId.generic_nack
}

# A response with an error status may leave its body out (section 3.3; submit_sm_resp 4.4.2:
# "the body is not returned if the command_status field contains a non-zero value"); these
# decode such a header-only PDU to their defaults and encode an all-default one that way.
_BODY_OPTIONAL_ON_ERROR = frozenset(
    cls for cid, cls in PDU_CLASSES.items() if cid & RESPONSE_BIT and _LAYOUTS[cls]
)


def is_request(pdu_or_command_id: Pdu | int) -> bool:
    """True for a request (response bit clear), given a PDU or a command_id, known or not."""
    if isinstance(pdu_or_command_id, int):
        return not pdu_or_command_id & RESPONSE_BIT
    return not pdu_or_command_id.command_id & RESPONSE_BIT


def is_response(pdu_or_command_id: Pdu | int) -> bool:
    """True for a response (generic_nack included), given a PDU or a command_id."""
    return not is_request(pdu_or_command_id)


def response_class(command_id: int) -> type[Pdu] | None:
    """The PDU class answering a request command_id, or ``None`` when it has none."""
    return _RESPONSE_CLASSES.get(command_id)


def response_for(request: Pdu, status: int = 0, **fields: object) -> Pdu:
    """The response to ``request``, echoing its sequence_number, with ``status``.

    outbind and alert_notification have no response PDU: they get a generic_nack. ``fields``
    fill the response body (``message_id=…``, ``system_id=…``).

    Examples:
        >>> response_for(SubmitSm(sequence_number=3), message_id="abc")
        SubmitSmResp(sequence_number=3, message_id='abc')
        >>> response_for(BindTransmitter(sequence_number=1), CommandStatus.ESME_RALYBND)
        BindTransmitterResp(sequence_number=1, command_status=5)
    """
    command_id = request.command_id
    if command_id & RESPONSE_BIT:
        raise ValueError(f"{type(request).__name__} is a response; only requests are answered")
    return reply_for(command_id, request.sequence_number, status, **fields)


def reply_for(command_id: int, sequence_number: int, status: int, **fields: object) -> Pdu:
    """The response to a request known only by its header (it may not have decoded).

    A request command_id without a response type (unknown, outbind, alert_notification) gets a
    generic_nack.
    """
    cls = _RESPONSE_CLASSES.get(command_id, GenericNack)
    return cls(sequence_number, int(status), **fields)


# --- encoding --------------------------------------------------------------------------------


def encode(pdu: Pdu, sequence_number: int | None = None) -> bytes:
    """The bytes of one PDU; ``sequence_number`` overrides the PDU's own when given.

    Raises:
        ValueError: a field does not fit the wire format (the message names the field).
    """
    encoder = _ENCODERS.get(type(pdu))
    if encoder is None:
        raise TypeError(f"not an SMPP PDU: {pdu!r}")
    return encoder(pdu, pdu.sequence_number if sequence_number is None else sequence_number)


def encode_many(pdus: list[Pdu] | tuple[Pdu, ...]) -> bytes:
    """The bytes of several PDUs, ready for one write."""
    return b"".join([encode(pdu) for pdu in pdus])


def _encode_cstr(pdu: Pdu, name: str, value: object, size: int) -> bytes:
    where = f"{type(pdu).__name__}.{name}"
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a str, got {type(value).__name__}")
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{where} must be ASCII (C-Octet String), got {value!r}") from None
    if 0 in data:
        raise ValueError(f"{where} must not contain NUL, got {value!r}")
    if len(data) > size - 1:
        raise ValueError(
            f"{where} is {len(data)} characters; the maximum is {size - 1} "
            f"(a C-Octet String of at most {size} octets with its NUL)"
        )
    return data + b"\0"


def _encode_u8(pdu: Pdu, name: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise ValueError(f"{type(pdu).__name__}.{name} must be an int in 0..255, got {value!r}")
    return bytes((value,))


def _encode_short_message(pdu: Pdu, value: object) -> bytes:
    where = f"{type(pdu).__name__}.short_message"
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{where} must be bytes, got {type(value).__name__}")
    if len(value) > MAX_SHORT_MESSAGE_LENGTH:
        raise ValueError(
            f"{where} is {len(value)} octets; the maximum is {MAX_SHORT_MESSAGE_LENGTH}: "
            "segment the text or carry it in the message_payload TLV"
        )
    return bytes((len(value),)) + value


def _encode_tlvs(pdu: Pdu, tlvs: tuple[Tlv, ...]) -> bytes:
    try:
        return b"".join([_pack_tlv_head(t.tag, len(t.value)) + t.value for t in tlvs])
    except (AttributeError, TypeError, struct.error):
        return _encode_tlvs_checked(pdu, tlvs)


def _encode_tlvs_checked(pdu: Pdu, tlvs: object) -> bytes:
    where = f"{type(pdu).__name__}.tlvs"
    if not isinstance(tlvs, tuple | list):
        raise ValueError(f"{where} must be a tuple of Tlv, got {type(tlvs).__name__}")
    parts = []
    for tlv in tlvs:
        if not isinstance(tlv, Tlv):
            raise ValueError(f"{where} must hold Tlv items, got {tlv!r}")
        tag, value = tlv.tag, tlv.value
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= 0xFFFF:
            raise ValueError(f"{where}: a TLV tag must be an int in 0..0xFFFF, got {tag!r}")
        if not isinstance(value, bytes | bytearray):
            raise ValueError(f"{where}: TLV 0x{tag:04X} value must be bytes, got {value!r}")
        if len(value) > MAX_TLV_VALUE_LENGTH:
            raise ValueError(
                f"{where}: TLV 0x{tag:04X} value is {len(value)} octets; "
                f"the maximum is {MAX_TLV_VALUE_LENGTH}"
            )
        parts.append(_pack_tlv_head(tag, len(value)))
        parts.append(value)
    return b"".join(parts)


def _encode_dests(pdu: Pdu, dests: object) -> bytes:
    where = f"{type(pdu).__name__}.dest_addresses"
    if not isinstance(dests, tuple | list) or len(dests) > 0xFF:
        raise ValueError(f"{where} must be a tuple of at most 255 destinations")
    parts = [bytes((len(dests),))]
    for dest in dests:
        if isinstance(dest, SmeAddress):
            parts.append(b"\x01")
            parts.append(_encode_u8(pdu, "dest_addresses.dest_addr_ton", dest.dest_addr_ton))
            parts.append(_encode_u8(pdu, "dest_addresses.dest_addr_npi", dest.dest_addr_npi))
            parts.append(
                _encode_cstr(pdu, "dest_addresses.destination_addr", dest.destination_addr, 21)
            )
        elif isinstance(dest, DistributionList):
            parts.append(b"\x02")
            parts.append(_encode_cstr(pdu, "dest_addresses.dl_name", dest.dl_name, 21))
        else:
            raise ValueError(f"{where} must hold SmeAddress or DistributionList, got {dest!r}")
    return b"".join(parts)


def _encode_unsuccess(pdu: Pdu, smes: object) -> bytes:
    where = f"{type(pdu).__name__}.unsuccess_smes"
    if not isinstance(smes, tuple | list) or len(smes) > 0xFF:
        raise ValueError(f"{where} must be a tuple of at most 255 UnsuccessSme")
    parts = [bytes((len(smes),))]
    for sme in smes:
        if not isinstance(sme, UnsuccessSme):
            raise ValueError(f"{where} must hold UnsuccessSme items, got {sme!r}")
        parts.append(_encode_u8(pdu, "unsuccess_smes.dest_addr_ton", sme.dest_addr_ton))
        parts.append(_encode_u8(pdu, "unsuccess_smes.dest_addr_npi", sme.dest_addr_npi))
        parts.append(_encode_cstr(pdu, "unsuccess_smes.destination_addr", sme.destination_addr, 21))
        code = sme.error_status_code
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 0xFFFFFFFF:
            raise ValueError(f"{where}: error_status_code must be a u32, got {code!r}")
        parts.append(_U32.pack(code))
    return b"".join(parts)


def _encode_layout(pdu: Pdu) -> bytes:
    """Body of any PDU from its layout, checking every field: the reference encoder."""
    cls = type(pdu)
    if (
        pdu.command_status
        and cls in _BODY_OPTIONAL_ON_ERROR
        and pdu == cls(pdu.sequence_number, pdu.command_status)
    ):
        return b""
    parts = []
    for name, kind, size, _status in _LAYOUTS[cls]:
        value = getattr(pdu, name)
        if kind == _U8:
            parts.append(_encode_u8(pdu, name, value))
        elif kind == _CSTR:
            parts.append(_encode_cstr(pdu, name, value, size))
        elif kind == _TIME:
            data = _encode_cstr(pdu, name, value, size)
            if len(data) not in (1, 17):
                raise ValueError(
                    f"{cls.__name__}.{name} must be empty or 16 characters "
                    f"(YYMMDDhhmmsstnnp, absolute or relative), got {value!r}"
                )
            parts.append(data)
        elif kind == _SM:
            parts.append(_encode_short_message(pdu, value))
        elif kind == _TLVS:
            parts.append(_encode_tlvs_checked(pdu, value))
        elif kind == _DESTS:
            parts.append(_encode_dests(pdu, value))
        else:  # _UNSUCCESS
            parts.append(_encode_unsuccess(pdu, value))
    return b"".join(parts)


def _header(pdu: Pdu, seq: int, body_length: int) -> bytes:
    try:
        return _pack_header(HEADER_LENGTH + body_length, pdu.command_id, pdu.command_status, seq)
    except (struct.error, TypeError):
        raise ValueError(
            f"{type(pdu).__name__}: sequence_number ({seq!r}) and command_status "
            f"({pdu.command_status!r}) must be ints in 0..0xFFFFFFFF"
        ) from None


def _encode_checked(pdu: Pdu, seq: int) -> bytes:
    body = _encode_layout(pdu)
    return _header(pdu, seq, len(body)) + body


def _encode_header_only(pdu: Pdu, seq: int) -> bytes:
    return _header(pdu, seq, 0)


# The fast paths pack the header and every fixed-size field with one struct.Struct per
# combination of string lengths, built on first use. Real traffic has a few dozen combinations
# (a handful of sender ids and number lengths); the cap only stops a peer or a bug that sends
# every possible length from growing the cache without bound.
_MAX_CACHED_FORMATS = 4096
_SHORT_MESSAGE_FORMATS: dict[tuple[int, int, int, int, int], struct.Struct] = {}
_MESSAGE_ID_FORMATS = [struct.Struct(f">IIII{n}sx") for n in range(65)]


def _short_message_format(key: tuple[int, int, int, int, int]) -> struct.Struct:
    if len(_SHORT_MESSAGE_FORMATS) >= _MAX_CACHED_FORMATS:
        _SHORT_MESSAGE_FORMATS.clear()
    st, sa, da, sd, vp = key
    fmt = struct.Struct(f">IIII{st}sxBB{sa}sxBB{da}sxBBB{sd}sx{vp}sxBBBBB")
    _SHORT_MESSAGE_FORMATS[key] = fmt
    return fmt


def _encode_short_message_fast(pdu: _ShortMessage, seq: int) -> bytes:
    # submit_sm / deliver_sm: the hot path. Anything unusual (a field too long, a NUL inside a
    # string, a wrong type, a number out of range) falls back to the reference encoder, which
    # raises the ValueError naming the field.
    try:
        st = pdu.service_type.encode("latin-1")
        sa = pdu.source_addr.encode("latin-1")
        da = pdu.destination_addr.encode("latin-1")
        sd = pdu.schedule_delivery_time.encode("latin-1")
        vp = pdu.validity_period.encode("latin-1")
        sm = pdu.short_message
        n = len(sm)
        if (
            len(st) > 5
            or len(sa) > 20
            or len(da) > 20
            or n > MAX_SHORT_MESSAGE_LENGTH
            or (sd and len(sd) != 16)
            or (vp and len(vp) != 16)
            or 0 in st
            or 0 in sa
            or 0 in da
            or 0 in sd
            or 0 in vp
            or type(sm) is not bytes
        ):
            return _encode_checked(pdu, seq)
        key = (len(st), len(sa), len(da), len(sd), len(vp))
        fmt = _SHORT_MESSAGE_FORMATS.get(key) or _short_message_format(key)
        tlvs = _encode_tlvs(pdu, pdu.tlvs) if pdu.tlvs else b""
        head = fmt.pack(
            fmt.size + n + len(tlvs),
            pdu.command_id,
            pdu.command_status,
            seq,
            st,
            pdu.source_addr_ton,
            pdu.source_addr_npi,
            sa,
            pdu.dest_addr_ton,
            pdu.dest_addr_npi,
            da,
            pdu.esm_class,
            pdu.protocol_id,
            pdu.priority_flag,
            sd,
            vp,
            pdu.registered_delivery,
            pdu.replace_if_present_flag,
            pdu.data_coding,
            pdu.sm_default_msg_id,
            n,
        )
    except (AttributeError, UnicodeEncodeError, struct.error, TypeError):
        return _encode_checked(pdu, seq)
    return head + sm + tlvs if tlvs else head + sm


def _encode_message_id_fast(pdu: SubmitSmResp | DeliverSmResp | DataSmResp, seq: int) -> bytes:
    # submit_sm_resp / deliver_sm_resp / data_sm_resp: the hot path, same fallback rule.
    try:
        data = pdu.message_id.encode("latin-1")
        if len(data) > 64 or 0 in data or (pdu.command_status and not data):
            return _encode_checked(pdu, seq)  # too long, or an error response: maybe no body
        fmt = _MESSAGE_ID_FORMATS[len(data)]
        if pdu.tlvs:
            tlvs = _encode_tlvs(pdu, pdu.tlvs)
            return fmt.pack(fmt.size + len(tlvs), pdu.command_id, pdu.command_status, seq, data) + (
                tlvs
            )
        return fmt.pack(fmt.size, pdu.command_id, pdu.command_status, seq, data)
    except (AttributeError, UnicodeEncodeError, struct.error, TypeError):
        return _encode_checked(pdu, seq)


_ENCODERS = {
    cls: _encode_checked if layout else _encode_header_only for cls, layout in _LAYOUTS.items()
}
_ENCODERS[SubmitSm] = _encode_short_message_fast
_ENCODERS[DeliverSm] = _encode_short_message_fast
_ENCODERS[SubmitSmResp] = _encode_message_id_fast
_ENCODERS[DeliverSmResp] = _encode_message_id_fast
_ENCODERS[DataSmResp] = _encode_message_id_fast


# --- decoding --------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> Pdu:
    """Read exactly one whole PDU.

    Raises:
        SmppProtocolError: the bytes are not a valid PDU; ``status`` says how to answer.
    """
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n < HEADER_LENGTH:
        raise SmppProtocolError(
            _S.ESME_RINVCMDLEN,
            f"a PDU needs at least {HEADER_LENGTH} octets for its header, got {n}",
        )
    length, command_id, status, seq = _unpack_header(data)
    if length != n:
        raise SmppProtocolError(
            _S.ESME_RINVCMDLEN,
            f"command_length says {length} octets but the PDU has {n}",
            seq,
            command_id,
        )
    return decode_frame(data, command_id, status, seq)


def decode_frame(data: bytes, command_id: int, status: int, seq: int) -> Pdu:
    """Decode a PDU whose header was already read and whose length was checked (the framer)."""
    cls = PDU_CLASSES.get(command_id)
    if cls is None:
        raise SmppProtocolError(
            _S.ESME_RINVCMDID, f"unknown command_id 0x{command_id:08X}", seq, command_id
        )
    fast = _FAST_DECODERS.get(cls)
    if fast is not None:
        try:
            pdu = fast(cls, data, seq, status)
        except (IndexError, struct.error):
            pdu = None
        if pdu is not None:
            return pdu
    return _decode_layout(cls, data, seq, status)


def _truncated(cls: type[Pdu], name: str, seq: int) -> SmppProtocolError:
    return SmppProtocolError(
        _S.ESME_RINVCMDLEN,
        f"{_name(cls)}: the PDU ends inside {name}; command_length is too short",
        seq,
        cls.command_id,
    )


def _name(cls: type[Pdu]) -> str:
    return CommandId(cls.command_id).name


def _decode_cstr(
    cls: type[Pdu], data: bytes, off: int, name: str, size: int, status: int, seq: int
) -> tuple[str, int]:
    end = data.find(0, off, off + size)
    if end < 0:
        if len(data) - off < size:
            raise SmppProtocolError(
                _S.ESME_RINVCMDLEN,
                f"{_name(cls)}: the PDU ends inside {name} before its NUL terminator",
                seq,
                cls.command_id,
            )
        raise SmppProtocolError(
            status,
            f"{_name(cls)}: {name} has no NUL terminator within its maximum of {size} octets",
            seq,
            cls.command_id,
        )
    return data[off:end].decode("latin-1"), end + 1


def _decode_tlvs(data: bytes, off: int, seq: int, command_id: int) -> tuple[Tlv, ...]:
    n = len(data)
    tlvs = []
    while off < n:
        if n - off < 4:
            raise SmppProtocolError(
                _S.ESME_RINVOPTPARSTREAM,
                f"{n - off} stray octets after the last TLV: a TLV header needs 4",
                seq,
                command_id,
            )
        tag, length = _unpack_tlv_head(data, off)
        off += 4
        if off + length > n:
            raise SmppProtocolError(
                _S.ESME_RINVPARLEN,
                f"TLV 0x{tag:04X} declares {length} octets but only {n - off} remain in the PDU",
                seq,
                command_id,
            )
        tlvs.append(Tlv(tag, data[off : off + length]))
        off += length
    return tuple(tlvs)


def _decode_layout(cls: type[Pdu], data: bytes, seq: int, status: int) -> Pdu:
    """Any PDU from its layout, checking every field: the reference decoder."""
    n = len(data)
    command_id = cls.command_id
    if n == HEADER_LENGTH and cls in _BODY_OPTIONAL_ON_ERROR and (status or cls is DeliverSmResp):
        # Section 3.3: an error response carries no body. deliver_sm_resp without its (unused)
        # NUL message_id is common from ESMEs even on success; accepting it loses nothing.
        return cls(seq, status)
    off = HEADER_LENGTH
    values: list[object] = []
    for name, kind, size, field_status in _LAYOUTS[cls]:
        if kind == _U8:
            if off >= n:
                raise _truncated(cls, name, seq)
            values.append(data[off])
            off += 1
        elif kind in (_CSTR, _TIME):
            value, off = _decode_cstr(cls, data, off, name, size, field_status, seq)
            values.append(value)
        elif kind == _SM:
            if off >= n:
                raise _truncated(cls, "sm_length", seq)
            sm_length = data[off]
            off += 1
            if sm_length > MAX_SHORT_MESSAGE_LENGTH:
                raise SmppProtocolError(
                    _S.ESME_RINVMSGLEN,
                    f"{_name(cls)}: sm_length is {sm_length}; the maximum is "
                    f"{MAX_SHORT_MESSAGE_LENGTH}",
                    seq,
                    command_id,
                )
            if off + sm_length > n:
                raise SmppProtocolError(
                    _S.ESME_RINVMSGLEN,
                    f"{_name(cls)}: sm_length is {sm_length} but only {n - off} octets "
                    "remain in the PDU",
                    seq,
                    command_id,
                )
            values.append(data[off : off + sm_length])
            off += sm_length
        elif kind == _TLVS:
            values.append(_decode_tlvs(data, off, seq, command_id))
            off = n
        elif kind == _DESTS:
            dests, off = _decode_dests(cls, data, off, seq)
            values.append(dests)
        else:  # _UNSUCCESS
            smes, off = _decode_unsuccess(cls, data, off, seq)
            values.append(smes)
    if off != n:
        raise SmppProtocolError(
            _S.ESME_RINVCMDLEN,
            f"{_name(cls)}: {n - off} octets after its last field; command_length is too long",
            seq,
            command_id,
        )
    return cls(seq, status, *values)


def _decode_dests(
    cls: type[Pdu], data: bytes, off: int, seq: int
) -> tuple[tuple[SmeAddress | DistributionList, ...], int]:
    n = len(data)
    if off >= n:
        raise _truncated(cls, "number_of_dests", seq)
    count = data[off]
    off += 1
    dests: list[SmeAddress | DistributionList] = []
    for _ in range(count):
        if off >= n:
            raise _truncated(cls, "dest_flag", seq)
        flag = data[off]
        off += 1
        if flag == 1:
            if off + 2 > n:
                raise _truncated(cls, "dest_address", seq)
            ton, npi = data[off], data[off + 1]
            addr, off = _decode_cstr(
                cls, data, off + 2, "destination_addr", 21, _S.ESME_RINVDSTADR, seq
            )
            dests.append(SmeAddress(ton, npi, addr))
        elif flag == 2:
            name, off = _decode_cstr(cls, data, off, "dl_name", 21, _S.ESME_RINVDLNAME, seq)
            dests.append(DistributionList(name))
        else:
            raise SmppProtocolError(
                _S.ESME_RINVDESTFLAG,
                f"{_name(cls)}: dest_flag is {flag}; it must be 1 (SME address) or 2 "
                "(distribution list)",
                seq,
                cls.command_id,
            )
    return tuple(dests), off


def _decode_unsuccess(
    cls: type[Pdu], data: bytes, off: int, seq: int
) -> tuple[tuple[UnsuccessSme, ...], int]:
    n = len(data)
    if off >= n:
        raise _truncated(cls, "no_unsuccess", seq)
    count = data[off]
    off += 1
    smes = []
    for _ in range(count):
        if off + 2 > n:
            raise _truncated(cls, "unsuccess_sme", seq)
        ton, npi = data[off], data[off + 1]
        addr, off = _decode_cstr(
            cls, data, off + 2, "destination_addr", 21, _S.ESME_RINVDSTADR, seq
        )
        if off + 4 > n:
            raise _truncated(cls, "error_status_code", seq)
        (code,) = _U32.unpack_from(data, off)
        off += 4
        smes.append(UnsuccessSme(ton, npi, addr, code))
    return tuple(smes), off


def _decode_short_message_fast(
    cls: type[_ShortMessage], data: bytes, seq: int, status: int
) -> _ShortMessage | None:
    # submit_sm / deliver_sm hot path. Returns None (or lets IndexError out) on anything the
    # reference decoder must look at; that one then raises the precise error.
    find = data.find
    i = find(0, 16, 22)  # service_type, at most 6 octets with its NUL
    if i < 0:
        return None
    j = find(0, i + 3, i + 24)  # source_addr, at most 21
    if j < 0:
        return None
    k = find(0, j + 3, j + 24)  # destination_addr, at most 21
    if k < 0:
        return None
    s = find(0, k + 4, k + 21)  # schedule_delivery_time, at most 17
    if s < 0:
        return None
    v = find(0, s + 1, s + 18)  # validity_period, at most 17
    if v < 0:
        return None
    sm_length = data[v + 5]
    end = v + 6 + sm_length
    n = len(data)
    if sm_length > MAX_SHORT_MESSAGE_LENGTH or end > n:
        return None
    return cls(
        seq,
        status,
        data[16:i].decode("latin-1"),
        data[i + 1],
        data[i + 2],
        data[i + 3 : j].decode("latin-1"),
        data[j + 1],
        data[j + 2],
        data[j + 3 : k].decode("latin-1"),
        data[k + 1],
        data[k + 2],
        data[k + 3],
        data[k + 4 : s].decode("latin-1"),
        data[s + 1 : v].decode("latin-1"),
        data[v + 1],
        data[v + 2],
        data[v + 3],
        data[v + 4],
        data[v + 6 : end],
        _decode_tlvs(data, end, seq, cls.command_id) if end < n else (),
    )


def _decode_message_id_fast(
    cls: type[SubmitSmResp | DeliverSmResp | DataSmResp], data: bytes, seq: int, status: int
) -> Pdu | None:
    n = len(data)
    end = data.find(0, 16, 81)  # message_id, at most 65 octets with its NUL
    if end < 0:
        return None  # includes the header-only error response: the reference decoder decides
    message_id = data[16:end].decode("latin-1") if end > 16 else ""
    if end + 1 == n:
        return cls(seq, status, message_id)
    return cls(seq, status, message_id, _decode_tlvs(data, end + 1, seq, cls.command_id))


def _decode_header_only(cls: type[Pdu], data: bytes, seq: int, status: int) -> Pdu | None:
    return cls(seq, status) if len(data) == HEADER_LENGTH else None


_FAST_DECODERS = {cls: _decode_header_only for cls, layout in _LAYOUTS.items() if not layout}
_FAST_DECODERS[SubmitSm] = _decode_short_message_fast
_FAST_DECODERS[DeliverSm] = _decode_short_message_fast
_FAST_DECODERS[SubmitSmResp] = _decode_message_id_fast
_FAST_DECODERS[DeliverSmResp] = _decode_message_id_fast
_FAST_DECODERS[DataSmResp] = _decode_message_id_fast


# --- TLV helpers -----------------------------------------------------------------------------


def tlv_u8(tag: int, value: int) -> Tlv:
    """A one-octet integer TLV (sar_total_segments, message_state, sc_interface_version…)."""
    return Tlv(tag, bytes((value,)))


def tlv_u16(tag: int, value: int) -> Tlv:
    """A two-octet integer TLV (sar_msg_ref_num, source_port, user_message_reference…)."""
    return Tlv(tag, _U16.pack(value))


def tlv_u32(tag: int, value: int) -> Tlv:
    """A four-octet integer TLV (qos_time_to_live)."""
    return Tlv(tag, _U32.pack(value))


def tlv_cstring(tag: int, value: str) -> Tlv:
    """A C-Octet String TLV (receipted_message_id, additional_status_info_text)."""
    data = value.encode("latin-1")
    if 0 in data:
        raise ValueError(f"TLV 0x{tag:04X} must not contain NUL, got {value!r}")
    return Tlv(tag, data + b"\0")


def tlv_value(pdu: Pdu, tag: int) -> bytes | None:
    """The raw value of the first TLV with ``tag``, or ``None`` when the PDU has none."""
    for tlv in getattr(pdu, "tlvs", ()):
        if tlv.tag == tag:
            return tlv.value
    return None


def _bad_length(pdu: Pdu, tag: int, value: bytes, expected: str) -> SmppProtocolError:
    try:
        name = Tag(tag).name
    except ValueError:
        name = f"TLV 0x{tag:04X}"
    return SmppProtocolError(
        _S.ESME_RINVPARLEN,
        f"{name} must be {expected}, got {len(value)} octets",
        pdu.sequence_number,
        pdu.command_id,
    )


def tlv_int(pdu: Pdu, tag: int) -> int | None:
    """An integer TLV of 1, 2 or 4 octets, big-endian, whatever its width; ``None`` when absent.

    Raises:
        SmppProtocolError: ESME_RINVPARLEN when the value has another length.
    """
    value = tlv_value(pdu, tag)
    if value is None:
        return None
    if len(value) not in (1, 2, 4):
        raise _bad_length(pdu, tag, value, "1, 2 or 4 octets")
    return int.from_bytes(value, "big")


def _tlv_fixed(pdu: Pdu, tag: int, size: int) -> int | None:
    value = tlv_value(pdu, tag)
    if value is None:
        return None
    if len(value) != size:
        raise _bad_length(pdu, tag, value, f"{size} octet{'s' if size > 1 else ''}")
    return int.from_bytes(value, "big")


def tlv_u8_value(pdu: Pdu, tag: int) -> int | None:
    """A one-octet integer TLV; ``None`` when absent.

    Raises:
        SmppProtocolError: ESME_RINVPARLEN when the value is not exactly one octet.
    """
    return _tlv_fixed(pdu, tag, 1)


def tlv_u16_value(pdu: Pdu, tag: int) -> int | None:
    """A two-octet integer TLV; ``None`` when absent (ESME_RINVPARLEN for another length)."""
    return _tlv_fixed(pdu, tag, 2)


def tlv_u32_value(pdu: Pdu, tag: int) -> int | None:
    """A four-octet integer TLV; ``None`` when absent (ESME_RINVPARLEN for another length)."""
    return _tlv_fixed(pdu, tag, 4)


def tlv_cstring_value(pdu: Pdu, tag: int) -> str | None:
    """A C-Octet String TLV up to its first NUL; a missing NUL is tolerated (many SMSCs omit it)."""
    value = tlv_value(pdu, tag)
    if value is None:
        return None
    end = value.find(0)
    return (value if end < 0 else value[:end]).decode("latin-1")


def receipted_message_id(pdu: Pdu) -> str | None:
    """The SMSC message id a delivery receipt refers to (TLV 0x001E), if present."""
    return tlv_cstring_value(pdu, Tag.receipted_message_id)


def message_state(pdu: Pdu) -> MessageState | int | None:
    """The message_state TLV (0x0427) of a receipt: a ``MessageState`` when known."""
    state = _tlv_fixed(pdu, Tag.message_state, 1)
    if state is None:
        return None
    try:
        return MessageState(state)
    except ValueError:
        return state


def network_error_code(pdu: Pdu) -> tuple[int, int] | None:
    """The network_error_code TLV (0x0423) as (network type, error code).

    Network type 1 is ANSI-136, 2 IS-95, 3 GSM, 4 reserved; the error code is that network's own.

    Raises:
        SmppProtocolError: ESME_RINVPARLEN when the value is not 3 octets.
    """
    value = tlv_value(pdu, Tag.network_error_code)
    if value is None:
        return None
    if len(value) != 3:
        raise _bad_length(pdu, Tag.network_error_code, value, "3 octets")
    return value[0], _U16.unpack_from(value, 1)[0]


def sar_info(pdu: Pdu) -> tuple[int, int, int] | None:
    """(sar_msg_ref_num, sar_total_segments, sar_segment_seqnum) when all three TLVs are present.

    Raises:
        SmppProtocolError: ESME_RINVPARLEN for a wrong length, ESME_RMISSINGOPTPARAM when only
        some of the three are present.
    """
    ref = _tlv_fixed(pdu, Tag.sar_msg_ref_num, 2)
    total = _tlv_fixed(pdu, Tag.sar_total_segments, 1)
    seqnum = _tlv_fixed(pdu, Tag.sar_segment_seqnum, 1)
    if ref is None and total is None and seqnum is None:
        return None
    if ref is None or total is None or seqnum is None:
        raise SmppProtocolError(
            _S.ESME_RMISSINGOPTPARAM,
            "sar_msg_ref_num, sar_total_segments and sar_segment_seqnum go together; "
            "only some are present",
            pdu.sequence_number,
            pdu.command_id,
        )
    return ref, total, seqnum


def message_payload(pdu: Pdu) -> bytes | None:
    """The message_payload TLV (0x0424): message content beyond short_message's 254 octets."""
    return tlv_value(pdu, Tag.message_payload)
