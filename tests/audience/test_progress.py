"""A broadcast's rates and ETA from its counters (audience/progress.py), on a fake clock."""

from __future__ import annotations

from typing import Any

from sluice.audience.broadcast import BroadcastSpec, Content, encode_spec
from sluice.audience.progress import ProgressTracker
from sluice.journal.broadcasts import BroadcastRecord, BroadcastStatus
from sluice.model import State

START_MS = 1_800_000_000_000
SPEC = encode_spec(
    BroadcastSpec(
        tenant="acme",
        topics=("news",),
        channels=(("sms", "sms"), ("mail", "email")),
        content={"sms": Content(body="hi"), "email": Content(body="hi", subject="s")},
        start_at=START_MS,
    )
)


def record(counts: dict[str, dict[State, int]], **fields: Any) -> BroadcastRecord:
    base: dict[str, Any] = {
        "id": 1,
        "tenant": "acme",
        "spec": SPEC,
        "status": BroadcastStatus.RUNNING,
        "created_at": START_MS,
        "updated_at": START_MS,
        "start_at": START_MS,
        "audience": 10_000,
        "topic_index": 0,
        "cursor": 0,
        "expanded": True,
        "examined": 10_000,
        "planned": 10_000,
        "suppressed": {},
        "counts": {c: {int(s): n for s, n in by.items()} for c, by in counts.items()},
        "started_at": START_MS,
    }
    return BroadcastRecord(**{**base, **fields})


def test_no_eta_before_a_second_of_progress_was_seen() -> None:
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    start = record({"sms": {State.QUEUED: 10_000}})
    assert tracker.view(start, START_MS + 10)["eta_seconds"] is None  # nothing finished
    now[0] += 0.5
    # 0.5 s in: the average since the start is shown; it is no basis for an ETA.
    early = record({"sms": {State.SENT: 2_300, State.SENDING: 200, State.QUEUED: 7_500}})
    view = tracker.view(early, START_MS + 500)
    assert view["rate"] == 4_600.0 and view["eta_seconds"] is None
    # A second after the first finished messages: the window's rate, and an ETA from it.
    now[0] += 1.0
    later = record({"sms": {State.SENT: 7_300, State.SENDING: 200, State.QUEUED: 2_500}})
    view = tracker.view(later, START_MS + 1_500)
    assert view["rate"] == 5_000.0 and view["eta_seconds"] == round(2_700 / 5_000, 1)


def test_the_rate_is_what_finished_over_the_window_and_the_slowest_channel_sets_the_eta() -> None:
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    counts = {
        "sms": {State.SENT: 1_000, State.QUEUED: 6_000},
        "mail": {State.SENT: 100, State.QUEUED: 900},
    }
    tracker.view(record(counts), START_MS + 1_000)
    now[0] += 2.0
    later = {
        "sms": {State.SENT: 9_000, State.QUEUED: 0},  # 4,000/s: done
        "mail": {State.SENT: 300, State.SENDING: 10, State.QUEUED: 690},  # 100/s: 7 s left
    }
    view = tracker.view(record(later), START_MS + 3_000)
    assert view["by_channel"]["sms"]["rate"] == 4_000.0
    assert view["by_channel"]["mail"]["rate"] == 100.0
    assert view["eta_seconds"] == 7.0
    assert view["remaining"] == 700


def test_no_honest_eta_for_a_channel_with_work_and_no_rate_nor_while_paused() -> None:
    now = [100.0]
    tracker = ProgressTracker(clock=lambda: now[0])
    counts = {"sms": {State.QUEUED: 5}}
    assert tracker.view(record(counts, started_at=0), START_MS)["eta_seconds"] is None
    paused = record({"sms": {State.SENT: 5, State.QUEUED: 5}}, status=BroadcastStatus.PAUSED)
    assert tracker.view(paused, START_MS + 1_000)["eta_seconds"] is None
    done = record({"sms": {State.SENT: 10}})
    view = tracker.view(done, START_MS + 2_000)
    assert (view["phase"], view["eta_seconds"], view["remaining"]) == ("completed", 0.0, 0)
