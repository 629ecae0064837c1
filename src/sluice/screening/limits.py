"""Connection admission for screening: per-client limits and the global screening gate.

``ClientLimiter`` caps each client address at a number of open connections (postscreen's
``postscreen_client_connection_count_limit``) and at a connection rate (anvil's
``smtpd_client_connection_rate_limit``, here a token bucket rather than anvil's fixed
one-minute window). ``ScreeningGate`` caps how many connections are being screened at once
(postscreen's ``postscreen_pre_queue_limit``) and says when the server is under stress.

Both are pure state driven by the caller: no sockets, no tasks; time comes from an injected
clock.

Examples:
    >>> now = [0.0]
    >>> limiter = ClientLimiter(max_concurrent=2, rate_per_minute=60, burst=3,
    ...                         clock=lambda: now[0])
    >>> [limiter.try_open("192.0.2.1") for _ in range(3)]
    [None, None, 'too many connections from 192.0.2.1 (limit 2)']
    >>> limiter.close("192.0.2.1")
    >>> limiter.try_open("192.0.2.1") is None  # admitted: the third token of the burst
    True
    >>> limiter.close("192.0.2.1"); limiter.try_open("192.0.2.1")
    'connection rate limit exceeded for 192.0.2.1 (60/min)'

Warning:
    Limits are per address, as in postscreen. An IPv6 client that owns a /64 can spread its
    connections over as many addresses as it likes; a limit per IPv6 prefix would close that
    gap at the price of grouping unrelated clients behind a shared prefix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sluice.screening.access import Address, client_address

# Float refills can leave a bucket a hair short of a whole token after waiting exactly the
# interval (60 / 7 * 7 != 60); shortfalls below this many seconds count as "available".
_EPSILON = 1e-9

# IPv6 keys get bit 128 set so that no IPv6 address shares a key with an IPv4 address
# (``::192.0.2.1`` and ``192.0.2.1`` have the same integer value).
_IPV6_KEY_TAG = 1 << 128

# postscreen's reply when postscreen_pre_queue_limit is reached, before it hangs up.
GATE_FULL_REPLY = (421, "4.3.2 All server ports are busy")


def _check_limit(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0 = unlimited), got {value!r}")


class ClientLimiter:
    """At most ``max_concurrent`` open connections and ``rate_per_minute`` new ones per client.

    The rate is a token bucket per client address: it holds ``burst`` connections and
    refills at ``rate_per_minute``. A bucket is kept as the single time at which it will be
    full again (the "theoretical arrival time" of the generic cell rate algorithm), so a
    client costs one dict entry per limit, and only while it has open connections or a
    bucket that is not yet full. Entries whose bucket is full again are dropped by a sweep
    that runs at most once per refill time (``burst`` connection intervals), on the first
    call after it is due: its cost is spread over the calls since the previous sweep.

    ``try_open`` checks the concurrency limit first, then the rate; a refused connection
    uses up nothing. A limit of 0 means unlimited (``burst`` is then ignored).

    ``close`` for a client with no open connection counted is ignored: such a connection
    was admitted while concurrency was unlimited, or by the limiter this one replaced on a
    configuration reload.
    """

    __slots__ = (
        "_clock",
        "_full_at",
        "_interval",
        "_max_concurrent",
        "_next_sweep",
        "_open",
        "_rate_per_minute",
        "_refill_time",
        "_slack",
    )

    def __init__(
        self,
        max_concurrent: int,
        rate_per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_limit("max_concurrent", max_concurrent)
        _check_limit("rate_per_minute", rate_per_minute)
        if rate_per_minute and not (isinstance(burst, int) and burst >= 1):
            raise ValueError(
                f"burst must be a whole number of connections >= 1 when rate_per_minute is "
                f"set, got {burst!r}"
            )
        self._max_concurrent = int(max_concurrent)
        self._rate_per_minute = float(rate_per_minute)
        # Seconds one connection takes to refill; 0 while the rate is unlimited.
        self._interval = 60.0 / rate_per_minute if rate_per_minute else 0.0
        # How far a bucket's "full again" time may lie ahead of now and still hold a token.
        self._slack = (burst - 1) * self._interval
        self._refill_time = burst * self._interval
        self._clock = clock
        self._open: dict[int, int] = {}  # client key -> open connections, only when > 0
        self._full_at: dict[int, float] = {}  # client key -> when its bucket is full again
        self._next_sweep = clock() + self._refill_time

    def try_open(self, address: Address) -> str | None:
        """Admit and count a new connection (``None``), or say why it is refused."""
        client = client_address(address)
        key = int(client) if client.version == 4 else int(client) | _IPV6_KEY_TAG
        opened = self._open.get(key, 0)
        if self._max_concurrent and opened >= self._max_concurrent:
            return f"too many connections from {client} (limit {self._max_concurrent})"
        if self._interval:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            full_at = max(self._full_at.get(key, now), now)
            if full_at - now > self._slack + _EPSILON:
                return (
                    f"connection rate limit exceeded for {client} ({self._rate_per_minute:g}/min)"
                )
            self._full_at[key] = full_at + self._interval
        if self._max_concurrent:
            self._open[key] = opened + 1
        return None

    def close(self, address: Address) -> None:
        """Count the end of a connection that ``try_open`` admitted."""
        client = client_address(address)
        key = int(client) if client.version == 4 else int(client) | _IPV6_KEY_TAG
        opened = self._open.pop(key, 0)
        if opened > 1:
            self._open[key] = opened - 1

    def __len__(self) -> int:
        """Clients with state: open connections, or a bucket that was not full at last sweep."""
        return len(self._open.keys() | self._full_at.keys())

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again; a missing bucket reads as full."""
        full = [key for key, full_at in self._full_at.items() if full_at <= now]
        for key in full:
            del self._full_at[key]
        # Every bucket touched before now is full again by now + refill time.
        self._next_sweep = now + self._refill_time


class ScreeningGate:
    """The global limit on connections being screened at once, with postscreen's stress flag.

    ``try_enter`` when screening of a connection starts, ``leave`` when it ends (passed,
    refused or dropped). When the gate is full the caller answers with
    :data:`GATE_FULL_REPLY` and hangs up, as postscreen does at ``postscreen_pre_queue_limit``.

    ``stressed`` is true once ``busy`` reaches ``nearly_full`` of the limit (rounded up to
    a whole connection). Postfix calls this "stress" and switches to shorter timeouts under
    it (``postscreen_greet_wait = ${stress?{2}:{6}}s``), so slow or idle clients free their
    slots sooner; the gate only exposes the flag and leaves the timeouts to the caller.
    Postfix raises the flag only when the limit is reached; raising it a little earlier
    shortens timeouts before any client is turned away.

    ``max_screening`` 0 means unlimited: ``try_enter`` always succeeds and the gate is never
    stressed.

    Examples:
        >>> gate = ScreeningGate(max_screening=5, nearly_full=0.8)
        >>> [gate.try_enter() for _ in range(6)], gate.busy, gate.stressed
        ([True, True, True, True, True, False], 5, True)
        >>> gate.leave(); gate.leave()
        >>> gate.busy, gate.stressed
        (3, False)
    """

    __slots__ = ("_busy", "_max_screening", "_stress_at")

    def __init__(self, max_screening: int, nearly_full: float = 0.8) -> None:
        if not (isinstance(max_screening, int) and max_screening >= 0):
            raise ValueError(
                f"max_screening must be a whole number >= 0 (0 = unlimited), got {max_screening!r}"
            )
        if not (0 < nearly_full <= 1):
            raise ValueError(f"nearly_full must be a fraction in (0, 1], got {nearly_full!r}")
        self._max_screening = max_screening
        # Rounded up, with a little slack for products like 0.7 * 10 == 7.000000000000001.
        self._stress_at = math.ceil(nearly_full * max_screening - _EPSILON)
        self._busy = 0

    @property
    def busy(self) -> int:
        """Connections being screened now."""
        return self._busy

    @property
    def stressed(self) -> bool:
        """Whether the gate is nearly full and screening should use its shorter timeouts."""
        return bool(self._max_screening) and self._busy >= self._stress_at

    def try_enter(self) -> bool:
        """Take a screening slot if one is free."""
        if self._max_screening and self._busy >= self._max_screening:
            return False
        self._busy += 1
        return True

    def leave(self) -> None:
        """Give back a slot taken by ``try_enter``; RuntimeError if none is taken."""
        if not self._busy:
            raise RuntimeError("ScreeningGate.leave() without a matching try_enter()")
        self._busy -= 1
