"""SMPP v3.4 PDUs as immutable structs, and the codec between them and bytes.

``encode(pdu)`` gives the bytes of one PDU; ``decode(data)`` reads exactly one whole PDU. Each
goes straight to the function filed for the PDU's class: a fast path for the PDUs that carry
nearly all traffic, the reference codec for the others. The parts, one module each:

- ``types``: the PDU structs (``SubmitSm``, ``DeliverSmResp``…) and the values inside them;
- ``codec``: each PDU's layout, the command_id table (``PDU_CLASSES``), responses
  (``response_for``) and the reference encoder and decoder that check every field;
- ``fast``: the hand-tuned encoders and decoders of submit_sm, deliver_sm and their responses;
- ``tlv``: optional parameters, their stream on the wire and typed builders and readers.

Errors in received bytes raise ``SmppProtocolError`` with the command_status to answer with.
Fields we cannot encode raise ``ValueError`` naming the PDU, the field and the limit.

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

from sluice.protocols.smpp.constants import CommandStatus
from sluice.protocols.smpp.errors import SmppProtocolError
from sluice.protocols.smpp.pdu import codec as _codec
from sluice.protocols.smpp.pdu import fast as _fast
from sluice.protocols.smpp.pdu.codec import (
    _decode_layout,
    is_request,
    is_response,
    reply_for,
    response_class,
    response_for,
)
from sluice.protocols.smpp.pdu.tlv import (
    MAX_TLV_VALUE_LENGTH,
    message_payload,
    message_state,
    network_error_code,
    receipted_message_id,
    sar_info,
    tlv_cstring,
    tlv_cstring_value,
    tlv_int,
    tlv_u8,
    tlv_u8_value,
    tlv_u16,
    tlv_u16_value,
    tlv_u32,
    tlv_u32_value,
    tlv_value,
)
from sluice.protocols.smpp.pdu.types import (
    HEADER_LENGTH,
    MAX_SEQUENCE_NUMBER,
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
    Tlv,
    Unbind,
    UnbindResp,
    UnsuccessSme,
)

_S = CommandStatus
_unpack_header = struct.Struct(">IIII").unpack_from
# The tables the per-PDU lookups go through, bound by assignment rather than imported by name:
# CPython 3.11 compiles ``name.get(...)`` on a name from an import as an attribute load that
# builds a bound method on every call (it expects a module there), ~50 ns per lookup measured;
# on any other global it calls the method directly.
PDU_CLASSES = _codec.PDU_CLASSES
_ENCODERS = _fast._ENCODERS
_FAST_DECODERS = _fast._FAST_DECODERS


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


__all__ = [
    "HEADER_LENGTH",
    "MAX_SEQUENCE_NUMBER",
    "MAX_SHORT_MESSAGE_LENGTH",
    "MAX_TLV_VALUE_LENGTH",
    "PDU_CLASSES",
    "AlertNotification",
    "BindReceiver",
    "BindReceiverResp",
    "BindTransceiver",
    "BindTransceiverResp",
    "BindTransmitter",
    "BindTransmitterResp",
    "CancelSm",
    "CancelSmResp",
    "DataSm",
    "DataSmResp",
    "DeliverSm",
    "DeliverSmResp",
    "DistributionList",
    "EnquireLink",
    "EnquireLinkResp",
    "GenericNack",
    "Outbind",
    "Pdu",
    "QuerySm",
    "QuerySmResp",
    "ReplaceSm",
    "ReplaceSmResp",
    "SmeAddress",
    "SubmitMulti",
    "SubmitMultiResp",
    "SubmitSm",
    "SubmitSmResp",
    "Tlv",
    "Unbind",
    "UnbindResp",
    "UnsuccessSme",
    "decode",
    "decode_frame",
    "encode",
    "encode_many",
    "is_request",
    "is_response",
    "message_payload",
    "message_state",
    "network_error_code",
    "receipted_message_id",
    "reply_for",
    "response_class",
    "response_for",
    "sar_info",
    "tlv_cstring",
    "tlv_cstring_value",
    "tlv_int",
    "tlv_u8",
    "tlv_u8_value",
    "tlv_u16",
    "tlv_u16_value",
    "tlv_u32",
    "tlv_u32_value",
    "tlv_value",
]
