"""TLVs (optional parameters): the stream after a PDU's mandatory fields, and typed values.

A PDU keeps its TLVs as raw ``Tlv`` (tag, bytes), in order and verbatim; the builders here
(``tlv_u8``, ``tlv_cstring``…) make one from a value, and the readers (``tlv_int``,
``receipted_message_id``, ``sar_info``…) take one out of a PDU, checking its length.
``_encode_tlvs`` and ``_decode_tlvs`` turn the stream into bytes and back for the codecs.
"""

from __future__ import annotations

import struct

from sluice.protocols.smpp.constants import CommandStatus, MessageState, Tag
from sluice.protocols.smpp.errors import SmppProtocolError
from sluice.protocols.smpp.pdu.types import Pdu, Tlv

#: A TLV's length field is two octets.
MAX_TLV_VALUE_LENGTH = 0xFFFF

_S = CommandStatus
_tlv_head = struct.Struct(">HH")
_pack_tlv_head = _tlv_head.pack
_unpack_tlv_head = _tlv_head.unpack_from
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


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
    tlv: Tlv  # not every PDU class has ``tlvs``; those that do hold Tlv
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
