"""The journals' named row types: SQLite's JSON rows decode straight into them, and a row reads
the same whichever form its metadata blob travels in (bytes as stored, hex in JSON rows)."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest

from sluice.journal.base import Completion
from sluice.journal.rows import (
    CallbackRow,
    EventRow,
    MessageRow,
    RecordRow,
    encode_metadata,
    final_callback,
    message_record,
    row_to_message,
    timeline_entry,
)
from sluice.journal.sqlite.json_rows import callback_rows, message_rows
from sluice.model import Outcome, State

METADATA = {"order": "42"}
BLOB = encode_metadata(METADATA)
MID = 7_000_000_000_000_001


def sqlite_json_rows(metadata: bytes | None) -> bytes:
    """One message row as SQLite's aggregated statements return it (metadata as hex)."""
    conn = sqlite3.connect(":memory:")
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(?1, 'acme', 'sms', '+1555', 'hi', NULL, 2, 10, NULL, "
        "'https://h', hex(?2), 3))",
        (MID, metadata),
    ).fetchone()
    conn.close()
    encoded: bytes = found.encode()
    return encoded


@pytest.mark.parametrize("metadata", [BLOB, None], ids=["metadata", "none"])
def test_a_json_row_reads_as_the_same_message_as_a_stored_row(metadata: bytes | None) -> None:
    [row] = message_rows.decode(sqlite_json_rows(metadata))
    assert row.metadata == ("" if metadata is None else metadata.hex().upper())  # SQLite's hex()
    stored: MessageRow[bytes] = MessageRow(
        MID, "acme", "sms", "+1555", "hi", None, 2, 10, None, "https://h", metadata, 3
    )
    message = row_to_message(row)
    assert message == row_to_message(stored)
    assert message.metadata == (METADATA if metadata is not None else None)
    assert message.not_before == 10  # the due time, until a record says otherwise


def test_a_callback_row_reads_the_same_in_both_forms() -> None:
    assert BLOB is not None
    hexed = msgspec.json.encode([[MID, "acme", "sms", "+1555", 3, "https://h", BLOB.hex()]])
    [row] = callback_rows.decode(hexed)
    stored: CallbackRow[bytes] = CallbackRow(MID, "acme", "sms", "+1555", 3, "https://h", BLOB)
    done = Completion(MID, State.FAILED, "sms", 3, Outcome.PERMANENT, detail="no")
    found = final_callback(done, row, 99)
    assert found is not None and found == final_callback(done, stored, 99)
    url, payload = found
    assert url == "https://h"
    assert msgspec.json.decode(payload)["metadata"] == METADATA


def test_no_callback_without_a_url_or_a_final_state() -> None:
    row: CallbackRow[bytes] = CallbackRow(MID, "acme", "sms", "+1555", 3, None, None)
    assert (
        final_callback(Completion(MID, State.FAILED, "sms", 3, Outcome.PERMANENT), row, 1) is None
    )
    row.callback_url = "https://h"
    retry = Completion(MID, State.QUEUED, "sms", 3, Outcome.TRANSIENT)
    assert final_callback(retry, row, 1) is None


def test_a_record_row_names_the_columns_after_the_message() -> None:
    row = RecordRow(
        MID, "acme", "sms", "+1555", "hi", None, 2, 10, None, None, BLOB, 3, int(State.SENT), 20,
        "p1", None,
    )  # fmt: skip
    event = timeline_entry(
        EventRow(15, int(State.SENT), "sms", 3, int(Outcome.SENT), "p1", 1.5, None)
    )
    record = message_record(row, [event])
    assert (record.state, record.updated_at, record.due_at, record.provider_id) == (
        State.SENT,
        20,
        10,
        "p1",
    )
    assert record.message.not_before is None and record.message.metadata == METADATA
    assert [e.state for e in record.timeline] == [State.ACCEPTED, State.QUEUED, State.SENT]
    assert record.timeline[-1].outcome is Outcome.SENT
