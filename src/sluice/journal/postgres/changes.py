"""What one transaction changes besides its rows, applied by the journal at its commit.

Every operation receives a `Tx` and records in it the pending counts it changed and the
channels it made due; the journal writes the counts and sends the wake-ups in the same
transaction, and publishes the counts to this process once it committed.
"""

from __future__ import annotations

from collections import Counter


class Tx:
    """What one transaction changes besides its rows: pending counts and wake-ups."""

    __slots__ = ("deltas", "due")

    def __init__(self) -> None:
        self.deltas: Counter[str] = Counter()
        #: Channels with new due messages, and whether an urgent one is among them.
        self.due: dict[str, bool] = {}
