"""Find a peer's hard throughput cap and stay just under it.

An SMSC account has a fixed TPS per bind and answers ESME_RTHROTTLED above it. Additive
increase / multiplicative decrease keeps probing past such a cap and is throttled again every
few seconds, using ~75 % of it on average. This finder measures instead: on a throttle answer
it sets the rate to `margin` times the rate the peer *accepted* since the rate last changed
(at least `settle_seconds`, during which we were above the cap: so that rate is the cap),
and stays there; only after `reprobe_seconds` without a
throttle does it try `step` higher, in case the cap was raised.

Examples:
    finder = CapFinder(start=200)
    for each accepted message: bucket.rate = finder.on_success()
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
        "_accepted", "_clock", "_last_change", "_margin", "_rate", "_reprobe", "_settle",
        "_stamp", "_start", "_step", "_throttled", "cap",
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
        #: Accepted and throttled answers since the rate last changed.
        self._accepted = 0
        self._throttled = 0
        self._last_change = -math.inf
        self._stamp = clock()

    @property
    def rate(self) -> float:
        return self._rate

    def _change(self, rate: float, now: float) -> float:
        self._rate = rate
        self._last_change = now
        self._accepted = self._throttled = 0
        return rate

    def on_success(self) -> float:
        now = self._clock()
        self._accepted += 1
        elapsed, self._stamp = now - self._stamp, now
        if self.cap is None and self._rate > 0:
            # Slowed down before the cap could be measured: climb (start / 20 per second)
            # until an interval runs above the cap, which then measures it.
            self._rate += elapsed * self._start / 20
        elif self.cap is not None and now - self._last_change >= self._reprobe:
            self.cap *= 1 + self._step  # quiet for a while: see whether the cap was raised
            return self._change(self.cap * self._margin, now)
        return self._rate

    def on_throttle(self) -> float:
        now = self._clock()
        self._throttled += 1
        since = now - self._last_change
        if since < self._settle:
            return self._rate  # answers to what was sent at the old rate
        if math.isfinite(since) and self._accepted:
            # Throttled all along this interval: what the peer accepted in it is its cap.
            self.cap = self._accepted / since
            return self._change(max(1.0, self.cap * self._margin), now)
        # The first throttle: nothing measured yet; slow down and start measuring.
        self.cap = None
        return self._change(max(1.0, (self._rate or self._start) * 0.85), now)
