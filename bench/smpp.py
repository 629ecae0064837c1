"""SMS over SMPP: end-to-end durable messages/s, windows under latency, binds at a TPS cap.

    .venv/bin/python bench/smpp.py throughput --messages 50000 --window 100
    .venv/bin/python bench/smpp.py latency --latency-ms 20 --window 100 --seconds 10
    .venv/bin/python bench/smpp.py tps --binds 10 --tps 100 --seconds 10
    .venv/bin/python bench/smpp.py urgent --bulk 1000000 --urgent 200

Three real processes: `sluice sim smsc` (the SMSC simulator), `sluice serve` (SQLite,
synchronous=FULL) with one SMPP channel, and this script as the producer over HTTP.

- throughput: a zero-latency simulator, one bind, the given window; N messages posted in
  batches of 1,000 by 4 concurrent producers; messages/s = N / (first POST → the journal
  shows them all sent). `--queued` posts them with the channel paused and times the drain
  alone. Receipts
  are on (every message also gets a deliver_sm receipt, --receipt-delay-ms after its submit,
  committed before it is answered); `--no-receipts` turns them off.
- latency: the simulator answers each submit_sm after --latency-ms; one bind; the backlog is
  kept full for --seconds; submit_sm/s per bind compared with window ÷ latency.
- tps: --binds binds, each capped by the simulator at --tps submit_sm/s (over it: 0x58), with
  the channel's bind_rate left unlimited so each bind has to find the cap itself;
  prints the share of the aggregate cap used and the throttle answers per second.
- urgent: --bulk bulk messages queued (the channel paused while they are posted), then the
  channel drains them while --urgent urgent messages are posted one by one; prints accept →
  submit_sm (the `sending` event) latency of the urgent ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from common import (
    cpu_seconds,
    free_port,
    gateway,
    headers,
    workdir,
)
from sluice.model import id_time_ms, parse_id


class Smsc:
    """`sluice sim smsc` as a subprocess with its control port."""

    def __init__(self, *args: str) -> None:
        import subprocess

        self.port = free_port()
        self.control = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "sim", "smsc", "--port", str(self.port),
             "--control-port", str(self.control), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.control}/_smsc/stats"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        from common import stop

        stop(self.proc)  # type: ignore[arg-type]


def smpp_channel(port: int, **smpp: Any) -> dict[str, Any]:
    binds = smpp.get("binds", 1)
    window = smpp.get("window", 10)
    channel: dict[str, Any] = {
        "type": "smpp",
        "width": binds * window,
        "urgent_reserve": smpp.pop("urgent_reserve", 0.0),
        "paused": smpp.pop("paused", False),
        "smpp": {"host": "127.0.0.1", "port": port, "system_id": "sluice", "password": "secret",
                 **smpp},
    }  # fmt: skip
    return channel


async def post(base: str, messages: list[dict[str, Any]], producers: int = 4) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return await post_with(session, base, messages, producers)


async def post_with(
    session: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]], producers: int = 4
) -> list[str]:
    """Post in batches of 1,000 from `producers` concurrent requests, as several
    applications would."""
    batches = [messages[i : i + 1000] for i in range(0, len(messages), 1000)]
    results: list[list[str]] = [[] for _ in batches]
    turn = iter(range(len(batches)))

    async def producer() -> None:
        for i in turn:
            body = msgspec.json.encode({"messages": batches[i]})
            async with session.post(f"{base}/v1/messages", data=body, headers=headers()) as resp:
                assert resp.status == 202, await resp.text()
                results[i] = (await resp.json())["ids"]

    await asyncio.gather(*(producer() for _ in range(producers)))
    return [i for ids in results for i in ids]


def channel_status(base: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/v1/channels", headers=headers())
    with urllib.request.urlopen(request, timeout=5) as resp:
        return dict(json.loads(resp.read())["channels"][0])


def wait_drained(base: str, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if channel_status(base)["pending"] == 0:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError("the channel did not drain")
        time.sleep(0.02)


def throughput(args: argparse.Namespace) -> None:
    smsc = Smsc("--receipt-delay-ms", str(args.receipt_delay_ms), "--record-limit", "0")
    try:
        channel = smpp_channel(smsc.port, window=args.window, receipts=not args.no_receipts)
        messages = [{"channel": "sms", "to": f"+4470{i:08d}", "body": f"Your code is {i:06d}"}
                    for i in range(args.messages)]  # fmt: skip
        with workdir() as directory:
            if args.queued:  # queue everything first, then time the drain alone
                with gateway(directory, {"sms": {**channel, "paused": True}}) as (_, base):
                    asyncio.run(post(base, messages))
            with gateway(directory, {"sms": channel}) as (proc, base):
                cpu0 = cpu_seconds(proc.pid)
                smsc_cpu0 = cpu_seconds(smsc.proc.pid)
                started = time.perf_counter()
                if not args.queued:
                    asyncio.run(post(base, messages))
                posted = time.perf_counter()
                finished = wait_drained(base)
                cpu = cpu_seconds(proc.pid) - cpu0
                smsc_cpu = cpu_seconds(smsc.proc.pid) - smsc_cpu0
                stats = smsc.stats()
    finally:
        smsc.stop()
    elapsed = finished - started
    print(f"throughput: {args.messages:,} messages, one bind, window {args.window}, "
          f"receipt delay {args.receipt_delay_ms:g} ms, "
          f"receipts {'off' if args.no_receipts else 'on'}, zero-latency SMSC"
          + (", queued before the start (drain only)" if args.queued else ""))  # fmt: skip
    print(f"  posted in {posted - started:.2f} s; all sent after {elapsed:.2f} s: "
          f"{args.messages / elapsed:,.0f} messages/s end to end (goal >= 25,000)")  # fmt: skip
    per_message = 1e6 / args.messages
    print(f"  gateway CPU {cpu:.1f} s = {cpu * per_message:.0f} µs per message; "
          f"SMSC CPU {smsc_cpu:.1f} s = {smsc_cpu * per_message:.0f} µs per message")  # fmt: skip
    print(
        f"  SMSC: submit_sm {stats.get('submits')}, receipts acked "
        f"{stats.get('receipts_acked')}, max outstanding {stats.get('max_outstanding')}"
    )


def latency(args: argparse.Namespace) -> None:
    smsc = Smsc("--latency-ms", str(args.latency_ms), "--latency-jitter-ms", "0",
                "--receipt-delay-ms", "0", "--record-limit", "0")  # fmt: skip
    try:
        channel = smpp_channel(smsc.port, window=args.window, receipts=False)
        count = int(args.window / (args.latency_ms / 1000) * (args.seconds + 2))
        with workdir() as directory, gateway(directory, {"sms": channel}) as (_, base):
            messages = [{"channel": "sms", "to": f"+4470{i:08d}", "body": "hello"}
                        for i in range(count)]  # fmt: skip
            asyncio.run(post(base, messages))
            time.sleep(1.0)  # let the window fill
            first = smsc.stats()["accepted"]
            t0 = time.perf_counter()
            time.sleep(args.seconds)
            last = smsc.stats()["accepted"]
            rate = (last - first) / (time.perf_counter() - t0)
            served_ms = smsc.stats()["answer_delay_ms"]
    finally:
        smsc.stop()
    ideal = args.window / (args.latency_ms / 1000)
    served = args.window / (served_ms / 1000)
    print(f"latency: one bind, window {args.window}, SMSC set to answer after "
          f"{args.latency_ms} ms; it answered after {served_ms:.2f} ms on average "
          "(its timers fire on 1 ms ticks)")  # fmt: skip
    print(
        f"  {rate:,.0f} submit_sm/s: {rate / served:.1%} of window / latency as served "
        f"({served:,.0f}/s; goal >= 95 %), {rate / ideal:.1%} of window / latency as set "
        f"({ideal:,.0f}/s)"
    )


def tps(args: argparse.Namespace) -> None:
    smsc = Smsc("--tps", str(args.tps), "--receipt-delay-ms", "0", "--record-limit", "0")
    try:
        channel = smpp_channel(smsc.port, binds=args.binds, window=args.window, receipts=False)
        cap = args.binds * args.tps
        count = int(cap * (args.seconds + 2))
        with workdir() as directory, gateway(directory, {"sms": channel}) as (_, base):
            messages = [{"channel": "sms", "to": f"+4470{i:08d}", "body": "hello"}
                        for i in range(count)]  # fmt: skip
            # One producer; seconds count from the end of the posting, which takes ~0.3 s
            # (sending starts with the first batch). The binds have found the cap 1.2-1.3 s
            # after the first submit.
            asyncio.run(post(base, messages, producers=1))
            samples = []
            t0 = time.perf_counter()
            for _ in range(args.seconds + 1):
                s = smsc.stats()
                samples.append((time.perf_counter() - t0, s["accepted"], s["throttled_tps"]))
                time.sleep(1.0)
    finally:
        smsc.stop()
    print(
        f"tps: {args.binds} binds, each capped at {args.tps}/s by the SMSC "
        f"(aggregate {cap:,}/s), window {args.window}, "
        "channel bind_rate unlimited (the binds find the cap)"
    )
    for (t1, a1, th1), (t2, a2, th2) in itertools.pairwise(samples):
        print(
            f"  second {t1:4.1f}-{t2:4.1f}: accepted {(a2 - a1) / (t2 - t1):7,.0f}/s, "
            f"throttled {th2 - th1:5d}"
        )
    (ta, aa, tha), (tb, ab, thb) = samples[1], samples[-1]
    used = (ab - aa) / (tb - ta) / cap
    print(
        f"  after the first second: {used:.1%} of the cap used (goal >= 95 %), "
        f"{thb - tha} throttle answers (goal: none)"
    )


def urgent(args: argparse.Namespace) -> None:
    smsc = Smsc("--receipt-delay-ms", "0", "--record-limit", "0")
    try:
        channel = smpp_channel(smsc.port, window=args.window, receipts=False, urgent_reserve=0.1)
        with workdir() as directory:
            with gateway(directory, {"sms": {**channel, "paused": True}}) as (_, base):
                bulk = [{"channel": "sms", "to": f"+4470{i:08d}", "body": "news",
                         "priority": "bulk"} for i in range(args.bulk)]  # fmt: skip
                t0 = time.perf_counter()
                asyncio.run(post(base, bulk))
                print(f"urgent: {args.bulk:,} bulk messages queued in "
                      f"{time.perf_counter() - t0:.1f} s (channel paused)")  # fmt: skip
            db = directory / "journal.db"
            with gateway(directory, {"sms": channel}) as (_, base):
                ids = asyncio.run(_post_urgent(base, args.urgent, args.interval_ms / 1000))
                time.sleep(2.0)
                pending = channel_status(base)["pending"]
            latencies = _sending_latency(db, ids)
    finally:
        smsc.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"  {len(ids)} urgent messages, one every {args.interval_ms} ms, while the bulk "
          f"drained ({pending:,} still pending at the end)")  # fmt: skip
    print(
        f"  accept → submit_sm: p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms"
        " (goal p99 <= 100 ms)"
    )


async def _post_urgent(base: str, count: int, interval: float) -> list[str]:
    ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            ids.extend(await post_with(session, base, [
                {"channel": "sms", "to": f"+4479{i:08d}", "body": "code", "priority": "urgent"}
            ]))  # fmt: skip
            await asyncio.sleep(interval)
    return ids


def _sending_latency(db: Path, ids: list[str]) -> list[float]:
    numeric = [parse_id(i) for i in ids]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        marks = ",".join("?" * len(numeric))
        rows = conn.execute(
            f"SELECT message_id, MIN(at) FROM events WHERE state = 2 AND message_id IN ({marks}) "
            "GROUP BY message_id",
            numeric,
        ).fetchall()
    return [at - id_time_ms(mid) for mid, at in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--no-receipts", action="store_true")
    p.add_argument("--receipt-delay-ms", type=float, default=200)
    p.add_argument("--queued", action="store_true", help="queue first; time the drain alone")
    p = sub.add_parser("latency")
    p.add_argument("--latency-ms", type=float, default=20)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--seconds", type=int, default=10)
    p = sub.add_parser("tps")
    p.add_argument("--binds", type=int, default=10)
    p.add_argument("--tps", type=int, default=100)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--seconds", type=int, default=10)
    p = sub.add_parser("urgent")
    p.add_argument("--bulk", type=int, default=1_000_000)
    p.add_argument("--urgent", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    {"throughput": throughput, "latency": latency, "tps": tps, "urgent": urgent}[args.bench](args)


if __name__ == "__main__":
    main()
