"""A broadcast draining through a real gateway to a TPS-capped SMSC, with urgent traffic beside it.

    .venv/bin/python bench/broadcast_drain.py --subscribers 200000
    .venv/bin/python bench/broadcast_drain.py --subscribers 1000000 --binds 10 --tps 500

The SMSC simulator runs in this process (its records carry the wall-clock time each submit_sm
arrived, the truest "submitted" time there is; its CPU competes with this script's, which
only polls twice a second and posts ten urgent messages a second). `sluice serve` runs as a
subprocess on SQLite with one SMPP channel of `--binds` binds, each paced at `--tps` (the
SMSC's own cap per bind, over which it answers ESME_RTHROTTLED), receipts off. N subscribers
of topic "news" are imported over the API, then one broadcast to them by SMS is posted and
watched (GET every 0.5 s) while urgent single messages are posted on their own connection.

Figures and goals:
- channel utilisation: submit_sm the SMSC accepted per second from the broadcast's first to
  its last message, as a share of binds x tps (overall, and the least 5-s window): >= 98 %;
- ETA: the finish the broadcast's view predicts once 1 % is done (poll time + eta_seconds)
  against the last broadcast message's arrival at the SMSC: within ± 5 % of the time that
  was then left;
- urgent accept → submit p99: from the POST's start to the SMSC's arrival time: <= 100 ms;
- 202 of the broadcast → its first message at the SMSC: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from common import KEY, cpu_seconds, gateway, headers, log_problems, workdir
from sluice.sim.smsc import SmscOptions, SmscSimulator

UTILISATION_GOAL = 0.98
ETA_GOAL = 0.05
URGENT_P99_GOAL_MS = 100.0
FIRST_SUBMIT_GOAL_S = 1.0
#: Seconds of each window in the per-window utilisation (the least one is reported).
WINDOW_SECONDS = 5
POLL_SECONDS = 0.5
IMPORT_BATCH = 10_000
BROADCAST_BODY = "Hi {{ subscriber.id }}, storm warning"
BROADCAST_PREFIX = "Hi "
URGENT_PREFIX = "urgent "


@dataclass(slots=True)
class Poll:
    """One GET of the broadcast: wall time it answered and the fields the figures need."""

    at: float
    phase: str
    done: int
    queued: int
    sending: int
    planned: int
    examined: int
    rate: float
    eta_seconds: float | None


@dataclass(slots=True)
class UrgentPost:
    number: int
    started: float
    answered: float
    message_id: str


@dataclass(slots=True)
class Run:
    accepted_at: float = 0.0
    broadcast_id: str = ""
    audience: int = 0
    polls: list[Poll] = field(default_factory=list)
    urgent: list[UrgentPost] = field(default_factory=list)
    urgent_refused: Counter[int] = field(default_factory=Counter)
    smsc_samples: list[tuple[float, int, int, int]] = field(default_factory=list)


def subscriber_lines(start: int, count: int) -> bytes:
    return b"\n".join(
        b'{"id":"u%d","phone":"+4477%08d","topics":["news"]}' % (i, i)
        for i in range(start, start + count)
    )


async def import_subscribers(session: aiohttp.ClientSession, base: str, n: int) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
    for start in range(0, n, IMPORT_BATCH):
        body = subscriber_lines(start, min(IMPORT_BATCH, n - start))
        async with session.post(f"{base}/v1/subscribers/import", data=body, headers=auth) as r:
            result = await r.json()
            if r.status != 200 or result["errors"]:
                raise RuntimeError(f"import refused at {start}: {r.status} {result}")


def done_count(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in ("sent", "delivered", "failed", "expired", "cancelled"))


async def watch(session: aiohttp.ClientSession, base: str, run: Run, smsc: SmscSimulator) -> None:
    url = f"{base}/v1/broadcasts/{run.broadcast_id}"
    while True:
        async with session.get(url, headers=headers()) as resp:
            view = await resp.json()
        now = time.time()
        counts = view["counts"]
        run.polls.append(
            Poll(now, view["phase"], done_count(counts), counts.get("queued", 0),
                 counts.get("sending", 0), view["planned"], view["examined"],
                 float(view["rate"]), view["eta_seconds"])
        )  # fmt: skip
        stats = smsc.stats()
        run.smsc_samples.append((now, stats.accepted, stats.throttled_tps, stats.throttled_window))
        if view["phase"] in ("completed", "cancelled"):
            return
        # The simulator keeps every submit it took; out of the collector's reach, a full
        # collection no longer walks a million of them (it stopped the SMSC, and with it the
        # channel, for up to 0.4 s: `report_gc`).
        gc.freeze()
        await asyncio.sleep(POLL_SECONDS)


async def post_urgent(base: str, run: Run, interval: float, stop: asyncio.Event) -> None:
    """One urgent message every `interval` s on a connection of its own, until `stop`."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        number = 0
        next_at = time.monotonic()
        while not stop.is_set():
            body = msgspec.json.encode({"messages": [{
                "channel": "sms", "to": f"+4479{number:08d}",
                "body": f"{URGENT_PREFIX}{number}", "priority": "urgent",
            }]})  # fmt: skip
            started = time.time()
            async with session.post(f"{base}/v1/messages", data=body, headers=headers()) as r:
                answer = await r.json()
                if r.status == 202:
                    run.urgent.append(UrgentPost(number, started, time.time(), answer["ids"][0]))
                else:
                    run.urgent_refused[r.status] += 1
            number += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def urgent_timelines(
    session: aiohttp.ClientSession, base: str, posts: list[UrgentPost]
) -> dict[str, dict[str, float]]:
    """Per urgent message, the time (Unix s) of the first event of each state."""
    out: dict[str, dict[str, float]] = {}
    for post in posts:
        async with session.get(f"{base}/v1/messages/{post.message_id}", headers=headers()) as r:
            view = await r.json()
        firsts: dict[str, float] = {}
        for event in view.get("timeline", []):
            firsts.setdefault(event["state"], _rfc3339(event["at"]))
        out[post.message_id] = firsts
    return out


def _rfc3339(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def drive(
    args: argparse.Namespace, directory: Path
) -> tuple[Run, SmscSimulator, dict[str, Any]]:
    smsc = SmscSimulator(
        SmscOptions(
            tps=args.tps,
            latency_ms=args.latency_ms,
            latency_jitter_ms=args.latency_jitter_ms,
            record_limit=args.subscribers + 100_000,
            seed=7,
        )
    )
    await smsc.start()
    channel = {
        "type": "smpp",
        "width": args.width,
        "smpp": {
            "host": "127.0.0.1", "port": smsc.port, "system_id": "sluice", "password": "secret",
            "binds": args.binds, "window": args.window, "receipts": False,
            "bind_rate": args.tps if args.bind_rate is None else args.bind_rate,
        },
    }  # fmt: skip
    run = Run()
    extra: dict[str, Any] = {}
    try:
        with gateway(directory, {"sms": channel}) as (server, base):
            # The gateway has to be up and bound before anything is timed.
            deadline = time.monotonic() + 30
            while smsc.stats().binds < args.binds:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {smsc.stats().binds} of {args.binds} binds up")
                await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as session:
                t0 = time.perf_counter()
                await import_subscribers(session, base, args.subscribers)
                extra["import_seconds"] = time.perf_counter() - t0
                print(f"imported {args.subscribers:,} subscribers in "
                      f"{extra['import_seconds']:.1f} s")  # fmt: skip
                request = {"topics": ["news"], "channels": ["sms"],
                           "content": {"sms": {"body": BROADCAST_BODY}}}  # fmt: skip
                async with session.post(
                    f"{base}/v1/broadcasts", data=msgspec.json.encode(request), headers=headers()
                ) as resp:
                    run.accepted_at = time.time()
                    view = await resp.json()
                    if resp.status != 202:
                        raise RuntimeError(f"broadcast refused: {resp.status} {view}")
                run.broadcast_id, run.audience = view["id"], view["audience"]
                print(f"broadcast {run.broadcast_id}: audience {run.audience:,}")
                stop = asyncio.Event()
                cpu = (time.perf_counter(), cpu_seconds(server.pid), time.process_time())
                async with asyncio.TaskGroup() as tg:
                    urgent = tg.create_task(post_urgent(base, run, 1 / args.urgent_rate, stop))
                    await watch(session, base, run, smsc)
                    stop.set()
                    await urgent
                wall = time.perf_counter() - cpu[0]
                extra["cpu"] = (
                    wall,
                    (cpu_seconds(server.pid) - cpu[1]) / wall,
                    (time.process_time() - cpu[2]) / wall,
                )
                await asyncio.sleep(1.0)  # the last urgent message reaches the SMSC
                extra["timelines"] = await urgent_timelines(session, base, run.urgent)
            extra["log"] = log_problems(directory)
    finally:
        await smsc.close()
    return run, smsc, extra


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def report(args: argparse.Namespace, run: Run, smsc: SmscSimulator, extra: dict[str, Any]) -> None:
    # With the SMSC uncapped (--tps 0) the figures are shares of 5,000/s, the default cap.
    cap = args.binds * (args.tps or 500.0)
    records = smsc.received()
    broadcast = [r.received_at for r in records if r.text.startswith(BROADCAST_PREFIX)]
    urgent_at = {
        int(r.text[len(URGENT_PREFIX):]): r.received_at
        for r in records if r.text.startswith(URGENT_PREFIX)
    }  # fmt: skip
    all_at = sorted(r.received_at for r in records)
    first, last = min(broadcast), max(broadcast)
    stats = smsc.stats()
    print(f"SMSC: {stats.summary()}")
    print(f"broadcast messages at the SMSC: {len(broadcast):,} (distinct texts "
          f"{len({r.text for r in records if r.text.startswith(BROADCAST_PREFIX)}):,}), "
          f"urgent {len(urgent_at)} of {len(run.urgent)} posted "
          f"(refused posts {dict(run.urgent_refused) or 'none'})")  # fmt: skip

    # Utilisation: every accepted submit (urgent ones share the channel) in [first, last].
    span = last - first
    inside = [t for t in all_at if first <= t <= last]
    overall = len(inside) / span / cap if span > 0 else 0.0
    per_second = Counter(int(t - first) for t in inside)
    windows = []
    for start in range(0, int(span) - WINDOW_SECONDS + 1, WINDOW_SECONDS):
        n = sum(per_second[s] for s in range(start, start + WINDOW_SECONDS))
        windows.append((start, n / WINDOW_SECONDS / cap))
    worst = min(windows, key=lambda w: w[1]) if windows else (0, 0.0)
    print(f"drain: {span:.1f} s from first to last broadcast message; {len(inside):,} submits "
          f"accepted in it = {len(inside) / span:,.0f}/s of a cap of {cap:,}/s")  # fmt: skip
    print("  per 5-s window (% of cap): " + " ".join(f"{u * 100:.1f}" for _, u in windows))
    seconds = [per_second[s] for s in range(int(span))]
    if seconds:
        print(f"  per second: min {min(seconds):,} max {max(seconds):,} "
              f"median {statistics.median(seconds):,.0f}")  # fmt: skip
    throttled = [(t - first, a, tt, tw) for t, a, tt, tw in run.smsc_samples]
    print(
        f"  SMSC throttle answers: tps {stats.throttled_tps:,}, window {stats.throttled_window:,}"
    )
    thr_polls = [
        (round(t1, 1), th2 - th1)
        for (t1, _, th1, _), (_, _, th2, _) in itertools.pairwise(throttled)
        if th2 > th1
    ]
    if thr_polls:
        print(f"  throttles seen between polls (s since first submit, count): {thr_polls[:20]}")

    # ETA once 1 % is done, against the last broadcast message's arrival.
    planned_total = run.polls[-1].planned or run.audience
    eta_line = "no poll with 1 % done and an ETA"
    eta_error = None
    one_pct = next(
        (p for p in run.polls if p.done >= 0.01 * planned_total and p.eta_seconds is not None),
        None,
    )
    completed = next((p.at for p in run.polls if p.phase == "completed"), None)
    if one_pct is not None and one_pct.eta_seconds is not None:
        predicted = one_pct.at + one_pct.eta_seconds
        left = last - one_pct.at
        eta_error = (predicted - last) / left if left > 0 else 0.0
        eta_line = (f"at {one_pct.done:,} done ({one_pct.at - run.accepted_at:.1f} s after the "
                    f"202) ETA {one_pct.eta_seconds:.1f} s -> predicted finish "
                    f"{predicted - run.accepted_at:.1f} s, actual last submit "
                    f"{last - run.accepted_at:.1f} s, completed seen "
                    f"{(completed or 0) - run.accepted_at:.1f} s: error "
                    f"{predicted - last:+.1f} s = {eta_error * 100:+.1f} % of the "
                    f"{left:.1f} s left")  # fmt: skip
    print(f"ETA: {eta_line}")
    print("  polls (s after 202: done, queued, sending, planned, rate, eta -> predicted finish):")
    step = max(1, len(run.polls) // 25)
    shown = run.polls[::step] + [p for p in run.polls[-2:] if p not in run.polls[::step]]
    for p in shown:
        finish = "-" if p.eta_seconds is None else f"{p.at + p.eta_seconds - run.accepted_at:.1f}"
        print(f"    {p.at - run.accepted_at:6.1f}: {p.phase:9s} done {p.done:>9,} queued "
              f"{p.queued:>7,} sending {p.sending:>4} planned {p.planned:>9,} rate "
              f"{p.rate:7,.0f} eta {p.eta_seconds} -> {finish}")  # fmt: skip
    running = [p for p in run.polls if p.phase != "completed" and p.planned < planned_total]
    dry = [p for p in run.polls if p.phase != "completed" and p.queued == 0 and p.done > 0]
    print(f"  polls while still expanding: {len(running)}; polls with nothing queued before the "
          f"end: {len(dry)}")  # fmt: skip

    # Urgent latency, at the SMSC and from the gateway's own timeline.
    at_smsc = [
        (urgent_at[u.number] - u.started) * 1000 for u in run.urgent if u.number in urgent_at
    ]
    timelines: dict[str, dict[str, float]] = extra.get("timelines", {})
    by_timeline = []
    for u in run.urgent:
        firsts = timelines.get(u.message_id, {})
        begin = firsts.get("accepted", firsts.get("queued"))
        sent = firsts.get("sending", firsts.get("sent"))
        if begin is not None and sent is not None:
            by_timeline.append((sent - begin) * 1000)
    posts = [(u.answered - u.started) * 1000 for u in run.urgent]
    p99 = percentile(at_smsc, 0.99) if at_smsc else float("inf")
    for name, values in (("POST start -> SMSC arrival", at_smsc),
                         ("timeline accepted -> sending", by_timeline),
                         ("POST round trip (202)", posts)):  # fmt: skip
        if values:
            print(f"urgent {name}: n {len(values)} p50 {statistics.median(values):.1f} ms "
                  f"p99 {percentile(values, 0.99):.1f} ms max {max(values):.1f} ms")  # fmt: skip
    if timelines:
        sample = next(iter(timelines.values()))
        print(f"  (timeline states seen: {sorted(sample)})")

    if "cpu" in extra:
        wall, gateway_share, own_share = extra["cpu"]
        print(f"CPU over the {wall:.1f} s of the drain: gateway {gateway_share:.0%} of a core, "
              f"this process (SMSC simulator, poller, urgent posts) {own_share:.0%}")  # fmt: skip
    first_submit = first - run.accepted_at
    if extra.get("log"):
        print("serve.log problems:", *extra["log"], sep="\n  ")

    rows = [
        ("channel utilisation, first→last msg", f">= {UTILISATION_GOAL:.0%} of {cap:,}/s",
         f"{overall * 100:.1f} % overall, min 5-s window {worst[1] * 100:.1f} % "
         f"(at +{worst[0]} s)", overall >= UTILISATION_GOAL and worst[1] >= UTILISATION_GOAL),
        ("ETA accuracy once 1 % sent", f"within ± {ETA_GOAL:.0%}",
         "n/a" if eta_error is None else f"{eta_error * 100:+.1f} %",
         eta_error is not None and abs(eta_error) <= ETA_GOAL),
        ("urgent accept→submit p99", f"<= {URGENT_P99_GOAL_MS:.0f} ms",
         f"{p99:.1f} ms (SMSC arrival)", p99 <= URGENT_P99_GOAL_MS),
        ("202 → first submit", f"<= {FIRST_SUBMIT_GOAL_S:.0f} s",
         f"{first_submit * 1000:.0f} ms (SMSC arrival)", first_submit <= FIRST_SUBMIT_GOAL_S),
    ]  # fmt: skip
    print()
    print(f"{'what':38s} {'goal':22s} {'figure':52s} result")
    for what, goal, figure, met in rows:
        print(f"{what:38s} {goal:22s} {figure:52s} {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument("--binds", type=int, default=10)
    parser.add_argument("--tps", type=float, default=500.0, help="per bind, SMSC cap and pace")
    parser.add_argument(
        "--bind-rate", type=float, default=None, help="smpp.bind_rate (default: --tps; 0 = unpaced)"
    )
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=1.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=1.0)
    parser.add_argument("--urgent-rate", type=float, default=10.0, help="urgent posts per s")
    args = parser.parse_args()
    pauses = watch_gc()
    with workdir() as directory:
        run, smsc, extra = asyncio.run(drive(args, directory))
        report(args, run, smsc, extra)
        report_gc(pauses, smsc)


#: Collections of this process's garbage collector longer than this are listed: the SMSC
#: simulator keeps every submit it took, and a full collection over a million of them stops
#: it (and so the channel) for as long as it takes.
GC_PAUSE_SHOWN_S = 0.02


def watch_gc() -> list[tuple[float, float, int]]:
    """(wall time it ended, seconds, generation) of this process's long collections."""
    pauses: list[tuple[float, float, int]] = []
    began = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            took = time.perf_counter() - began[0]
            if took >= GC_PAUSE_SHOWN_S:
                pauses.append((time.time(), took, info["generation"]))

    gc.callbacks.append(callback)
    return pauses


def report_gc(pauses: list[tuple[float, float, int]], smsc: SmscSimulator) -> None:
    records = smsc.received()
    first = min((r.received_at for r in records), default=0.0)
    shown = ", ".join(f"{took * 1000:.0f} ms (gen {gen}) at +{at - first:.0f} s"
                      for at, took, gen in pauses[:12])  # fmt: skip
    print(f"this process's GC pauses over {GC_PAUSE_SHOWN_S * 1000:.0f} ms: {len(pauses)}"
          + (f": {shown}" if pauses else ""))  # fmt: skip


if __name__ == "__main__":
    main()
