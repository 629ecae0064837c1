"""SMS character sets: the GSM 03.38 7-bit alphabet, UCS-2, and decoding by ``data_coding``.

Text goes out either as GSM 7-bit *unpacked* septets (one septet per octet, ``data_coding``
0x00, which is what SMSCs expect over SMPP and pack themselves for the air interface) or as
UCS-2 (``data_coding`` 0x08), written as UTF-16-BE so that characters outside the BMP (emoji)
travel as surrogate pairs, each pair counting as two units exactly as handsets count them.
Every function is pure; the tables are built once at import and never change.

Examples:
    >>> choose_encoding("Price: 5€ [promo]")
    <Encoding.GSM7: 0>
    >>> gsm_septet_count("5€")  # the euro sign is ESC 0x65 in the extension table
    3
    >>> encode_gsm("@£{")
    b'\\x00\\x01\\x1b('
    >>> decode_short_message(b"\\x00\\x01\\x1b(", 0x00)
    '@£{'
    >>> choose_encoding("ok 😀").data_coding, ucs2_unit_count("ok 😀")
    (8, 5)
    >>> pack_septets(encode_gsm("hello")).hex()
    'e8329bfd06'
    >>> decode_short_message(b"\\xd8\\x3d", 0x08)  # half a surrogate pair from a peer
    '\ufffd'

Warning:
    Decoding never raises: a peer's malformed input must not crash a session, so whatever
    cannot be decoded becomes U+FFFD REPLACEMENT CHARACTER (octets above 0x7F in unpacked GSM
    or IA5, unpaired UTF-16 surrogates, a dangling odd octet in UCS-2). The price is that
    decoding is lossy for garbage; keep the raw octets if you need to forward them unchanged.
    An ESC that ends the data, or ESC ESC (reserved for a future second extension table),
    decodes to a space, and ESC before a code that has no extension character decodes to that
    code's default-alphabet character: both are what TS 23.038 tells a receiving handset to
    display. Binary ``data_coding`` values (0x02, 0x04, 8-bit data groups, and anything we do
    not know) are returned as a Latin-1 view, one character per octet, which is lossless
    (``.encode("latin-1")`` gives the octets back) but is not text.

    Many SMSCs send receipts and plain ASCII with ``data_coding`` 0 although the GSM alphabet
    differs from ASCII at ``@ $ _`` and a few others; decoding those as GSM is what the SMPP
    specification says to do, but it turns an ASCII ``_`` into ``§``. If a peer is known to
    use ASCII or Latin-1 as its "SMSC default alphabet", decode with 0x01 or 0x03 instead.
"""

from __future__ import annotations

import codecs
import enum
import re
from collections.abc import Callable

# 3GPP TS 23.038 §6.2.1, the default alphabet, indexed by septet value. Position 0x1B is ESC
# (escape to the extension table), not a character; it is kept here as "\x1b" and handled
# separately. Greek capitals are escaped so that they cannot be confused with Latin ones.
_DEFAULT_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)

# 3GPP TS 23.038 §6.2.1.1, the extension table reached through ESC (0x1B): code -> character.
# 0x0A is a page break (form feed). 0x0D ("CR2") is a control with no character of its own,
# so it is not listed and decodes as the default-alphabet character (CR).
_EXTENSION = {
    0x0A: "\x0c",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_ESC = 0x1B

# The GSM "SMSC default alphabet" for SMPP data_coding 0 and UCS-2 for 0x08 (SMPP v3.4 §5.2.19).
DATA_CODING_GSM7 = 0x00
DATA_CODING_UCS2 = 0x08

# Encoding runs in C through a codecs charmap: one octet per character, built from a 256-entry
# table. Such a map needs U+0000 at index 0 (else CPython falls back to a slow dict), while the
# GSM septet 0x00 is "@"; and extension characters need two septets. So "@" and the extension
# characters are encoded to placeholder octets above 0x7F and expanded afterwards, and NUL,
# which the table would accept at index 0, is refused before encoding. U+FFFE marks unused
# entries, which the encoder then rejects.
_PLACEHOLDER_FIRST = 0x80
_UNMAPPED = "\ufffe"


def _build_encoding() -> tuple[str, tuple[tuple[bytes, bytes], ...]]:
    table = ["\x00", *_DEFAULT_ALPHABET[1:]] + [_UNMAPPED] * 0x80
    table[_ESC] = _UNMAPPED
    expansions = [(bytes((_PLACEHOLDER_FIRST,)), b"\x00")]
    table[_PLACEHOLDER_FIRST] = _DEFAULT_ALPHABET[0]
    for offset, (code, char) in enumerate(_EXTENSION.items(), _PLACEHOLDER_FIRST + 1):
        table[offset] = char
        expansions.append((bytes((offset,)), bytes((_ESC, code))))
    return "".join(table), tuple(expansions)


def _build_decode_table() -> str:
    # Indexed by octet; ESC stays ESC so that decode_gsm can find the pairs afterwards.
    return _DEFAULT_ALPHABET + "\ufffd" * 0x80


def _build_escape_pairs(decode_table: str) -> dict[str, str]:
    # Keys are what decode_table made of "ESC, octet"; values are what a handset displays.
    pairs = {"\x1b": " "}  # ESC ending the data
    for octet in range(0x100):
        if octet in _EXTENSION:
            shown = _EXTENSION[octet]
        elif octet == _ESC:
            shown = " "  # reserved for a second extension table: "display a space"
        else:
            shown = decode_table[octet]  # no extension character: show the default one
        pairs["\x1b" + decode_table[octet]] = shown
    return pairs


_ENCODING_TABLE, _EXPANSIONS = _build_encoding()
_ENCODING_MAP = codecs.charmap_build(_ENCODING_TABLE)
_DECODE_TABLE = _build_decode_table()
_ESCAPE_PAIRS = _build_escape_pairs(_DECODE_TABLE)
_ESCAPE_RE = re.compile("\x1b.?", re.DOTALL)


class Encoding(enum.Enum):
    """How a text is carried in ``short_message``; the value is the SMPP ``data_coding``."""

    GSM7 = DATA_CODING_GSM7
    UCS2 = DATA_CODING_UCS2

    @property
    def data_coding(self) -> int:
        return self.value


# --- GSM 7-bit, unpacked ---------------------------------------------------------------------


def try_encode_gsm(text: str) -> bytes | None:
    """Unpacked septets for ``text`` (extension characters as ESC + code), or None if any
    character is outside the default alphabet and the extension table."""
    if "\x00" in text:
        return None
    try:
        septets: bytes = codecs.charmap_encode(text, "strict", _ENCODING_MAP)[0]
    except UnicodeEncodeError:
        return None
    if not septets.isascii():
        for placeholder, expansion in _EXPANSIONS:
            septets = septets.replace(placeholder, expansion)
    return septets


def encode_gsm(text: str) -> bytes:
    """Unpacked septets for ``text``; ValueError names the first character GSM cannot carry."""
    septets = try_encode_gsm(text)
    if septets is None:
        index, char = next((i, c) for i, c in enumerate(text) if try_encode_gsm(c) is None)
        raise ValueError(
            f"character {char!r} (U+{ord(char):04X}) at index {index} is not in the GSM 03.38 "
            "alphabet or its extension table; send the text as UCS-2 (choose_encoding)"
        )
    return septets


def gsm_septet_count(text: str) -> int | None:
    """Septets ``text`` takes in GSM 7-bit (extension characters count 2), None if not GSM."""
    septets = try_encode_gsm(text)
    return None if septets is None else len(septets)


def is_gsm(text: str) -> bool:
    """True when every character is in the default alphabet or the extension table."""
    return try_encode_gsm(text) is not None


def decode_gsm(data: bytes) -> str:
    """Text from unpacked septets; never raises (see the module Warning for replacements)."""
    text = data.decode("latin-1").translate(_DECODE_TABLE)
    if "\x1b" in text:
        text = _ESCAPE_RE.sub(lambda match: _ESCAPE_PAIRS[match.group()], text)
    return text


# --- GSM 7-bit, packed (the air-interface form, TS 23.038 §6.1.2.1) ---------------------------


def packed_length(septet_count: int, fill_bits: int = 0) -> int:
    """Octets that ``septet_count`` septets take once packed, after ``fill_bits`` padding."""
    return (septet_count * 7 + fill_bits + 7) // 8


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets eight to seven octets, least significant bit first.

    ``fill_bits`` (0-6) zero bits come first, as after a UDH so that the text starts on a
    septet boundary (TS 23.040 §9.2.3.24). The top bit of each input octet is ignored.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, got {fill_bits}")
    bits = 0
    for index, septet in enumerate(septets):
        bits |= (septet & 0x7F) << (7 * index)
    return (bits << fill_bits).to_bytes(packed_length(len(septets), fill_bits), "little")


def unpack_septets(data: bytes, count: int | None = None, fill_bits: int = 0) -> bytes:
    """Unpacked septets from packed ``data``; never raises on short or odd input.

    ``count`` is the septet count the PDU declared (TP-UDL); without it every whole septet
    is returned, so 7 spare bits at the end come back as a trailing 0x00 (``@``) — the
    ambiguity TS 23.038 resolves with a CR pad only for USSD and cell broadcast.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0..6, got {fill_bits}")
    available = max(0, (len(data) * 8 - fill_bits) // 7)
    count = available if count is None else max(0, min(count, available))
    bits = int.from_bytes(data, "little") >> fill_bits
    return bytes((bits >> (7 * index)) & 0x7F for index in range(count))


def encode_gsm_packed(text: str, fill_bits: int = 0) -> bytes:
    """Packed GSM 7-bit octets for ``text``; ValueError as for ``encode_gsm``."""
    return pack_septets(encode_gsm(text), fill_bits)


def decode_gsm_packed(data: bytes, count: int | None = None, fill_bits: int = 0) -> str:
    """Text from packed GSM 7-bit octets; ``count`` as for ``unpack_septets``."""
    return decode_gsm(unpack_septets(data, count, fill_bits))


# --- UCS-2 ------------------------------------------------------------------------------------


def encode_ucs2(text: str) -> bytes:
    """UTF-16-BE octets; characters outside the BMP become surrogate pairs.

    ValueError when ``text`` holds an unpaired surrogate (possible in a Python ``str`` built
    from JSON ``"\\ud83d"``): no handset can show it, so it is refused rather than sent.
    """
    try:
        return text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"unpaired UTF-16 surrogate U+{ord(text[exc.start]):04X} at index {exc.start} "
            "cannot be sent as UCS-2; fix the text where it was produced"
        ) from None


def decode_ucs2(data: bytes) -> str:
    """Text from UTF-16-BE; unpaired surrogates and an odd last octet become U+FFFD."""
    return data.decode("utf-16-be", "replace")


def ucs2_unit_count(text: str) -> int:
    """UCS-2 units ``text`` takes: one per BMP character, two per emoji or other astral one."""
    return len(text.encode("utf-16-be", "surrogatepass")) // 2


# --- choosing and decoding --------------------------------------------------------------------


def choose_encoding(text: str) -> Encoding:
    """GSM7 when every character has a GSM septet (default or extension), else UCS2."""
    return Encoding.GSM7 if is_gsm(text) else Encoding.UCS2


def _codec(name: str) -> Callable[[bytes], str]:
    decode = codecs.getdecoder(name)
    return lambda data: decode(data, "replace")[0]


def _decode_latin1(data: bytes) -> str:
    return data.decode("latin-1")  # ISO-8859-1 maps every octet: nothing to replace


def _binary_view(data: bytes) -> str:
    return data.decode("latin-1")  # one character per octet, reversible, not text


_DECODE_IA5 = _codec("ascii")
_DECODE_CYRILLIC = _codec("iso8859_5")
_DECODE_HEBREW = _codec("iso8859_8")


def _decoder_for(data_coding: int) -> Callable[[bytes], str]:
    # SMPP v3.4 §5.2.19 gives 0x00-0x0F its own meanings; above that the octet is a GSM
    # TS 23.038 §4 Data Coding Scheme whose alphabet bits pick GSM 7-bit, 8-bit data or UCS-2.
    smpp = {
        0x00: decode_gsm,
        0x01: _DECODE_IA5,
        0x03: _decode_latin1,
        0x06: _DECODE_CYRILLIC,
        0x07: _DECODE_HEBREW,
        0x08: decode_ucs2,
    }
    if data_coding <= 0x0F:
        return smpp.get(data_coding, _binary_view)
    if data_coding <= 0x7F:  # general data coding and automatic-deletion groups
        if data_coding & 0x20:  # compressed: not text we can read
            return _binary_view
        alphabet = (data_coding >> 2) & 0x03
        return {0: decode_gsm, 2: decode_ucs2}.get(alphabet, _binary_view)
    if 0xC0 <= data_coding <= 0xDF:  # message waiting indication, GSM 7-bit
        return decode_gsm
    if 0xE0 <= data_coding <= 0xEF:  # message waiting indication, UCS-2
        return decode_ucs2
    if data_coding >= 0xF0:  # data coding / message class: bit 2 clear means GSM 7-bit
        return _binary_view if data_coding & 0x04 else decode_gsm
    return _binary_view  # 0x80-0xBF are reserved


_DECODERS: tuple[Callable[[bytes], str], ...] = tuple(_decoder_for(dc) for dc in range(0x100))


def decode_short_message(data: bytes, data_coding: int) -> str:
    """Text of a ``short_message`` given its ``data_coding``; never raises.

    0x00 GSM 7-bit unpacked, 0x01 IA5/ASCII, 0x03 Latin-1, 0x06 Cyrillic, 0x07 Hebrew,
    0x08 UCS-2 (UTF-16-BE), DCS groups 0x10-0xFF by their alphabet bits; binary and unknown
    codings (0x02, 0x04, out of range ...) come back as a Latin-1 view of the octets.
    """
    if 0 <= data_coding <= 0xFF:
        return _DECODERS[data_coding](data)
    return _binary_view(data)


def is_text_coding(data_coding: int) -> bool:
    """False for codings ``decode_short_message`` only returns as a Latin-1 view of octets."""
    return 0 <= data_coding <= 0xFF and _DECODERS[data_coding] is not _binary_view
