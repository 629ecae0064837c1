"""Mobile-originated messages the SMSC simulator sends on demand.

`SmscSimulator.send_mo` (or ``POST /_smsc/mo``) sends a deliver_sm with esm_class 0 to a
receiver or transceiver of the account, GSM 7-bit when the text allows, else UCS-2 (or as
``data_coding`` says), a long text split in parts with a UDH (8-bit reference).

Examples:
    >>> [(len(part), coding, udhi) for part, coding, udhi in mo_parts("STOP", None, 1)]
    [(4, 0, False)]
    >>> [(len(part), coding, udhi) for part, coding, udhi in mo_parts("é" * 80, 8, 7)]
    [(140, 8, True), (32, 8, True)]
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import msgspec

from sluice.protocols.smpp.gsm import encode_gsm, encode_ucs2
from sluice.protocols.smpp.segmentation import PROTOCOL_MAX_SEGMENTS, split
from sluice.sim.smsc.receipts import Account

# UCS-2 parts when the caller forces data_coding 8 (segmentation.split picks GSM when it can).
_UCS2_SINGLE_OCTETS = 140
_UCS2_PART_OCTETS = 134


class NoReceiverBound(RuntimeError):
    """An MO was asked for an account with no receiver or transceiver bound."""


class MoSent(msgspec.Struct, kw_only=True, frozen=True):
    """What `SmscSimulator.send_mo` sent."""

    account: str
    #: Connection number (`BindStats.number`) the parts went out on.
    bind: int
    source: str
    destination: str
    data_coding: int
    #: sequence_number of each deliver_sm, one per part.
    sequence_numbers: list[int]


def mo_account(
    accounts: Mapping[str, Account], known: Collection[str], name: str | None
) -> Account:
    """The account whose receivers take an MO: ``name``, or the first of ``known`` (the
    configured accounts, in order) with a receiver bound, or any with one.

    Raises `NoReceiverBound`, or ValueError for a ``name`` not in ``known``.
    """
    if name is not None:
        if name not in known:
            raise ValueError(f"account: unknown system_id {name!r}; known: {', '.join(known)}")
        account = accounts.get(name)
        if account is None or not account.receivers:
            raise NoReceiverBound(
                f"no receiver or transceiver of account {name!r} is bound to take the MO"
            )
        return account
    for system_id in known:
        account = accounts.get(system_id)
        if account is not None and account.receivers:
            return account
    for account in accounts.values():
        if account.receivers:
            return account
    raise NoReceiverBound("no receiver or transceiver is bound to take the MO")


def mo_parts(text: str, data_coding: int | None, reference: int) -> list[tuple[bytes, int, bool]]:
    """(short_message, data_coding, has UDH) for each part of an MO text."""
    if data_coding is not None and (isinstance(data_coding, bool) or data_coding not in (0, 8)):
        raise ValueError(
            f"data_coding: expected 0 (GSM 7-bit), 8 (UCS-2) or null (choose), got {data_coding!r}"
        )
    if data_coding is None or data_coding == 0:
        if data_coding == 0:
            encode_gsm(text)  # ValueError naming the first character GSM cannot carry
        segments = split(text, reference=reference, max_segments=PROTOCOL_MAX_SEGMENTS)
        return [(s.payload, s.data_coding, s.needs_udhi) for s in segments]
    data = encode_ucs2(text)
    if len(data) <= _UCS2_SINGLE_OCTETS:
        return [(data, 8, False)]
    ends = []
    start = 0
    while len(data) - start > _UCS2_PART_OCTETS:
        end = start + _UCS2_PART_OCTETS
        if 0xD8 <= data[end - 2] <= 0xDB:  # never split a surrogate pair
            end -= 2
        ends.append(end)
        start = end
    ends.append(len(data))
    if len(ends) > PROTOCOL_MAX_SEGMENTS:
        raise ValueError(f"text: needs {len(ends)} parts; at most {PROTOCOL_MAX_SEGMENTS}")
    parts = []
    start = 0
    for seq, end in enumerate(ends, 1):
        udh = bytes((5, 0x00, 3, reference, len(ends), seq))
        parts.append((udh + data[start:end], 8, True))
        start = end
    return parts
