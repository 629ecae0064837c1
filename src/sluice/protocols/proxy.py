"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-IO.

A load balancer in front of the SMTP listener opens each connection with one header naming
the real client; screening must judge that client, not the balancer. `parse` takes the bytes
received so far and says whether the header is complete, incomplete or broken.

Examples:
    >>> parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\\r\\nEHLO x\\r\\n")
    ProxyHeader(source=('192.0.2.7', 40000), destination=('198.51.100.1', 25), length=44)
    >>> parse(b"PROXY TCP4 192.0.2.7") is None  # more bytes needed
    True

Warning: accept the header only from the balancer's side of the network (the listener turns
it on per configuration); whoever can connect directly could otherwise claim any address.
"""

from __future__ import annotations

import ipaddress
import struct

import msgspec

#: Longest version 1 header, CRLF included (the specification's figure).
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Largest version 2 address block we accept (TLVs included); the specification allows 65,535.
V2_MAX_LENGTH = 16 + 2048


class ProxyHeader(msgspec.Struct, frozen=True):
    #: (address, port) of the client, or None for a LOCAL / UNKNOWN header (health checks).
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    #: Bytes of the header; what follows belongs to the proxied protocol.
    length: int


class ProxyError(ValueError):
    """Not a valid PROXY header; the connection should be closed."""


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None when more bytes are needed."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data:
        raise ProxyError("expected a PROXY protocol header")
    return None


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or not b"PROXY ".startswith(data[:6]):
            raise ProxyError("PROXY v1 header too long or malformed")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if parts[0] != "PROXY":
        raise ProxyError("expected a PROXY protocol header")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 header {data[:end]!r}")
    family = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source = (str(family(parts[2])), _port(parts[4]))
        destination = (str(family(parts[3])), _port(parts[5]))
    except ValueError as exc:
        raise ProxyError(f"malformed PROXY v1 header {data[:end]!r}: {exc}") from None
    return ProxyHeader(source, destination, end + 2)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535 or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyError("expected a PROXY protocol header")
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyError("expected a PROXY protocol header")
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyError(f"unsupported PROXY protocol version {version_command >> 4}")
    if 16 + length > V2_MAX_LENGTH:
        raise ProxyError(f"PROXY v2 header of {16 + length} bytes exceeds {V2_MAX_LENGTH}")
    if len(data) < 16 + length:
        return None
    command = version_command & 0x0F
    total = 16 + length
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(None, None, total)
    if command != 0x1:
        raise ProxyError(f"unknown PROXY v2 command {command}")
    family = family_protocol >> 4
    block = data[16:total]
    if family == 0x1 and len(block) >= 12:  # AF_INET
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return ProxyHeader(
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
            total,
        )
    if family == 0x2 and len(block) >= 36:  # AF_INET6
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return ProxyHeader(
            (str(ipaddress.IPv6Address(src)), sport),
            (str(ipaddress.IPv6Address(dst)), dport),
            total,
        )
    if family == 0x0:  # UNSPEC
        return ProxyHeader(None, None, total)
    raise ProxyError(f"unsupported PROXY v2 address family {family} ({len(block)} bytes)")
