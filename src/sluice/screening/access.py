"""Permanent allow and deny lists of client networks, checked before any other screening.

Postfix's postscreen reads one ``postscreen_access_list`` of ``permit``/``reject`` entries and
stops at the first match, so the order of its entries matters. Sluice keeps two unordered
lists instead and lets the allow list win when both match: a deny entry for a whole
provider's range then cannot lock out a partner's host inside it, and nobody has to reason
about the order of entries.

Each list merges its networks into sorted, non-overlapping integer intervals per address
family; a lookup is one bisection. Clients of a dual-stack socket show up as IPv4-mapped IPv6
addresses (``::ffff:192.0.2.1``); they are looked up as the IPv4 clients they are.

Examples:
    >>> deny = AccessList.parse(["192.0.2.0/24", "2001:db8::/32"], what="screening.deny")
    >>> allow = AccessList.parse(["192.0.2.7"], what="screening.allow")
    >>> policy = AccessPolicy(allow, deny)
    >>> policy.verdict("192.0.2.7"), policy.verdict("::ffff:192.0.2.8"), policy.verdict("::1")
    ('allowlisted', 'denylisted', None)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Literal

Address = str | IPv4Address | IPv6Address
"""A client address as a socket reports it (text) or already parsed."""

AccessVerdict = Literal["allowlisted", "denylisted"]

_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_IPV4_BITS = 32


def client_address(address: Address) -> IPv4Address | IPv6Address:
    """Parse ``address``; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) becomes IPv4.

    Raises ValueError for text that is not an IPv4 or IPv6 address.

    Examples:
        >>> client_address("::ffff:192.0.2.1"), client_address("2001:db8::1")
        (IPv4Address('192.0.2.1'), IPv6Address('2001:db8::1'))
    """
    parsed = address if isinstance(address, IPv4Address | IPv6Address) else ip_address(address)
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def _unmapped(network: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    """An entry inside ``::ffff:0:0/96`` names IPv4 clients, so it is kept as the IPv4 network."""
    if isinstance(network, IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        ipv4 = int(network.network_address) & 0xFFFF_FFFF
        return IPv4Network((ipv4, network.prefixlen - (128 - _IPV4_BITS)))
    return network


class _Intervals:
    """Sorted, disjoint, non-adjacent closed intervals of integers, searched by bisection."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(spans):
            if ends and start <= ends[-1] + 1:  # overlapping or adjacent: extend the last one
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._starts = tuple(starts)
        self._ends = tuple(ends)

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]

    def __len__(self) -> int:
        return len(self._starts)


class AccessList:
    """A fixed set of IPv4 and IPv6 networks that answers "is this client inside?".

    Networks are merged on construction: overlapping and adjacent networks become one
    interval, so ``len()`` counts intervals, not entries (``192.0.2.0/25`` and
    ``192.0.2.128/25`` are one).

    Examples:
        >>> networks = AccessList.parse(["10.0.0.0/9", "10.128.0.0/9", "2001:db8::/32"])
        >>> len(networks), networks.contains("10.200.0.1"), networks.contains("::ffff:10.0.0.1")
        (2, True, True)
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network] = ()) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for network in map(_unmapped, networks):
            span = (int(network.network_address), int(network.broadcast_address))
            (v4 if network.version == 4 else v6).append(span)
        self._v4 = _Intervals(v4)
        self._v6 = _Intervals(v6)

    @classmethod
    def parse(cls, entries: Iterable[str], what: str = "access list") -> AccessList:
        """Build a list from text entries: ``192.0.2.0/24``, ``2001:db8::/32``, ``198.51.100.7``.

        A single address is a /32 (IPv4) or /128 (IPv6) network. Entries with host bits set
        are normalised rather than refused: ``10.0.0.1/8`` means ``10.0.0.0/8``, as in
        Postfix's cidr tables. Surrounding whitespace is ignored.

        A bad entry raises ValueError naming ``what`` (the setting it came from) and its
        position, counted from 0: ``screening.deny[3]: '10.0.0.300/8' is not an IPv4 or
        IPv6 network``.
        """
        networks: list[IPv4Network | IPv6Network] = []
        for position, entry in enumerate(entries):
            try:
                if not isinstance(entry, str):  # ip_network() would take 5 as 0.0.0.5
                    raise ValueError
                networks.append(ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{what}[{position}]: {entry!r} is not an IPv4 or IPv6 network; "
                    "write a network as '192.0.2.0/24' or '2001:db8::/32', "
                    "or a single address as '198.51.100.7' or '2001:db8::1'"
                ) from None
        return cls(networks)

    def contains(self, address: Address) -> bool:
        """Whether ``address`` lies in one of the networks; ValueError if it is no address."""
        client = client_address(address)
        return int(client) in (self._v4 if client.version == 4 else self._v6)

    def __len__(self) -> int:
        return len(self._v4) + len(self._v6)

    def __repr__(self) -> str:
        return f"<AccessList: {len(self._v4)} IPv4 and {len(self._v6)} IPv6 intervals>"


class AccessPolicy:
    """The permanent verdict on a client: allowlisted, denylisted, or neither (``None``).

    The allow list wins over the deny list (see the module docstring for why). What a
    verdict leads to is the caller's business; postscreen lets an allowlisted client skip
    all further tests and, with ``postscreen_denylist_action = drop``, hangs up on a
    denylisted one.
    """

    __slots__ = ("allow", "deny")

    def __init__(self, allow: AccessList, deny: AccessList) -> None:
        self.allow = allow
        self.deny = deny

    def verdict(self, address: Address) -> AccessVerdict | None:
        """``"allowlisted"`` or ``"denylisted"`` for a listed client, else ``None``."""
        client = client_address(address)
        if self.allow.contains(client):
            return "allowlisted"
        if self.deny.contains(client):
            return "denylisted"
        return None
