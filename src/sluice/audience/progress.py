"""A broadcast's live accounting: counts, effective rates and an ETA, from its counters.

Everything here is read from `BroadcastRecord` (the journal's counters), never from message
rows. The rate is what the broadcast's messages were *finished* at (sent, delivered, failed,
expired, cancelled) — what the channels actually carry, throttling included — over the last
`WINDOW_SECONDS` of the samples this process took (each `view` takes one; `sluice broadcast
watch` asks once a second) from the first in which something had finished, or, until such a
window spans a second, the average since expansion began (shown, but no ETA is made of it:
it counts the peer's first latency as slowness). The ETA
is the time the slowest channel needs for its part of the work left: its messages queued or in
flight, plus its share (so far) of the messages still to plan (the members still to read
times the share of those read that became messages), over its own rate.

Examples:
    tracker = ProgressTracker()
    view = tracker.view(record, now_ms())   # the body of GET /v1/broadcasts/{id}
    view["eta_seconds"]
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sluice.audience.broadcast import decode_spec
from sluice.journal.broadcasts import BroadcastRecord, BroadcastStatus
from sluice.model import FINAL_STATES, PENDING_STATES, STATE_NAMES, State, format_id, format_time

#: How far back the rate looks.
WINDOW_SECONDS = 30.0
#: Broadcasts whose samples a process keeps (the oldest looked at are forgotten).
MAX_TRACKED = 1024
_SHOWN = (
    State.QUEUED,
    State.SENDING,
    State.SENT,
    State.DELIVERED,
    State.FAILED,
    State.EXPIRED,
    State.CANCELLED,
)


def _iso(ms: int) -> str | None:
    return format_time(ms) if ms else None


def _eta(record: BroadcastRecord, rates: dict[str, float], to_plan: float) -> float | None:
    """Seconds until the last channel finishes: each channel's messages left (those ahead,
    and its share so far of the messages still to plan) over its own rate."""
    planned = sum(sum(by_state.values()) for by_state in record.counts.values()) or 1
    longest = 0.0
    for channel, by_state in record.counts.items():
        ahead = sum(by_state.get(s, 0) for s in PENDING_STATES)
        left = ahead + to_plan * sum(by_state.values()) / planned
        if left < 1:
            continue
        rate = rates.get(channel, 0.0)
        if rate <= 0:
            return None  # a channel with work and no rate yet: no honest estimate
        longest = max(longest, left / rate)
    return longest


class ProgressTracker:
    """Samples of each broadcast's finished counts, per channel, for its rates."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: dict[int, deque[tuple[float, dict[str, int]]]] = {}

    def rates(self, record: BroadcastRecord, now_ms: int) -> tuple[dict[str, float], bool]:
        """Messages finished per second, per channel (and "" for all of them), and whether
        they come from a window of samples (True) or are an average since the start."""
        done = {
            channel: sum(by_state.get(s, 0) for s in FINAL_STATES)
            for channel, by_state in record.counts.items()
        }
        done[""] = sum(done.values())
        now = self._clock()
        samples = self._samples.pop(record.id, None) or deque()
        self._samples[record.id] = samples  # most recently looked at last
        while len(self._samples) > MAX_TRACKED:
            del self._samples[next(iter(self._samples))]
        while samples and now - samples[0][0] > WINDOW_SECONDS:
            samples.popleft()
        if done[""]:
            # Before anything finished a sample tells only when the channels began: counted
            # in a window, the peer's latency at the start would be taken for slowness.
            samples.append((now, done))
        if samples and now - samples[0][0] >= 1.0:
            then, before = samples[0]
            span = now - then
            return {c: (n - before.get(c, 0)) / span for c, n in done.items()}, True
        if record.started_at and now_ms > record.started_at:
            span = (now_ms - record.started_at) / 1000
            return {c: n / span for c, n in done.items()}, False
        return {c: 0.0 for c in done}, False

    def view(self, record: BroadcastRecord, now_ms: int) -> dict[str, Any]:
        """The broadcast as the API shows it."""
        spec = decode_spec(record.spec)
        rates, measured = self.rates(record, now_ms)
        ahead = record.in_state(*PENDING_STATES)
        reading = not record.expanded and record.status is not BroadcastStatus.CANCELLED
        left_to_read = max(0, record.audience - record.examined) if reading else 0
        share = record.planned / record.examined if record.examined else 1.0
        remaining = ahead + round(left_to_read * share)
        phase = record.phase
        rate = rates.get("", 0.0)
        eta: float | None
        if phase in ("completed", "cancelled"):
            eta, remaining = 0.0, 0
        elif phase == "paused" or rate <= 0 or not measured:
            eta = None  # no second of progress seen yet: no honest estimate
        else:
            eta = _eta(record, rates, left_to_read * share)
        counts = {STATE_NAMES[s]: record.in_state(s) for s in _SHOWN}
        return {
            "id": format_id(record.id),
            "status": record.status.value,
            "phase": phase,
            "topics": list(spec.topics),
            "channels": [name for name, _ in spec.channels],
            "priority": int(spec.priority),
            "created_at": _iso(record.created_at),
            "start_at": _iso(record.start_at),
            "started_at": _iso(record.started_at),
            "expanded_at": _iso(record.expanded_at),
            "audience": record.audience,
            "examined": record.examined,
            "planned": record.planned,
            "suppressed": dict(sorted(record.suppressed.items())),
            "counts": counts,
            "by_channel": {
                channel: {
                    **{STATE_NAMES[State(s)]: n for s, n in sorted(by_state.items())},
                    "rate": round(rates.get(channel, 0.0), 1),
                }
                for channel, by_state in sorted(record.counts.items())
            },
            "rate": round(rate, 1),
            "remaining": remaining,
            "eta_seconds": None if eta is None else round(eta, 1),
            "eta": None if eta is None else _iso(now_ms + int(eta * 1000)),
        }
