"""What the SMSC simulator remembers of accepted messages, and how tests read it back.

On the hot path the simulator keeps each accepted submit_sm as it was decoded (`Accepted`, a
few slots around the PDU); decoding the text, stripping the UDH and reading the concatenation
info happen only when a test asks (`submitted`), so recording costs a benchmark almost nothing.
`reassemble` joins the parts of concatenated messages (UDH IEI 0x00 / 0x08 or SAR TLVs) back
into whole texts.

Examples:
    >>> from sluice.protocols.smpp import SubmitSm
    >>> from sluice.protocols.smpp.segmentation import split
    >>> parts = [
    ...     SubmitSm(destination_addr="123", esm_class=0x40, short_message=s.payload)
    ...     for s in split("x" * 200, reference=9)
    ... ]
    >>> records = [submitted(Accepted(f"{n}", "acme", pdu, 0.0)) for n, pdu in enumerate(parts)]
    >>> [(r.concat.ref, r.concat.total, r.concat.seq, len(r.text)) for r in records]
    [(9, 2, 1, 153), (9, 2, 2, 47)]
    >>> reassemble(records) == ["x" * 200]
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from sluice.protocols.smpp import (
    ESM_CLASS_UDHI,
    DataSm,
    SmppProtocolError,
    SubmitSm,
    message_payload,
    sar_info,
)
from sluice.protocols.smpp.gsm import decode_short_message

ConcatKind = Literal["udh8", "udh16", "sar"]

# TS 23.040 §9.2.3.24: information element ids of concatenated short messages.
_IEI_CONCAT_8BIT = 0x00
_IEI_CONCAT_16BIT = 0x08


class Concat(msgspec.Struct, frozen=True, gc=False):
    """Where one part sits in a concatenated message: reference, part count, 1-based number."""

    ref: int
    total: int
    seq: int
    kind: ConcatKind


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted submit_sm (or data_sm) as a test wants to see it."""

    message_id: str
    #: The account (bind system_id) it came in on.
    system_id: str
    #: ``submit_sm`` or ``data_sm``.
    command: str
    source: str
    destination: str
    #: The text decoded by data_coding, the UDH stripped (message_payload when it was used).
    text: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    concat: Concat | None
    #: Unix time it arrived.
    received_at: float


class Accepted:
    """The simulator's own record of an accepted message; also what query_sm and receipts read.

    ``final_at`` is the loop time at which the message takes its ``final_stat`` (the final
    receipt's due time); before it query_sm reports ENROUTE.
    """

    __slots__ = ("final_at", "final_stat", "message_id", "pdu", "received_at", "system_id")

    def __init__(
        self,
        message_id: str,
        system_id: str,
        pdu: SubmitSm | DataSm,
        received_at: float,
        final_at: float = 0.0,
        final_stat: str = "DELIVRD",
    ) -> None:
        self.message_id = message_id
        self.system_id = system_id
        self.pdu = pdu
        self.received_at = received_at
        self.final_at = final_at
        self.final_stat = final_stat


def content(pdu: SubmitSm | DataSm) -> tuple[bytes, Concat | None]:
    """The text octets of a message (UDH stripped) and its concatenation info, if any.

    Never raises: a UDH that overruns the message is kept as text, SAR TLVs that are
    incomplete or of the wrong length are ignored.
    """
    data = pdu.short_message if type(pdu) is SubmitSm else b""
    if not data:
        data = message_payload(pdu) or b""
    concat: Concat | None = None
    if pdu.esm_class & ESM_CLASS_UDHI and data:
        header_end = 1 + data[0]
        if header_end <= len(data):
            concat = _udh_concat(data[1:header_end])
            data = data[header_end:]
    if concat is None and pdu.tlvs:
        try:
            sar = sar_info(pdu)
        except SmppProtocolError:
            sar = None
        if sar is not None:
            concat = Concat(*sar, kind="sar")
    return data, concat


def _udh_concat(header: bytes) -> Concat | None:
    pos = 0
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2 : pos + 2 + length]
        pos += 2 + length
        if len(value) != length:
            return None
        if iei == _IEI_CONCAT_8BIT and length == 3:
            return Concat(value[0], value[1], value[2], "udh8")
        if iei == _IEI_CONCAT_16BIT and length == 4:
            return Concat(value[0] << 8 | value[1], value[2], value[3], "udh16")
    return None


def text_of(pdu: SubmitSm | DataSm) -> str:
    """The decoded text of one message (one part of a concatenated one)."""
    data, _concat = content(pdu)
    return decode_short_message(data, pdu.data_coding)


def submitted(record: Accepted) -> Submitted:
    """The test's view of one record: text decoded, UDH stripped, concatenation read."""
    pdu = record.pdu
    data, concat = content(pdu)
    return Submitted(
        message_id=record.message_id,
        system_id=record.system_id,
        command="submit_sm" if type(pdu) is SubmitSm else "data_sm",
        source=pdu.source_addr,
        destination=pdu.destination_addr,
        text=decode_short_message(data, pdu.data_coding),
        data_coding=pdu.data_coding,
        esm_class=pdu.esm_class,
        registered_delivery=pdu.registered_delivery,
        concat=concat,
        received_at=record.received_at,
    )


def reassemble(records: Iterable[Submitted]) -> list[str]:
    """Whole texts in the order their first part arrived; parts joined by sequence number.

    Parts belong together when account, source, destination, reference, part count and kind
    agree. A part repeated with the same text (a resubmission) counts once; a repeated
    number with another text starts a new message, as a reused reference would. Messages
    still missing a part are left out.
    """
    texts: list[str | None] = []
    open_groups: dict[tuple[object, ...], tuple[int, dict[int, str]]] = {}
    for record in records:
        concat = record.concat
        if concat is None or concat.total <= 1:
            texts.append(record.text)
            continue
        key = (
            record.system_id,
            record.source,
            record.destination,
            concat.ref,
            concat.total,
            concat.kind,
        )
        group = open_groups.get(key)
        if group is not None and concat.seq in group[1]:
            if group[1][concat.seq] == record.text:
                continue
            group = None
        if group is None:
            group = (len(texts), {})
            texts.append(None)
            open_groups[key] = group
        slot, parts = group
        parts[concat.seq] = record.text
        if len(parts) == concat.total and all(n in parts for n in range(1, concat.total + 1)):
            texts[slot] = "".join(parts[n] for n in range(1, concat.total + 1))
            del open_groups[key]
    return [text for text in texts if text is not None]
