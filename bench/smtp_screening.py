"""SMTP front door: new connections screened per second, and the gateway's CPU per connection.

    .venv/bin/python bench/smtp_screening.py --path pass-old --seconds 10
    .venv/bin/python bench/smtp_screening.py --path deny --seconds 10
    .venv/bin/python bench/smtp_screening.py --path allowlisted --seconds 10

A real `sluice serve` with an SMTP front door (SQLite journal, one webhook channel), and this
script as the client in its own process: `--connections` concurrent loops each connect, read
the answer and leave, as fast as they can.

- pass-old: the client (127.0.0.1) passed the tests once before the run, so each connection
  is a cached pass: CONNECT, PASS OLD, the greeting, QUIT, 221. The SMTP session (aiosmtpd)
  starts only at a client's first other command: `--ehlo` sends EHLO first, to measure a
  connection that gets one.
- deny: 127.0.0.0/8 is on the deny list with action "drop": CONNECT, DENYLISTED, 521, close.
- allowlisted: 127.0.0.1 is on the allow list: no test, no memory; the connection goes to its
  SMTP session at once. Compared with pass-old it gives the cost of the SMTP session itself
  (aiosmtpd: greeting, QUIT, 221), which the cached-pass figure includes.

Prints connections/s and the gateway's CPU time per connection (goal: >= 5,000/s and
<= 0.2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_seconds, free_port, gateway, workdir


async def reply(reader: asyncio.StreamReader) -> bytes:
    """The last line of one (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if not line or line[3:4] != b"-":
            return line


async def one(port: int, quit_after_greeting: bool, ehlo: bool = False) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await reply(reader)
        if line.startswith(b"220") and ehlo:
            writer.write(b"EHLO bench.example\r\n")
            if not (await reply(reader)).startswith(b"250"):
                return False
        if line.startswith(b"220") and quit_after_greeting:
            writer.write(b"QUIT\r\n")
            await reader.readline()
        return line[:1] in (b"2", b"5")
    finally:
        writer.close()


async def load(
    port: int, connections: int, seconds: float, quit: bool, ehlo: bool
) -> tuple[int, int]:
    done = failed = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                ok = await one(port, quit, ehlo)
            except OSError:
                ok = False
            if ok:
                done += 1
            else:
                failed += 1

    await asyncio.gather(*(loop() for _ in range(connections)))
    return done, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", choices=("pass-old", "deny", "allowlisted"), default="pass-old")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--ehlo", action="store_true", help="send EHLO before QUIT (starts the SMTP session)"
    )
    args = parser.parse_args()
    smtp_port = free_port()
    screening: dict[str, Any] = {
        "greet_wait_seconds": 0.2,
        "max_connections_per_client": 0,
        "max_screening": 10_000,
    }
    if args.path == "deny":
        screening.update(deny=["127.0.0.0/8"], deny_action="drop")
    if args.path == "allowlisted":
        screening.update(allow=["127.0.0.1"])
    smtp = {
        "listen": f"127.0.0.1:{smtp_port}",
        "hostname": "mx.bench.test",
        "tenant": "bench",
        "sms_domain": "sms.bench.test",
        "sms_channel": "sms",
        "screening": screening,
    }
    channels = {"sms": {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}}
    with workdir() as directory, gateway(directory, channels, smtp=smtp) as (proc, _):
        time.sleep(0.5)
        if args.path == "pass-old":
            asyncio.run(one(smtp_port, True))  # PASS NEW once: every later connection is old
        cpu0 = cpu_seconds(proc.pid)
        started = time.perf_counter()
        done, failed = uvloop.run(load(smtp_port, args.connections, args.seconds, True, args.ehlo))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu0
    print(f"smtp screening, path {args.path}, {args.connections} concurrent clients, "
          f"{args.seconds:g} s, client: greeting, {'EHLO, ' if args.ehlo else ''}QUIT")  # fmt: skip
    print(f"  {done / elapsed:,.0f} connections/s ({done:,} answered, {failed} failed); "
          f"goal >= 5,000/s")  # fmt: skip
    print(f"  gateway CPU {cpu:.2f} s = {cpu / max(done, 1) * 1000:.3f} ms per connection "
          "(goal <= 0.2 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
