"""Messages, their states and priorities, and compact time-ordered ids.

A message id is a 63-bit integer: milliseconds since 2025-01-01 in the high 41 bits
(70 years of range), then 10 bits of node number, then a 12-bit sequence. Integers are the
cheapest key SQLite and PostgreSQL have (the SQLite rowid itself), sort by creation time, and
print as 13 characters of Crockford base32 in the API.

Examples:
    >>> ids = IdGenerator(node=7, clock_ms=lambda: EPOCH_MS + 1000)
    >>> a, b = ids.next(), ids.next()
    >>> b == a + 1 and parse_id(format_id(a)) == a
    True
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable

import msgspec

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
_NODE_BITS = 10
_SEQ_BITS = 12
_SEQ_MAX = (1 << _SEQ_BITS) - 1
#: The largest node number a message id carries (10 bits: 0..1023).
NODE_MAX = (1 << _NODE_BITS) - 1
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_INDEX = {c: i for i, c in enumerate(_CROCKFORD)} | {
    c.lower(): i for i, c in enumerate(_CROCKFORD)
}
ID_LENGTH = 13
_CROCKFORD_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)


class Priority(enum.IntEnum):
    """Delivery lanes. Lower values are claimed first."""

    URGENT = 0
    HIGH = 1
    NORMAL = 2
    BULK = 3


class State(enum.IntEnum):
    """Life cycle: accepted → queued → sending → sent → delivered | failed | expired | cancelled."""

    ACCEPTED = 0
    QUEUED = 1
    SENDING = 2
    SENT = 3
    DELIVERED = 4
    FAILED = 5
    EXPIRED = 6
    CANCELLED = 7


#: States after which nothing more happens to a message but a receipt (sent → delivered).
FINAL_STATES = frozenset(
    {State.SENT, State.DELIVERED, State.FAILED, State.EXPIRED, State.CANCELLED}
)
#: States that still owe a delivery attempt; they count towards the backlog.
PENDING_STATES = frozenset({State.ACCEPTED, State.QUEUED, State.SENDING})

PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
STATE_NAMES = {s: s.name.lower() for s in State}


class Outcome(enum.IntEnum):
    """What one delivery attempt came to."""

    SENT = 0  # the peer took the message
    TRANSIENT = 1  # try again later (timeouts, 5xx, 429)
    PERMANENT = 2  # never going to work (4xx, invalid destination)
    THROTTLED = 3  # the peer asked us to slow down; retry without counting against attempts


class Message(msgspec.Struct, array_like=True, gc=False):
    """One message as the pipeline carries it. Times are integer milliseconds since the epoch."""

    id: int
    tenant: str
    channel: str
    recipient: str
    body: str
    sender: str | None = None
    priority: int = Priority.NORMAL
    not_before: int | None = None
    expires_at: int | None = None
    callback_url: str | None = None
    metadata: dict[str, str] | None = None
    attempts: int = 0


class Attempt(msgspec.Struct, array_like=True, gc=False):
    """The result of one try of one message, as a transport reports it."""

    message_id: int
    channel: str
    outcome: Outcome
    latency_ms: float
    provider_id: str | None = None
    detail: str | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IdGenerator:
    """Hands out unique, time-ordered message ids for one process.

    Warning: ids are unique per node number. Processes writing the same journal must use
    different nodes; the default picks a random one, which is safe for one process and a
    1-in-1024 collision risk per pair of processes, so multi-process setups set it explicitly.
    """

    def __init__(self, node: int | None = None, clock_ms: Callable[[], int] = now_ms) -> None:
        if node is None:
            node = int.from_bytes(os.urandom(2), "big") & NODE_MAX
        if not 0 <= node <= NODE_MAX:
            raise ValueError(f"node must be in 0..{NODE_MAX}, got {node}")
        self._node = node << _SEQ_BITS
        self._clock_ms = clock_ms
        self._last_ms = 0
        self._seq = 0

    def next(self) -> int:
        ms = self._clock_ms() - EPOCH_MS
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
        elif self._seq < _SEQ_MAX:
            self._seq += 1
        else:  # 4,096 ids in one millisecond: borrow the next millisecond
            self._last_ms += 1
            self._seq = 0
        return (self._last_ms << (_NODE_BITS + _SEQ_BITS)) | self._node | self._seq

    def take(self, n: int) -> list[int]:
        """`n` ids at once: runs of consecutive sequence numbers, not `n` calls of `next`."""
        ids: list[int] = []
        while len(ids) < n:
            first = self.next()
            more = min(n - len(ids) - 1, _SEQ_MAX - self._seq)
            ids.extend(range(first, first + more + 1))
            self._seq += more
        return ids


def id_time_ms(message_id: int) -> int:
    """When an id was made, in ms since the Unix epoch."""
    return (message_id >> (_NODE_BITS + _SEQ_BITS)) + EPOCH_MS


def first_id_at(ms: int) -> int:
    """The smallest id made at `ms` (ms since the Unix epoch): every id made before it is
    smaller, so a time bound on creation is a range of ids."""
    return max(0, ms - EPOCH_MS) << (_NODE_BITS + _SEQ_BITS)


def id_node(message_id: int) -> int:
    """The node number of the process that made an id."""
    return (message_id >> _SEQ_BITS) & NODE_MAX


def format_id(message_id: int) -> str:
    # Two characters (10 bits) per table lookup: ~5x faster than a loop of 13, and a batch of
    # 1,000 ids is formatted for every 202.
    pairs = _CROCKFORD_PAIRS
    return (
        _CROCKFORD[(message_id >> 60) & 31]
        + pairs[(message_id >> 50) & 1023]
        + pairs[(message_id >> 40) & 1023]
        + pairs[(message_id >> 30) & 1023]
        + pairs[(message_id >> 20) & 1023]
        + pairs[(message_id >> 10) & 1023]
        + pairs[message_id & 1023]
    )


def format_time(ms: int) -> str:
    """RFC 3339 in UTC with milliseconds: ``2025-01-01T00:00:00.000Z``."""
    seconds, milli = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{milli:03d}Z"
    )


def parse_id(text: str) -> int:
    """Parse an id printed by `format_id`; raise ValueError naming the problem."""
    if len(text) != ID_LENGTH:
        raise ValueError(f"message id must be {ID_LENGTH} characters, got {len(text)}")
    value = 0
    for c in text:
        digit = _CROCKFORD_INDEX.get(c)
        if digit is None:
            raise ValueError(f"message id has a character outside Crockford base32: {c!r}")
        value = (value << 5) | digit
    if value >> 63:
        raise ValueError("message id is out of range")
    return value
