"""The SMTP front door's client memory: counts, times, passes, retention, snapshots and size."""

from __future__ import annotations

import ipaddress
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.screening.client_memory import (
    SNAPSHOT_MAGIC,
    ClientMemory,
    ClientRecord,
    ScreenTest,
)

NOW = 1_700_000_000
DAY = 86_400
# The snapshot format: a header (magic, version, tests per row, rows, CRC-32 of the rows),
# then rows of a 16-byte key, first_seen, last_seen, connections, PREGREET and DNSBL expiries.
HEADER = struct.Struct("<4sHHII")
ROW = 36


def random_address(rnd: random.Random) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if rnd.random() < 0.8:
        return ipaddress.IPv4Address(rnd.getrandbits(32))
    return ipaddress.IPv6Address(rnd.getrandbits(128))


def reseal(data: bytes, version: int = 1, tests: int | None = None) -> bytes:
    """`data`'s body under a fresh header: a valid checksum over whatever the body now is."""
    magic, _, old_tests, count, _ = HEADER.unpack_from(data)
    body = data[HEADER.size :]
    tests = old_tests if tests is None else tests
    return HEADER.pack(magic, version, tests, count, zlib.crc32(body)) + body


def test_a_new_client_then_a_known_one() -> None:
    memory = ClientMemory()
    first = memory.seen("192.0.2.7", NOW)
    assert first == ClientRecord(NOW, NOW, 1, (0, 0))
    assert first.is_new
    again = memory.seen("192.0.2.7", NOW + 60)
    assert again == ClientRecord(NOW, NOW + 60, 2, (0, 0))
    assert not again.is_new
    assert memory.get("192.0.2.7") == again
    assert len(memory) == 1


def test_get_and_passed_do_not_remember_an_unknown_client() -> None:
    memory = ClientMemory()
    assert memory.get("192.0.2.7") is None
    assert not memory.passed("192.0.2.7", ScreenTest.PREGREET, NOW)
    assert len(memory) == 0


def test_ipv4_and_ipv6_clients_are_kept_apart() -> None:
    memory = ClientMemory()
    addresses = ["1.2.3.4", "::1.2.3.4", "2001:db8::102:304", "::", "0.0.0.0", "fe80::1"]
    for count, address in enumerate(addresses, start=1):
        for _ in range(count):
            memory.seen(address, NOW)
    assert [memory.get(address).connections for address in addresses] == [1, 2, 3, 4, 5, 6]
    assert [address for address, _ in memory.items()] == [
        ipaddress.ip_address(address) for address in addresses
    ]


def test_an_ipv4_mapped_address_is_the_ipv4_client() -> None:
    # A dual-stack listener reports an IPv4 peer as ::ffff:a.b.c.d: the same client.
    memory = ClientMemory()
    memory.seen("1.2.3.4", NOW)
    memory.seen("::ffff:1.2.3.4", NOW + 1)
    memory.seen(ipaddress.IPv6Address("::ffff:1.2.3.4"), NOW + 2)
    assert memory.get(ipaddress.IPv4Address("1.2.3.4")) == ClientRecord(NOW, NOW + 2, 3, (0, 0))
    assert list(memory.items()) == [(ipaddress.IPv4Address("1.2.3.4"), memory.get("1.2.3.4"))]


def test_address_objects_text_and_scoped_ipv6_are_the_same_client() -> None:
    memory = ClientMemory()
    memory.seen(ipaddress.IPv6Address("2001:db8::1"), NOW)
    memory.seen("2001:DB8:0::1", NOW)
    memory.seen("fe80::1%eth0", NOW)
    assert memory.get("2001:db8::1").connections == 2
    assert memory.get(ipaddress.IPv6Address("fe80::1")).connections == 1


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.256", "01.2.3.4", "example.org", "::g"])
def test_text_that_is_not_an_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        ClientMemory().seen(text, NOW)


def test_the_clock_stepping_back_does_not_move_last_seen_back() -> None:
    memory = ClientMemory()
    memory.seen("192.0.2.7", NOW)
    assert memory.seen("192.0.2.7", NOW - 5) == ClientRecord(NOW, NOW, 2, (0, 0))


def test_a_pass_is_valid_until_its_expiry_and_for_its_test_only() -> None:
    memory = ClientMemory()
    memory.seen("192.0.2.7", NOW)
    memory.record_pass("192.0.2.7", ScreenTest.DNSBL, NOW + DAY)
    assert memory.passed("192.0.2.7", ScreenTest.DNSBL, NOW + DAY - 1)
    assert not memory.passed("192.0.2.7", ScreenTest.DNSBL, NOW + DAY)
    assert not memory.passed("192.0.2.7", ScreenTest.PREGREET, NOW)
    assert memory.get("192.0.2.7").passes == (0, NOW + DAY)
    memory.record_pass("192.0.2.7", ScreenTest.PREGREET, NOW + 2 * DAY)
    assert memory.seen("192.0.2.7", NOW + 1).passes == (NOW + 2 * DAY, NOW + DAY)


def test_a_test_number_out_of_range_is_refused_rather_than_touching_another_client() -> None:
    memory = ClientMemory()
    memory.seen("192.0.2.7", NOW)
    memory.seen("192.0.2.8", NOW)
    with pytest.raises(ValueError, match="not a ScreenTest"):
        memory.record_pass("192.0.2.7", 2, NOW + DAY)  # type: ignore[arg-type]
    assert memory.get("192.0.2.8").passes == (0, 0)


def test_a_pass_needs_a_client_that_was_seen() -> None:
    with pytest.raises(KeyError, match="call seen"):
        ClientMemory().record_pass("192.0.2.7", ScreenTest.PREGREET, NOW)


@pytest.mark.parametrize("when", [-1, 2**32])
def test_times_outside_u32_epoch_seconds_are_refused(when: int) -> None:
    memory = ClientMemory()
    with pytest.raises(ValueError, match="now="):
        memory.seen("192.0.2.7", when)
    memory.seen("192.0.2.7", NOW)
    with pytest.raises(ValueError, match="until="):
        memory.record_pass("192.0.2.7", ScreenTest.DNSBL, when)


def test_forget_before_drops_only_clients_last_seen_before_the_cutoff() -> None:
    rnd = random.Random(7)
    memory = ClientMemory()
    expected = {}
    for n in range(3000):
        address = f"10.0.{n >> 8}.{n & 255}" if n % 3 else f"2001:db8::{n:x}"
        last_seen = NOW + rnd.randrange(-30 * DAY, 0)
        memory.seen(address, NOW - 31 * DAY)
        memory.seen(address, last_seen)
        memory.record_pass(address, ScreenTest.PREGREET, last_seen + n)
        expected[ipaddress.ip_address(address)] = memory.get(address)
    cutoff = NOW - 7 * DAY
    old = {address for address, record in expected.items() if record.last_seen < cutoff}

    assert memory.forget_before(cutoff) == len(old)

    assert dict(memory.items()) == {a: r for a, r in expected.items() if a not in old}
    for address, record in expected.items():
        assert memory.get(address) == (None if address in old else record)
    assert memory.forget_before(cutoff) == 0
    assert memory.seen(next(iter(old)), NOW).is_new


def test_forget_before_gives_the_memory_back() -> None:
    memory = ClientMemory()
    for n in range(20_000):
        memory.seen(f"10.1.{n >> 8}.{n & 255}", NOW - DAY if n else NOW)
    full = memory.bytes_used()
    assert memory.forget_before(NOW) == 19_999
    assert memory.bytes_used() < full / 20
    assert [str(address) for address, _ in memory.items()] == ["10.1.0.0"]


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, str, int]]:
    """Steps on a small pool of addresses (so they repeat): seen, a pass, a retention cut."""
    pool = ["192.0.2.1", "::ffff:192.0.2.1", "192.0.2.2", "2001:db8::1", "::1", "0.0.0.0"]
    step = st.tuples(
        st.sampled_from(["seen", "pass", "forget"]),
        st.sampled_from(pool),
        st.integers(NOW - 100, NOW + 100),
    )
    return draw(st.lists(step, max_size=40))


@given(operations())
def test_the_memory_agrees_with_a_dictionary(steps: list[tuple[str, str, int]]) -> None:
    memory = ClientMemory(capacity_hint=1)
    model: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, ClientRecord] = {}
    for operation, text, when in steps:
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        known = model.get(address)
        if operation == "seen":
            model[address] = (
                ClientRecord(when, when, 1, (0, 0))
                if known is None
                else ClientRecord(
                    known.first_seen,
                    max(known.last_seen, when),
                    known.connections + 1,
                    known.passes,
                )
            )
            assert memory.seen(text, when) == model[address]
        elif operation == "pass" and known is not None:
            memory.record_pass(text, ScreenTest.DNSBL, when)
            model[address] = ClientRecord(
                known.first_seen, known.last_seen, known.connections, (0, when)
            )
        elif operation == "forget":
            dropped = {a for a, record in model.items() if record.last_seen < when}
            assert memory.forget_before(when) == len(dropped)
            model = {a: r for a, r in model.items() if a not in dropped}
    assert dict(memory.items()) == model
    assert dict(ClientMemory.restore(memory.snapshot()).items()) == model


@settings(max_examples=2, deadline=None)
@given(st.integers(0, 2**32))
def test_snapshot_round_trip_of_50000_random_clients(seed: int) -> None:
    rnd = random.Random(seed)
    memory = ClientMemory(capacity_hint=50_000)
    for _ in range(50_000):
        address = random_address(rnd)
        first = rnd.getrandbits(31)
        memory.seen(address, first)
        if rnd.getrandbits(2) == 0:
            memory.seen(address, first + rnd.getrandbits(16))
        memory.record_pass(address, ScreenTest(rnd.getrandbits(1)), rnd.getrandbits(32))

    data = memory.snapshot()
    restored = ClientMemory.restore(data)

    assert list(restored.items()) == list(memory.items())
    assert restored.snapshot() == data
    assert len(data) == HEADER.size + ROW * len(memory)
    address, record = next(restored.items())
    assert restored.seen(address, 2**32 - 1).connections == record.connections + 1


def test_an_empty_memory_round_trips() -> None:
    restored = ClientMemory.restore(ClientMemory().snapshot())
    assert len(restored) == 0
    assert restored.seen("192.0.2.7", NOW).is_new


def test_a_snapshot_from_before_a_test_was_added_restores_it_as_never_passed() -> None:
    key = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    row = struct.pack("<16s4I", key, NOW, NOW + 5, 3, NOW + DAY)  # PREGREET's expiry only
    header = HEADER.pack(SNAPSHOT_MAGIC, 1, 1, 1, zlib.crc32(row))
    restored = ClientMemory.restore(header + row)
    assert restored.get("192.0.2.7") == ClientRecord(NOW, NOW + 5, 3, (NOW + DAY, 0))


def small_snapshot() -> bytes:
    memory = ClientMemory()
    for address in ["192.0.2.7", "2001:db8::7", "198.51.100.1"]:
        memory.seen(address, NOW)
    return memory.snapshot()


@pytest.mark.parametrize("keep", [0, 3, HEADER.size - 1, HEADER.size, HEADER.size + 20, -1])
def test_restore_refuses_a_truncated_snapshot(keep: int) -> None:
    data = small_snapshot()
    with pytest.raises(ValueError, match="truncated"):
        ClientMemory.restore(data[:keep])


def test_restore_refuses_what_is_not_a_snapshot() -> None:
    garbage = random.Random(3).randbytes(200)
    with pytest.raises(ValueError, match="not a client memory snapshot"):
        ClientMemory.restore(garbage)
    with pytest.raises(ValueError, match="not a client memory snapshot"):
        ClientMemory.restore(b"GIF89a" + small_snapshot())


def test_restore_refuses_a_corrupt_body() -> None:
    data = bytearray(small_snapshot())
    data[HEADER.size + 5] ^= 0x01
    with pytest.raises(ValueError, match="corrupt"):
        ClientMemory.restore(bytes(data))


def test_restore_refuses_trailing_bytes() -> None:
    with pytest.raises(ValueError, match="trailing bytes"):
        ClientMemory.restore(small_snapshot() + b"\x00")


def test_restore_refuses_another_version_or_unknown_tests() -> None:
    data = small_snapshot()
    assert data.startswith(SNAPSHOT_MAGIC)
    with pytest.raises(ValueError, match="version 2 is not supported"):
        ClientMemory.restore(reseal(data, version=2))
    with pytest.raises(ValueError, match="3 screening tests; this build knows 2"):
        ClientMemory.restore(reseal(data, tests=3))


def test_restore_refuses_an_address_held_twice() -> None:
    data = small_snapshot()
    first, second = HEADER.size, HEADER.size + ROW
    twice = data[:second] + data[first : first + 16] + data[second + 16 :]
    with pytest.raises(ValueError, match=r"192\.0\.2\.7 twice"):
        ClientMemory.restore(reseal(twice))


def test_growth_across_many_resizes_keeps_every_client() -> None:
    rnd = random.Random(11)
    memory = ClientMemory(capacity_hint=1)
    expected = {}
    for n in range(10_000):
        address = random_address(rnd)
        for _ in range(n % 3 + 1):
            memory.seen(address, NOW + n)
        expected[address] = ClientRecord(NOW + n, NOW + n, n % 3 + 1, (0, 0))
    assert len(memory) == len(expected)
    assert all(memory.get(address) == record for address, record in expected.items())


def test_200000_clients_take_at_most_64_bytes_each() -> None:
    # The hint spares the test the index's rebuilds; it ends the same size as when grown.
    memory = ClientMemory(capacity_hint=200_000)
    for n in range(200_000):
        if n % 5:
            memory.seen(f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}", NOW)
        else:
            memory.seen(f"2001:db8::{n >> 16:x}:{n & 0xFFFF:x}", NOW)
    assert len(memory) == 200_000
    # At least the rows themselves (a 16-byte key and five u32 a client) are counted.
    assert 36 <= memory.bytes_used() / len(memory) <= 64
