"""Send-rate limits for a delivery channel: a token bucket and an AIMD rate finder.

Both are pure: no sleeping, no tasks, no I/O. Time comes from an injected clock
(``time.monotonic`` by default), so a sender decides how to wait and tests drive a fake clock.

Examples:
    A peer that accepts 2 messages/s with bursts of 2, sent in FIFO order:

    >>> now = [0.0]
    >>> bucket = TokenBucket(rate=2, burst=2, clock=lambda: now[0])
    >>> [bucket.reserve() for _ in range(4)]
    [0.0, 0.0, 0.5, 1.0]
    >>> bucket.try_take()
    False

    Finding how fast a peer lets us go, feeding the answer to the bucket:

    >>> adaptive = AdaptiveRate(ceiling=100, clock=lambda: now[0])
    >>> adaptive.on_throttle()
    50.0
    >>> now[0] = 2.0
    >>> adaptive.on_success()
    60.0
    >>> bucket.rate = adaptive.rate

Warning:
    A full bucket lets ``burst`` messages out at once, so a peer that counts messages in fixed
    one-second windows can see up to ``burst + rate`` in one of its windows (a burst at the end
    of its window, then a refill's worth at the start of the next). Set ``burst`` to 1 for a
    peer that must never see more than ``rate`` in any second; larger bursts cost strictness
    but let a sender catch up after a pause.

    ``reserve`` hands out delays that are not revised later: lowering ``rate`` after
    reservations were made slows only the reservations that come after the change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

# Refilling in floats can leave a bucket a hair short of a whole token after waiting exactly
# the delay it asked for (0.1 * 3 == 0.30000000000000004). Shortfalls below this many tokens
# count as "available", so sleeping ``delay_for(n)`` is always enough for ``try_take(n)``.
EPSILON = 1e-9

# Without an explicit ``increase``, a throttled rate grows back by 1/20 of the ceiling per
# second: about 20 s of success to climb from the floor to the ceiling, slow enough that a
# peer's one-second throttle windows get many chances to answer before we are back on top.
_DEFAULT_RECOVERY_SECONDS = 20.0


def check_rate(name: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0 = unlimited), got {value!r}")
    return float(value)


def check_amount(n: float) -> float:
    if not (math.isfinite(n) and n >= 0):
        raise ValueError(f"n must be a finite number of tokens >= 0, got {n!r}")
    return float(n)


class Bucket(Protocol):
    """What a channel runner needs of its rate limit: a local `TokenBucket`, or a
    `SharedTokenBucket` (sharing/rate.py) that shares one rate between processes."""

    rate: float

    @property
    def burst(self) -> float: ...

    @property
    def share(self) -> float: ...

    def try_take(self, n: float = 1) -> bool: ...

    def give_back(self, n: float = 1) -> None: ...

    def reserve(self, n: float = 1) -> float: ...

    def delay_for(self, n: float = 1) -> float: ...

    def available(self) -> float: ...


class TokenBucket:
    """Allow ``rate`` tokens per second, holding at most ``burst`` tokens; rate 0 is unlimited.

    The bucket starts full. ``try_take`` is for senders that may skip or reorder;
    ``reserve`` is for senders that must keep FIFO order: it always takes the tokens, going
    into debt if needed, and returns how long to sleep before sending. Later callers queue
    behind that debt, so delays grow in order of reservation.

    While unlimited (rate 0) every take succeeds at once and ``available()`` is ``inf``;
    setting a non-zero rate on an unlimited bucket starts it full.

    Examples:
        >>> now = [0.0]
        >>> bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
        >>> bucket.try_take(5), bucket.try_take()
        (True, False)
        >>> bucket.delay_for(2)
        0.2
        >>> now[0] = 0.2
        >>> bucket.available()
        2.0

    Warning:
        A request for more than ``burst`` tokens can never be met by ``try_take`` (and
        ``delay_for`` says ``inf``), but ``reserve`` grants it after paying off the debt.
        Keep ``n`` at or below ``burst`` if a peer must not see more than ``burst`` at once.
    """

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = check_rate("rate", rate)
        if not (math.isfinite(burst) and burst > 0):
            raise ValueError(f"burst must be a finite number of tokens > 0, got {burst!r}")
        self._burst = float(burst)
        self._clock = clock
        self._tokens = self._burst
        self._stamp = clock()

    @property
    def rate(self) -> float:
        """Tokens added per second; 0 means unlimited."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        new = check_rate("rate", value)
        # Tokens accrued at the old rate up to now are kept (and debt stays owed).
        self._refill()
        if self._rate == 0 and new > 0:
            self._tokens = self._burst
        self._rate = new

    @property
    def share(self) -> float:
        """The rate this process can count on (all of it: the bucket is not shared)."""
        return self._rate

    @property
    def burst(self) -> float:
        """Most tokens the bucket holds."""
        return self._burst

    def try_take(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are available now; never goes into debt."""
        n = check_amount(n)
        if self._rate == 0:
            return True
        self._refill()
        if self._tokens + EPSILON < n:
            return False
        self._tokens -= n
        return True

    def give_back(self, n: float = 1) -> None:
        """Return ``n`` tokens taken for a send that did not happen (never above ``burst``)."""
        n = check_amount(n)
        if self._rate == 0:
            return
        self._refill()
        self._tokens = min(self._burst, self._tokens + n)

    def reserve(self, n: float = 1) -> float:
        """Take ``n`` tokens unconditionally; return the seconds to wait before using them."""
        n = check_amount(n)
        if self._rate == 0:
            return 0.0
        self._refill()
        self._tokens -= n
        if self._tokens >= -EPSILON:
            return 0.0
        return -self._tokens / self._rate

    def delay_for(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens would be available (``inf`` above ``burst``); takes none."""
        n = check_amount(n)
        if self._rate == 0:
            return 0.0
        if n > self._burst:
            return math.inf
        self._refill()
        short = n - self._tokens
        if short <= EPSILON:
            return 0.0
        return short / self._rate

    def available(self) -> float:
        """Tokens available now: negative while in debt, ``inf`` while unlimited."""
        if self._rate == 0:
            return math.inf
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (a misbehaving fake, a non-monotonic source) adds nothing.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        if self._rate > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)


class AdaptiveRate:
    """AIMD: find the highest rate a peer accepts, between ``floor`` and ``ceiling``.

    A throttle answer multiplies the rate by ``decrease``, at most once per ``cooldown``
    seconds, so a window full of throttled answers (all sent at the old rate) counts once.
    Success grows the rate by ``increase`` tokens/s for every second since the previous
    answer, up to ``ceiling``. The rate never drops below ``floor``. It starts at ``ceiling``.

    ``ceiling == 0`` means unlimited: the rate starts at 0 (unlimited, as for
    :class:`TokenBucket`) and stays there until the first throttle, which drops it to
    ``start`` (required in that case, and only then). From there AIMD runs as usual with no
    upper bound, so the rate keeps growing while answers succeed but never returns to
    unlimited by itself. ``increase`` defaults to ``ceiling / 20`` (``start / 20`` when
    unlimited) per second.

    Examples:
        >>> now = [0.0]
        >>> adaptive = AdaptiveRate(ceiling=100, floor=10, clock=lambda: now[0])
        >>> adaptive.on_throttle(), adaptive.on_throttle()
        (50.0, 50.0)
        >>> now[0] = 1.0
        >>> adaptive.on_throttle()
        25.0
        >>> now[0] = 3.0
        >>> adaptive.on_success()
        35.0

        An unlimited peer that starts throttling:

        >>> adaptive = AdaptiveRate(ceiling=0, start=200, clock=lambda: now[0])
        >>> adaptive.rate, adaptive.on_throttle()
        (0.0, 200.0)

    Warning:
        Growth counts wall time between answers, idle time included: after a quiet spell
        the first success can lift the rate straight back to ``ceiling``, and the next
        throttle halves it again. That keeps the code free of traffic estimates, at the cost
        of one throttled window after each pause against a peer that is below ``ceiling``.
    """

    __slots__ = (
        "_ceiling",
        "_clock",
        "_cooldown",
        "_decrease",
        "_floor",
        "_increase",
        "_last_decrease",
        "_rate",
        "_stamp",
        "_start",
    )

    def __init__(
        self,
        ceiling: float,
        floor: float = 1.0,
        increase: float | None = None,
        decrease: float = 0.5,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        start: float | None = None,
    ) -> None:
        self._ceiling = check_rate("ceiling", ceiling)
        if not (math.isfinite(floor) and floor > 0):
            raise ValueError(f"floor must be a finite rate > 0, got {floor!r}")
        if self._ceiling and floor > self._ceiling:
            raise ValueError(f"floor ({floor!r}) must not exceed ceiling ({ceiling!r})")
        self._floor = float(floor)
        if self._ceiling:
            if start is not None:
                raise ValueError(
                    "start only applies when ceiling is 0 (unlimited); "
                    f"with ceiling {ceiling!r} the rate starts at the ceiling"
                )
            self._start = self._ceiling
        else:
            if start is None:
                raise ValueError(
                    "start is required when ceiling is 0 (unlimited): "
                    "it is the rate the first throttle falls back to"
                )
            if not (math.isfinite(start) and start >= floor):
                raise ValueError(f"start must be a finite rate >= floor ({floor!r}), got {start!r}")
            self._start = float(start)
        if increase is None:
            increase = self._start / _DEFAULT_RECOVERY_SECONDS
        if not (math.isfinite(increase) and increase > 0):
            raise ValueError(f"increase must be a finite rate per second > 0, got {increase!r}")
        self._increase = float(increase)
        if not (0 < decrease < 1):
            raise ValueError(f"decrease must be between 0 and 1 (exclusive), got {decrease!r}")
        self._decrease = float(decrease)
        if not (math.isfinite(cooldown) and cooldown >= 0):
            raise ValueError(f"cooldown must be a finite number of seconds >= 0, got {cooldown!r}")
        self._cooldown = float(cooldown)
        self._clock = clock
        self._rate = self._ceiling
        self._stamp = clock()
        self._last_decrease: float | None = None

    @property
    def rate(self) -> float:
        """Current rate in tokens/s; 0 means unlimited."""
        return self._rate

    def on_throttle(self) -> float:
        """Record a throttle answer from the peer; return the new rate."""
        now = self._clock()
        self._stamp = now
        if self._last_decrease is not None and now - self._last_decrease < self._cooldown:
            return self._rate
        self._last_decrease = now
        if self._rate == 0:
            self._rate = self._start
        else:
            self._rate = max(self._floor, self._rate * self._decrease)
        return self._rate

    def on_success(self) -> float:
        """Record an accepted message; return the new rate."""
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        if self._rate == 0:
            return self._rate
        grown = self._rate + elapsed * self._increase
        self._rate = min(self._ceiling, grown) if self._ceiling else grown
        return self._rate
