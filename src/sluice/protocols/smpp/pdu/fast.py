"""Hand-tuned encoders and decoders of the PDUs that carry nearly all traffic.

submit_sm, deliver_sm and their responses (and data_sm_resp) have fast paths: one cached
``struct.Struct`` per combination of string lengths to encode, ``bytes.find`` and indexing to
decode, no per-field lookups. Whenever a fast path meets anything unusual it hands over to the
reference codec (``pdu.codec``), which then raises the precise error, so the two cannot disagree
on what is valid. PDUs without a body are encoded and decoded from their header alone.

``_ENCODERS`` and ``_FAST_DECODERS`` file each PDU class under the function that handles it
(a fast path where there is one, else the reference codec), which ``encode`` and
``decode_frame`` look up once per PDU: the dispatch is one dict lookup and one call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from sluice.protocols.smpp.pdu.codec import _LAYOUTS, _encode_checked, _header
from sluice.protocols.smpp.pdu.tlv import _decode_tlvs, _encode_tlvs
from sluice.protocols.smpp.pdu.types import (
    HEADER_LENGTH,
    MAX_SHORT_MESSAGE_LENGTH,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    _ShortMessage,
)

# A table's key decides the type of its function's first argument (a fast path takes its own PDU
# class, not any Pdu), which a dict's value type cannot express: hence Any there.
_Encoder = Callable[[Any, int], bytes]
_FastDecoder = Callable[[Any, bytes, int, int], Pdu | None]


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


_ENCODERS: dict[type[Pdu], _Encoder] = {
    cls: _encode_checked if layout else _encode_header_only for cls, layout in _LAYOUTS.items()
}
_ENCODERS[SubmitSm] = _encode_short_message_fast
_ENCODERS[DeliverSm] = _encode_short_message_fast
_ENCODERS[SubmitSmResp] = _encode_message_id_fast
_ENCODERS[DeliverSmResp] = _encode_message_id_fast
_ENCODERS[DataSmResp] = _encode_message_id_fast


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


_FAST_DECODERS: dict[type[Pdu], _FastDecoder] = {
    cls: _decode_header_only for cls, layout in _LAYOUTS.items() if not layout
}
_FAST_DECODERS[SubmitSm] = _decode_short_message_fast
_FAST_DECODERS[DeliverSm] = _decode_short_message_fast
_FAST_DECODERS[SubmitSmResp] = _decode_message_id_fast
_FAST_DECODERS[DeliverSmResp] = _decode_message_id_fast
_FAST_DECODERS[DataSmResp] = _decode_message_id_fast
