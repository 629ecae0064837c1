"""How a `sluice sim` command runs a simulator: a line saying where it listens, a one-line
summary every ``--report-seconds`` (off by default), and a last one when it is stopped."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from sluice.sim.base import Simulator
from sluice.sim.options import check_number

REPORT_FLAG = "--report-seconds"


def add_report_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        REPORT_FLAG,
        type=float,
        default=0.0,
        help="print a one-line stats summary every N seconds; 0 = off",
    )


def check_report_seconds(every: float) -> None:
    """ValueError naming ``--report-seconds`` unless ``every`` is a number >= 0."""
    check_number(REPORT_FLAG, every, 0.0)


async def report(summary: Callable[[], str], every: float) -> None:
    """Print `summary()` every `every` seconds (0: never) until cancelled."""
    check_report_seconds(every)
    if every == 0:
        await asyncio.Event().wait()
    while True:
        await asyncio.sleep(every)
        print(summary(), flush=True)


async def run_until_cancelled(
    simulator: Simulator, listening: Callable[[], Awaitable[str]], every: float
) -> None:
    """Run a started ``simulator`` until cancelled: print ``{NAME} listening on`` what
    ``listening()`` says (it may start more, such as a control server), its summary every
    ``every`` seconds, and once it is closed ``{NAME} closed:`` and a last summary."""
    name = simulator.NAME
    try:
        print(f"{name} listening on {await listening()}", flush=True)
        await report(lambda: simulator.stats().summary(), every)
    finally:
        await simulator.close()
        print(f"{name} closed: {simulator.stats().summary()}", flush=True)
