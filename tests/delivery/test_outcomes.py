"""Judging a transport's answer: the verdict and the completion, on a fake clock."""

from __future__ import annotations

import random

import pytest

from fake_clock import FakeClock
from sluice.delivery.outcomes import Verdict, judge, parked, requeue
from sluice.flow.retry import RetryPolicy
from sluice.model import Message, Outcome, State
from sluice.transports.base import SendResult

CHANNEL = "sms"
BASE_SECONDS = 2.0


def message(attempts: int = 1, expires_at: int | None = None) -> Message:
    return Message(42, "acme", CHANNEL, "+15550100", "hi", attempts=attempts, expires_at=expires_at)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def now_ms_of(clock: FakeClock) -> int:
    return int(clock() * 1000)


def retry_policy(max_attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts, BASE_SECONDS, 60, jitter=0, rng=random.Random(1))


def test_sent_is_final_and_keeps_the_provider_id_and_parts(clock: FakeClock) -> None:
    verdict, c = judge(
        message(),
        SendResult(Outcome.SENT, provider_id="p-1", detail="ok", parts=("p-1", "p-2")),
        12.5,
        CHANNEL,
        retry_policy(),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.SENT
    assert (c.message_id, c.state, c.channel, c.attempt, c.outcome) == (
        42,
        State.SENT,
        CHANNEL,
        1,
        Outcome.SENT,
    )
    assert (c.latency_ms, c.provider_id, c.detail, c.parts, c.uncount) == (
        12.5,
        "p-1",
        "ok",
        ("p-1", "p-2"),
        False,
    )


def test_permanent_is_refused_at_once_whatever_the_attempts_left(clock: FakeClock) -> None:
    verdict, c = judge(
        message(attempts=1),
        SendResult(Outcome.PERMANENT, detail="HTTP 400"),
        3.0,
        CHANNEL,
        retry_policy(max_attempts=10),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.REFUSED
    assert (c.state, c.outcome, c.detail, c.due_at) == (
        State.FAILED,
        Outcome.PERMANENT,
        "HTTP 400",
        0,
    )


def test_throttled_is_queued_after_retry_after_without_counting(clock: FakeClock) -> None:
    now = now_ms_of(clock)
    verdict, c = judge(
        message(attempts=2),
        SendResult(Outcome.THROTTLED, provider_id="p", retry_after=1.5),
        1.0,
        CHANNEL,
        retry_policy(),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.THROTTLED
    assert (c.state, c.outcome, c.uncount, c.attempt) == (State.QUEUED, Outcome.THROTTLED, True, 2)
    assert (c.due_at, c.detail, c.provider_id) == (now + 1500, "throttled", "p")


def test_throttled_without_retry_after_is_due_now(clock: FakeClock) -> None:
    verdict, c = judge(
        message(),
        SendResult(Outcome.THROTTLED, detail="429"),
        1.0,
        CHANNEL,
        retry_policy(),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.THROTTLED
    assert (c.due_at, c.detail) == (now_ms_of(clock), "429")


def test_unattempted_keeps_the_attempts_and_waits_the_base_delay(clock: FakeClock) -> None:
    verdict, c = judge(
        message(attempts=3),  # the last attempt: an attempted failure would give up
        SendResult(Outcome.TRANSIENT, attempted=False),
        0.1,
        CHANNEL,
        retry_policy(max_attempts=3),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.UNATTEMPTED
    assert (c.state, c.outcome, c.uncount) == (State.QUEUED, Outcome.TRANSIENT, True)
    assert (c.due_at, c.detail) == (now_ms_of(clock) + 2000, "not attempted")


def test_transient_retries_with_exponential_backoff(clock: FakeClock) -> None:
    dues = []
    for attempts in (1, 2, 3):
        verdict, c = judge(
            message(attempts=attempts),
            SendResult(Outcome.TRANSIENT, detail="HTTP 503"),
            5.0,
            CHANNEL,
            retry_policy(max_attempts=4),
            lambda: now_ms_of(clock),
        )
        assert verdict is Verdict.RETRY
        assert (c.state, c.detail, c.uncount) == (State.QUEUED, "HTTP 503", False)
        dues.append(c.due_at - now_ms_of(clock))
    assert dues == [2000, 4000, 8000]


def test_retry_after_pushes_the_backoff_back(clock: FakeClock) -> None:
    _, c = judge(
        message(),
        SendResult(Outcome.TRANSIENT, retry_after=30),
        5.0,
        CHANNEL,
        retry_policy(),
        lambda: now_ms_of(clock),
    )
    assert c.due_at == now_ms_of(clock) + 30_000


def test_gives_up_after_the_last_attempt(clock: FakeClock) -> None:
    verdict, c = judge(
        message(attempts=3),
        SendResult(Outcome.TRANSIENT, detail="HTTP 503"),
        5.0,
        CHANNEL,
        retry_policy(max_attempts=3),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.GIVE_UP
    assert (c.state, c.detail) == (State.FAILED, "HTTP 503; gave up after 3 attempts")


def test_gives_up_when_the_message_expires_before_the_next_attempt(clock: FakeClock) -> None:
    expires = now_ms_of(clock) + 1_000  # the next attempt would be in 2 s
    verdict, c = judge(
        message(attempts=1, expires_at=expires),
        SendResult(Outcome.TRANSIENT, detail="timed out"),
        5.0,
        CHANNEL,
        retry_policy(),
        lambda: now_ms_of(clock),
    )
    assert verdict is Verdict.GIVE_UP
    assert c.detail == "timed out; expires before the next attempt"


def test_the_clock_is_read_when_judging(clock: FakeClock) -> None:
    result = SendResult(Outcome.THROTTLED, retry_after=1)
    _, first = judge(message(), result, 1.0, CHANNEL, retry_policy(), lambda: now_ms_of(clock))
    clock.advance(10)
    _, later = judge(message(), result, 1.0, CHANNEL, retry_policy(), lambda: now_ms_of(clock))
    assert later.due_at - first.due_at == 10_000


def test_requeue_does_not_count_the_attempt(clock: FakeClock) -> None:
    c = requeue(message(attempts=2), CHANNEL, 0.25, "breaker open", lambda: now_ms_of(clock))
    assert (c.state, c.outcome, c.uncount, c.attempt) == (State.QUEUED, Outcome.THROTTLED, True, 2)
    assert (c.due_at, c.detail) == (now_ms_of(clock) + 250, "breaker open")
    past = requeue(message(), CHANNEL, -3.0, "late", lambda: now_ms_of(clock))
    assert past.due_at == now_ms_of(clock)  # a retry time already passed: due now


def test_parked_message_goes_to_the_failover_now(clock: FakeClock) -> None:
    c = parked(message(), CHANNEL, "sms-backup", 30.0, lambda: now_ms_of(clock))
    assert (c.state, c.reroute_to, c.due_at, c.uncount) == (
        State.QUEUED,
        "sms-backup",
        now_ms_of(clock),
        True,
    )
    assert c.detail == "failover from sms: breaker open"


def test_parked_message_without_failover_waits_for_the_half_open(clock: FakeClock) -> None:
    c = parked(message(), CHANNEL, None, 30.0, lambda: now_ms_of(clock))
    assert (c.reroute_to, c.due_at, c.detail) == (
        None,
        now_ms_of(clock) + 30_000,
        "breaker open",
    )
