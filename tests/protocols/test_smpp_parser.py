"""SMPP framer: any chunking gives the same PDUs; garbage gives SmppProtocolError and nothing else;
memory stays under max_command_length whatever the peer announces.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.protocols.smpp import (
    DEFAULT_MAX_COMMAND_LENGTH,
    CommandId,
    CommandStatus,
    DeliverSm,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    PduParser,
    SmppProtocolError,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    encode,
    tlv_cstring,
)

S = CommandStatus

STREAM_PDUS = [
    EnquireLink(sequence_number=1),
    SubmitSm(
        sequence_number=2,
        source_addr="Sluice",
        destination_addr="447700900123",
        short_message=b"hello",
        tlvs=(Tlv(0x1400, b"vendor"),),
    ),
    SubmitSmResp(sequence_number=2, message_id="abc"),
    SubmitSmResp(sequence_number=3, command_status=S.ESME_RTHROTTLED),
    DeliverSm(
        sequence_number=4,
        esm_class=4,
        short_message=b"id:abc stat:DELIVRD",
        tlvs=(tlv_cstring(Tag.receipted_message_id, "abc"),),
    ),
    SubmitSm(sequence_number=5, tlvs=(Tlv(Tag.message_payload, b"p" * 3000),)),
    EnquireLinkResp(sequence_number=1),
    GenericNack(sequence_number=9, command_status=S.ESME_RINVCMDID),
]
STREAM = b"".join(encode(p) for p in STREAM_PDUS)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


def test_whole_stream_in_one_chunk() -> None:
    assert PduParser().feed(STREAM) == STREAM_PDUS


def test_one_byte_at_a_time() -> None:
    parser = PduParser()
    out = []
    for i in range(len(STREAM)):
        out += parser.feed(STREAM[i : i + 1])
        assert parser.buffered <= parser.max_command_length
    assert out == STREAM_PDUS
    assert parser.buffered == 0


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_any_chunking_gives_the_same_pdus(cuts: list[int]) -> None:
    parser = PduParser()
    out = []
    for chunk in _split(STREAM, cuts):
        out += parser.feed(chunk)
        assert parser.buffered < len(STREAM)
    assert out == STREAM_PDUS
    assert parser.buffered == 0


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_frames_splits_without_decoding(cuts: list[int]) -> None:
    parser = PduParser()
    frames = []
    for chunk in _split(STREAM, cuts):
        got, error = parser.frames(chunk)
        assert error is None
        frames += got
    assert frames == [encode(p) for p in STREAM_PDUS]
    assert all(type(f) is bytes for f in frames)


def test_accepts_bytearray_and_memoryview() -> None:
    parser = PduParser()
    assert parser.feed(bytearray(STREAM[:50])) + parser.feed(memoryview(STREAM)[50:]) == (
        STREAM_PDUS
    )


# --- framing errors -------------------------------------------------------------------------


def test_huge_command_length_is_refused_from_the_header_alone() -> None:
    parser = PduParser()
    header = (2_000_000_000).to_bytes(4, "big") + bytes.fromhex("00000004 00000000 0000002a")
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(header)
    err = info.value
    assert err.status == S.ESME_RINVCMDLEN
    assert err.fatal
    assert (err.sequence_number, err.command_id) == (42, CommandId.submit_sm)
    assert "2000000000" in err.message and str(DEFAULT_MAX_COMMAND_LENGTH) in err.message
    assert parser.buffered == 0


def test_huge_command_length_refused_when_the_header_arrives_in_pieces() -> None:
    parser = PduParser(max_command_length=1024)
    header = (1025).to_bytes(4, "big") + bytes(12)
    assert parser.feed(header[:3]) == []
    assert parser.feed(header[3:15]) == []
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(header[15:] + b"body")
    assert info.value.fatal and "1024" in info.value.message


def test_command_length_below_the_header_size() -> None:
    data = encode(EnquireLink(sequence_number=1)) + (8).to_bytes(4, "big") + bytes(12)
    parser = PduParser()
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(data)
    err = info.value
    assert err.status == S.ESME_RINVCMDLEN and err.fatal and "16" in err.message
    # the PDU before the bad header was not lost
    assert err.decoded == (EnquireLink(sequence_number=1),)


def test_a_broken_stream_stays_broken() -> None:
    parser = PduParser()
    bad = (3).to_bytes(4, "big") + bytes(12)
    frames, error = parser.frames(encode(EnquireLink(sequence_number=5)) + bad)
    assert frames == [encode(EnquireLink(sequence_number=5))]
    assert error is not None and error.fatal
    assert parser.frames(encode(EnquireLink(sequence_number=6))) == ([], error)
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(encode(EnquireLink(sequence_number=6)))
    assert info.value.fatal and info.value.decoded == ()


def test_max_command_length_must_fit_a_header() -> None:
    with pytest.raises(ValueError, match="16"):
        PduParser(max_command_length=15)


def test_a_pdu_exactly_at_the_limit_is_accepted() -> None:
    pdu = SubmitSm(sequence_number=1, tlvs=(Tlv(Tag.message_payload, b"x" * 1000),))
    data = encode(pdu)
    assert PduParser(max_command_length=len(data)).feed(data) == [pdu]
    with pytest.raises(SmppProtocolError):
        PduParser(max_command_length=len(data) - 1).feed(data)


def test_the_largest_message_payload_fits_the_default_limit() -> None:
    pdu = SubmitSm(
        sequence_number=1,
        source_addr="1" * 20,
        destination_addr="2" * 20,
        tlvs=(Tlv(Tag.message_payload, b"x" * 0xFFFF), Tlv(Tag.sar_msg_ref_num, b"\x00\x01")),
    )
    assert PduParser().feed(encode(pdu)) == [pdu]


# --- body errors are not fatal and lose nothing ------------------------------------------------


def test_body_error_carries_what_came_before_and_keeps_what_comes_after() -> None:
    bad = (20).to_bytes(4, "big") + bytes.fromhex("00000015 00000000 00000007") + b"junk"
    data = encode(EnquireLink(sequence_number=6)) + bad + encode(EnquireLink(sequence_number=8))
    parser = PduParser()
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(data)
    err = info.value
    assert not err.fatal
    assert err.status == S.ESME_RINVCMDLEN  # an enquire_link has no body
    assert (err.sequence_number, err.command_id) == (7, CommandId.enquire_link)
    assert err.decoded == (EnquireLink(sequence_number=6),)
    assert parser.feed(b"") == [EnquireLink(sequence_number=8)]


def test_unknown_command_id_is_a_body_error() -> None:
    data = bytes.fromhex("00000010 00000099 00000000 00000003")
    parser = PduParser()
    with pytest.raises(SmppProtocolError) as info:
        parser.feed(data + encode(EnquireLink(sequence_number=4)))
    assert info.value.status == S.ESME_RINVCMDID and not info.value.fatal
    assert parser.feed(b"") == [EnquireLink(sequence_number=4)]


# --- garbage ----------------------------------------------------------------------------------


@settings(max_examples=500)
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    limit=st.sampled_from([16, 64, 300, DEFAULT_MAX_COMMAND_LENGTH]),
)
def test_random_bytes_raise_only_protocol_errors_and_stay_bounded(
    data: bytes, cuts: list[int], limit: int
) -> None:
    parser = PduParser(max_command_length=limit)
    for chunk in _split(data, cuts):
        try:
            parser.feed(chunk)
        except SmppProtocolError as err:
            assert err.status in set(CommandStatus)
            if err.fatal:
                assert parser.buffered == 0
                return
            while True:  # a body error: the rest of the chunk is still there
                try:
                    parser.feed(b"")
                    break
                except SmppProtocolError as again:
                    if again.fatal:
                        return
        assert parser.buffered <= limit


@settings(max_examples=200)
@given(
    prefix=st.lists(st.sampled_from(STREAM_PDUS), max_size=4),
    garbage=st.binary(min_size=16, max_size=64),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_valid_pdus_before_garbage_are_all_delivered(
    prefix: list, garbage: bytes, cuts: list[int]
) -> None:
    data = b"".join(encode(p) for p in prefix) + garbage
    parser = PduParser(max_command_length=4096)
    out: list = []
    try:
        for chunk in _split(data, cuts):
            out += parser.feed(chunk)
    except SmppProtocolError as err:
        out += err.decoded
    assert out[: len(prefix)] == prefix
