"""SMSC delivery receipts: the SMPP v3.4 Appendix B text, the receipt TLVs, and message ids.

A receipt comes back in a ``deliver_sm`` (``esm_class`` bit 2 set) as ``short_message`` text::

    id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
    err:E text:...

and/or as the ``receipted_message_id``, ``message_state`` and ``network_error_code`` TLVs.
The text format is only "typical" in the specification, so real SMSCs vary: keys in any case,
extra spaces, missing fields, dates with seconds, ids in hex or decimal or zero-padded. The
parser takes all of that; ``format_receipt_text`` writes the canonical form it reads back.

Examples:
    >>> r = parse_receipt_text(
    ...     "id:0123456789 sub:001 dlvrd:001 submit date:2401311200 "
    ...     "done date:2401311201 stat:DELIVRD err:000 text:Hello"
    ... )
    >>> r.message_id, r.stat, r.final, r.delivered_count, r.done
    ('0123456789', 'DELIVRD', 'delivered', 1, '2401311201')
    >>> parse_receipt_text("see you at 5") is None
    True
    >>> t = receipt_from_tlvs("75bcd15", 5, bytes([3, 0, 1]))
    >>> t.stat, t.final, t.err
    ('UNDELIV', 'failed', '3:001')
    >>> merge(r, t).message_id, merge(r, t).stat, merge(r, t).done
    ('75bcd15', 'UNDELIV', '2401311201')
    >>> sorted(variants("75BCD15"))
    ['123456789', '75BCD15', '75bcd15']
    >>> bool(variants("0123456789") & variants("75bcd15"))  # decimal vs hex report
    True

Warning:
    A text is taken for a receipt when it has an ``id`` and a ``stat`` field, wherever they
    are. That is what lets odd SMSC layouts through, but an ordinary message such as
    ``"my id: 7, stat: OK"`` parses too: check ``esm_class`` (SMSC delivery receipt) before
    calling ``parse_receipt_text`` on a ``deliver_sm``.

    ``final`` follows what works with real SMSCs rather than the letter of Appendix B, which
    lists every state but ENROUTE as final: ACCEPTD is commonly sent as an intermediate "taken
    by the operator" notice before DELIVRD, so it is not final (None), while UNKNOWN, DELETED,
    UNDELIV and REJECTD are ``"failed"``. A ``stat`` we do not recognise is also not final: the
    message waits for its validity period instead of being marked with an outcome we guessed.

    ``variants`` matches ids across hex and decimal, which is ambiguous by nature (decimal
    ``16`` is hex ``10``); use it only for an SMSC known to report ids differently from its
    ``submit_sm_resp``, and prefer exact ``normalize_message_id`` equality otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Final = Literal["delivered", "failed", "expired"]

# SMPP v3.4 §5.2.23: message_id is a C-Octet String of at most 65 octets, NUL included.
MAX_MESSAGE_ID_LENGTH = 64
# SMPP v3.4 Appendix B: the receipt's text field holds the first 20 characters of the message.
TEXT_PREVIEW_CHARS = 20
# Appendix B writes dates as YYMMDDhhmm; many SMSCs add seconds (YYMMDDhhmmss).
_DATE_FORMATS = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}
# Counts are three digits in Appendix B; ten digits is far beyond any real multipart message.
_MAX_COUNT_DIGITS = 10

# SMPP v3.4 §5.3.2.35 message_state values, named with the 7-letter receipt ``stat`` codes.
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

# stat -> final classification; a stat not listed here is not final (see the Warning).
_FINAL: dict[str, Final | None] = {
    "DELIVRD": "delivered",
    "EXPIRED": "expired",
    "DELETED": "failed",
    "UNDELIV": "failed",
    "UNKNOWN": "failed",
    "REJECTD": "failed",
    "ACCEPTD": None,
    "ENROUTE": None,
}

# Spellings seen from SMSCs that write the state out instead of the 7-letter code.
_STAT_SYNONYMS = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "REJECTED": "REJECTD",
    "ACCEPTED": "ACCEPTD",
}

# A key starts the text or follows whitespace, so "-sub:" inside an id is not a key.
_KEY_RE = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit[\s_]*date|done[\s_]*date|stat|err|text)\s*:",
    re.IGNORECASE,
)
_KEY_SPACES_RE = re.compile(r"[\s_]+")
_STAT_RE = re.compile(r"[A-Z_]+")
_HEX_RE = re.compile(r"[0-9a-f]+")
_ID_STRIP = " \t\r\n\x0b\x0c\x00"  # whitespace and the C-Octet String terminator


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an SMSC reported about one submitted message.

    ``stat`` is upper-case, with written-out states mapped to the 7-letter codes; it is ``""``
    for a TLV receipt that carried no ``message_state``. ``submitted``/``done`` are the digits
    as reported (see ``parse_receipt_date``). ``final`` is None while the message is pending.
    """

    message_id: str
    stat: str
    err: str | None
    submitted: str | None
    done: str | None
    delivered_count: int | None
    final: Final | None
    submitted_count: int | None = None
    text: str | None = None


def _canonical_stat(value: str) -> str | None:
    stat = value.upper()
    if stat.isascii() and stat.isdigit():
        return MESSAGE_STATES.get(int(stat)) if len(stat) <= 2 else None
    if not _STAT_RE.fullmatch(stat):
        return None
    return _STAT_SYNONYMS.get(stat, stat)


def _count(value: str | None) -> int | None:
    if value and value.isascii() and value.isdigit() and len(value) <= _MAX_COUNT_DIGITS:
        return int(value)
    return None


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    matches = list(_KEY_RE.finditer(text))
    for index, match in enumerate(matches):
        key = _KEY_SPACES_RE.sub("", match.group(1)).lower()
        if key == "text":  # free text runs to the end and may itself contain "key:" words
            fields.setdefault(key, text[match.end() :].strip())
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        tokens = text[match.end() : end].split()
        fields.setdefault(key, tokens[0] if tokens else "")
    return fields


def parse_receipt_text(text: str) -> Receipt | None:
    """The receipt in a ``short_message`` text, or None when it has no ``id`` and ``stat``."""
    fields = _fields(text)
    message_id = fields.get("id", "").strip(_ID_STRIP)
    stat = _canonical_stat(fields.get("stat", ""))
    if not message_id or not stat:
        return None
    return Receipt(
        message_id=message_id,
        stat=stat,
        err=fields.get("err") or None,
        submitted=fields.get("submitdate") or None,
        done=fields.get("donedate") or None,
        delivered_count=_count(fields.get("dlvrd")),
        final=_FINAL.get(stat),
        submitted_count=_count(fields.get("sub")),
        text=fields.get("text"),
    )


def _network_error(code: bytes | None) -> str | None:
    """``network_error_code`` (§5.3.2.31: network type octet, then a 16-bit error code) as
    ``"type:code"``, e.g. ``"3:001"`` for GSM error 1; malformed TLVs are kept as hex."""
    if not code:
        return None
    if len(code) != 3:
        return code.hex()
    return f"{code[0]}:{int.from_bytes(code[1:], 'big'):03d}"


def receipt_from_tlvs(
    receipted_message_id: str | None,
    message_state: int | None,
    network_error_code: bytes | None,
) -> Receipt | None:
    """The receipt carried in TLVs, or None without a ``receipted_message_id``.

    An unknown ``message_state`` is reported as ``stat`` ``"STATE_<n>"``, not final.
    """
    message_id = (receipted_message_id or "").strip(_ID_STRIP)
    if not message_id:
        return None
    if message_state is None:
        stat = ""
    else:
        stat = MESSAGE_STATES.get(message_state, f"STATE_{message_state}")
    return Receipt(
        message_id=message_id,
        stat=stat,
        err=_network_error(network_error_code),
        submitted=None,
        done=None,
        delivered_count=None,
        final=_FINAL.get(stat),
    )


def merge(text_receipt: Receipt | None, tlv_receipt: Receipt | None) -> Receipt | None:
    """One receipt from both sources: the TLVs win for id, state and error when present
    (they are typed and the id is the one ``submit_sm_resp`` gave); the text adds dates,
    counts and the preview."""
    if tlv_receipt is None or text_receipt is None:
        return tlv_receipt or text_receipt
    stat, final = (
        (tlv_receipt.stat, tlv_receipt.final)
        if tlv_receipt.stat
        else (text_receipt.stat, text_receipt.final)
    )
    return dataclasses.replace(
        text_receipt,
        message_id=tlv_receipt.message_id,
        stat=stat,
        final=final,
        err=tlv_receipt.err if tlv_receipt.err is not None else text_receipt.err,
    )


def _date_field(name: str, value: datetime | str) -> str:
    if isinstance(value, datetime):
        return value.strftime(_DATE_FORMATS[10])
    if not (value.isascii() and value.isdigit() and len(value) in _DATE_FORMATS):
        raise ValueError(f"{name} must be a datetime or 10/12 digits YYMMDDhhmm[ss], got {value!r}")
    return value


def _token_field(name: str, value: str) -> str:
    if not value or len(value.split()) != 1 or value != value.strip(_ID_STRIP):
        raise ValueError(f"{name} must be one non-empty word without spaces, got {value!r}")
    return value


def format_receipt_text(
    message_id: str,
    stat: str,
    *,
    submitted: datetime | str,
    done: datetime | str,
    submitted_count: int = 1,
    delivered_count: int | None = None,
    err: str | int = "000",
    text: str = "",
) -> str:
    """The Appendix B receipt text, as ``parse_receipt_text`` reads it back.

    ``delivered_count`` defaults to ``submitted_count`` for DELIVRD and 0 otherwise; ``text``
    is cut to its first ``TEXT_PREVIEW_CHARS`` characters; datetimes are written YYMMDDhhmm.
    """
    _token_field("message_id", message_id)
    stat = _token_field("stat", stat).upper()
    if delivered_count is None:
        delivered_count = submitted_count if stat == "DELIVRD" else 0
    if submitted_count < 0 or delivered_count < 0:
        raise ValueError(
            f"submitted_count and delivered_count must be >= 0, "
            f"got {submitted_count} and {delivered_count}"
        )
    err_text = f"{err:03d}" if isinstance(err, int) else _token_field("err", err)
    return (
        f"id:{message_id} sub:{submitted_count:03d} dlvrd:{delivered_count:03d} "
        f"submit date:{_date_field('submitted', submitted)} "
        f"done date:{_date_field('done', done)} stat:{stat} err:{err_text} "
        f"text:{text[:TEXT_PREVIEW_CHARS]}"
    )


def parse_receipt_date(value: str | None) -> datetime | None:
    """A receipt date (YYMMDDhhmm or YYMMDDhhmmss) as a naive datetime in the SMSC's local
    time, which the receipt does not state; None when absent or malformed."""
    fmt = _DATE_FORMATS.get(len(value)) if value else None
    if fmt is None or value is None or not value.isdigit():
        return None
    try:
        return datetime.strptime(value, fmt)
    except ValueError:
        return None


def normalize_message_id(message_id: str) -> str:
    """The id for exact comparison: surrounding whitespace and NULs dropped, lower-cased.

    Hex ids differ only in case between SMSCs, so lower-casing is safe; converting between
    hex and decimal is not (see ``variants``), so it is not done here.
    """
    return message_id.strip(_ID_STRIP).lower()


def variants(message_id: str) -> set[str]:
    """The id as given, normalised, and, when it reads as a decimal or hex number, that
    number in decimal and in lower-case hex without leading zeros.

    Two ids may name the same message when their variant sets intersect.
    """
    normal = normalize_message_id(message_id)
    found = {message_id, normal}
    digits = normal[2:] if normal.startswith("0x") else normal
    if not digits or len(digits) > MAX_MESSAGE_ID_LENGTH or not _HEX_RE.fullmatch(digits):
        return found
    if digits.isdigit():
        as_decimal = int(digits)
        found.update((str(as_decimal), format(as_decimal, "x")))
    as_hex = int(digits, 16)
    found.update((format(as_hex, "x"), str(as_hex)))
    return found
