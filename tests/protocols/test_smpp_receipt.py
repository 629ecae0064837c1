from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.protocols.smpp.receipt import (
    MESSAGE_STATES,
    TEXT_PREVIEW_CHARS,
    Receipt,
    format_receipt_text,
    merge,
    normalize_message_id,
    parse_receipt_date,
    parse_receipt_text,
    receipt_from_tlvs,
    variants,
)

CANONICAL = (
    "id:1234567890 sub:001 dlvrd:001 submit date:0610191018 done date:0610191018 "
    "stat:DELIVRD err:000 text:This is the first 20"
)


def test_canonical_appendix_b_receipt() -> None:
    assert parse_receipt_text(CANONICAL) == Receipt(
        message_id="1234567890",
        stat="DELIVRD",
        err="000",
        submitted="0610191018",
        done="0610191018",
        delivered_count=1,
        final="delivered",
        submitted_count=1,
        text="This is the first 20",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # lower-case and mixed-case keys, "Text:" capitalised as in the specification
        (
            "ID:abc123 SUB:001 DLVRD:000 Submit Date:2401010000 Done Date:2401010100 "
            "Stat:undeliv Err:075 Text:-PROFILE",
            ("abc123", "UNDELIV", "failed", "075", "2401010000", "2401010100", 0),
        ),
        # no text field at all, no err
        (
            "id:40072910491427628 sub:001 dlvrd:001 submit date:1007291049 "
            "done date:1007291049 stat:DELIVRD",
            ("40072910491427628", "DELIVRD", "delivered", None, "1007291049", "1007291049", 1),
        ),
        # hex id, 12-digit dates with seconds
        (
            "id:7A3F09BC sub:001 dlvrd:001 submit date:190608165232 "
            "done date:190608165237 stat:DELIVRD err:000 text:Hello World",
            ("7A3F09BC", "DELIVRD", "delivered", "000", "190608165232", "190608165237", 1),
        ),
        # extra spaces, underscores in keys, space after the colon, zero-padded id
        (
            "  id: 0000000012345678   sub:001  dlvrd:000 submit_date:1601010100  "
            "done_date:1601010101 stat: EXPIRED err:000 text:none",
            ("0000000012345678", "EXPIRED", "expired", "000", "1601010100", "1601010101", 0),
        ),
        # minimal: only id and stat; intermediate state
        ("id:42 stat:ENROUTE", ("42", "ENROUTE", None, None, None, None, None)),
        ("id:42 stat:ACCEPTD", ("42", "ACCEPTD", None, None, None, None, None)),
        # written-out state, numeric message_state in the stat field
        ("id:42 stat:DELIVERED err:0", ("42", "DELIVRD", "delivered", "0", None, None, None)),
        ("id:42 stat:5", ("42", "UNDELIV", "failed", None, None, None, None)),
        # newline-separated fields
        (
            "id:9\nsub:001\ndlvrd:000\nsubmit date:2401010000\ndone\ndate:2401010001\n"
            "stat:REJECTD\nerr:001",
            ("9", "REJECTD", "failed", "001", "2401010000", "2401010001", 0),
        ),
        # unknown stat: kept, not final
        ("id:42 stat:BUFFRED", ("42", "BUFFRED", None, None, None, None, None)),
        ("id:42 stat:UNKNOWN", ("42", "UNKNOWN", "failed", None, None, None, None)),
        ("id:42 stat:DELETED", ("42", "DELETED", "failed", None, None, None, None)),
    ],
)
def test_real_world_variants(
    text: str,
    expected: tuple[str, str, str | None, str | None, str | None, str | None, int | None],
) -> None:
    receipt = parse_receipt_text(text)
    assert receipt is not None
    assert (
        receipt.message_id,
        receipt.stat,
        receipt.final,
        receipt.err,
        receipt.submitted,
        receipt.done,
        receipt.delivered_count,
    ) == expected


def test_text_field_may_contain_key_words() -> None:
    receipt = parse_receipt_text(
        "id:77 sub:001 dlvrd:001 submit date:2401010000 done date:2401010000 "
        "stat:DELIVRD err:000 text:id:5 stat:UNDELIV"
    )
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.text) == (
        "77",
        "DELIVRD",
        "id:5 stat:UNDELIV",
    )


@pytest.mark.parametrize(
    "text",
    ["", "Hello, see you at 5", "id:123 sub:001 dlvrd:001", "stat:DELIVRD err:000", "id: stat:"],
)
def test_non_receipts(text: str) -> None:
    assert parse_receipt_text(text) is None


def test_malformed_counts_become_none() -> None:
    receipt = parse_receipt_text("id:1 sub:abc dlvrd:-1 stat:DELIVRD")
    assert receipt is not None
    assert (receipt.submitted_count, receipt.delivered_count) == (None, None)


def test_format_is_the_canonical_text() -> None:
    text = format_receipt_text(
        "1234567890",
        "DELIVRD",
        submitted=datetime(2006, 10, 19, 10, 18),
        done="0610191018",
        text="This is the first 20 characters and more",
    )
    assert text == CANONICAL


def test_format_defaults_and_errors() -> None:
    text = format_receipt_text("x1", "undeliv", submitted="2401010000", done="2401010000", err=75)
    assert text == (
        "id:x1 sub:001 dlvrd:000 submit date:2401010000 done date:2401010000 "
        "stat:UNDELIV err:075 text:"
    )
    with pytest.raises(ValueError, match="message_id must be one non-empty word"):
        format_receipt_text("a b", "DELIVRD", submitted="2401010000", done="2401010000")
    with pytest.raises(ValueError, match=r"done must be a datetime or 10/12 digits"):
        format_receipt_text("a", "DELIVRD", submitted="2401010000", done="24-01-01")
    with pytest.raises(ValueError, match="submitted_count and delivered_count must be >= 0"):
        format_receipt_text("a", "DELIVRD", submitted="2401010000", done="2401010000",
                            submitted_count=-1)  # fmt: skip


ids = st.text(alphabet="0123456789abcdefABCDEF-_.", min_size=1, max_size=64)
dates = st.from_regex(r"\A[0-9]{10}([0-9]{2})?\Z")
stats = st.sampled_from([*MESSAGE_STATES.values(), "BUFFRED"])
previews = st.text(max_size=40).map(str.strip)


@given(
    ids,
    stats,
    dates,
    dates,
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=999),
    st.one_of(st.integers(min_value=0, max_value=999), ids),
    previews,
)
def test_format_parse_round_trip(
    message_id: str,
    stat: str,
    submitted: str,
    done: str,
    sub: int,
    dlvrd: int,
    err: int | str,
    preview: str,
) -> None:
    text = format_receipt_text(
        message_id,
        stat,
        submitted=submitted,
        done=done,
        submitted_count=sub,
        delivered_count=dlvrd,
        err=err,
        text=preview,
    )
    receipt = parse_receipt_text(text)
    assert receipt is not None
    assert receipt.message_id == message_id
    assert receipt.stat == stat
    assert receipt.err == (f"{err:03d}" if isinstance(err, int) else err)
    assert (receipt.submitted, receipt.done) == (submitted, done)
    assert (receipt.submitted_count, receipt.delivered_count) == (sub, dlvrd)
    assert receipt.text == preview[:TEXT_PREVIEW_CHARS].strip()


@pytest.mark.parametrize(
    ("state", "stat", "final"),
    [
        (1, "ENROUTE", None),
        (2, "DELIVRD", "delivered"),
        (3, "EXPIRED", "expired"),
        (4, "DELETED", "failed"),
        (5, "UNDELIV", "failed"),
        (6, "ACCEPTD", None),
        (7, "UNKNOWN", "failed"),
        (8, "REJECTD", "failed"),
        (42, "STATE_42", None),
        (None, "", None),
    ],
)
def test_tlv_receipts(state: int | None, stat: str, final: str | None) -> None:
    receipt = receipt_from_tlvs("abc\x00", state, None)
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.final, receipt.err) == (
        "abc",
        stat,
        final,
        None,
    )


def test_tlv_network_error_code_and_missing_id() -> None:
    receipt = receipt_from_tlvs("1", 5, bytes([3, 0x01, 0x02]))
    assert receipt is not None
    assert receipt.err == "3:258"
    odd = receipt_from_tlvs("1", 5, b"\x07\x00")
    assert odd is not None and odd.err == "0700"
    assert receipt_from_tlvs(None, 2, None) is None
    assert receipt_from_tlvs(" \x00", 2, None) is None


def test_merge_prefers_tlvs_for_id_state_and_error() -> None:
    text = parse_receipt_text(CANONICAL.replace("err:000", "err:011"))
    tlv = receipt_from_tlvs("499602d2", 5, bytes([3, 0, 1]))
    merged = merge(text, tlv)
    assert merged == Receipt(
        message_id="499602d2",
        stat="UNDELIV",
        err="3:001",
        submitted="0610191018",
        done="0610191018",
        delivered_count=1,
        final="failed",
        submitted_count=1,
        text="This is the first 20",
    )


def test_merge_keeps_text_state_and_error_when_tlvs_lack_them() -> None:
    text = parse_receipt_text(CANONICAL)
    tlv = receipt_from_tlvs("499602d2", None, None)
    merged = merge(text, tlv)
    assert merged is not None
    assert (merged.message_id, merged.stat, merged.final, merged.err) == (
        "499602d2",
        "DELIVRD",
        "delivered",
        "000",
    )


def test_merge_with_one_side_missing() -> None:
    text = parse_receipt_text(CANONICAL)
    tlv = receipt_from_tlvs("1", 2, None)
    assert merge(text, None) is text
    assert merge(None, tlv) is tlv
    assert merge(None, None) is None


def test_normalize_message_id() -> None:
    assert normalize_message_id("  7A3F09BC\x00") == "7a3f09bc"
    assert normalize_message_id("0042") == "0042"  # no number conversion


def test_variants() -> None:
    assert variants("1234567890") == {"1234567890", "499602d2", "78187493520"}
    assert variants("0x499602D2") == {"0x499602D2", "0x499602d2", "499602d2", "1234567890"}
    assert variants("uuid-like-id") == {"uuid-like-id"}
    assert variants(" 00ff ") >= {" 00ff ", "00ff", "ff", "255"}
    assert variants("0000000012345678") & variants("12345678")
    assert variants("1234567890") & variants("499602D2")
    assert not variants("1234567890") & variants("abc")
    assert variants("9" * 100) == {"9" * 100}  # too long to be an SMPP id: left alone


def test_parse_receipt_date() -> None:
    assert parse_receipt_date("0610191018") == datetime(2006, 10, 19, 10, 18)
    assert parse_receipt_date("190608165237") == datetime(2019, 6, 8, 16, 52, 37)
    assert parse_receipt_date("1913991018") is None
    assert parse_receipt_date("12345") is None
    assert parse_receipt_date(None) is None
