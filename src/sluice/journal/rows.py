"""What every journal backend builds from its rows: messages, history records, callbacks.

Both backends store a message as the same columns (metadata as a msgpack blob) and its
history as event rows; these helpers turn them into the contract's structs, so a message
reads the same from SQLite and from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

_metadata_decoder = msgspec.msgpack.Decoder(dict[str, str])
_metadata_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


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


def row_to_message(row: Sequence[Any]) -> Message:
    """A row of `MESSAGE_COLUMNS`, in order, as a Message (metadata unpacked; the due time
    stands in `not_before` until a record says otherwise)."""
    *head, metadata, attempts = row
    return Message(
        *head,
        _metadata_decoder.decode(metadata) if metadata is not None else None,  # type: ignore[arg-type]
        attempts,
    )


def callback_payload(
    mid: int,
    state: State,
    now: int,
    channel: str,
    attempts: int,
    tenant: str,
    recipient: str,
    provider_id: str | None,
    detail: str | None,
    metadata: bytes | None,
) -> bytes:
    """The JSON body of a status callback."""
    return _json.encode(
        CallbackPayload(
            id=format_id(mid),
            state=STATE_NAMES[state],
            at=now,
            channel=channel,
            attempts=attempts,
            tenant=tenant,
            to=recipient,
            provider_id=provider_id,
            detail=detail,
            metadata=_metadata_decoder.decode(metadata) if metadata is not None else None,
        )
    )


def final_callback(c: Completion, row: Sequence[Any], now: int) -> tuple[str, bytes] | None:
    """(url, payload) of the status callback of a message that reached a final state, or None
    (no callback URL, or not final); `row` is (tenant, channel, recipient, attempts,
    callback_url, metadata)."""
    tenant, channel, recipient, attempts, callback_url, metadata = row[:6]
    if not callback_url or c.state not in FINAL_STATES:
        return None
    payload = callback_payload(
        c.message_id, c.state, now, channel, attempts, tenant, recipient, c.provider_id,
        c.detail, metadata,
    )  # fmt: skip
    return callback_url, payload


def timeline_entry(row: Sequence[Any]) -> TimelineEntry:
    """An event row of `EVENT_COLUMNS`."""
    at, state, channel, attempt, outcome, provider_id, latency_ms, detail = row
    return TimelineEntry(
        at,
        State(state),
        channel,
        attempt,
        Outcome(outcome) if outcome is not None else None,
        provider_id,
        latency_ms,
        detail,
    )


def message_record(row: Sequence[Any], events: list[TimelineEntry]) -> MessageRecord:
    """A row of `MESSAGE_COLUMNS` followed by state, updated_at, provider_id and not_before,
    with its events in order."""
    message = row_to_message(row[:12])
    created = id_time_ms(message.id)
    message.not_before = row[15]
    accepted = [
        TimelineEntry(created, State.ACCEPTED, message.channel),
        TimelineEntry(created, State.QUEUED, message.channel),
    ]
    return MessageRecord(
        message, State(row[12]), created, row[13], row[7], row[14], accepted + events
    )
