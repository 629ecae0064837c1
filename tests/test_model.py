"""Message ids: unique, strictly increasing, time-ordered, printable and parseable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.model import (
    EPOCH_MS,
    ID_LENGTH,
    IdGenerator,
    format_id,
    id_time_ms,
    parse_id,
)

MAX_ID = 2**63 - 1
T0 = EPOCH_MS + 1_000_000  # some time after the epoch


class FakeClock:
    def __init__(self, now_ms: int = T0) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now


# --- IdGenerator -----------------------------------------------------------------------------


def test_ids_strictly_increase_with_a_frozen_clock_past_the_sequence_limit() -> None:
    ids = IdGenerator(node=3, clock_ms=FakeClock())
    taken = ids.take(10_000)  # more than twice the 4,096 ids a millisecond holds
    assert taken == sorted(set(taken))  # unique and strictly increasing


def test_an_overfull_millisecond_borrows_the_next_one() -> None:
    ids = IdGenerator(node=0, clock_ms=FakeClock(T0))
    taken = ids.take(4096 + 1)
    assert {id_time_ms(i) for i in taken[:4096]} == {T0}
    assert id_time_ms(taken[4096]) == T0 + 1


def test_borrowed_milliseconds_stay_ordered_when_the_clock_catches_up() -> None:
    clock = FakeClock(T0)
    ids = IdGenerator(node=0, clock_ms=clock)
    borrowed = ids.take(4096 * 2 + 10)  # runs two milliseconds ahead of the clock
    clock.now = T0 + 1  # the clock reaches a borrowed millisecond
    after = ids.take(10)
    assert borrowed[-1] < after[0]
    assert after == sorted(set(after))


def test_ids_are_ordered_by_time_across_milliseconds_and_nodes() -> None:
    clock = FakeClock(T0)
    high_node = IdGenerator(node=1023, clock_ms=clock)
    low_node = IdGenerator(node=0, clock_ms=clock)
    early = high_node.take(5)
    clock.now += 1
    late = low_node.next()
    assert max(early) < late


def test_a_clock_going_backwards_never_repeats_an_id() -> None:
    clock = FakeClock(T0 + 100)
    ids = IdGenerator(node=5, clock_ms=clock)
    first = ids.take(3)
    clock.now = T0  # e.g. an NTP step back
    second = ids.take(3)
    assert first[-1] < second[0]
    assert len(set(first + second)) == 6


@pytest.mark.parametrize("at", [EPOCH_MS + 1, T0, EPOCH_MS + 70 * 365 * 86_400_000])
def test_id_time_ms_recovers_the_creation_time(at: int) -> None:
    ids = IdGenerator(node=77, clock_ms=FakeClock(at))
    assert id_time_ms(ids.next()) == at


def test_ids_from_different_nodes_in_the_same_millisecond_differ() -> None:
    clock = FakeClock()
    a = IdGenerator(node=1, clock_ms=clock).take(100)
    b = IdGenerator(node=2, clock_ms=clock).take(100)
    assert not set(a) & set(b)


def test_the_node_is_encoded_in_the_id() -> None:
    message_id = IdGenerator(node=0b1010101010, clock_ms=FakeClock()).next()
    assert (message_id >> 12) & 0x3FF == 0b1010101010


@pytest.mark.parametrize("node", [0, 1023])
def test_node_bounds_are_accepted(node: int) -> None:
    IdGenerator(node=node, clock_ms=FakeClock()).next()


@pytest.mark.parametrize("node", [-1, 1024, 10**6])
def test_node_out_of_bounds_is_refused_naming_the_range(node: int) -> None:
    with pytest.raises(ValueError, match=r"node must be in 0\.\.1023") as info:
        IdGenerator(node=node)
    assert str(node) in str(info.value)


def test_default_node_is_random_and_valid() -> None:
    message_id = IdGenerator(clock_ms=FakeClock()).next()
    assert 0 <= (message_id >> 12) & 0x3FF <= 1023
    assert id_time_ms(message_id) == T0


def test_ids_are_positive_63_bit_integers() -> None:
    late = EPOCH_MS + (1 << 41) - 1  # the last millisecond the 41 bits can hold
    message_id = IdGenerator(node=1023, clock_ms=FakeClock(late)).next()
    assert 0 < message_id <= MAX_ID


# --- format_id / parse_id --------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=MAX_ID))
def test_format_parse_round_trip(message_id: int) -> None:
    text = format_id(message_id)
    assert len(text) == ID_LENGTH
    assert set(text) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert parse_id(text) == message_id
    assert parse_id(text.lower()) == message_id


@given(st.integers(min_value=0, max_value=MAX_ID), st.integers(min_value=0, max_value=MAX_ID))
def test_formatted_ids_sort_like_the_ids(a: int, b: int) -> None:
    assert (format_id(a) < format_id(b)) == (a < b)


def test_known_values() -> None:
    assert format_id(0) == "0000000000000"
    assert format_id(31) == "000000000000Z"
    assert format_id(MAX_ID) == "7ZZZZZZZZZZZZ"
    assert parse_id("7zzzzzzzzzzzz") == MAX_ID


@pytest.mark.parametrize("text", ["", "123", "0" * 12, "0" * 14])
def test_parse_names_the_wrong_length(text: str) -> None:
    with pytest.raises(ValueError, match=f"must be 13 characters, got {len(text)}"):
        parse_id(text)


@pytest.mark.parametrize("bad", ["U", "I", "L", "O", "-", " ", "é", "*"])
def test_parse_names_the_bad_character(bad: str) -> None:
    text = "000000" + bad + "000000"
    with pytest.raises(ValueError, match="outside Crockford base32") as info:
        parse_id(text)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("text", ["8000000000000", "ZZZZZZZZZZZZZ", "g000000000000"])
def test_parse_refuses_values_beyond_63_bits(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_id(text)


def test_take_hands_out_the_same_ids_next_would() -> None:
    # A stopped clock: 4,096 ids a millisecond, then the next millisecond is borrowed.
    taken = IdGenerator(node=5, clock_ms=lambda: EPOCH_MS + 10)
    one_by_one = IdGenerator(node=5, clock_ms=lambda: EPOCH_MS + 10)
    first = taken.take(3) + taken.take(5000) + [taken.next()] + taken.take(10)
    assert first == [one_by_one.next() for _ in range(len(first))]
    assert len(set(first)) == len(first) == 5014
    assert taken.take(0) == []
