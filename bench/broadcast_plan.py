"""Broadcast planning on the SQLite journal: topic members → messages, with no delivery running.

    .venv/bin/python bench/broadcast_plan.py
    .venv/bin/python bench/broadcast_plan.py --subscribers 10000000 --chunk 5000

In one process, a `SqliteJournal` in a temporary directory is filled with `--subscribers`
subscribers (a phone, a time zone, {"name": ...}, topic "news"; records checked by
`SubscriberRules` so each blob is what an import stores), `journal.upsert_subscribers` in
batches of 10,000. A broadcast to "news" is then created through the journal and expanded by
a real `Expander` whose lookahead exceeds the audience ("channels unlimited": the lookahead
never holds it back), `--chunk` members a step. Figures: recipients planned per second from
the create to the last chunk committed, the time from the create's return (the 202) to the
first chunk committed (what the first submit waits for), and the process's RSS, sampled
through the run and as its high-water mark.

Then, to show where the time goes: the `Planner` alone on 1,000 pre-encoded members, with the
fast-path template and with one Jinja2 must render, split by step (decode, channel, variables,
render, id, message); and one chunk's cost by step (record read, members read, plan, insert
preparation, commit) on a second broadcast stepped by hand.

Goals: >= 150,000 recipients/s planned (1 M in <= 7 s), first chunk <= 1 s after the 202,
RSS <= 300 MB, the rate at 10 M within 20% of that at 1 M.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from common import journal_mb, workdir
from sluice.audience.broadcast import BroadcastSpec, Content, Planner, decode_spec, encode_spec
from sluice.audience.expander import Expander
from sluice.audience.subscriber import SubscriberIn, SubscriberRules, decode
from sluice.config import AudienceConfig
from sluice.journal.audience import SubscriberRow
from sluice.journal.broadcasts import BroadcastMember, ExpansionChunk, NewBroadcast
from sluice.journal.sqlite import SqliteJournal
from sluice.journal.sqlite.inserts import prepare_insert
from sluice.model import IdGenerator, Message, now_ms

GOAL_RATE = 150_000
GOAL_FIRST_SECONDS = 1.0
GOAL_RSS_MB = 300
TENANT = "acme"
TOPIC = "news"
BATCH = 10_000
FAST_BODY = "Hi {{ name }}, storm warning for {{ subscriber.timezone }}"
JINJA_BODY = "{% if name %}Hi {{ name|upper }}{% endif %}"
#: Zones the subscribers are spread over (the planner caches a zone by name).
ZONES = ("Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")
#: Planner timing: at least this long and this many plans of 1,000 per template.
PLAN_SECONDS = 2.0
PLAN_MIN_REPS = 10
#: ... and for each step of the planner timed apart.
STEP_SECONDS = 0.5
#: Chunks stepped by hand for the cost split.
SPLIT_CHUNKS = 20


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a phase's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS every `interval` seconds on a thread, tagged by the phase the run is in."""

    def __init__(self, interval: float = 0.1) -> None:
        self.phase = "start"
        self.samples: dict[str, list[float]] = {}
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self.samples.setdefault(self.phase, []).append(status_mb("VmRSS"))

    def peak(self, phase: str) -> float:
        return max(self.samples.get(phase, [0.0]))


def subscriber_in(i: int) -> SubscriberIn:
    return SubscriberIn(
        id=f"u{i}",
        phone=f"+4477{i:08d}",
        timezone=ZONES[i % len(ZONES)],
        attributes={"name": f"Name{i}"},
        topics=(TOPIC,),
    )


def spec(body: str, start_at: int) -> BroadcastSpec:
    return BroadcastSpec(
        tenant=TENANT,
        topics=(TOPIC,),
        channels=(("sms", "sms"),),
        content={"sms": Content(body=body)},
        start_at=start_at,
    )


async def fill(journal: SqliteJournal, n: int) -> float:
    """Store `n` subscribers; returns the seconds it took."""
    rules = SubscriberRules()
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        rows = []
        for i in range(first, min(n, first + BATCH)):
            checked = rules.check(subscriber_in(i))
            rows.append(SubscriberRow(checked.subscriber.id, checked.data, checked.topics))
        await journal.upsert_subscribers(TENANT, rows, now_ms())
    return time.perf_counter() - started


async def create(journal: SqliteJournal, ids: IdGenerator, body: str) -> int:
    now = now_ms()
    new = NewBroadcast(ids.next(), TENANT, encode_spec(spec(body, now)), (TOPIC,), now)
    created, _ = await journal.create_broadcast(new, None, None, now)
    return created


async def expand(journal: SqliteJournal, n: int, chunk: int, ids: IdGenerator) -> dict[str, Any]:
    """One broadcast to all `n`, expanded by an Expander with the lookahead out of the way."""
    config = AudienceConfig(expansion_chunk=chunk, min_lookahead=n + 1, max_lookahead=n + 1)
    commits: list[float] = []  # when each chunk's commit returned (the wake after it)
    expander = Expander(
        journal, config, IdGenerator(node=2), 1, wake=lambda _: commits.append(time.perf_counter())
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(expander.run())
        await asyncio.sleep(0.2)  # its first lease finds nothing: now it waits for a poke
        started = time.perf_counter()
        broadcast_id = await create(journal, ids, FAST_BODY)
        accepted = time.perf_counter()  # the 202 goes out here
        expander.poke()
        while True:
            expander.progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(expander.progressed.wait(), 2.0)
            if expander.planned >= n or not expander.progressed.is_set():
                record = await journal.broadcast(TENANT, broadcast_id)
                assert record is not None
                if record.expanded:
                    break
        expander.stop()
    return {
        "seconds": commits[-1] - started,
        "first": commits[0] - accepted,
        "create": accepted - started,
        "chunks": expander.chunks,
        "planned": record.planned,
        "examined": record.examined,
        "suppressed": record.suppressed,
        "journal_ms": record.expanded_at - record.started_at,
        "gaps": sorted(b - a for a, b in itertools.pairwise(commits)),
    }


async def split_chunk(
    journal: SqliteJournal, chunk: int, ids: IdGenerator, chunks: int
) -> dict[str, list[float]]:
    """A second broadcast stepped by hand as `_Run._step` does, each step timed by part."""
    broadcast_id = await create(journal, ids, FAST_BODY)
    owner = 7
    leased = await journal.lease_broadcasts(owner, now_ms(), 600_000, 16)
    assert any(r.id == broadcast_id for r in leased), "the second broadcast was not leased"
    planner: Planner | None = None
    times: dict[str, list[float]] = {
        k: [] for k in ("record", "members", "plan", "prepare", "commit")
    }
    for _ in range(chunks):
        t0 = time.perf_counter()
        record = await journal.broadcast(TENANT, broadcast_id)
        assert record is not None
        if planner is None:
            planner = Planner(decode_spec(record.spec), IdGenerator(node=3))
        t1 = time.perf_counter()
        members = await journal.broadcast_members(
            record.id, record.topic_keys, record.topic_index, record.cursor, chunk
        )
        t2 = time.perf_counter()
        now = now_ms()
        messages, suppressed = planner.plan(members, topic=TOPIC, now=now)
        t3 = time.perf_counter()
        prepare_insert(TENANT, messages, broadcast=broadcast_id)  # what expand_broadcast repeats
        t4 = time.perf_counter()
        step = ExpansionChunk(
            broadcast_id,
            record.topic_index,
            record.cursor,
            record.topic_index,
            members[-1].key,
            False,
            messages,
            len(members),
            dict(suppressed),
        )
        assert await journal.expand_broadcast(owner, step, now)
        t5 = time.perf_counter()
        times["record"].append(t1 - t0)
        times["members"].append(t2 - t1)
        times["plan"].append(t3 - t2)
        times["prepare"].append(t4 - t3)
        times["commit"].append(t5 - t4 - (t4 - t3))  # expand_broadcast prepares it again
    await journal.release_broadcasts(owner)
    return times


def members_of(n: int) -> list[BroadcastMember]:
    rules = SubscriberRules()
    out = []
    for i in range(n):
        checked = rules.check(subscriber_in(i))
        out.append(BroadcastMember(i + 1, checked.subscriber.id, checked.data, False))
    return out


def rate_of(
    fn: Callable[[], object], per_call: int, seconds: float = PLAN_SECONDS
) -> tuple[float, float]:
    """(median, best) items per second of `fn`, called for at least `seconds`."""
    fn()  # warm: compiled templates, zone cache
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(durations) < PLAN_MIN_REPS or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t0)
    return per_call / statistics.median(durations), per_call / min(durations)


def planner_alone() -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Recipients/s of Planner.plan on 1,000 members per template, and µs a recipient by step
    (fast-path template)."""
    members = members_of(1000)
    now = now_ms()
    rates = {}
    planners = {}
    for name, body in (("fast path", FAST_BODY), ("jinja2", JINJA_BODY)):
        planner = Planner(spec(body, now), IdGenerator(node=4))
        planners[name] = planner
        rates[name] = rate_of(lambda p=planner: p.plan(members, topic=TOPIC, now=now), 1000)  # type: ignore[misc]

    fast = planners["fast path"]
    jinja = planners["jinja2"]
    subs = [decode(m.data) for m in members]
    variables = [fast._variables(s) for s in subs]
    body_fast = fast._content["sms"][0]
    body_jinja = jinja._content["sms"][0]
    ids = IdGenerator(node=5)
    steps: dict[str, Callable[[], object]] = {
        "decode": lambda: [decode(m.data) for m in members],
        "opt-out test": lambda: [s.opt_out.excludes(TOPIC, "sms") for s in subs],
        "due (a zone's quiet hours)": lambda: [fast._due(s, now) for s in subs],
        "variables": lambda: [fast._variables(s) for s in subs],
        "render (fast)": lambda: [body_fast.render(v) for v in variables],
        "render (jinja2)": lambda: [body_jinja.render(v) for v in variables],
        "ids (take)": lambda: ids.take(len(subs)),
        "Message()": lambda: [
            Message(1, TENANT, "sms", "+1", "body", None, 3, None, None, None, None) for _ in subs
        ],
    }
    split = {name: 1e6 / rate_of(fn, 1000, STEP_SECONDS)[0] for name, fn in steps.items()}
    return rates, split


async def run(args: argparse.Namespace) -> None:
    figures: list[tuple[str, str, str]] = []
    with RssSampler() as rss, workdir() as directory:
        journal = SqliteJournal(directory / "journal.db", synchronous=args.synchronous)
        await journal.open()
        ids = IdGenerator(node=1)
        try:
            rss.phase = "setup"
            seconds = await fill(journal, args.subscribers)
            setup_hwm = status_mb("VmHWM")
            print(
                f"setup: {args.subscribers:,} subscribers in {seconds:.1f} s "
                f"({args.subscribers / seconds:,.0f}/s), RSS {status_mb('VmRSS'):.0f} MB, "
                f"peak {setup_hwm:.0f} MB, journal {journal_mb(directory)}"
            )
            reset = reset_peak()
            rss.phase = "expand"
            before, cpu = journal.stats(), time.process_time()
            result = await expand(journal, args.subscribers, args.chunk, ids)
            after, cpu = journal.stats(), time.process_time() - cpu
            expand_hwm = status_mb("VmHWM")
            rss.phase = "after"
            rate = result["planned"] / result["seconds"]
            gaps = result["gaps"]
            print(
                f"expansion: {result['planned']:,} planned of {result['examined']:,} examined "
                f"(suppressed {result['suppressed'] or 0}) in {result['chunks']:,} chunks of "
                f"{args.chunk:,}, {result['seconds']:.2f} s (journal started→expanded "
                f"{result['journal_ms'] / 1000:.2f} s); create {result['create'] * 1000:.1f} ms; "
                f"gap between commits p50 {gaps[len(gaps) // 2] * 1000:.1f} ms, "
                f"p99 {gaps[int(len(gaps) * 0.99)] * 1000:.1f} ms"
                if gaps
                else "expansion: one chunk"
            )
            rss_expand = max(rss.peak("expand"), expand_hwm if reset else 0.0)
            figures += [
                (
                    "planning rate (create → expanded)",
                    f"{rate:,.0f} recipients/s ({result['seconds']:.2f} s)",
                    f">= {GOAL_RATE:,}: {'meets' if rate >= GOAL_RATE else 'below'}",
                ),
                (
                    "202 → first chunk committed",
                    f"{result['first'] * 1000:.0f} ms",
                    f"<= {GOAL_FIRST_SECONDS:.0f} s: "
                    f"{'meets' if result['first'] <= GOAL_FIRST_SECONDS else 'misses'}",
                ),
                (
                    "peak RSS during expansion",
                    f"{rss_expand:.0f} MB" + ("" if reset else " (sampled only)"),
                    f"<= {GOAL_RSS_MB}: {'meets' if rss_expand <= GOAL_RSS_MB else 'above'}",
                ),
                (
                    "peak RSS of the process (VmHWM, setup included)",
                    f"{max(setup_hwm, expand_hwm):.0f} MB",
                    "",
                ),
            ]
            print(
                f"  process CPU {cpu:.1f} s ({cpu / result['seconds']:.0%} of a core); writer "
                f"{after.commits - before.commits:,} commits, busy "
                f"{after.busy_seconds - before.busy_seconds:.1f} s "
                f"({(after.busy_seconds - before.busy_seconds) / result['seconds']:.0%} of the run)"
            )
            print(f"journal after expansion: {journal_mb(directory)}")

            times = await split_chunk(journal, args.chunk, ids, SPLIT_CHUNKS)
            total = sum(statistics.median(v) for v in times.values())
            print(f"\none chunk of {args.chunk:,}, by part (median of {SPLIT_CHUNKS} stepped):")
            for part, values in times.items():
                median = statistics.median(values)
                print(
                    f"  {part:8} {median * 1000:7.2f} ms  "
                    f"{median / args.chunk * 1e6:6.2f} µs/recipient  {median / total:5.1%}"
                )
            print(
                f"  {'sum':8} {total * 1000:7.2f} ms  → {args.chunk / total:,.0f} recipients/s "
                "stepped serially"
            )
        finally:
            await journal.close()

    rates, split = planner_alone()
    print("\nPlanner.plan alone, 1,000 pre-encoded members a call:")
    for name, (median, best) in rates.items():
        print(f"  {name:10} {median:10,.0f} recipients/s (best {best:,.0f})")
        figures.append((f"Planner alone, {name}", f"{median:,.0f} recipients/s", ""))
    print("  by step, µs a recipient:")
    for name, us in split.items():
        print(f"    {name:16} {us:6.2f}")

    print(
        f"\n{args.subscribers:,} subscribers, chunk {args.chunk:,}, "
        f"SQLite synchronous={args.synchronous.upper()}"
    )
    width = max(len(f[0]) for f in figures)
    for name, value, goal in figures:
        print(f"  {name:{width}}  {value:32} {goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000, help="audience.expansion_chunk")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    # The configuration's bounds (1 to 10,000), as a config file would be checked.
    msgspec.convert({"expansion_chunk": args.chunk}, AudienceConfig)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
