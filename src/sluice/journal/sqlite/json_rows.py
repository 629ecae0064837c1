"""How the writer's statements pass rows: one JSON value each way.

Examples:
    keys = json_encoder.encode([m.id for m in messages])        # one parameter: json_each(?1)
    (found,) = conn.execute(select, (keys,)).fetchone()          # json_group_array(...)
    rows = rows_decoder.decode(found)
"""

from __future__ import annotations

from typing import Any

import msgspec

# The writer's statements return their rows as ONE value (a JSON array built by SQLite) and
# take their keys as one JSON parameter. `sqlite3` releases the GIL around every step, and a
# thread waiting to take it back waits up to the switch interval (5 ms) while the event loop
# runs: a 600-row SELECT measured 0.3 ms alone and 270 ms next to a busy event loop, the same
# rows as one aggregated step 11 ms. Rows from RETURNING cannot be aggregated, so updates that
# need their rows read them first with an aggregated SELECT.
json_encoder = msgspec.json.Encoder()
rows_decoder = msgspec.json.Decoder(list[list[Any]])


def unhex(metadata: str) -> bytes | None:
    """A metadata blob as the aggregated JSON rows carry it: hex, '' for none."""
    return bytes.fromhex(metadata) if metadata else None
