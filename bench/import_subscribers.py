"""Bulk import of subscribers, each with one subscription, through `sluice subscribers import`.

    .venv/bin/python bench/import_subscribers.py --subscribers 1000000
    .venv/bin/python bench/import_subscribers.py --subscribers 10000000 --format csv

A file of N subscribers (a phone number, a time zone, one topic each) is written first, then
imported by the CLI into a real `sluice serve` on SQLite: the figure is subscribers per second
from the CLI's start to its end, with the gateway's CPU per subscriber and the RSS of both
processes sampled through the run (flat RSS: the file is streamed, each request one
transaction). Goal: >= 100,000 subscribers/s; RSS flat at 10 M.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import KEY, cpu_seconds, gateway, rss_mb, workdir

GOAL = 100_000


def write_file(path: Path, n: int, fmt: str) -> None:
    with path.open("w") as out:
        if fmt == "csv":
            out.write("id,phone,timezone,topics\n")
            for i in range(n):
                out.write(f"u{i},+4477{i:08d},Europe/London,news\n")
        else:
            for i in range(n):
                out.write(
                    f'{{"id":"u{i}","phone":"+4477{i:08d}","timezone":"Europe/London",'
                    '"topics":["news"]}\n'
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--format", choices=["csv", "ndjson"], default="ndjson")
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    channels = {"web": {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}}
    with workdir() as directory:
        path = directory / f"subscribers.{args.format}"
        started = time.perf_counter()
        write_file(path, args.subscribers, args.format)
        print(
            f"wrote {args.subscribers:,} subscribers ({path.stat().st_size / 1e6:.0f} MB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        with gateway(directory, channels) as (server, base):
            cpu_before = cpu_seconds(server.pid)
            rss: dict[str, list[float]] = {"gateway": [], "cli": []}
            started = time.perf_counter()
            cli = subprocess.Popen(
                [sys.executable, "-m", "sluice.cli", "subscribers", "import", str(path),
                 "--url", base, "--key", KEY, "--batch", str(args.batch), "--quiet"],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.5):
                    try:
                        rss["gateway"].append(rss_mb(server.pid))
                        rss["cli"].append(rss_mb(cli.pid))
                    except (OSError, RuntimeError):
                        pass

            sampler = threading.Thread(target=sample)
            sampler.start()
            out, _ = cli.communicate()
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
            cpu = cpu_seconds(server.pid) - cpu_before
        rate = args.subscribers / elapsed
        print(out.decode().strip())
        print(
            f"imported {args.subscribers:,} in {elapsed:.1f} s: {rate:,.0f} subscribers/s "
            f"(goal >= {GOAL:,}: {'meets' if rate >= GOAL else 'below'})"
        )
        print(f"gateway CPU {cpu:.1f} s = {cpu / args.subscribers * 1e6:.1f} µs per subscriber")
        for name, samples in rss.items():
            if samples:
                third = max(1, len(samples) // 3)
                print(
                    f"{name} RSS MB: first third max {max(samples[:third]):.0f}, "
                    f"last third max {max(samples[-third:]):.0f}, peak {max(samples):.0f}"
                )
        if cli.returncode != 0:
            raise SystemExit(f"the import exited {cli.returncode}")


if __name__ == "__main__":
    main()
