"""The channel runner: keeps one delivery channel exactly as busy as its limits allow.

Work is pulled, never pushed. The runner claims from the journal only as many due messages as
it has free slots (`width`) and tokens (`rate`) for, urgent first; a share of the width
(`urgent_reserve`) is never given to lower lanes, so an OTP does not wait behind a broadcast.
A message goes out on the transport's task-free path (`send_soon`: a callback when the
answer comes) while slots and tokens are free at once, otherwise in a task of its own that
waits for them; either way its outcome becomes a `Completion` handed to the completion stage,
which commits many at once.

Outcomes: sent → SENT. Throttled → the rate drops (AIMD) and the message is queued again
without counting the attempt. Transient → retried with exponential backoff and jitter until
`max_attempts` or expiry, then FAILED; consecutive transient failures open the breaker, which
parks the channel (messages stay queued, or move to the failover channel) until a probe
succeeds. Permanent → FAILED at once.

The arithmetic of a claim (`claim_plan`) and the judging of an answer (`outcomes`) are pure
functions; this module keeps the state they read and does the I/O around them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from sluice.config import ChannelConfig
from sluice.delivery.claim_plan import (
    RATE_WINDOW_SECONDS,
    Claim,
    ClaimCounts,
    claim_ahead,
    claim_min,
    plan_claim,
    urgent_claim_limit,
)
from sluice.delivery.latency import LatencyHistogram, LatencyStats
from sluice.delivery.outcomes import GIVE_UP, REFUSED, SENT, THROTTLED, judge, parked, requeue
from sluice.flow.breaker import BreakerState, BreakerStats, CircuitBreaker
from sluice.flow.rate import AdaptiveRate, Bucket, TokenBucket
from sluice.flow.retry import RetryPolicy
from sluice.flow.slots import PrioritySlots
from sluice.flow.stage import Stage, StageClosed
from sluice.journal.base import Completion, Journal, JournalError
from sluice.model import Message, Outcome, Priority, now_ms
from sluice.transports.base import SendResult, Transport

log = logging.getLogger("sluice.channel")

#: Claims a runner keeps on their way through the journal at once.
MAX_CLAIMS_IN_FLIGHT = 2
#: Longest sleep of an idle runner between looks at the journal (scheduled messages, retries).
IDLE_POLL_SECONDS = 1.0
#: How long a runner waits after the journal failed a call (it retried on its own first).
JOURNAL_RETRY_SECONDS = 1.0


class RunnerStats(msgspec.Struct, frozen=True):
    """What a channel runner tells of itself (for metrics and the status API)."""

    name: str
    #: Attempt outcomes since start: sent, failed (refused or given up), retried (a transient
    #: failure queued again), throttled (queued again, the attempt not counted).
    sent: int
    failed: int
    retried: int
    throttled: int
    #: Messages handed to the transport and not yet answered, and claimed and not yet done.
    in_flight: int
    claimed: int
    width: int
    #: The rate in force (messages/s, 0 = unlimited) after throttling, and the bucket's burst.
    rate: float
    burst: float
    breaker: BreakerStats
    #: Send latencies by outcome ("sent", "transient" …), of the outcomes seen so far.
    latency: dict[str, LatencyStats]


class ChannelRunner:
    def __init__(
        self,
        name: str,
        config: ChannelConfig,
        transport: Transport,
        journal: Journal,
        completions: Stage[Completion],
        *,
        owner: int,
        lease_ms: int,
        max_claim: int,
        on_failover: Callable[[str], None] = lambda channel: None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        bucket: Bucket | None = None,
        on_breaker_open: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.transport = transport
        self._journal = journal
        self._completions = completions
        self._owner = owner
        self._lease_ms = lease_ms
        self._max_claim = max_claim
        self._on_failover = on_failover
        self._clock = clock
        #: Send latencies, one histogram per `Outcome` (indexed by it).
        self._latency = tuple(LatencyHistogram() for _ in Outcome)
        burst = config.bucket_burst
        if config.rate > 0:
            self.adaptive = AdaptiveRate(
                ceiling=config.rate, floor=min(1.0, config.rate), clock=clock
            )
        else:  # unlimited until the peer first throttles; then AIMD from a modest start
            self.adaptive = AdaptiveRate(
                ceiling=0, start=max(10.0, config.width * 10.0), clock=clock
            )
        #: The channel's rate: this process's own, or one shared with others (Redis).
        self.bucket: Bucket = bucket or TokenBucket(config.rate, burst, clock)
        self.breaker = CircuitBreaker(
            config.breaker.failure_threshold,
            config.breaker.cooldown_seconds,
            config.breaker.max_cooldown_seconds,
            clock,
            on_open=on_breaker_open,
        )
        self.retry = RetryPolicy(
            config.retry.max_attempts,
            config.retry.base_seconds,
            config.retry.max_seconds,
            config.retry.jitter,
            rng or random.Random(),
        )
        self.reserve = int(config.width * config.urgent_reserve)  # rounded down
        self.slots = PrioritySlots(config.width, self.reserve)
        #: Messages claimed beyond the width, so the next claim's commit overlaps the sends.
        self._prefetch = config.width
        self._done_count = 0
        self._rate_since = clock()
        #: Messages holding a send slot, and messages claimed and not yet completed.
        self.in_flight = 0
        self.claimed = 0
        #: Ids of the messages claimed and not yet done: the leases the heartbeat renews.
        self.holding: set[int] = set()
        self.claimed_non_urgent = 0
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.throttled = 0
        self._kick = asyncio.Event()
        self._stopping = False
        self._urgent_waiting = False
        #: Claims on their way through the journal, the messages they ask for, and whether the
        #: last one found nothing due.
        self._claims_out = 0
        self._claiming = 0
        self._urgent_claim_out = False
        self._dry = False
        #: Claimed messages waiting for a slot, one lane per priority (urgent first).
        self._ready: tuple[deque[Message], ...] = tuple(deque() for _ in Priority)
        self._pumping = False
        self._pump_timer: asyncio.TimerHandle | None = None
        #: Set when the last claimed message is done (for `run` to return after `stop`).
        self._settled = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        #: Claim only when this many slots are free (unless idle or an urgent message waits):
        #: one claim per answer would cost a journal round trip per message.
        self._claim_min = claim_min(config.width)

    # ------------------------------------------------------------------ control

    def wake(self, urgent: bool = False) -> None:
        """New work may be due (an insert, a failover, a freed slot)."""
        if urgent:
            self._urgent_waiting = True
        self._kick.set()

    def stop(self) -> None:
        """Claim nothing more; `run` returns once in-flight sends finish."""
        self._stopping = True
        self._kick.set()

    def width_room(self) -> int:
        """Messages the runner may claim now: the width and the claim-ahead, less claimed."""
        return self.config.width + self._prefetch - self.claimed

    def stats(self) -> RunnerStats:
        """A snapshot, built when asked (a scrape), never on the way of a message."""
        return RunnerStats(
            self.name,
            self.sent,
            self.failed,
            self.retried,
            self.throttled,
            self.in_flight,
            self.claimed,
            self.config.width,
            self.bucket.rate,
            self.bucket.burst,
            self.breaker.stats(),
            {
                outcome.name.lower(): histogram.stats()
                for outcome, histogram in zip(Outcome, self._latency, strict=True)
                if any(histogram.counts)
            },
        )

    def _counts(self) -> ClaimCounts:
        return ClaimCounts(
            width=self.config.width,
            prefetch=self._prefetch,
            reserve=self.reserve,
            claimed=self.claimed,
            claimed_non_urgent=self.claimed_non_urgent,
            claiming=self._claiming,
            claims_out=self._claims_out,
            in_flight=self.in_flight,
        )

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            while not self._stopping:
                self._kick.clear()
                wait = await self._step(tg)
                if wait is not None and not self._stopping:
                    await self._idle(wait)
            while self.claimed or self._claims_out:  # claimed messages still go out
                self._settled.clear()
                await self._settled.wait()

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._kick.wait()
        except TimeoutError:
            pass

    async def _step(self, tg: asyncio.TaskGroup) -> float | None:
        """Start a claim of what can go soon; return how long to idle, or None to go on.

        Up to MAX_CLAIMS_IN_FLIGHT claims run at once, so one is always on its way through
        the journal while the last one's messages are sent."""
        if self.config.paused:
            return IDLE_POLL_SECONDS
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return await self._parked()
        if self._claims_out >= MAX_CLAIMS_IN_FLIGHT:
            if self._urgent_waiting and not self._urgent_claim_out:
                return self._claim_urgent(tg)
            return IDLE_POLL_SECONDS  # a claim's return wakes us
        # Lower lanes may never fill the claim-ahead room an urgent message needs.
        non_urgent = self._counts().lower_lanes_room
        if self._dry:  # the last claim found nothing due
            if self._claims_out:
                return IDLE_POLL_SECONDS
            self._dry = False
            if non_urgent < 1 and not self._urgent_waiting:
                # The lower lanes are full; a freed slot or an urgent arrival wakes us.
                return IDLE_POLL_SECONDS
            if not self._urgent_waiting:
                return await self._until_due(now_ms())
        self._size_prefetch()
        plan = plan_claim(
            self._counts(),
            self.bucket,
            lower_lanes_room=non_urgent,
            claim_min=self._claim_min,
            max_claim=self._max_claim,
            urgent_waiting=self._urgent_waiting,
            half_open=state is BreakerState.HALF_OPEN,
        )
        if not isinstance(plan, Claim):
            if not plan.tokens:
                return IDLE_POLL_SECONDS
            self._urgent_waiting = False
            return max(self.bucket.delay_for(plan.tokens), 0.001)
        self._urgent_waiting = False
        self._claims_out += 1
        self._claiming += plan.limit
        tg.create_task(self._claim(plan.limit, plan.non_urgent))
        return None

    def _claim_urgent(self, tg: asyncio.TaskGroup) -> float | None:
        """An urgent arrival does not wait for the bulk claims on their way: it gets a claim
        of its own, of urgent messages only."""
        self._urgent_waiting = False
        limit = urgent_claim_limit(self._counts(), self._max_claim)
        self._urgent_claim_out = True
        self._claims_out += 1
        self._claiming += limit
        tg.create_task(self._claim(limit, 0, urgent=True))
        return None

    async def _claim(self, limit: int, non_urgent: int, urgent: bool = False) -> None:
        try:
            batch = await self._journal.claim(
                self.name, limit, non_urgent, self._owner, now_ms(), self._lease_ms
            )
        except JournalError as exc:
            # The journal is down (it has retried already): hold this claim's place for a
            # while, so the channel waits instead of asking again at once.
            log.warning("channel %s: claim failed: %s", self.name, exc)
            await asyncio.sleep(JOURNAL_RETRY_SECONDS)
            batch = None
        finally:
            self._claims_out -= 1
            self._claiming -= limit
            if urgent:
                self._urgent_claim_out = False
            if not self._claims_out and not self.claimed:
                self._settled.set()
        if batch is None:
            self._kick.set()
            return
        if not batch:
            if urgent:
                return  # no urgent message (yet): the bulk claims go on as they were
            self._dry = True
            if not self._claims_out:
                self._kick.set()
            return
        ready = self._ready
        holding = self.holding
        for message in batch:
            holding.add(message.id)
            self.claimed += 1
            if message.priority != Priority.URGENT:
                self.claimed_non_urgent += 1
            ready[message.priority].append(message)
        self._dry = False
        self._pump()
        self._kick.set()

    def _size_prefetch(self) -> None:
        """Claim ahead by CLAIM_AHEAD_SECONDS of the rate measured over the last window."""
        now = self._clock()
        elapsed = now - self._rate_since
        if elapsed < RATE_WINDOW_SECONDS:
            return
        self._prefetch = claim_ahead(self._done_count, elapsed, self.config.width, self._max_claim)
        self._done_count = 0
        self._rate_since = now

    async def _until_due(self, now: int) -> float:
        try:
            due = await self._journal.next_due(self.name)
        except JournalError as exc:
            log.warning("channel %s: %s", self.name, exc)
            return JOURNAL_RETRY_SECONDS
        if due is None:
            return IDLE_POLL_SECONDS
        return min(IDLE_POLL_SECONDS, max(0.0, (due - now) / 1000))

    async def _parked(self) -> float:
        failover = self.config.failover
        if failover is not None:
            try:
                moved = await self._journal.reroute(self.name, failover, self._max_claim, now_ms())
            except JournalError as exc:
                log.warning("channel %s: failover failed: %s", self.name, exc)
                return JOURNAL_RETRY_SECONDS
            if moved:
                log.warning(
                    "channel %s parked: %d messages moved to %s", self.name, moved, failover
                )
                self._on_failover(failover)
                if moved == self._max_claim:
                    return 0.0
        retry_at = self.breaker.retry_at()
        wait = IDLE_POLL_SECONDS if retry_at is None else retry_at - self._clock()
        return min(max(wait, 0.001), IDLE_POLL_SECONDS)

    # ------------------------------------------------------------------ one message

    def _pump(self) -> None:
        """Send ready messages, highest lane first, while a slot and a token are free now.

        Most go out on the transport's task-free path (`send_soon`: a callback when the answer
        comes, and that callback pumps again), so a busy channel runs without a task per
        message. A message the transport cannot take that way, or any while the breaker is not
        closed, gets a task of its own (`_deliver`), which waits for what it needs."""
        if self._pumping:  # a `done` called from inside `send_soon`: the loop below goes on
            return
        self._pumping = True
        try:
            self._pump_lanes()
        finally:
            self._pumping = False

    def _pump_lanes(self) -> None:
        slots, bucket = self.slots, self.bucket
        for lane in self._ready:
            while lane:
                message = lane[0]
                if self.breaker.state is not BreakerState.CLOSED:
                    lane.popleft()
                    self._spawn(self._deliver(message))
                    continue
                priority = message.priority
                if not slots.try_acquire(priority):
                    return  # no slot for this lane, so none for the lanes below it
                if bucket.rate > 0 and not bucket.try_take():
                    slots.release(priority)
                    self._pump_later(bucket.delay_for(1))
                    return
                lane.popleft()
                self.in_flight += 1
                started = time.perf_counter()
                try:
                    accepted = self.transport.send_soon(
                        message, functools.partial(self._answered, message, started)
                    )
                except Exception:
                    log.exception("channel %s: transport raised", self.name)
                    accepted = False
                if not accepted:
                    self.in_flight -= 1
                    if bucket.rate > 0:
                        bucket.give_back()
                    slots.release(priority)
                    self._spawn(self._deliver(message))  # queues for its slot (first)

    def _pump_later(self, seconds: float) -> None:
        if self._pump_timer is None:
            loop = asyncio.get_running_loop()
            self._pump_timer = loop.call_later(max(seconds, 0.001), self._pump_timed)

    def _pump_timed(self) -> None:
        self._pump_timer = None
        self._pump()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._tasks is not None, "the runner is not running"
        self._tasks.create_task(coro)

    def _answered(self, message: Message, started: float, result: SendResult) -> None:
        """The end of a `send_soon`: judge, free the slot, hand the outcome on."""
        completion = self._outcome(message, started, result)
        self.in_flight -= 1
        self.slots.release(message.priority)
        self._finished(message)
        try:
            if not self._completions.offer(completion):
                self._spawn(self._completions.put(completion))
        except (StageClosed, RuntimeError):
            # Shut down without waiting for this answer: the message stays leased and the
            # gateway releases it to the queue (or the next start recovers it).
            log.debug("channel %s: outcome of %d after shutdown", self.name, message.id)

    def _finished(self, message: Message) -> None:
        """A claimed message is done (its slot, if it held one, is free again)."""
        self.holding.discard(message.id)
        priority = message.priority
        self.claimed -= 1
        self._done_count += 1
        if priority != Priority.URGENT:
            self.claimed_non_urgent -= 1
        if not self.claimed:
            self._settled.set()
        self._pump()
        # Wake the claim loop only when it would claim: once per batch, not per answer.
        if self.width_room() >= self._claim_min or not self.claimed:
            self._kick.set()

    async def _deliver(self, message: Message) -> None:
        priority = message.priority
        holding = False
        try:
            await self.slots.acquire(priority)
            holding = True
            self.in_flight += 1
            if self.bucket.rate > 0:
                delay = self.bucket.reserve()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not self.breaker.allow():
                failover = self.config.failover
                retry_at = self.breaker.retry_at()
                wait = 0.0 if retry_at is None else retry_at - self._clock()
                completion = parked(message, self.name, failover, wait, now_ms)
            else:
                started = time.perf_counter()
                try:
                    result = await self.transport.send(message)
                except Exception as exc:
                    log.exception("channel %s: transport raised", self.name)
                    result = SendResult(Outcome.TRANSIENT, detail=f"transport error: {exc!r}")
                completion = self._outcome(message, started, result)
        except asyncio.CancelledError:
            self.breaker.release_probe()
            raise
        finally:
            if holding:
                self.in_flight -= 1
                self.slots.release(priority)
            self._finished(message)
        if not self._completions.offer(completion):
            await self._completions.put(completion)

    def _outcome(self, message: Message, started: float, result: SendResult) -> Completion:
        """The completion for a transport's answer (sent at `started`, perf_counter)."""
        latency = time.perf_counter() - started
        self._latency[result.outcome].observe(latency)
        try:
            return self._judge(message, result, latency * 1000)
        except Exception:  # a bug here must not take the channel down with it
            log.exception("channel %s: judging an outcome failed", self.name)
            return requeue(message, self.name, 0.0, "internal error; retried", now_ms)

    def _judge(self, message: Message, result: SendResult, latency_ms: float) -> Completion:
        """Judge the answer (outcomes.py) and apply its verdict, as the table there says."""
        verdict, completion = judge(
            message,
            result,
            latency_ms,
            self.name,
            self.retry,
            now_ms,
        )
        if verdict is SENT or verdict is REFUSED:
            self.breaker.record_success()  # the peer is healthy; a refusal is about the message
            self.bucket.rate = self.adaptive.on_success()
            if verdict is SENT:
                self.sent += 1
            else:
                self.failed += 1
        elif verdict is THROTTLED:
            self.breaker.release_probe()
            self.throttled += 1
            if not self.transport.paces_itself:
                self.bucket.rate = self.adaptive.on_throttle()
        else:
            self.breaker.record_failure()
            if verdict is GIVE_UP:
                self.failed += 1
            else:
                self.retried += 1
        return completion
