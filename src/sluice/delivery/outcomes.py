"""Judging a transport's answer: what becomes of the message, and what the channel learns.

Pure: no I/O, no limits touched; the time comes from the `now_ms` clock passed in, so a
test drives it with a fake one. The channel runner applies the verdict to its breaker, its
rate and its tallies, in the order of this table:

=============  ==================================  ==============  ===========  =========
verdict        the message                         breaker         rate (AIMD)  tally
=============  ==================================  ==============  ===========  =========
SENT           SENT                                success         success      sent
REFUSED        FAILED (permanent)                  success [1]_    success      failed
THROTTLED      QUEUED after Retry-After, uncounted release probe   throttle     throttled
UNATTEMPTED    QUEUED after the base retry delay,  failure         —            retried
               uncounted
RETRY          QUEUED at the backoff               failure         —            retried
GIVE_UP        FAILED (attempts spent or expiry)   failure         —            failed
=============  ==================================  ==============  ===========  =========

.. [1] The peer answered, so it is healthy; a refusal is about the message.

Examples:
    >>> from sluice.flow.retry import RetryPolicy
    >>> from sluice.model import Message, Outcome, Priority
    >>> from sluice.transports.base import SendResult
    >>> message = Message(7, "acme", "sms", "+15550100", "hi", attempts=1)
    >>> retry = RetryPolicy(3, base_seconds=2, max_seconds=60, jitter=0)
    >>> answer = SendResult(Outcome.TRANSIENT, detail="HTTP 503")
    >>> verdict, completion = judge(message, answer, 12.5, "sms", retry, lambda: 1_000)
    >>> verdict, completion.state.name, completion.due_at
    (<Verdict.RETRY: 5>, 'QUEUED', 3000)
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from sluice.flow.retry import RetryPolicy
from sluice.journal.base import Completion
from sluice.model import Message, Outcome, State
from sluice.transports.base import SendResult


class Verdict(enum.Enum):
    """What an answer means for the channel; see the module's table."""

    SENT = 1
    REFUSED = 2
    THROTTLED = 3
    UNATTEMPTED = 4
    RETRY = 5
    GIVE_UP = 6


# Every answer is judged, and reading an Enum member through its class costs 55-90 ns on
# Python 3.11 (a global and a slot cost ~10): the members compared per answer are read
# from module constants, here and in the runner.
SENT = Verdict.SENT
REFUSED = Verdict.REFUSED
THROTTLED = Verdict.THROTTLED
UNATTEMPTED = Verdict.UNATTEMPTED
RETRY = Verdict.RETRY
GIVE_UP = Verdict.GIVE_UP
_OUTCOME_SENT = Outcome.SENT
_OUTCOME_PERMANENT = Outcome.PERMANENT
_OUTCOME_THROTTLED = Outcome.THROTTLED
_STATE_SENT = State.SENT
_STATE_FAILED = State.FAILED
_STATE_QUEUED = State.QUEUED


def judge(
    message: Message,
    result: SendResult,
    latency_ms: float,
    channel: str,
    retry: RetryPolicy,
    now_ms: Callable[[], int],
) -> tuple[Verdict, Completion]:
    """The verdict on `result`, the answer to `message` on `channel`, and the completion
    that records it. `retry` schedules the next attempt of a transient failure; one that
    never reached the peer goes again after the retry policy's `base_seconds`."""
    outcome = result.outcome
    if outcome is _OUTCOME_SENT or outcome is _OUTCOME_PERMANENT:
        sent = outcome is _OUTCOME_SENT
        return SENT if sent else REFUSED, Completion(
            message.id,
            _STATE_SENT if sent else _STATE_FAILED,
            channel,
            message.attempts,
            outcome,
            latency_ms,
            result.provider_id,
            result.detail,
            parts=result.parts,
        )
    if outcome is _OUTCOME_THROTTLED:
        wait = result.retry_after if result.retry_after is not None else 0.0
        return THROTTLED, Completion(
            message.id,
            _STATE_QUEUED,
            channel,
            message.attempts,
            outcome,
            latency_ms,
            result.provider_id,
            result.detail or "throttled",
            now_ms() + int(max(0.0, wait) * 1000),
            uncount=True,
        )
    if not result.attempted:  # the channel is down, not the message: keep its attempts
        return UNATTEMPTED, Completion(
            message.id,
            _STATE_QUEUED,
            channel,
            message.attempts,
            outcome,
            latency_ms,
            detail=result.detail or "not attempted",
            due_at=now_ms() + int(retry.base_seconds * 1000),
            uncount=True,
        )
    now = now_ms()
    due = retry.next_due_ms(message.attempts, now, message.expires_at)
    if result.retry_after is not None and due is not None:
        due = max(due, now + int(result.retry_after * 1000))
    if due is None:
        why = (
            "expires before the next attempt"
            if message.attempts < retry.max_attempts
            else f"gave up after {message.attempts} attempts"
        )
        return GIVE_UP, Completion(
            message.id,
            _STATE_FAILED,
            channel,
            message.attempts,
            outcome,
            latency_ms,
            result.provider_id,
            f"{result.detail}; {why}",
        )
    return RETRY, Completion(
        message.id,
        _STATE_QUEUED,
        channel,
        message.attempts,
        outcome,
        latency_ms,
        result.provider_id,
        result.detail,
        due,
    )


def requeue(
    message: Message, channel: str, wait_seconds: float, why: str, now_ms: Callable[[], int]
) -> Completion:
    """Queue `message` again in `wait_seconds` without counting the attempt (the breaker is
    open, or judging the answer failed)."""
    return Completion(
        message.id,
        State.QUEUED,
        channel,
        message.attempts,
        Outcome.THROTTLED,
        detail=why,
        due_at=now_ms() + int(max(0.0, wait_seconds) * 1000),
        uncount=True,
    )


def parked(
    message: Message,
    channel: str,
    failover: str | None,
    wait_seconds: float,
    now_ms: Callable[[], int],
) -> Completion:
    """The completion of a message that found its channel's breaker open: handed to the
    failover channel now, or queued again for when the breaker half-opens."""
    if failover is not None:
        return Completion(
            message.id,
            State.QUEUED,
            channel,
            message.attempts,
            Outcome.THROTTLED,
            detail=f"failover from {channel}: breaker open",
            due_at=now_ms(),
            reroute_to=failover,
            uncount=True,
        )
    return requeue(message, channel, wait_seconds, "breaker open", now_ms)
