"""Splitting a text into SMS segments the way a handset does, with a UDH or SAR TLVs.

A text that fits one SMS (160 GSM septets or 70 UCS-2 units, i.e. 140 octets over the air)
is one segment. A longer one is cut into concatenated parts, each carrying either a User Data
Header in front of the text (TS 23.040 §9.2.3.24.1, IEI 0x00 with an 8-bit reference, or
§9.2.3.24.8, IEI 0x08 with a 16-bit one) with ``esm_class`` UDHI (0x40) set, or, in ``"sar"``
mode, the SMPP ``sar_msg_ref_num`` / ``sar_total_segments`` / ``sar_segment_seqnum`` TLVs and
a bare text payload. A cut never separates an extension character's ESC from its code, nor the
two halves of a UTF-16 surrogate pair: that segment carries one unit less, as on a phone.

Examples:
    >>> [len(s.payload) for s in split("a" * 160, reference=7)]
    [160]
    >>> parts = split("a" * 161, reference=7)
    >>> [(s.udh.hex(), len(s.payload)) for s in parts]
    [('050003070201', 159), ('050003070202', 14)]
    >>> parts[0].needs_udhi, parts[0].data_coding
    (True, 0)
    >>> [s.sar for s in split("😀" * 40, mode="sar", reference=513)]
    [(513, 2, 1), (513, 2, 2)]
    >>> segment_count("€" * 80), segment_count("€" * 81)  # each euro sign is 2 septets
    (1, 2)

Warning:
    In ``"sar"`` mode each part carries 153 septets / 67 UCS-2 units although its
    ``short_message`` has no UDH and could hold 160 / 70: the SMSC turns the TLVs into a UDH
    over the air, so a fuller part would not fit there, and the counts stay the same as a
    handset shows and bills. A 16-bit reference (``reference`` above 255, UDH mode) costs one
    more UDH octet, so its parts hold 152 septets / 66 units and a text may need one part
    more than ``segment_count(text)`` with a small reference says.

    Limits are counted on the air-interface form (packed septets), while the GSM payload in
    ``Segment.payload`` is unpacked, one septet per octet, as SMSCs expect with
    ``data_coding`` 0: a full concatenated part is 6 + 153 = 159 octets long in the PDU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sluice.protocols.smpp.gsm import (
    DATA_CODING_GSM7,
    DATA_CODING_UCS2,
    encode_ucs2,
    try_encode_gsm,
)

# TS 23.040 §9.2.3.24: TP-User-Data holds at most 140 octets, UDH included.
MAX_USER_DATA_OCTETS = 140
SINGLE_GSM_SEPTETS = MAX_USER_DATA_OCTETS * 8 // 7  # 160
SINGLE_UCS2_UNITS = MAX_USER_DATA_OCTETS // 2  # 70

# UDHL + IEI + IEDL + (reference, total, sequence): 1+1+1+3 octets, or 1+1+1+4 for IEI 0x08.
UDH_8BIT_REFERENCE_OCTETS = 6
UDH_16BIT_REFERENCE_OCTETS = 7
# What remains of 140 octets after the UDH, in whole septets (the fill bits that align the
# text to a septet boundary fit in the remainder) or in whole UCS-2 units.
CONCAT_GSM_SEPTETS = (MAX_USER_DATA_OCTETS - UDH_8BIT_REFERENCE_OCTETS) * 8 // 7  # 153
CONCAT_UCS2_UNITS = (MAX_USER_DATA_OCTETS - UDH_8BIT_REFERENCE_OCTETS) // 2  # 67
CONCAT_16BIT_GSM_SEPTETS = (MAX_USER_DATA_OCTETS - UDH_16BIT_REFERENCE_OCTETS) * 8 // 7  # 152
CONCAT_16BIT_UCS2_UNITS = (MAX_USER_DATA_OCTETS - UDH_16BIT_REFERENCE_OCTETS) // 2  # 66

# The total is one octet in IEI 0x00/0x08 and in sar_total_segments, so 255 is the ceiling.
PROTOCOL_MAX_SEGMENTS = 255
# Default cap per message. Handsets reassemble far more, but operators commonly refuse or
# bill harshly past 6-10 parts; 10 parts allow 1530 GSM or 670 UCS-2 characters.
MAX_SEGMENTS = 10
# Concatenation references are 8 bits (IEI 0x00) or 16 bits (IEI 0x08, sar_msg_ref_num).
MAX_8BIT_REFERENCE = 0xFF
MAX_REFERENCE = 0xFFFF

_ESC = 0x1B
_HIGH_SURROGATE_FIRST_OCTET = range(0xD8, 0xDC)  # UTF-16-BE: D800-DBFF start a pair

SegmentationMode = Literal["udh", "sar"]


class TooLong(ValueError):
    """The text needs more segments than the caller allows."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``submit_sm`` worth of text.

    ``payload`` is the whole ``short_message``: in UDH mode it starts with ``udh``, and
    ``needs_udhi`` says to set ``esm_class`` 0x40. ``sar`` is ``(ref, total, seq)`` for the
    SAR TLVs. A single-part message has neither.
    """

    payload: bytes
    data_coding: int
    udh: bytes | None
    sar: tuple[int, int, int] | None

    @property
    def needs_udhi(self) -> bool:
        return self.udh is not None

    @property
    def body(self) -> bytes:
        """The text octets without the UDH."""
        return self.payload[len(self.udh) :] if self.udh is not None else self.payload


def _cuts(data: bytes, unit: int, per_part: int) -> list[int]:
    """Octet offsets where concatenated parts end, moved back one unit where a cut would
    split an escape pair (GSM, ``unit`` 1) or a surrogate pair (UCS-2, ``unit`` 2)."""
    ends: list[int] = []
    step = per_part * unit
    start, size = 0, len(data)
    while size - start > step:
        end = start + step
        last_unit_start = data[end - unit]
        if unit == 1:
            if last_unit_start == _ESC:  # an ESC is always the first half of a pair
                end -= 1
        elif last_unit_start in _HIGH_SURROGATE_FIRST_OCTET:
            end -= 2
        ends.append(end)
        start = end
    ends.append(size)
    return ends


def _encode(text: str) -> tuple[bytes, int, int, int, int]:
    """(octets, data_coding, octets per unit, units in one SMS, units per 8-bit-ref part)."""
    septets = try_encode_gsm(text)
    if septets is not None:
        return septets, DATA_CODING_GSM7, 1, SINGLE_GSM_SEPTETS, CONCAT_GSM_SEPTETS
    return encode_ucs2(text), DATA_CODING_UCS2, 2, SINGLE_UCS2_UNITS, CONCAT_UCS2_UNITS


def _per_part(unit: int, per_part: int, *, mode: SegmentationMode, reference: int) -> int:
    if mode == "udh" and reference > MAX_8BIT_REFERENCE:
        return CONCAT_16BIT_GSM_SEPTETS if unit == 1 else CONCAT_16BIT_UCS2_UNITS
    return per_part


def _check(mode: str, reference: int, max_segments: int) -> None:
    if mode not in ("udh", "sar"):
        raise ValueError(f"mode must be 'udh' or 'sar', got {mode!r}")
    if not 0 <= reference <= MAX_REFERENCE:
        raise ValueError(f"reference must be 0..{MAX_REFERENCE}, got {reference}")
    if not 1 <= max_segments <= PROTOCOL_MAX_SEGMENTS:
        raise ValueError(f"max_segments must be 1..{PROTOCOL_MAX_SEGMENTS}, got {max_segments}")


def split(
    text: str,
    *,
    mode: SegmentationMode = "udh",
    reference: int,
    max_segments: int = MAX_SEGMENTS,
) -> list[Segment]:
    """Segments for ``text``: GSM 7-bit when it fits the alphabet, else UCS-2.

    ``reference`` (0..65535) ties the parts together; in UDH mode up to 255 uses the 8-bit
    IEI 0x00 and above it the 16-bit IEI 0x08. It is ignored for a single-part message.
    Raises ``TooLong`` when more than ``max_segments`` parts are needed, and ValueError for
    an unpaired surrogate in ``text`` or an out-of-range argument.
    """
    _check(mode, reference, max_segments)
    data, data_coding, unit, single, per_part = _encode(text)
    if len(data) <= single * unit:
        return [Segment(data, data_coding, None, None)]
    ends = _cuts(data, unit, _per_part(unit, per_part, mode=mode, reference=reference))
    total = len(ends)
    if total > max_segments:
        unit_name = "septets" if unit == 1 else "UCS-2 units"
        raise TooLong(
            f"text needs {total} segments ({len(data) // unit} {unit_name}) but max_segments "
            f"is {max_segments}; shorten the text or raise the limit "
            f"(at most {PROTOCOL_MAX_SEGMENTS})"
        )
    segments: list[Segment] = []
    start = 0
    for seq, end in enumerate(ends, 1):
        body = data[start:end]
        start = end
        if mode == "sar":
            segments.append(Segment(body, data_coding, None, (reference, total, seq)))
            continue
        if reference > MAX_8BIT_REFERENCE:
            udh = bytes((6, 0x08, 4, reference >> 8, reference & 0xFF, total, seq))
        else:
            udh = bytes((5, 0x00, 3, reference, total, seq))
        segments.append(Segment(udh + body, data_coding, udh, None))
    return segments


def segment_count(text: str, *, mode: SegmentationMode = "udh", reference: int = 0) -> int:
    """How many parts ``split(text, mode=mode, reference=reference)`` makes, with no limit.

    The result can exceed ``PROTOCOL_MAX_SEGMENTS``; ``split`` would then refuse the text.
    """
    _check(mode, reference, PROTOCOL_MAX_SEGMENTS)
    data, _, unit, single, per_part = _encode(text)
    if len(data) <= single * unit:
        return 1
    return len(_cuts(data, unit, _per_part(unit, per_part, mode=mode, reference=reference)))
