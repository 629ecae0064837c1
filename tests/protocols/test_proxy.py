"""PROXY protocol header: versions 1 and 2, byte-exact against the vectors of HAProxy's
specification (doc/proxy-protocol.txt); incomplete input asks for more, anything broken gives
ProxyError and nothing else.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluice.protocols.proxy import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    parse,
)

# --- version 1: the specification's lines (section 2.1) ----------------------------------------

#: The example before an HTTP request, verbatim.
SPEC_V1_EXAMPLE = (
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
)
#: The longest lines the receiver must support, with the lengths the specification counts.
SPEC_V1_TCP4_MAX = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"  # 56
FFFF6 = ":".join(["ffff"] * 8)
SPEC_V1_TCP6_MAX = f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()  # 104
SPEC_V1_UNKNOWN_SHORT = b"PROXY UNKNOWN\r\n"  # 15
SPEC_V1_UNKNOWN_WORST = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()  # 107


def test_v1_specification_example() -> None:
    header = parse(SPEC_V1_EXAMPLE)
    assert header == ProxyHeader(("192.168.0.1", 56324), ("192.168.0.11", 443), 47)
    assert SPEC_V1_EXAMPLE[47:].startswith(b"GET / HTTP/1.1\r\n")


def test_v1_maximum_lengths_from_the_specification() -> None:
    assert (len(SPEC_V1_TCP4_MAX), len(SPEC_V1_TCP6_MAX)) == (56, 104)
    assert (len(SPEC_V1_UNKNOWN_SHORT), len(SPEC_V1_UNKNOWN_WORST)) == (15, V1_MAX_LENGTH)
    assert parse(SPEC_V1_TCP4_MAX) == ProxyHeader(
        ("255.255.255.255", 65535), ("255.255.255.255", 65535), 56
    )
    assert parse(SPEC_V1_TCP6_MAX) == ProxyHeader((FFFF6, 65535), (FFFF6, 65535), 104)
    assert parse(SPEC_V1_UNKNOWN_SHORT) == ProxyHeader(None, None, 15)
    # UNKNOWN: whatever comes before the CRLF is ignored.
    assert parse(SPEC_V1_UNKNOWN_WORST) == ProxyHeader(None, None, V1_MAX_LENGTH)


def test_v1_tcp6_addresses_come_back_compressed() -> None:
    line = b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 fe80:0::1 4000 25\r\n"
    assert parse(line + b"EHLO") == ProxyHeader(("2001:db8::1", 4000), ("fe80::1", 25), len(line))


def test_v1_ports_at_the_limits() -> None:
    assert parse(b"PROXY TCP4 192.0.2.1 192.0.2.2 0 65535\r\n") == ProxyHeader(
        ("192.0.2.1", 0), ("192.0.2.2", 65535), 40
    )


@pytest.mark.parametrize("cut", range(len(SPEC_V1_TCP4_MAX)))
def test_v1_every_prefix_asks_for_more(cut: int) -> None:
    assert parse(SPEC_V1_TCP4_MAX[:cut]) is None


def test_v1_header_only_after_the_full_crlf() -> None:
    line = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r"
    assert parse(line) is None
    assert parse(line + b"\n") == ProxyHeader(("192.0.2.1", 1), ("192.0.2.2", 2), len(line) + 1)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 192.0.2.2 40000\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25 x\r\n",  # one too many
        b"PROXY TCP4  192.0.2.1 192.0.2.2 40000 25\r\n",  # two spaces
        b"PROXY UDP4 192.0.2.1 192.0.2.2 40000 25\r\n",  # not TCP4 / TCP6 / UNKNOWN
        b"PROXY tcp4 192.0.2.1 192.0.2.2 40000 25\r\n",  # the keyword is upper case
        b"PROXY TCP4 2001:db8::1 192.0.2.2 40000 25\r\n",  # an IPv6 source in TCP4
        b"PROXY TCP6 192.0.2.1 2001:db8::2 40000 25\r\n",  # an IPv4 source in TCP6
        b"PROXY TCP4 192.0.2.256 192.0.2.2 40000 25\r\n",  # an octet over 255
        b"PROXY TCP4 192.0.2.1 192.0.2.2 040000 25\r\n",  # a heading zero
        b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 25\r\n",  # a port over 65535
        b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 25\r\n",  # a negative port
        b"PROXY TCP4 192.0.2.1 192.0.2.2 4e4 25\r\n",  # not decimal
        b"PROXY\r\n",  # no protocol
        b"PROXYTCP4 192.0.2.1 192.0.2.2 40000 25\r\n",  # no space after PROXY
    ],
)
def test_v1_malformed_lines(line: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(line)


def test_v1_over_long_line() -> None:
    # No CRLF within the first 107 octets: invalid, however many octets have come.
    long_line = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    assert len(long_line) == V1_MAX_LENGTH + 1
    with pytest.raises(ProxyError, match="too long"):
        parse(long_line)
    with pytest.raises(ProxyError, match="too long"):
        parse(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 11))
    assert parse(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 12)) is None  # still short enough


def test_v1_lone_lf_is_no_end_of_line() -> None:
    line = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\n"
    assert parse(line) is None  # not a CRLF: the line has not ended yet
    with pytest.raises(ProxyError):
        parse(line + b"x" * V1_MAX_LENGTH)


def test_v1_not_a_proxy_line() -> None:
    for data in (b"PX", b"POST / HTTP/1.1\r\n", b"PROXX TCP4", b"EHLO x\r\n", b"\x00"):
        with pytest.raises(ProxyError):
            parse(data)


def test_nothing_yet() -> None:
    assert parse(b"") is None


# --- version 2: headers laid out by hand from section 2.2 ----------------------------------------

SIGNATURE_HEX = "0d0a0d0a000d0a515549540a"
PROXY_TCP4 = 0x21, 0x11  # version 2, PROXY; AF_INET, STREAM
PROXY_TCP6 = 0x21, 0x21  # version 2, PROXY; AF_INET6, STREAM
LOCAL = 0x20  # version 2, LOCAL
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05


def v2(ver_cmd: int, fam: int, block: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(block)) + block


def pp2_tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def test_v2_signature_is_the_specifications() -> None:
    assert V2_SIGNATURE.hex() == SIGNATURE_HEX
    assert len(V2_SIGNATURE) == 12


def test_v2_tcp4_byte_exact() -> None:
    data = bytes.fromhex(
        SIGNATURE_HEX + "21"  # version 2, command PROXY
        "11"  # AF_INET, STREAM
        "000c"  # 12 octets of addresses
        "c0000207"  # source 192.0.2.7
        "c6336401"  # destination 198.51.100.1
        "9c40"  # source port 40000
        "0019"  # destination port 25
    )
    assert parse(data + b"EHLO x\r\n") == ProxyHeader(
        ("192.0.2.7", 40000), ("198.51.100.1", 25), 28
    )


def test_v2_tcp6_byte_exact() -> None:
    data = bytes.fromhex(
        SIGNATURE_HEX + "21"  # version 2, command PROXY
        "21"  # AF_INET6, STREAM
        "0024"  # 36 octets of addresses
        "20010db8000000000000000000000001"  # source 2001:db8::1
        "20010db8000000000000000000000002"  # destination 2001:db8::2
        "ffff"  # source port 65535
        "024b"  # destination port 587
    )
    assert parse(data) == ProxyHeader(("2001:db8::1", 65535), ("2001:db8::2", 587), 52)


def test_v2_udp_is_read_like_tcp() -> None:
    block = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 53, 53)
    assert parse(v2(0x21, 0x12, block)) == ProxyHeader(("192.0.2.1", 53), ("192.0.2.2", 53), 28)


def test_v2_tlvs_after_the_addresses_belong_to_the_header() -> None:
    addresses = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 40000, 25)
    tlvs = (
        pp2_tlv(PP2_TYPE_AUTHORITY, b"mail.example.com")
        + pp2_tlv(PP2_TYPE_UNIQUE_ID, bytes(range(16)))
        + pp2_tlv(PP2_TYPE_NOOP, b"")
    )
    data = v2(*PROXY_TCP4, addresses + tlvs)
    assert len(data) == 16 + 12 + 19 + 19 + 3
    header = parse(data + b"EHLO x\r\n")
    assert header == ProxyHeader(("192.0.2.7", 40000), ("198.51.100.1", 25), len(data))


def test_v2_tlvs_after_ipv6_addresses() -> None:
    addresses = bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 1, 2)
    data = v2(*PROXY_TCP6, addresses + pp2_tlv(PP2_TYPE_AUTHORITY, b"example.net"))
    assert parse(data) == ProxyHeader(("::1", 1), ("::2", 2), 16 + 36 + 14)


def test_v2_local_ignores_the_block() -> None:
    # Section 2.2: a LOCAL command's family and addresses are ignored, but its length skipped.
    assert parse(v2(LOCAL, 0x00, b"")) == ProxyHeader(None, None, 16)
    block = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2)
    assert parse(v2(LOCAL, 0x11, block) + b"EHLO") == ProxyHeader(None, None, 28)


def test_v2_unspec_family() -> None:
    assert parse(v2(0x21, 0x00, b"")) == ProxyHeader(None, None, 16)
    assert parse(v2(0x21, 0x00, b"\x00" * 5)) == ProxyHeader(None, None, 21)


def test_v2_every_prefix_asks_for_more() -> None:
    addresses = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 40000, 25)
    data = v2(*PROXY_TCP4, addresses + pp2_tlv(PP2_TYPE_AUTHORITY, b"example.com"))
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut
    assert parse(data) is not None


def test_v2_bad_signature() -> None:
    bad = bytearray(v2(*PROXY_TCP4, bytes(12)))
    bad[4] = 0x01  # the NUL at the 5th position
    with pytest.raises(ProxyError, match="expected a PROXY protocol header"):
        parse(bytes(bad))
    with pytest.raises(ProxyError):
        parse(bytes(bad[:8]))  # already wrong before the header is complete
    with pytest.raises(ProxyError):
        parse(b"\r\n\r\n\x00\r\nQUIT\r")


def test_v2_bad_version() -> None:
    for ver_cmd in (0x11, 0x31, 0x01):
        with pytest.raises(ProxyError, match="version"):
            parse(v2(ver_cmd, 0x11, bytes(12)))


def test_v2_unknown_command() -> None:
    with pytest.raises(ProxyError, match="command 2"):
        parse(v2(0x22, 0x11, bytes(12)))


@pytest.mark.parametrize(
    ("fam", "size"),
    [(0x11, 11), (0x11, 0), (0x21, 35), (0x21, 12)],  # shorter than the family's addresses
)
def test_v2_address_block_too_short_for_its_family(fam: int, size: int) -> None:
    with pytest.raises(ProxyError, match="address family"):
        parse(v2(0x21, fam, bytes(size)))


def test_v2_unix_and_unknown_families() -> None:
    for fam in (0x31, 0x32, 0x41, 0xF1):
        with pytest.raises(ProxyError, match="address family"):
            parse(v2(0x21, fam, bytes(216)))


def test_v2_length_over_the_limit() -> None:
    # Refused from the 16 header octets alone: nothing of the oversized block is awaited.
    head = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_LENGTH - 16 + 1)
    with pytest.raises(ProxyError, match="exceeds"):
        parse(head)
    head = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 0xFFFF)
    with pytest.raises(ProxyError, match="exceeds"):
        parse(head)
    at_limit = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_LENGTH - 16)
    assert parse(at_limit) is None
    assert parse(at_limit + bytes(12) + bytes(V2_MAX_LENGTH - 28)) == ProxyHeader(
        ("0.0.0.0", 0), ("0.0.0.0", 0), V2_MAX_LENGTH
    )


# --- anything at all ---------------------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c")
@example(b"PROXY TCP4 \xff\xfe 1.2.3.4 1 2\r\n")
@example(b"PROXY TCP6 :: :: \xd9\xa3 1\r\n")
def test_arbitrary_bytes_raise_nothing_but_proxy_error(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)


prefixes = st.sampled_from([b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE])


@settings(max_examples=500)
@given(prefixes, st.binary(max_size=120))
def test_arbitrary_bytes_after_a_valid_start(prefix: bytes, rest: bytes) -> None:
    try:
        header = parse(prefix + rest)
    except ProxyError:
        return
    if header is not None:
        assert 0 < header.length <= len(prefix + rest)
