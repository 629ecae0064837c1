"""The SMTP front door's client memory at scale: bytes and RSS per address, calls/s, snapshots.

    .venv/bin/python bench/client_memory.py --addresses 1000000

In this process: makes ``--addresses`` distinct random addresses as text, the way a listener
reports its peers (80 % IPv4, 20 % IPv6), then takes the RSS baseline and fills a
`ClientMemory` with them (one `seen` each, a second apart). Prints bytes_used() per address
and the process's RSS growth per address, `seen` calls/s for new and for known addresses,
`get` and `passed` calls/s, the snapshot's size and the time to take it and to restore it,
and how long the retention cleanup takes to drop the older half. The goal printed beside the
figures is 64 bytes an address.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import rss_mb
from sluice.screening.client_memory import ClientMemory, ScreenTest

GOAL_BYTES_PER_ADDRESS = 64
START = 1_700_000_000  # epoch seconds of the first connection


def random_addresses(n: int, ipv6_share: float, seed: int) -> list[str]:
    """`n` distinct random addresses as text; `ipv6_share` of them IPv6."""
    rnd = random.Random(seed)
    distinct: dict[str, None] = {}
    while len(distinct) < n:
        if rnd.random() < ipv6_share:
            text = socket.inet_ntop(socket.AF_INET6, rnd.randbytes(16))
        else:
            text = socket.inet_ntop(socket.AF_INET, rnd.randbytes(4))
        distinct[text] = None
    return list(distinct)


def visit(memory: ClientMemory, addresses: list[str]) -> None:
    """One connection from each address, a second apart from `START`."""
    for now, address in enumerate(addresses, start=START):
        memory.seen(address, now)


def timed(label: str, calls: int, run: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    run()
    elapsed = time.perf_counter() - t0
    rate, each = calls / elapsed, elapsed / calls * 1e6
    print(f"{label}: {calls:,} in {elapsed:.2f} s ({rate:,.0f}/s, {each:.2f} µs each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--ipv6-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    addresses = random_addresses(args.addresses, args.ipv6_share, args.seed)
    n = len(addresses)
    print(f"addresses={n:,} ipv6 share={args.ipv6_share:.0%}")

    baseline = rss_mb(os.getpid())
    memory = ClientMemory()
    timed("seen (new)", n, lambda: visit(memory, addresses))
    grown = (rss_mb(os.getpid()) - baseline) * 2**20  # bytes
    per_address = memory.bytes_used() / len(memory)
    verdict = "meets" if per_address <= GOAL_BYTES_PER_ADDRESS else "above"
    print(
        f"bytes_used {memory.bytes_used() / 1e6:,.1f} MB = {per_address:.1f} bytes/address "
        f"(goal <= {GOAL_BYTES_PER_ADDRESS}: {verdict}); "
        f"RSS growth {grown / 1e6:,.1f} MB = {grown / n:.1f} bytes/address"
    )

    timed("seen (known)", n, lambda: visit(memory, addresses))

    def get_each() -> None:
        for address in addresses:
            memory.get(address)

    def passed_each() -> None:
        for address in addresses:
            memory.passed(address, ScreenTest.DNSBL, START)

    timed("get", n, get_each)
    timed("passed", n, passed_each)

    t0 = time.perf_counter()
    data = memory.snapshot()
    took = time.perf_counter() - t0
    print(
        f"snapshot: {len(data) / 1e6:,.1f} MB ({len(data) / n:.1f} bytes/address) in {took:.2f} s"
    )
    t0 = time.perf_counter()
    restored = ClientMemory.restore(data)
    took = time.perf_counter() - t0
    same = restored.snapshot() == data and restored.get(addresses[-1]) == memory.get(addresses[-1])
    print(f"restore: {len(restored):,} addresses in {took:.2f} s; same records: {same}")

    cutoff = START + n // 2
    t0 = time.perf_counter()
    dropped = memory.forget_before(cutoff)
    took = time.perf_counter() - t0
    print(
        f"forget_before (older half): dropped {dropped:,} in {took:.2f} s; "
        f"{len(memory):,} left, {memory.bytes_used() / len(memory):.1f} bytes/address"
    )


if __name__ == "__main__":
    main()
