"""When to try a failed delivery again: capped exponential backoff with jitter.

Pure arithmetic: the caller passes the attempt number and the current time, and randomness
comes from an injectable ``random.Random`` so tests can seed it.

Examples:
    >>> import random
    >>> policy = RetryPolicy(
    ...     max_attempts=5, base_seconds=1, max_seconds=10, jitter=0, rng=random.Random(7)
    ... )
    >>> [policy.delay(attempt) for attempt in range(1, 6)]
    [1.0, 2.0, 4.0, 8.0, 10.0]
    >>> policy.next_due_ms(1, now_ms=50_000, expires_at_ms=None)
    51000
    >>> policy.next_due_ms(4, now_ms=50_000, expires_at_ms=58_000) is None
    True
    >>> policy.next_due_ms(5, now_ms=50_000, expires_at_ms=None) is None
    True

Warning:
    Jitter spreads retries of messages that failed together (a peer outage) so they do not
    come back as one thundering herd, at the price of a less predictable schedule: with
    jitter ``j`` a delay lands anywhere in ``[d * (1 - j), d * (1 + j)]``, so a capped delay
    may exceed ``max_seconds`` by up to ``max_seconds * j``. Without jitter every message
    that failed in the same second retries in the same second.
"""

from __future__ import annotations

import math
import random

# 2.0 ** 1023 is the largest power of two a float holds; later attempts are capped anyway,
# so the exponent stops here instead of overflowing.
_MAX_EXPONENT = 1023


class RetryPolicy:
    """Backoff ``base * 2 ** (attempt - 1)`` capped at ``max_seconds``, times random jitter.

    ``attempt`` counts failed tries so far, from 1. After ``max_attempts`` failed tries the
    policy gives up, as it does when the next try would fall at or after the message expiry.

    Examples:
        >>> import random
        >>> policy = RetryPolicy(3, base_seconds=2, max_seconds=60, jitter=0.5,
        ...                      rng=random.Random(1))
        >>> 1.0 <= policy.delay(1) <= 3.0
        True

    Warning:
        The cap applies before jitter, so delays reach ``max_seconds * (1 + jitter)``.
    """

    __slots__ = ("_base", "_jitter", "_max", "_max_attempts", "_rng")

    def __init__(
        self,
        max_attempts: int,
        base_seconds: float,
        max_seconds: float,
        jitter: float,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise ValueError(f"max_attempts must be an int, got {max_attempts!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if not (math.isfinite(base_seconds) and base_seconds > 0):
            raise ValueError(f"base_seconds must be a finite number > 0, got {base_seconds!r}")
        if not (math.isfinite(max_seconds) and max_seconds >= base_seconds):
            raise ValueError(
                f"max_seconds must be finite and >= base_seconds ({base_seconds!r}), "
                f"got {max_seconds!r}"
            )
        if not (0 <= jitter <= 1):
            raise ValueError(f"jitter must be between 0 and 1, got {jitter!r}")
        self._max_attempts = max_attempts
        self._base = float(base_seconds)
        self._max = float(max_seconds)
        self._jitter = float(jitter)
        # A private generator, never the module-level one: no shared global state.
        self._rng = rng if rng is not None else random.Random()

    @property
    def max_attempts(self) -> int:
        """Failed tries after which the policy gives up."""
        return self._max_attempts

    @property
    def base_seconds(self) -> float:
        """The delay after the first failed try, before jitter."""
        return self._base

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failed try (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (the count of failed tries), got {attempt!r}")
        capped = min(self._max, self._base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        if self._jitter == 0:
            return capped
        factor = self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        # Clamp against float rounding so the documented bounds hold exactly.
        return min(self._max * (1 + self._jitter), max(0.0, capped * factor))

    def next_due_ms(self, attempt: int, now_ms: int, expires_at_ms: int | None) -> int | None:
        """When to try again after the ``attempt``-th failure, or ``None`` to give up."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1 (the count of failed tries), got {attempt!r}")
        if attempt >= self._max_attempts:
            return None
        # Round up so a retry is never due before its full delay has passed.
        due = now_ms + math.ceil(self.delay(attempt) * 1000)
        if expires_at_ms is not None and due >= expires_at_ms:
            return None
        return due
