"""How the writer's statements pass rows: one JSON value each way, decoded into named rows.

Examples:
    keys = json_encoder.encode([m.id for m in messages])        # one parameter: json_each(?1)
    (found,) = conn.execute(select, (keys,)).fetchone()          # json_group_array(...)
    rows = message_rows.decode(found)                            # list[MessageRow[str]]

Warning: a JSON row holds no blob, so the metadata column travels as `hex(metadata)`, '' for
none: the rows are `MessageRow[str]` and `CallbackRow[str]` (see journal/rows.py).
"""

from __future__ import annotations

import msgspec

from sluice.journal.rows import CallbackRow, MessageRow

# The writer's statements return their rows as ONE value (a JSON array built by SQLite) and
# take their keys as one JSON parameter. `sqlite3` releases the GIL around every step, and a
# thread waiting to take it back waits up to the switch interval (5 ms) while the event loop
# runs: a 600-row SELECT measured 0.3 ms alone and 270 ms next to a busy event loop, the same
# rows as one aggregated step 11 ms. Rows from RETURNING cannot be aggregated, so updates that
# need their rows read them first with an aggregated SELECT.
json_encoder = msgspec.json.Encoder()


class ProviderPartRow(msgspec.Struct, array_like=True, gc=False):
    """A part of a SENT message that a receipt answers: provider_id, message_id, parts."""

    provider_id: str
    message_id: int
    #: How many parts the message was sent in.
    parts: int


#: The rows are decoded straight into structs, never lists: every field named, and faster
#: (1,000 claimed rows: ~175 µs as structs, ~205 µs as lists; ~280 against ~305 µs to
#: Messages, the lists' hex unpacked as they were before the structs).
message_rows = msgspec.json.Decoder(list[MessageRow[str]])
callback_rows = msgspec.json.Decoder(list[CallbackRow[str]])
provider_part_rows = msgspec.json.Decoder(list[ProviderPartRow])
