"""Behaviour of the retry schedule: exponential growth, cap, jitter, attempts and expiry."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.flow.retry import RetryPolicy


def make(
    max_attempts: int = 10,
    base_seconds: float = 1.0,
    max_seconds: float = 60.0,
    jitter: float = 0.0,
    seed: int = 0,
) -> RetryPolicy:
    return RetryPolicy(max_attempts, base_seconds, max_seconds, jitter, rng=random.Random(seed))


def test_delays_grow_exponentially() -> None:
    policy = make(base_seconds=0.5, max_seconds=1000)
    assert [policy.delay(a) for a in range(1, 7)] == [0.5, 1, 2, 4, 8, 16]


def test_delays_are_capped() -> None:
    policy = make(base_seconds=1, max_seconds=10)
    assert [policy.delay(a) for a in range(3, 8)] == [4, 8, 10, 10, 10]


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = make(base_seconds=1, max_seconds=10)
    assert policy.delay(10_000) == 10
    assert policy.delay(10**30) == 10


def test_jitter_varies_delays_within_bounds() -> None:
    policy = make(base_seconds=10, max_seconds=100, jitter=0.2)
    delays = [policy.delay(1) for _ in range(1000)]
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 900
    assert min(delays) < 8.1
    assert max(delays) > 11.9


def test_seeded_rng_is_reproducible() -> None:
    first = make(jitter=0.5, seed=42)
    second = make(jitter=0.5, seed=42)
    assert [first.delay(a) for a in range(1, 20)] == [second.delay(a) for a in range(1, 20)]


def test_default_rng_is_private() -> None:
    policy = RetryPolicy(3, base_seconds=1, max_seconds=10, jitter=0.5)
    random.seed(1)
    state = random.getstate()
    assert 0.5 <= policy.delay(1) <= 1.5
    assert random.getstate() == state


def test_full_jitter_is_never_negative() -> None:
    policy = make(jitter=1.0)
    assert all(0 <= policy.delay(3) <= 8 for _ in range(1000))


@given(
    attempt=st.integers(1, 5000),
    base=st.floats(0.001, 100),
    cap_factor=st.floats(1, 1e6),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_delay_bounds(
    attempt: int, base: float, cap_factor: float, jitter: float, seed: int
) -> None:
    max_seconds = base * cap_factor
    policy = make(base_seconds=base, max_seconds=max_seconds, jitter=jitter, seed=seed)
    delay = policy.delay(attempt)
    capped = min(max_seconds, base * 2.0 ** min(attempt - 1, 1023))
    assert 0 <= delay <= max_seconds * (1 + jitter)
    assert capped * (1 - jitter) * (1 - 1e-12) <= delay <= capped * (1 + jitter) * (1 + 1e-12)


def test_next_due_adds_the_delay_in_milliseconds() -> None:
    policy = make(base_seconds=1.5)
    assert policy.next_due_ms(1, now_ms=10_000, expires_at_ms=None) == 11_500
    assert policy.next_due_ms(2, now_ms=10_000, expires_at_ms=None) == 13_000


def test_next_due_rounds_up() -> None:
    policy = make(base_seconds=0.0001)
    assert policy.next_due_ms(1, now_ms=0, expires_at_ms=None) == 1


def test_gives_up_after_max_attempts() -> None:
    policy = make(max_attempts=3)
    assert policy.max_attempts == 3
    assert policy.next_due_ms(1, 0, None) is not None
    assert policy.next_due_ms(2, 0, None) is not None
    assert policy.next_due_ms(3, 0, None) is None
    assert policy.next_due_ms(4, 0, None) is None


def test_single_attempt_never_retries() -> None:
    assert make(max_attempts=1).next_due_ms(1, 0, None) is None


def test_gives_up_when_next_try_would_be_at_or_past_expiry() -> None:
    policy = make(base_seconds=2)
    assert policy.next_due_ms(1, now_ms=1000, expires_at_ms=3001) == 3000
    assert policy.next_due_ms(1, now_ms=1000, expires_at_ms=3000) is None
    assert policy.next_due_ms(1, now_ms=1000, expires_at_ms=2000) is None
    assert policy.next_due_ms(1, now_ms=1000, expires_at_ms=500) is None


@given(
    attempt=st.integers(1, 30),
    max_attempts=st.integers(1, 30),
    jitter=st.floats(0, 1),
    now_ms=st.integers(0, 2**45),
    ttl_ms=st.none() | st.integers(-10_000, 10**8),
    seed=st.integers(0, 2**32),
)
def test_next_due_is_in_the_future_and_before_expiry(
    attempt: int, max_attempts: int, jitter: float, now_ms: int, ttl_ms: int | None, seed: int
) -> None:
    policy = make(max_attempts, base_seconds=0.5, max_seconds=300, jitter=jitter, seed=seed)
    expires = None if ttl_ms is None else now_ms + ttl_ms
    due = policy.next_due_ms(attempt, now_ms, expires)
    if attempt >= max_attempts:
        assert due is None
        return
    capped = min(300, 0.5 * 2 ** (attempt - 1))
    # One millisecond of slack either side for float rounding before the ceiling.
    earliest = now_ms + math.floor(capped * (1 - jitter) * 1000) - 1
    latest = now_ms + math.ceil(capped * (1 + jitter) * 1000) + 1
    if due is None:
        # Only expiry may cut short a retry that attempts still allow.
        assert expires is not None
        assert expires <= latest
        return
    assert isinstance(due, int)
    assert now_ms <= due
    assert earliest <= due <= latest
    assert expires is None or due < expires


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 1, 10, 0), "max_attempts"),
        ((2.5, 1, 10, 0), "max_attempts"),
        ((True, 1, 10, 0), "max_attempts"),
        ((3, 0, 10, 0), "base_seconds"),
        ((3, -1, 10, 0), "base_seconds"),
        ((3, math.nan, 10, 0), "base_seconds"),
        ((3, 1, 0.5, 0), "max_seconds"),
        ((3, 1, math.inf, 0), "max_seconds"),
        ((3, 1, 10, -0.1), "jitter"),
        ((3, 1, 10, 1.1), "jitter"),
        ((3, 1, 10, math.nan), "jitter"),
    ],
)
def test_rejects_bad_arguments(args: tuple[float, float, float, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RetryPolicy(*args)  # type: ignore[arg-type]


def test_rejects_attempt_below_one() -> None:
    policy = make()
    with pytest.raises(ValueError, match="attempt"):
        policy.delay(0)
    with pytest.raises(ValueError, match="attempt"):
        policy.next_due_ms(0, 0, None)
