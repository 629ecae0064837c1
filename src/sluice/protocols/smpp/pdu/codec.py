"""The reference codec of SMPP PDUs: each PDU's layout, the command_id table, and responses.

Each PDU type has a layout (its fields in wire order, with each C-Octet String's maximum size and
the command_status that answers a bad value) and one generic codec interprets it, checking every
field: ``_encode_checked`` and ``_decode_layout``. The hot PDUs also have hand-written fast paths
(``pdu.fast``), which hand over to this codec whenever they meet anything unusual, so that it
raises the precise error and the two cannot disagree on what is valid.

Errors in received bytes raise ``SmppProtocolError`` with the command_status to answer with.
Fields we cannot encode raise ``ValueError`` naming the PDU, the field and the limit.

Decoding is liberal where real peers differ from the text and nothing is lost by accepting
(a response with an error status and no body; a deliver_sm_resp without its NUL message_id; TLVs
on submit_sm_resp and deliver_sm_resp as SMPP 5.0 allows), and strict everywhere else. Encoding
is strict: what we send is what the specification says.
"""

from __future__ import annotations

import struct

from sluice.protocols.smpp.constants import RESPONSE_BIT, CommandId, CommandStatus
from sluice.protocols.smpp.errors import SmppProtocolError
from sluice.protocols.smpp.pdu.tlv import _decode_tlvs, _encode_tlvs_checked
from sluice.protocols.smpp.pdu.types import (
    HEADER_LENGTH,
    MAX_SHORT_MESSAGE_LENGTH,
    AlertNotification,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CancelSmResp,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    DistributionList,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    ReplaceSmResp,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    UnsuccessSme,
)

_S = CommandStatus
_pack_header = struct.Struct(">IIII").pack
_U32 = struct.Struct(">I")


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


# --- decoding --------------------------------------------------------------------------------


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
