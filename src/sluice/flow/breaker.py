"""A circuit breaker that stops sending to a failing peer and probes it back to health.

Pure state: the caller asks ``allow()`` before a request and records its outcome; time comes
from an injected clock. Only *transient* failures (timeouts, refused connections, "try later"
answers) should be recorded: a permanent rejection of one message says nothing about the peer.

Examples:
    >>> now = [0.0]
    >>> breaker = CircuitBreaker(failure_threshold=2, cooldown_seconds=5,
    ...                          max_cooldown_seconds=60, clock=lambda: now[0])
    >>> breaker.record_failure(); breaker.record_failure()
    >>> breaker.state, breaker.allow(), breaker.retry_at()
    (<BreakerState.OPEN: 'open'>, False, 5.0)
    >>> now[0] = 5.0
    >>> breaker.allow(), breaker.allow()  # one probe at a time
    (True, False)
    >>> breaker.record_success()
    >>> breaker.state, breaker.opened_count
    (<BreakerState.CLOSED: 'closed'>, 1)

Warning:
    A breaker that counts consecutive failures reacts quickly to a dead peer, but one that
    fails every other request never opens, and a single success in a storm of failures resets
    the count. Half-open lets one probe through at a time, so recovery is gentle on the peer
    but a slow probe delays it; the cooldown doubles after each failed probe (up to
    ``max_cooldown_seconds``), trading recovery speed for fewer probes against a long outage.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable

import msgspec


class BreakerState(enum.Enum):
    """Where a breaker stands: sending, refusing, or letting one probe through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerStats(msgspec.Struct, frozen=True):
    """What a breaker tells of itself (for metrics and the status API)."""

    state: BreakerState
    #: Openings so far, reopenings after a failed probe and trips by news included.
    opened_count: int
    consecutive_failures: int


class CircuitBreaker:
    """Open after ``failure_threshold`` consecutive transient failures; probe after a cooldown.

    CLOSED lets everything through; a success resets the failure count. When the count
    reaches the threshold the breaker opens for the current cooldown (``cooldown_seconds``
    at first). OPEN refuses everything until the cooldown has passed, then reads as
    HALF_OPEN, which lets exactly one probe through at a time. The probe's success closes
    the breaker and resets the cooldown; its failure reopens it with the cooldown doubled,
    up to ``max_cooldown_seconds``. ``release_probe`` hands the probe slot back when the
    probe ended with neither outcome (cancelled, never sent).

    Results recorded while OPEN, or while HALF_OPEN with no probe out, come from requests
    sent before the breaker opened; they are ignored.

    Examples:
        >>> now = [0.0]
        >>> breaker = CircuitBreaker(1, cooldown_seconds=1, max_cooldown_seconds=3,
        ...                          clock=lambda: now[0])
        >>> breaker.record_failure()
        >>> now[0] = 1.0
        >>> breaker.allow()
        True
        >>> breaker.record_failure()  # the probe failed: cooldown doubles to 2 s
        >>> breaker.retry_at()
        3.0

    Warning:
        The probe slot is held until its result is recorded or released: a caller that
        forgets both leaves the breaker half-open and refusing forever.
    """

    __slots__ = (
        "_base_cooldown",
        "_clock",
        "_cooldown",
        "_failures",
        "_max_cooldown",
        "_on_open",
        "_opened_count",
        "_probe_out",
        "_retry_at",
        "_state",
        "_threshold",
    )

    def __init__(
        self,
        failure_threshold: int,
        cooldown_seconds: float,
        max_cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[float], None] | None = None,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise ValueError(f"failure_threshold must be an int, got {failure_threshold!r}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if not (math.isfinite(cooldown_seconds) and cooldown_seconds > 0):
            raise ValueError(
                f"cooldown_seconds must be a finite number > 0, got {cooldown_seconds!r}"
            )
        if not (math.isfinite(max_cooldown_seconds) and max_cooldown_seconds >= cooldown_seconds):
            raise ValueError(
                f"max_cooldown_seconds must be finite and >= cooldown_seconds "
                f"({cooldown_seconds!r}), got {max_cooldown_seconds!r}"
            )
        self._threshold = failure_threshold
        self._base_cooldown = float(cooldown_seconds)
        self._max_cooldown = float(max_cooldown_seconds)
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown = self._base_cooldown
        self._retry_at = 0.0
        self._probe_out = False
        self._opened_count = 0
        #: Told the cooldown (seconds) each time the breaker opens by its own count.
        self._on_open = on_open

    @property
    def state(self) -> BreakerState:
        """Current state; reading it turns OPEN into HALF_OPEN once the cooldown has passed."""
        if self._state is BreakerState.OPEN and self._clock() >= self._retry_at:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = False
        return self._state

    @property
    def opened_count(self) -> int:
        """How many times the breaker has opened, reopenings after a failed probe included."""
        return self._opened_count

    def stats(self) -> BreakerStats:
        """A snapshot; like reading `state`, it half-opens a breaker whose cooldown passed."""
        return BreakerStats(self.state, self._opened_count, self._failures)

    def allow(self) -> bool:
        """May a request go now? In HALF_OPEN, True once until the probe's result is known."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        """Record a request that succeeded."""
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN and self._probe_out:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._cooldown = self._base_cooldown
            self._probe_out = False

    def record_failure(self) -> None:
        """Record a request that failed transiently."""
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()
        elif state is BreakerState.HALF_OPEN and self._probe_out:
            self._cooldown = min(self._max_cooldown, self._cooldown * 2)
            self._open()

    def release_probe(self) -> None:
        """Give back the probe slot of a probe that neither succeeded nor failed."""
        if self.state is BreakerState.HALF_OPEN:
            self._probe_out = False

    def trip(self, seconds: float) -> bool:
        """Open for `seconds` because the peer failed somewhere else (another process saw it);
        a breaker already open keeps the later of the two retry times. Returns True if this
        opened it. Not reported to `on_open`: the news came from outside."""
        if not (math.isfinite(seconds) and seconds > 0):
            return False
        until = self._clock() + seconds
        if self.state is BreakerState.OPEN:
            self._retry_at = max(self._retry_at, until)
            return False
        self._state = BreakerState.OPEN
        self._retry_at = until
        self._failures = 0
        self._probe_out = False
        self._opened_count += 1
        return True

    def retry_at(self) -> float | None:
        """Clock time at which an OPEN breaker will half-open; None in any other state."""
        if self.state is BreakerState.OPEN:
            return self._retry_at
        return None

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._retry_at = self._clock() + self._cooldown
        self._failures = 0
        self._probe_out = False
        self._opened_count += 1
        if self._on_open is not None:
            self._on_open(self._cooldown)
