"""What every journal backend builds from its rows: messages, history records, callbacks.

Both backends store a message as the same columns (metadata as a msgpack blob) and its
history as event rows; these helpers turn them into the contract's structs, so a message
reads the same from SQLite and from PostgreSQL.

A row crosses from a backend into these helpers as a named row type (`MessageRow`,
`CallbackRow`, `RecordRow`, `EventRow`): array-like structs whose fields are the columns in
the order the statements select them, so SQLite's aggregated JSON rows decode straight into
them (msgspec builds the struct instead of a list, at no cost: see sqlite/json_rows.py) and a
PostgreSQL record becomes one with `Row(*record)`.

Examples:
    rows = msgspec.json.Decoder(list[MessageRow[str]]).decode(found)   # SQLite's JSON rows
    messages = [row_to_message(MessageRow(*record)) for record in records]  # PostgreSQL's

Warning: the metadata blob travels in two forms, which is what the type parameter `Blob`
says: `bytes` as stored (PostgreSQL, SQLite's plain reads) or `str`, the hex that SQLite's
JSON rows carry (JSON holds no blob; '' for none). Only these helpers unpack it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from sluice.journal.base import Completion, MessageRecord, TimelineEntry
from sluice.model import (
    FINAL_STATES,
    STATE_NAMES,
    Message,
    Outcome,
    State,
    format_id,
    id_time_ms,
)

#: The columns of a message, in the order `row_to_message` takes them.
MESSAGE_COLUMNS = (
    "id, tenant, channel, recipient, body, sender, priority, due_at, expires_at, callback_url, "
    "metadata, attempts"
)
#: The columns of an event, in the order `timeline_entry` takes them (after the message id).
EVENT_COLUMNS = "at, state, channel, attempt, outcome, provider_id, latency_ms, detail"

#: How a row carries the metadata blob: bytes as stored, or hex text (SQLite's JSON rows).
Blob = TypeVar("Blob", bytes, str)

_metadata_decoder = msgspec.msgpack.Decoder(dict[str, str])
_metadata_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


class MessageRow(msgspec.Struct, Generic[Blob], array_like=True, gc=False):
    """A message as `MESSAGE_COLUMNS` select it."""

    id: int
    tenant: str
    channel: str
    recipient: str
    body: str
    sender: str | None
    priority: int
    due_at: int
    expires_at: int | None
    callback_url: str | None
    metadata: Blob | None
    attempts: int


class RecordRow(MessageRow[bytes], array_like=True, gc=False):
    """A message's row for a status read: `MESSAGE_COLUMNS` followed by these."""

    state: int
    updated_at: int
    provider_id: str | None
    not_before: int | None


class EventRow(msgspec.Struct, array_like=True, gc=False):
    """An event as `EVENT_COLUMNS` select it."""

    at: int
    state: int
    channel: str | None
    attempt: int | None
    outcome: int | None
    provider_id: str | None
    latency_ms: float | None
    detail: str | None


class CallbackRow(msgspec.Struct, Generic[Blob], array_like=True, gc=False):
    """What a message's status callback tells of it: the columns id, tenant, channel,
    recipient, attempts, callback_url, metadata, in this order."""

    id: int
    tenant: str
    channel: str
    recipient: str
    attempts: int
    callback_url: str | None
    metadata: Blob | None


class CallbackPayload(msgspec.Struct, omit_defaults=True):
    """What a producer's callback URL receives when its message reaches a final state."""

    id: str
    state: str
    at: int
    channel: str
    attempts: int
    tenant: str
    to: str
    provider_id: str | None = None
    detail: str | None = None
    metadata: dict[str, str] | None = None


def encode_metadata(metadata: dict[str, str] | None) -> bytes | None:
    return _metadata_encoder.encode(metadata) if metadata else None


def _unpack_metadata(blob: bytes | str) -> dict[str, str]:
    """A metadata blob in either form a row carries it (never empty: callers test first)."""
    return _metadata_decoder.decode(bytes.fromhex(blob) if isinstance(blob, str) else blob)


def row_to_message(row: MessageRow[Blob]) -> Message:
    """A message row as a Message (metadata unpacked; the due time stands in `not_before`
    until a record says otherwise)."""
    metadata = row.metadata
    return Message(
        row.id,
        row.tenant,
        row.channel,
        row.recipient,
        row.body,
        row.sender,
        row.priority,
        row.due_at,
        row.expires_at,
        row.callback_url,
        _unpack_metadata(metadata) if metadata else None,
        row.attempts,
    )


def callback_payload(
    row: CallbackRow[Blob], state: State, now: int, provider_id: str | None, detail: str | None
) -> bytes:
    """The JSON body of a status callback."""
    metadata = row.metadata
    return _json.encode(
        CallbackPayload(
            id=format_id(row.id),
            state=STATE_NAMES[state],
            at=now,
            channel=row.channel,
            attempts=row.attempts,
            tenant=row.tenant,
            to=row.recipient,
            provider_id=provider_id,
            detail=detail,
            metadata=_unpack_metadata(metadata) if metadata else None,
        )
    )


def final_callback(c: Completion, row: CallbackRow[Blob], now: int) -> tuple[str, bytes] | None:
    """(url, payload) of the status callback of a message that reached a final state, or None
    (no callback URL, or not final)."""
    callback_url = row.callback_url
    if not callback_url or c.state not in FINAL_STATES:
        return None
    return callback_url, callback_payload(row, c.state, now, c.provider_id, c.detail)


def timeline_entry(row: EventRow) -> TimelineEntry:
    """An event row as an entry of a message's timeline."""
    outcome = row.outcome
    return TimelineEntry(
        row.at,
        State(row.state),
        row.channel,
        row.attempt,
        Outcome(outcome) if outcome is not None else None,
        row.provider_id,
        row.latency_ms,
        row.detail,
    )


def message_record(row: RecordRow, events: list[TimelineEntry]) -> MessageRecord:
    """A message's record, with its events in order."""
    message = row_to_message(row)
    created = id_time_ms(message.id)
    message.not_before = row.not_before
    accepted = [
        TimelineEntry(created, State.ACCEPTED, message.channel),
        TimelineEntry(created, State.QUEUED, message.channel),
    ]
    return MessageRecord(
        message, State(row.state), created, row.updated_at, row.due_at, row.provider_id,
        accepted + events,
    )  # fmt: skip
