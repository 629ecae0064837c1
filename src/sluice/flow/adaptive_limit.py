"""An adaptive limit on requests in flight: AIMD that holds a response-time and a loop-lag target.

Overload control in the manner of Welsh and Culler ("Adaptive Overload Control for Busy
Internet Services", 2003): the stage measures its own response time and cuts what it admits
when a target is missed, then probes upwards while it is met. Here the quantity admitted is
concurrency (requests being served at once), so the limit needs no estimate of the cost of a
request: when the process runs out of CPU, response times and the event loop's lag grow, the
limit falls multiplicatively, and the excess is refused at once instead of queueing until its
clients give up. Two signals, either of which misses the target of an interval:

* the `quantile` (p99 by default) of the response times of requests released in it, above
  `latency_target`;
* the event loop's mean lag (how late a timer fires, `observe_lag`), above `lag_target`: the
  loop being late is what makes refusals, health probes and delivery slow, long before the
  admitted requests' own response times show it.

A missed target cuts the limit only while admitted requests are a large part of the loop's
work, that is while fewer than `refusal_ratio` requests were refused per request admitted. A
refusal costs a small fraction of an admitted request (`refusal_ratio` is that ratio, ~8
measured here); in a loop busy with refusals, admitting less saves nothing, and cutting the
limit there spiralled down to the floor: goodput fell to a few percent while the refusals
alone kept the loop as late as before. There, each request admitted instead of refused costs
little more than its refusal would have, so the limit is raised as if the targets were met,
until admitted requests are that large part of the work again: the limit settles where the
refusals' share of the loop meets the admitted requests'. An interval that met both targets
(or was busy with refusals) and used most of the limit raises it by `increase`.

Urgent requests are admitted over the limit up to ``limit * urgent_factor`` (the hard limit).
Once ``fair_share_from`` of the limit is in use, a key (a tenant) holding more than an equal
share of the limit among the keys in flight is refused, so a flooding tenant leaves room for
the others.

Examples:
    >>> now = [0.0]
    >>> limit = AdaptiveLimit(initial=2, minimum=1, maximum=10, clock=lambda: now[0])
    >>> limit.try_acquire("acme"), limit.try_acquire("acme"), limit.try_acquire("acme")
    (True, True, False)
    >>> limit.try_acquire("acme", urgent=True)
    True
    >>> limit.release("acme", started=0.0)
    >>> limit.stats().in_flight
    2
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

#: Response-time samples kept per interval: enough for a p99, bounded whatever the load.
MAX_SAMPLES = 4096
#: For how long after its last refusal the limit counts as shedding (what /readyz reports).
SHEDDING_HOLD_SECONDS = 1.0
#: Share of the limit an interval must have used for the limit to grow after it: no need to
#: raise a limit nobody reaches.
_USED_SHARE = 0.8


class LimitStats(msgspec.Struct, frozen=True):
    """A snapshot of the limit, for metrics and /v1/channels-style status."""

    limit: int
    in_flight: int
    admitted: int
    shed: int
    shedding: bool
    #: The latency quantile and the mean loop lag of the last full interval, in ms.
    latency_ms: float
    loop_lag_ms: float
    increases: int
    decreases: int


class AdaptiveLimit:
    """An AIMD concurrency limit; sans-IO: time comes from `clock`, lag from `observe_lag`."""

    __slots__ = (
        "_admitted",
        "_clock",
        "_decrease",
        "_decreases",
        "_fair_from",
        "_in_flight",
        "_increase",
        "_increases",
        "_interval",
        "_interval_admitted",
        "_interval_shed",
        "_lag",
        "_lag_samples",
        "_lag_target",
        "_last_lag",
        "_last_latency",
        "_last_shed",
        "_latency_target",
        "_limit",
        "_maximum",
        "_minimum",
        "_next_adjust",
        "_peak",
        "_per_key",
        "_quantile",
        "_refusal_ratio",
        "_samples",
        "_shed",
        "_urgent_factor",
    )

    def __init__(
        self,
        *,
        latency_target: float = 0.5,
        quantile: float = 0.99,
        lag_target: float = 0.02,
        interval: float = 0.1,
        initial: int = 64,
        minimum: int = 4,
        maximum: int = 4096,
        increase: float = 4.0,
        decrease: float = 0.8,
        urgent_factor: float = 2.0,
        fair_share_from: float = 0.5,
        refusal_ratio: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._latency_target = latency_target
        self._quantile = quantile
        self._lag_target = lag_target
        self._interval = interval
        self._minimum = float(minimum)
        self._maximum = float(maximum)
        self._limit = float(min(max(initial, minimum), maximum))
        self._increase = increase
        self._decrease = decrease
        self._urgent_factor = urgent_factor
        self._fair_from = fair_share_from
        self._refusal_ratio = refusal_ratio
        self._clock = clock
        self._in_flight = 0
        self._per_key: dict[str, int] = {}
        self._samples: list[float] = []
        self._lag = 0.0
        self._lag_samples = 0
        self._peak = 0
        self._interval_admitted = 0
        self._interval_shed = 0
        self._next_adjust = clock() + interval
        self._last_shed = -math.inf
        self._last_latency = 0.0
        self._last_lag = 0.0
        self._admitted = 0
        self._shed = 0
        self._increases = 0
        self._decreases = 0

    @property
    def limit(self) -> int:
        return int(self._limit)

    def try_acquire(self, key: str, urgent: bool = False) -> bool:
        """Admit one request of `key` (True), or refuse it (False). An admitted request must
        be `release`d, with the time it started, once it is answered."""
        now = self._clock()
        if now >= self._next_adjust:
            self._adjust(now)
        limit = self._limit
        in_flight = self._in_flight
        held = self._per_key.get(key, 0)
        if urgent:  # ahead of bulk and of any share, up to the hard limit
            refused = in_flight >= limit * self._urgent_factor
        elif in_flight >= limit:
            refused = True
        elif in_flight >= limit * self._fair_from:
            keys = len(self._per_key) + (held == 0)
            refused = held + 1 > limit / keys
        else:
            refused = False
        if refused:
            self._shed += 1
            self._interval_shed += 1
            self._last_shed = now
            return False
        self._in_flight = in_flight + 1
        self._per_key[key] = held + 1
        if in_flight >= self._peak:
            self._peak = in_flight + 1
        self._admitted += 1
        self._interval_admitted += 1
        return True

    def release(self, key: str, started: float) -> None:
        """A request admitted for `key` at `started` (a `clock` time) has been answered."""
        self._in_flight -= 1
        held = self._per_key[key] - 1
        if held:
            self._per_key[key] = held
        else:
            del self._per_key[key]
        now = self._clock()
        if len(self._samples) < MAX_SAMPLES:
            self._samples.append(now - started)
        if now >= self._next_adjust:
            self._adjust(now)

    def observe_lag(self, seconds: float) -> None:
        """How late the event loop ran a timer. The mean of an interval's samples counts: a
        loop out of CPU is late at every sample, while one long callback (a large claim, a
        group commit's replies) makes one sample late and is no reason to admit less."""
        self._lag += seconds
        self._lag_samples += 1
        now = self._clock()
        if now >= self._next_adjust:
            self._adjust(now)

    def shedding(self) -> bool:
        """Whether requests were refused for the limit within the last second."""
        return self._clock() - self._last_shed < SHEDDING_HOLD_SECONDS

    def stats(self) -> LimitStats:
        return LimitStats(
            limit=int(self._limit),
            in_flight=self._in_flight,
            admitted=self._admitted,
            shed=self._shed,
            shedding=self.shedding(),
            latency_ms=round(self._last_latency * 1000, 3),
            loop_lag_ms=round(self._last_lag * 1000, 3),
            increases=self._increases,
            decreases=self._decreases,
        )

    def _adjust(self, now: float) -> None:
        samples = self._samples
        latency = 0.0
        if samples:
            samples.sort()
            latency = samples[min(len(samples) - 1, int(len(samples) * self._quantile))]
        lag = self._lag / self._lag_samples if self._lag_samples else 0.0
        missed = latency > self._latency_target or lag > self._lag_target
        if missed and self._interval_shed < self._interval_admitted * self._refusal_ratio:
            self._limit = max(self._minimum, self._limit * self._decrease)
            self._decreases += 1
        elif samples and self._peak >= self._limit * _USED_SHARE:
            # Only on answers: an interval that answered nothing (a stalled journal) has no
            # response time to go by, and must not admit more into the stall.
            self._limit = min(self._maximum, self._limit + self._increase)
            self._increases += 1
        self._last_latency = latency
        self._last_lag = lag
        self._samples = []
        self._lag = 0.0
        self._lag_samples = 0
        self._peak = self._in_flight
        self._interval_admitted = 0
        self._interval_shed = 0
        # A clock that jumped (or a long idle spell) starts a fresh interval from now.
        self._next_adjust = max(self._next_adjust + self._interval, now + self._interval / 2)
