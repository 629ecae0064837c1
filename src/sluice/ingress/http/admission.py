"""Admission control at the edge: refuse early what the gateway would have to buffer.

Two limits, checked in this order so that a refusal for one does not spend the other:

* the backlog: messages accepted and not yet final, plus those being committed right now by
  this ingress, must stay at or below ``limits.max_backlog`` (urgent messages may use
  ``limits.urgent_backlog_reserve`` more, so an OTP is not refused behind a broadcast);
* the tenant's rate: a token bucket per tenant (``rate`` messages/s, ``burst`` tokens or
  ``max(1, rate)`` when burst is 0; rate 0 is unlimited), charged one token per message.

Both answer with a `Rejection` that says how long to wait (HTTP 429 + Retry-After), except a
batch larger than the tenant's burst, which no wait would let in (413).

Examples:
    >>> from sluice.config import Config, TenantConfig
    >>> now = [0.0]
    >>> config = Config(tenants={"acme": TenantConfig(api_keys=[], rate=2)})
    >>> admission = Admission(config, backlog=lambda: 0, clock=lambda: now[0])
    >>> admission.admit("acme", 2), admission.admit("acme", 1).retry_after
    (None, 1)
    >>> admission.release(2)

Warning:
    The backlog check is not a reservation in the journal: several ingress processes over one
    shared journal each count only their own uncommitted messages, so together they can
    overshoot ``max_backlog`` by what they have in flight. Treat it as a soft limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec

from sluice.config import Config
from sluice.flow.rate import TokenBucket


class Rejection(msgspec.Struct, frozen=True):
    """Why a request is refused: HTTP status, a code, a sentence, and for 429 the whole
    seconds to wait before trying again (Retry-After)."""

    status: int
    code: str
    message: str
    retry_after: int | None = None

    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The response headers the refusal carries: Retry-After when it names a wait."""
        if self.retry_after is None:
            return ()
        return ((b"retry-after", str(self.retry_after).encode()),)


class Admission:
    """Decides whether a tenant may submit ``n`` messages now; one per ingress process."""

    __slots__ = (
        "_backlog",
        "_buckets",
        "_in_flight",
        "_max_backlog",
        "_retry_backlog",
        "_urgent_reserve",
    )

    def __init__(
        self,
        config: Config,
        backlog: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backlog = backlog
        self._max_backlog = config.limits.max_backlog
        self._retry_backlog = config.limits.backlog_retry_after_seconds
        self._urgent_reserve = config.limits.urgent_backlog_reserve
        self._in_flight = 0
        self._buckets: dict[str, TokenBucket] = {
            name: TokenBucket(tenant.rate, tenant.burst or max(1.0, tenant.rate), clock)
            for name, tenant in config.tenants.items()
            if tenant.rate > 0
        }

    @property
    def in_flight(self) -> int:
        """Messages admitted and not yet released (being committed)."""
        return self._in_flight

    def precheck(self, tenant: str, urgent: bool = False) -> Rejection | None:
        """Before reading a body: refuse if not even one more message could be admitted."""
        rejection = self._check_backlog(1, urgent)
        if rejection is not None:
            return rejection
        bucket = self._buckets.get(tenant)
        if bucket is not None:
            wait = bucket.delay_for(1)
            if wait > 0:
                return _rate_limited(wait)
        return None

    def admit(self, tenant: str, n: int, urgent: bool = False) -> Rejection | None:
        """Admit ``n`` messages (all urgent, if `urgent`), taking their tokens; the caller must
        `release` them once the journal answered (whatever it answered)."""
        rejection = self._check_backlog(n, urgent)
        if rejection is not None:
            return rejection
        bucket = self._buckets.get(tenant)
        if bucket is not None and not bucket.try_take(n):
            if n > bucket.burst:  # waiting would never help: the bucket never holds n tokens
                return Rejection(
                    413,
                    "batch_too_large",
                    f"this API key's tenant may send at most {bucket.burst:g} messages at once "
                    f"(its burst), got {n}; split the batch",
                )
            return _rate_limited(bucket.delay_for(n))
        self._in_flight += n
        return None

    def release(self, n: int) -> None:
        self._in_flight -= n

    def _check_backlog(self, n: int, urgent: bool) -> Rejection | None:
        limit = self._max_backlog + self._urgent_reserve if urgent else self._max_backlog
        if self._backlog() + self._in_flight + n > limit:
            return Rejection(
                429,
                "backlog_full",
                f"the gateway holds {self._max_backlog} undelivered messages "
                "(limits.max_backlog); try again later",
                self._retry_backlog,
            )
        return None


def _rate_limited(wait: float) -> Rejection:
    return Rejection(
        429,
        "rate_limited",
        "this API key's tenant is over its message rate; try again after Retry-After seconds",
        max(1, math.ceil(wait)),
    )
