"""Find a peer's hard throughput cap and stay just under it.

An SMSC account has a fixed TPS per bind and answers ESME_RTHROTTLED above it. Additive
increase / multiplicative decrease keeps probing past such a cap and is throttled again every
few seconds, using ~75 % of it on average. This finder measures instead: on a throttle answer
it sets the rate to `margin` times the rate the peer *accepted* over the last second (which
is the cap while we are above it), and stays there; only after `reprobe_seconds` without a
throttle does it try `step` higher, in case the cap was raised.

Examples:
    finder = CapFinder(start=200)
    for each accepted message: bucket.rate = finder.on_accepted()
    on ESME_RTHROTTLED:        bucket.rate = finder.on_throttle()

Warning: throttles that arrive within `settle_seconds` of a change were sent at the old rate
and are ignored; a peer whose cap moves faster than that is followed with a lag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class CapFinder:
    __slots__ = (
        "_clock", "_count", "_last_change", "_last_count", "_last_throttled", "_margin",
        "_rate", "_reprobe", "_second", "_settle", "_stamp", "_start", "_step", "_throttled",
        "cap",
    )  # fmt: skip

    def __init__(
        self,
        start: float,
        *,
        margin: float = 0.97,
        reprobe_seconds: float = 30.0,
        step: float = 0.05,
        settle_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (start > 0 and 0 < margin <= 1 and step > 0 and reprobe_seconds > 0):
            raise ValueError("cap finder: start > 0, 0 < margin <= 1, step > 0, reprobe > 0")
        self._start = float(start)
        self._margin = margin
        self._reprobe = reprobe_seconds
        self._step = step
        self._settle = settle_seconds
        self._clock = clock
        #: 0 = unlimited: no throttle seen yet.
        self._rate = 0.0
        self.cap: float | None = None
        self._second = math.floor(clock())
        self._count = 0
        self._last_count = 0
        self._throttled = 0
        self._last_throttled = 0
        self._last_change = -math.inf
        self._stamp = clock()

    @property
    def rate(self) -> float:
        return self._rate

    def _tick(self, now: float) -> None:
        second = math.floor(now)
        if second != self._second:
            follows = second == self._second + 1
            self._last_count = self._count if follows else 0
            self._last_throttled = self._throttled if follows else 0
            self._second, self._count, self._throttled = second, 0, 0

    def on_accepted(self) -> float:
        now = self._clock()
        self._tick(now)
        self._count += 1
        elapsed, self._stamp = now - self._stamp, now
        if self.cap is None and self._rate > 0:
            # Slowed down before the cap could be measured: climb (start / 20 per second)
            # until a whole second runs above the cap, which then measures it.
            self._rate += elapsed * self._start / 20
        elif self.cap is not None and now - self._last_change >= self._reprobe:
            self.cap *= 1 + self._step  # quiet for a while: see whether the cap was raised
            self._rate = self.cap * self._margin
            self._last_change = now
        return self._rate

    def on_throttle(self) -> float:
        now = self._clock()
        self._tick(now)
        self._throttled += 1
        if now - self._last_change < self._settle:
            return self._rate  # answers to what was sent at the old rate
        if self._last_throttled and self._last_count:
            # The whole last second ran above the cap: what it accepted is the cap.
            self.cap = float(self._last_count)
            self._rate = max(1.0, self.cap * self._margin)
        else:  # no saturated second to measure yet: slow down and keep looking
            self.cap = None
            self._rate = max(1.0, (self._rate or self._start) * 0.85)
        self._last_change = now
        return self._rate
