"""The simulators' shared life cycle and the `sluice sim` commands' run loop."""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

from sluice.sim.arrivals import ARRIVAL_WINDOW_SECONDS, ArrivalCounts
from sluice.sim.base import Simulator
from sluice.sim.report import report, run_until_cancelled


class _Stats:
    def __init__(self, n: int) -> None:
        self.n = n

    def summary(self) -> str:
        return f"n {self.n}"


class _Peer(Simulator):
    NAME = "test peer"

    def __init__(self) -> None:
        self.starts = 0
        self.closes = 0
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> int:
        self.starts += 1
        self._started = True
        return 1234

    async def close(self) -> None:
        self.closes += 1
        self._started = False

    def stats(self) -> _Stats:
        return _Stats(self.closes)

    @property
    def port(self) -> int:
        self._check_started()
        return 1234


async def test_async_with_starts_once_and_closes() -> None:
    peer = _Peer()
    with pytest.raises(RuntimeError, match=r"^test peer is not started: call start\(\) first$"):
        _ = peer.port
    async with peer as same:
        assert same is peer and peer.port == 1234
    await peer.start()
    async with peer:
        pass
    assert (peer.starts, peer.closes) == (2, 2)


async def test_run_until_cancelled_reports_then_closes() -> None:
    peer = _Peer()
    await peer.start()

    async def listening() -> str:
        return "here"

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        task = asyncio.create_task(run_until_cancelled(peer, listening, 0.01))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = out.getvalue().splitlines()
    assert lines[0] == "test peer listening on here"
    assert "n 0" in lines[1:-1]
    assert lines[-1] == "test peer closed: n 1"
    assert peer.closes == 1


async def test_report_refuses_a_bad_interval() -> None:
    with pytest.raises(ValueError, match=r"^--report-seconds: expected a number >= 0"):
        await report(lambda: "", -1.0)


def test_arrivals_forget_what_left_the_window() -> None:
    arrivals = ArrivalCounts(since=0)
    arrivals.add(5, 2)
    arrivals.add(5 + ARRIVAL_WINDOW_SECONDS, 1)  # the same slot, a window later
    series = arrivals.series(5 + ARRIVAL_WINDOW_SECONDS)
    assert len(series) == ARRIVAL_WINDOW_SECONDS
    assert series[-1] == 1 and sum(series) == 1
