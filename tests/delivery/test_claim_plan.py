"""Planning a claim: free places, tokens, the urgent reserve and the claim-ahead, on a fake
clock."""

from __future__ import annotations

from fake_clock import FakeClock
from sluice.delivery.claim_plan import (
    CLAIM_AHEAD_SECONDS,
    CLAIM_HORIZON_SECONDS,
    CLAIM_MIN_CAP,
    WAIT_FOR_WAKE,
    Claim,
    ClaimCounts,
    Wait,
    claim_ahead,
    claim_min,
    plan_claim,
    urgent_claim_limit,
)
from sluice.flow.rate import Bucket, TokenBucket

UNLIMITED = TokenBucket(0, 1, clock=FakeClock())


def counts(**changes: int) -> ClaimCounts:
    fields = {
        "width": 10,
        "prefetch": 10,
        "reserve": 1,
        "claimed": 0,
        "claimed_non_urgent": 0,
        "claiming": 0,
        "claims_out": 0,
        "in_flight": 0,
    }
    fields.update(changes)
    return ClaimCounts(**fields)


def plan(
    c: ClaimCounts,
    bucket: Bucket = UNLIMITED,
    *,
    claim_min: int = 2,
    max_claim: int = 500,
    urgent_waiting: bool = False,
    half_open: bool = False,
) -> Claim | Wait:
    return plan_claim(
        c,
        bucket,
        lower_lanes_room=c.lower_lanes_room,
        claim_min=claim_min,
        max_claim=max_claim,
        urgent_waiting=urgent_waiting,
        half_open=half_open,
    )


def test_an_idle_unlimited_channel_claims_its_width_and_claim_ahead() -> None:
    # Twenty places; the lower lanes leave the one urgent slot of the reserve.
    assert plan(counts()) == Claim(20, 19)


def test_what_is_claimed_or_being_claimed_takes_room() -> None:
    assert plan(counts(claimed=5, claimed_non_urgent=5, claims_out=1)) == Claim(15, 14)
    assert plan(counts(claiming=6, claims_out=1)) == Claim(14, 13)


def test_the_lower_lanes_never_fill_the_urgent_reserve() -> None:
    # 19 of 20 claimed, all below urgent: one place left, and it is the reserve's.
    c = counts(claimed=19, claimed_non_urgent=19, claims_out=0)
    assert c.lower_lanes_room == 0
    assert plan(c, claim_min=1) == Claim(1, 0)


def test_no_room_no_claim() -> None:
    assert plan(counts(claimed=20, claimed_non_urgent=20)) is WAIT_FOR_WAKE


def test_a_busy_channel_claims_in_batches_unless_an_urgent_message_waits() -> None:
    c = counts(claimed=19, claimed_non_urgent=10)  # one place free, work in flight
    assert plan(c, claim_min=4) is WAIT_FOR_WAKE
    assert plan(c, claim_min=4, urgent_waiting=True) == Claim(1, 1)
    # Nothing in flight: even a small claim goes, there is nothing to batch with.
    assert plan(counts(width=1, prefetch=1, reserve=0), claim_min=4) == Claim(2, 2)


def test_the_journal_limits_a_claim() -> None:
    assert plan(counts(width=400, prefetch=400), max_claim=500) == Claim(500, 500)


def test_half_open_lets_one_probe_claim() -> None:
    assert plan(counts(), half_open=True) == Claim(1, 1)
    assert plan(counts(claimed=1, claimed_non_urgent=1), half_open=True) is WAIT_FOR_WAKE


def test_tokens_bound_the_claim_with_a_horizon_of_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=5, clock=clock)
    horizon = int(50 * CLAIM_HORIZON_SECONDS)  # 5 tokens' worth of the rate ahead
    assert plan(counts(), bucket) == Claim(5 + horizon, 5 + horizon)
    for _ in range(5):
        assert bucket.try_take()
    assert plan(counts(), bucket) == Claim(horizon, horizon)  # only the horizon left


def test_claimed_messages_waiting_for_tokens_come_first() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    assert bucket.try_take(2)
    # One claimed and not sent yet: it takes the horizon's one token.
    c = counts(claimed=1, claimed_non_urgent=1)
    assert plan(c, bucket, claim_min=1) == Wait(2)
    clock.advance(0.2)  # 2 more tokens
    assert plan(c, bucket, claim_min=1) == Claim(2, 2)
    # Once it holds a slot it has its token: it no longer counts against the claim.
    assert plan(counts(claimed=1, claimed_non_urgent=1, in_flight=1), bucket) == Claim(3, 3)


def test_a_shared_rate_counts_on_this_process_share_only() -> None:
    class HalfShare(TokenBucket):
        @property
        def share(self) -> float:
            return self.rate / 2

    bucket = HalfShare(rate=100, burst=1, clock=FakeClock())
    # One token now, plus 0.1 s of this process's 50/s.
    assert plan(counts(), bucket) == Claim(6, 6)


def test_the_plan_only_reads_the_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    plan(counts(), bucket)
    plan(counts(), bucket)
    assert bucket.available() == 10


def test_lower_lanes_room_as_measured_before_the_claim_ahead_grew() -> None:
    before = counts(prefetch=10)
    after = counts(prefetch=40)
    got = plan_claim(
        after,
        UNLIMITED,
        lower_lanes_room=before.lower_lanes_room,
        claim_min=1,
        max_claim=500,
        urgent_waiting=False,
        half_open=False,
    )
    assert got == Claim(50, 19)


def test_an_urgent_claim_reaches_beyond_the_claim_ahead() -> None:
    assert urgent_claim_limit(counts(claimed=20, claimed_non_urgent=20), 500) == 1
    assert urgent_claim_limit(counts(claimed=5), 500) == 15
    assert urgent_claim_limit(counts(width=900, prefetch=900), 500) == 500


def test_claim_ahead_follows_the_rate_measured() -> None:
    # 10,000 answers in 0.25 s: 40,000/s, of which CLAIM_AHEAD_SECONDS' worth.
    assert claim_ahead(10_000, 0.25, 32, 5_000) == int(40_000 * CLAIM_AHEAD_SECONDS)
    assert claim_ahead(10, 0.25, 32, 5_000) == 32  # at least one width
    assert claim_ahead(10**6, 0.25, 32, 500) == 500  # at most what the journal serves


def test_claim_min_is_an_eighth_of_the_width_within_bounds() -> None:
    assert claim_min(1) == 1
    assert claim_min(64) == 8
    assert claim_min(10_000) == CLAIM_MIN_CAP
