"""Allow and deny lists by CIDR: parsing, merging, IPv4/IPv6/mapped lookups, the policy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from sluice.screening.access import AccessList, AccessPolicy, client_address


def test_ipv4_networks_and_single_addresses() -> None:
    networks = AccessList.parse(["192.0.2.0/24", "198.51.100.7"])
    assert networks.contains("192.0.2.0")
    assert networks.contains("192.0.2.255")
    assert networks.contains("198.51.100.7")
    assert not networks.contains("192.0.3.0")
    assert not networks.contains("198.51.100.8")
    assert not networks.contains("198.51.100.6")


def test_ipv6_networks_and_single_addresses() -> None:
    networks = AccessList.parse(["2001:db8::/32", "2001:db9::1"])
    assert networks.contains("2001:db8:ffff::1")
    assert networks.contains(IPv6Address("2001:db9::1"))
    assert not networks.contains("2001:db9::2")
    assert not networks.contains("2001:db7::1")


def test_families_do_not_mix() -> None:
    # ::c000:201 has the same integer value as 192.0.2.1
    assert not AccessList.parse(["192.0.2.0/24"]).contains("::c000:201")
    assert not AccessList.parse(["::/96"]).contains("192.0.2.1")


def test_ipv4_mapped_client_matches_ipv4_entries() -> None:
    networks = AccessList.parse(["192.0.2.0/24"])
    assert networks.contains("::ffff:192.0.2.1")
    assert networks.contains(IPv6Address("::ffff:192.0.2.1"))
    assert not networks.contains("::ffff:192.0.3.1")


def test_ipv4_mapped_entries_match_ipv4_clients() -> None:
    networks = AccessList.parse(["::ffff:192.0.2.0/120"])
    assert networks.contains("192.0.2.77")
    assert networks.contains("::ffff:192.0.2.77")


def test_client_address_unmaps() -> None:
    assert client_address("::ffff:192.0.2.1") == IPv4Address("192.0.2.1")
    assert client_address(IPv4Address("192.0.2.1")) == IPv4Address("192.0.2.1")
    assert client_address("2001:db8::1") == IPv6Address("2001:db8::1")
    with pytest.raises(ValueError):
        client_address("not-an-address")


def test_overlapping_networks_merge() -> None:
    networks = AccessList.parse(["10.0.0.0/8", "10.1.0.0/16", "10.255.255.255", "2001:db8::/32"])
    assert len(networks) == 2
    assert networks.contains("10.1.2.3")


def test_adjacent_networks_merge() -> None:
    networks = AccessList.parse(["192.0.2.0/25", "192.0.2.128/25", "192.0.3.0/24"])
    assert len(networks) == 1
    assert networks.contains("192.0.3.255")
    assert not networks.contains("192.0.4.0")


def test_separate_networks_stay_apart() -> None:
    networks = AccessList.parse(["192.0.2.0/25", "192.0.2.192/26"])
    assert len(networks) == 2
    assert not networks.contains("192.0.2.130")
    assert networks.contains("192.0.2.200")


def test_host_bits_are_normalised() -> None:
    networks = AccessList.parse(["10.0.0.1/8", " 2001:db8::1/32 "])
    assert networks.contains("10.200.0.1")
    assert networks.contains("2001:db8:1::")


def test_empty_list_contains_nothing() -> None:
    networks = AccessList.parse([])
    assert len(networks) == 0
    assert not networks.contains("192.0.2.1")
    assert not networks.contains("::1")


def test_whole_address_space() -> None:
    networks = AccessList.parse(["0.0.0.0/0", "::/0"])
    assert networks.contains("255.255.255.255")
    assert networks.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


def test_constructor_takes_parsed_networks() -> None:
    assert AccessList([IPv4Network("192.0.2.0/24")]).contains("192.0.2.9")


@pytest.mark.parametrize(
    "entry", ["10.0.0.300/8", "10.0.0.0/33", "example.com", "", "2001:db8::/129"]
)
def test_bad_entry_is_named_with_its_position(entry: str) -> None:
    with pytest.raises(ValueError) as error:
        AccessList.parse(["192.0.2.0/24", "::1", "10.0.0.0/8", entry], what="screening.deny")
    assert str(error.value).startswith(
        f"screening.deny[3]: {entry!r} is not an IPv4 or IPv6 network"
    )


def test_non_text_entry_is_refused() -> None:
    with pytest.raises(ValueError, match=r"access list\[0\]: 5 is not"):
        AccessList.parse([5])  # type: ignore[list-item]


def test_bad_client_address_raises() -> None:
    with pytest.raises(ValueError):
        AccessList.parse(["192.0.2.0/24"]).contains("192.0.2.256")


def test_policy_allow_wins_over_deny() -> None:
    policy = AccessPolicy(
        allow=AccessList.parse(["192.0.2.7", "2001:db8::7"]),
        deny=AccessList.parse(["192.0.2.0/24", "2001:db8::/32"]),
    )
    assert policy.verdict("192.0.2.7") == "allowlisted"
    assert policy.verdict("::ffff:192.0.2.7") == "allowlisted"
    assert policy.verdict("2001:db8::7") == "allowlisted"
    assert policy.verdict("192.0.2.8") == "denylisted"
    assert policy.verdict("::ffff:192.0.2.8") == "denylisted"
    assert policy.verdict("2001:db8::8") == "denylisted"
    assert policy.verdict("198.51.100.1") is None
    assert policy.verdict("2001:db9::1") is None
