from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.protocols.smpp.gsm import decode_short_message, packed_length
from sluice.protocols.smpp.segmentation import (
    MAX_SEGMENTS,
    MAX_USER_DATA_OCTETS,
    PROTOCOL_MAX_SEGMENTS,
    Segment,
    TooLong,
    segment_count,
    split,
)


def bodies(segments: list[Segment]) -> list[bytes]:
    return [s.body for s in segments]


def test_160_gsm_characters_are_one_segment() -> None:
    [segment] = split("a" * 160, reference=1)
    assert segment == Segment(b"a" * 160, 0x00, None, None)
    assert not segment.needs_udhi
    assert segment_count("a" * 160) == 1


def test_161_gsm_characters_are_153_plus_8() -> None:
    segments = split("a" * 161, reference=1)
    assert [len(b) for b in bodies(segments)] == [153, 8]
    assert segment_count("a" * 161) == 2


def test_empty_text_is_one_empty_segment() -> None:
    assert split("", reference=0) == [Segment(b"", 0x00, None, None)]
    assert segment_count("") == 1


def test_escape_pair_on_the_153rd_septet_moves_to_the_next_segment() -> None:
    text = "a" * 152 + "€" + "b" * 7  # 159 characters + one euro sign = 161 septets
    segments = split(text, reference=9)
    assert [len(b) for b in bodies(segments)] == [152, 9]
    assert bodies(segments)[0] == b"a" * 152
    assert bodies(segments)[1] == b"\x1b\x65" + b"b" * 7
    assert [decode_short_message(b, 0x00) for b in bodies(segments)] == ["a" * 152, "€bbbbbbb"]
    assert segment_count(text) == 2


def test_escape_pair_before_the_boundary_is_kept_whole() -> None:
    text = "a" * 151 + "€" + "b" * 10  # ESC at 152nd, code at 153rd septet: fits
    assert [len(b) for b in bodies(split(text, reference=9))] == [153, 10]


def test_euro_signs_count_two_septets_each() -> None:
    assert len(split("€" * 80, reference=0)) == 1
    assert [len(b) for b in bodies(split("€" * 81, reference=0))] == [152, 10]


def test_70_and_71_ucs2_characters() -> None:
    [single] = split("ж" * 70, reference=0)
    assert single.data_coding == 0x08
    assert single.udh is None
    assert single.payload == "ж".encode("utf-16-be") * 70
    segments = split("ж" * 71, reference=0)
    assert [len(b) // 2 for b in bodies(segments)] == [67, 4]
    assert all(s.data_coding == 0x08 for s in segments)


def test_surrogate_pair_on_the_67th_unit_moves_to_the_next_segment() -> None:
    text = "a" * 66 + "😀" + "b" * 10  # 78 units; the emoji takes units 67 and 68
    segments = split(text, reference=3)
    assert [len(b) // 2 for b in bodies(segments)] == [66, 12]
    assert decode_short_message(bodies(segments)[0], 0x08) == "a" * 66
    assert decode_short_message(bodies(segments)[1], 0x08) == "😀" + "b" * 10
    assert segment_count(text) == 2


def test_emoji_counts_two_units() -> None:
    assert len(split("😀" * 35, reference=0)) == 1  # 70 units
    assert len(split("😀" * 35 + "a", reference=0)) == 2


def test_one_emoji_switches_the_whole_text_to_ucs2() -> None:
    text = "a" * 100 + "😀"
    segments = split(text, reference=0)
    assert [s.data_coding for s in segments] == [0x08, 0x08]
    assert segment_count("a" * 100) == 1
    assert segment_count(text) == 2


def test_udh_bytes_are_exact() -> None:
    segments = split("x" * 400, reference=0xAB)
    assert [s.udh for s in segments] == [
        bytes.fromhex("050003ab0301"),
        bytes.fromhex("050003ab0302"),
        bytes.fromhex("050003ab0303"),
    ]
    for segment in segments:
        assert segment.needs_udhi
        assert segment.sar is None
        assert segment.payload.startswith(segment.udh or b"")
        assert segment.data_coding == 0x00
    assert b"".join(bodies(segments)) == b"x" * 400


def test_reference_above_255_uses_the_16_bit_iei() -> None:
    segments = split("x" * 400, reference=0x1234)
    assert [s.udh for s in segments] == [
        bytes.fromhex("0608041234030" + str(seq)) for seq in (1, 2, 3)
    ]
    assert [len(b) for b in bodies(segments)] == [152, 152, 96]
    assert segment_count("x" * 305, reference=0x1234) == 3
    assert segment_count("x" * 305, reference=0) == 2


def test_sar_mode_puts_the_tuple_aside_and_keeps_153_67() -> None:
    segments = split("x" * 400, mode="sar", reference=0x1234)
    assert [s.sar for s in segments] == [(0x1234, 3, 1), (0x1234, 3, 2), (0x1234, 3, 3)]
    assert [len(s.payload) for s in segments] == [153, 153, 94]
    assert all(s.udh is None and not s.needs_udhi for s in segments)
    ucs2 = split("ж" * 100, mode="sar", reference=7)
    assert [(len(s.payload) // 2, s.sar) for s in ucs2] == [(67, (7, 2, 1)), (33, (7, 2, 2))]
    assert split("short", mode="sar", reference=7)[0].sar is None


def test_too_many_segments_names_the_limit_and_the_count() -> None:
    assert MAX_SEGMENTS == 10
    with pytest.raises(TooLong, match=r"needs 3 segments \(459 septets\) but max_segments is 2"):
        split("a" * 459, reference=0, max_segments=2)
    assert isinstance(TooLong("x"), ValueError)
    with pytest.raises(TooLong, match="needs 11 segments"):
        split("a" * (153 * 10 + 1), reference=0)
    assert len(split("a" * (153 * 10), reference=0)) == 10


def test_protocol_maximum_of_255_segments() -> None:
    assert len(split("a" * (153 * 255), reference=0, max_segments=255)) == 255
    with pytest.raises(TooLong, match="needs 256 segments"):
        split("a" * (153 * 255 + 1), reference=0, max_segments=PROTOCOL_MAX_SEGMENTS)
    assert segment_count("a" * (153 * 255 + 1)) == 256


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": -1}, "reference must be 0..65535, got -1"),
        ({"reference": 65536}, "reference must be 0..65535, got 65536"),
        ({"reference": 0, "max_segments": 0}, "max_segments must be 1..255, got 0"),
        ({"reference": 0, "max_segments": 256}, "max_segments must be 1..255, got 256"),
        ({"reference": 0, "mode": "tlv"}, "mode must be 'udh' or 'sar', got 'tlv'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        split("a", **kwargs)  # type: ignore[arg-type]


def test_unpaired_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="unpaired UTF-16 surrogate"):
        split("a\ud800", reference=0)


GSM_HEAVY = "aZ0 @£€[]{}\\~^|\x0c\n"
texts = st.one_of(
    st.text(max_size=700),
    st.text(alphabet=GSM_HEAVY, max_size=700),
    st.text(alphabet=GSM_HEAVY + "😀ж", max_size=400),
)


def air_octets(segment: Segment) -> int:
    """Octets the segment takes over the air, UDH included (SAR gets a 6-octet UDH there)."""
    udh = len(segment.udh) if segment.udh is not None else (6 if segment.sar else 0)
    body = len(segment.body)
    if segment.data_coding == 0x08:
        return udh + body
    fill_bits = (7 - udh * 8 % 7) % 7
    return udh + packed_length(body, fill_bits)


@given(
    texts,
    st.sampled_from(["udh", "sar"]),
    st.sampled_from([0, 255, 256, 65535]),
)
def test_split_round_trips_and_fits_the_air_interface(
    text: str, mode: Literal["udh", "sar"], reference: int
) -> None:
    segments = split(text, mode=mode, reference=reference, max_segments=PROTOCOL_MAX_SEGMENTS)
    assert segment_count(text, mode=mode, reference=reference) == len(segments)
    data_coding = segments[0].data_coding
    assert all(s.data_coding == data_coding for s in segments)
    joined = b"".join(bodies(segments))
    assert decode_short_message(joined, data_coding) == text
    # Every part decodes on its own: no escape or surrogate pair was cut.
    assert "".join(decode_short_message(b, data_coding) for b in bodies(segments)) == text
    for seq, segment in enumerate(segments, 1):
        assert air_octets(segment) <= MAX_USER_DATA_OCTETS
        if len(segments) == 1:
            assert segment.udh is None and segment.sar is None
        elif mode == "sar":
            assert segment.sar == (reference, len(segments), seq)
        else:
            assert segment.udh is not None
            assert segment.udh[-2:] == bytes((len(segments), seq))
            assert segment.payload == segment.udh + segment.body


@given(texts)
def test_segment_count_matches_split_by_default(text: str) -> None:
    assert segment_count(text) == len(split(text, reference=0, max_segments=255))
