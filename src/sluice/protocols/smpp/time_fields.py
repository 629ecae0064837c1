"""SMPP v3.4 time fields (section 7.1.1): schedule_delivery_time, validity_period, final_date.

A time field is empty (the SMSC's default) or 16 characters ``YYMMDDhhmmsstnnp``. With ``p``
``+`` or ``-`` it is absolute: a local time to the tenth of a second (``t``) and its offset
from UTC in quarter hours (``nn``, 00-48), ahead (``+``) or behind (``-``). With ``p`` ``R``
it is relative to the SMSC's current time, ``YYMMDDhhmmss000R``: years, months, days, hours,
minutes and seconds to add, each two digits (section 7.1.1.2 gives no other bound, so
``000000990000000R``, 99 hours, is legal). The century is not on the wire; years are taken as
20YY, which is what SMSCs do.

`parse_time` reads one field and names what is wrong; it knows no clock, so whether an
absolute time is already past is the caller's business.

Examples:
    >>> parse_time("")
    >>> parse_time("250131120000004+").when.isoformat()
    '2025-01-31T12:00:00+01:00'
    >>> parse_time("000001000000000R")
    RelativeTime(years=0, months=0, days=1, hours=0, minutes=0, seconds=0)
    >>> parse_time("250231120000000+")
    Traceback (most recent call last):
    ...
    ValueError: '250231120000000+': day 31 does not exist in 2025-02
    >>> parse_time("1")
    Traceback (most recent call last):
    ...
    ValueError: '1': expected 16 characters YYMMDDhhmmsstnnp or YYMMDDhhmmss000R, got 1
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

import msgspec

#: The length of a non-empty time field, without its NUL.
TIME_LENGTH = 16
#: Largest UTC offset of an absolute time, in quarter hours (section 7.1.1.1: 00-48).
MAX_QUARTER_HOURS = 48
_FORMATS = "YYMMDDhhmmsstnnp or YYMMDDhhmmss000R"
# (name, first, last) of each two-digit field of an absolute time, in wire order.
_ABSOLUTE_RANGES = (
    ("month", 1, 12),
    ("day", 1, 31),
    ("hour", 0, 23),
    ("minute", 0, 59),
    ("second", 0, 59),
)


class AbsoluteTime(msgspec.Struct, frozen=True):
    """An absolute time field: ``when`` carries the field's own UTC offset."""

    when: datetime


class RelativeTime(msgspec.Struct, frozen=True):
    """A relative time field: how much to add to the SMSC's current time."""

    years: int
    months: int
    days: int
    hours: int
    minutes: int
    seconds: int


def parse_time(text: str) -> AbsoluteTime | RelativeTime | None:
    """The time ``text`` holds, or None when it is empty (the SMSC's default applies).

    Raises:
        ValueError: ``text`` is not in either format; the message quotes it and names the
            part that is wrong.
    """
    if not text:
        return None
    if len(text) != TIME_LENGTH or not text.isascii():
        raise ValueError(f"{text!r}: expected {TIME_LENGTH} characters {_FORMATS}, got {len(text)}")
    digits, kind = text[:15], text[15]
    if not digits.isdigit():
        raise ValueError(f"{text!r}: expected digits before the last character ({_FORMATS})")
    pairs = [int(digits[i : i + 2]) for i in range(0, 12, 2)]
    if kind == "R":
        if digits[12:] != "000":
            raise ValueError(
                f"{text!r}: a relative time ends 000R (tenths and quarter hours are 0), "
                f"got {text[12:]!r}"
            )
        return RelativeTime(*pairs)
    if kind not in "+-":
        raise ValueError(
            f"{text!r}: the last character must be '+' or '-' (absolute) or 'R' (relative), "
            f"got {kind!r}"
        )
    return AbsoluteTime(_absolute(text, pairs, int(digits[12]), int(digits[13:15]), kind))


def _absolute(text: str, pairs: list[int], tenths: int, quarters: int, sign: str) -> datetime:
    for (name, first, last), value in zip(_ABSOLUTE_RANGES, pairs[1:], strict=True):
        if not first <= value <= last:
            raise ValueError(f"{text!r}: {name} {value:02d} is not in {first:02d}..{last:02d}")
    if quarters > MAX_QUARTER_HOURS:
        raise ValueError(
            f"{text!r}: UTC offset {quarters:02d} quarter hours is not in 00..{MAX_QUARTER_HOURS}"
        )
    year, month, day = 2000 + pairs[0], pairs[1], pairs[2]
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(f"{text!r}: day {day} does not exist in {year}-{month:02d}")
    offset = timedelta(minutes=15 * quarters) * (1 if sign == "+" else -1)
    return datetime(
        year, month, day, pairs[3], pairs[4], pairs[5], tenths * 100_000, timezone(offset)
    )
