from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.protocols.smpp.gsm import (
    Encoding,
    choose_encoding,
    decode_gsm,
    decode_gsm_packed,
    decode_short_message,
    decode_ucs2,
    encode_gsm,
    encode_gsm_packed,
    encode_ucs2,
    gsm_septet_count,
    is_gsm,
    is_text_coding,
    pack_septets,
    packed_length,
    try_encode_gsm,
    ucs2_unit_count,
    unpack_septets,
)

DEFAULT_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039eÆæßÉ"  # without ESC
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = {"\x0c": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F}
EXTENSION |= {"[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}


def test_euro_sign_is_an_escape_pair_counting_two() -> None:
    assert encode_gsm("€") == b"\x1b\x65"
    assert gsm_septet_count("€") == 2
    assert gsm_septet_count("5 €") == 4
    assert decode_gsm(b"\x1b\x65") == "€"
    assert choose_encoding("€") is Encoding.GSM7


@pytest.mark.parametrize("char", list("[]{}\\~^|€\x0c"))
def test_extension_table_characters_round_trip(char: str) -> None:
    assert encode_gsm(char) == bytes((0x1B, EXTENSION[char]))
    assert gsm_septet_count(char) == 2
    assert is_gsm(char)
    assert decode_short_message(encode_gsm(char), 0x00) == char


def test_form_feed_is_the_extension_page_break() -> None:
    assert encode_gsm("a\x0cb") == b"a\x1b\nb"
    assert decode_gsm(b"a\x1b\nb") == "a\x0cb"


def test_default_alphabet_low_codes() -> None:
    assert encode_gsm("@£$¥èéùìò") == bytes(range(9))
    assert decode_gsm(bytes(range(9))) == "@£$¥èéùìò"
    assert gsm_septet_count("@£$¥èéùìò") == 9


def test_whole_default_alphabet_round_trips() -> None:
    septets = encode_gsm(DEFAULT_ALPHABET)
    assert len(septets) == 127
    assert sorted(septets) == [s for s in range(128) if s != 0x1B]
    assert decode_gsm(septets) == DEFAULT_ALPHABET


@pytest.mark.parametrize("text", ["`", "ç", "😀", "a\x1bb", "\x00", "Ā"])
def test_characters_outside_gsm(text: str) -> None:
    assert try_encode_gsm(text) is None
    assert gsm_septet_count(text) is None
    assert not is_gsm(text)
    assert choose_encoding(text) is Encoding.UCS2


def test_encode_gsm_names_the_offending_character() -> None:
    with pytest.raises(ValueError, match=r"'`' \(U\+0060\) at index 3"):
        encode_gsm("ab€`")


def test_emoji_is_a_surrogate_pair_of_two_units() -> None:
    assert ucs2_unit_count("😀") == 2
    assert encode_ucs2("😀") == b"\xd8\x3d\xde\x00"
    assert decode_ucs2(b"\xd8\x3d\xde\x00") == "😀"
    assert ucs2_unit_count("aж😀") == 4


def test_one_emoji_switches_gsm_text_to_ucs2() -> None:
    assert choose_encoding("Hello world") is Encoding.GSM7
    encoding = choose_encoding("Hello world 😀")
    assert encoding is Encoding.UCS2
    assert encoding.data_coding == 0x08
    assert Encoding.GSM7.data_coding == 0x00


def test_unpaired_surrogate_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"U\+D83D at index 1"):
        encode_ucs2("a\ud83d")


@pytest.mark.parametrize(
    ("data", "data_coding", "text"),
    [
        (b"\x00\x1b\x65\x1b\x3c", 0x00, "@€["),
        (b"Hi\x80", 0x00, "Hi\ufffd"),
        (b"ab\x1b", 0x00, "ab "),  # dangling ESC
        (b"a\x1b\x1bb", 0x00, "a b"),  # ESC ESC: reserved second extension table
        (b"\x1bA", 0x00, "A"),  # no extension character: the default one
        (b"\x1b\x0d", 0x00, "\r"),  # CR2
        (b"\x1b\xff", 0x00, "\ufffd"),
        (b"plain_text@", 0x01, "plain_text@"),
        (b"caf\xe9", 0x01, "caf\ufffd"),
        (b"caf\xe9", 0x03, "café"),
        (b"\x04\x36\x00\x61", 0x08, "жa"),
        (b"\x00a\x00", 0x08, "a\ufffd"),  # odd octet
        (b"\xdc\x00\x00a", 0x08, "\ufffda"),  # low surrogate alone
        (b"\x00\xff\x1b", 0x04, "\x00\xff\x1b"),  # binary: Latin-1 view
        (b"\x00\xff", 0x02, "\x00\xff"),
        (b"\xd6", 0x06, "ж"),  # ISO-8859-5
        (b"\xe0", 0x07, "\u05d0"),  # ISO-8859-8 alef
        (b"a\x00", 0xF0, "a@"),  # DCS class group, GSM 7-bit
        (b"a\x00", 0xF4, "a\x00"),  # DCS class group, 8-bit data
        (b"\x00a", 0x18, "a"),  # general group, UCS-2 with class
        (b"\x00a", 0x38, "\x00a"),  # general group, compressed
        (b"\x00a", 0xE0, "a"),  # message waiting, UCS-2
        (b"\x00", 0x1234, "\x00"),  # out of range
        (b"\x00", -1, "\x00"),
    ],
)
def test_decode_short_message(data: bytes, data_coding: int, text: str) -> None:
    assert decode_short_message(data, data_coding) == text


def test_is_text_coding() -> None:
    assert all(is_text_coding(dc) for dc in (0x00, 0x01, 0x03, 0x08, 0xF0))
    assert not any(is_text_coding(dc) for dc in (0x02, 0x04, 0xF4, 0x99, 300, -1))


@given(st.binary(max_size=300), st.integers(min_value=-(2**40), max_value=2**40))
def test_decode_never_raises_on_garbage(data: bytes, data_coding: int) -> None:
    assert isinstance(decode_short_message(data, data_coding), str)


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=255))
def test_decode_never_raises_for_any_dcs_octet(data: bytes, data_coding: int) -> None:
    assert isinstance(decode_short_message(data, data_coding), str)


gsm_text = st.text(alphabet=DEFAULT_ALPHABET + "".join(EXTENSION), max_size=400)


@given(gsm_text)
def test_gsm_unpacked_round_trip(text: str) -> None:
    septets = encode_gsm(text)
    assert len(septets) == gsm_septet_count(text)
    assert decode_short_message(septets, 0x00) == text


@given(st.text(max_size=200))
def test_ucs2_round_trip(text: str) -> None:
    octets = encode_ucs2(text)
    assert len(octets) == 2 * ucs2_unit_count(text)
    assert decode_short_message(octets, 0x08) == text


def test_packed_known_vector() -> None:
    assert pack_septets(encode_gsm("hello")).hex() == "e8329bfd06"
    assert decode_gsm_packed(bytes.fromhex("e8329bfd06"), 5) == "hello"
    assert packed_length(160) == 140
    assert packed_length(153, fill_bits=1) == 134


@given(gsm_text, st.integers(min_value=0, max_value=6))
def test_packed_round_trip(text: str, fill_bits: int) -> None:
    septets = encode_gsm(text)
    packed = encode_gsm_packed(text, fill_bits)
    assert len(packed) == packed_length(len(septets), fill_bits)
    assert unpack_septets(packed, len(septets), fill_bits) == septets
    assert decode_gsm_packed(packed, len(septets), fill_bits) == text


def test_unpack_without_count_and_bad_fill() -> None:
    assert unpack_septets(b"") == b""
    assert unpack_septets(bytes.fromhex("e8329bfd06")) == b"hello"  # 40 bits: 5 septets
    assert unpack_septets(b"\x01", count=5) == b"\x01"  # count beyond the data is clipped
    with pytest.raises(ValueError, match=r"fill_bits must be 0\.\.6, got 7"):
        pack_septets(b"a", fill_bits=7)
