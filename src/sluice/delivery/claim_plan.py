"""Planning a claim: how many due messages a channel runner asks the journal for, and how many
of them may come from the lower lanes.

Pure: the runner's counts come in as numbers and its rate as a `Bucket` that is only read, so
a test drives the plan with a `TokenBucket` on a fake clock. A claim is bounded by

- the width and the claim-ahead (`prefetch`), less what is claimed or being claimed;
- one probe at a time while the breaker is half-open;
- batching: with work in flight, no claim below `claim_min` free places (unless an urgent
  message waits), since one claim per answer would cost a journal round trip per message;
- the largest claim the journal serves (`max_claim`);
- the tokens: what the bucket holds, plus CLAIM_HORIZON_SECONDS of this process's share of the
  rate, less the claimed messages still waiting for a token;
- for the lower lanes, the urgent reserve: they never fill the room an urgent message needs.

Examples:
    >>> from sluice.flow.rate import TokenBucket
    >>> bucket = TokenBucket(100, 10, clock=lambda: 0.0)
    >>> counts = ClaimCounts(width=8, prefetch=8, reserve=2, claimed=0, claimed_non_urgent=0,
    ...                      claiming=0, in_flight=0, claims_out=0)
    >>> plan_claim(counts, bucket, lower_lanes_room=counts.lower_lanes_room, claim_min=1,
    ...            max_claim=500, urgent_waiting=False, half_open=False)
    Claim(limit=16, non_urgent=14)
"""

from __future__ import annotations

import msgspec

from sluice.flow.rate import Bucket

#: How far ahead of the token bucket a claim may reach, in seconds of rate. Larger claims
#: amortise the journal round trip; smaller ones let a newly arrived urgent message overtake.
CLAIM_HORIZON_SECONDS = 0.1
#: Claim ahead of the free slots by what the channel sends in this many seconds (at least one
#: width): while those are sent, the next claim (a journal commit, some milliseconds under
#: load) is already on its way. A slow channel claims little ahead, a fast one up to
#: `max_claim`.
CLAIM_AHEAD_SECONDS = 0.05
#: Seconds over which the send rate that sizes the claim-ahead is measured.
RATE_WINDOW_SECONDS = 0.25
#: Most free slots a runner waits for before claiming again while it has work in flight.
CLAIM_MIN_CAP = 16


class ClaimCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Where a runner stands when it plans a claim."""

    width: int
    #: Messages claimed beyond the width, so the next claim's commit overlaps the sends.
    prefetch: int
    #: Slots of the width that the lower lanes never get (urgent only).
    reserve: int
    #: Messages claimed and not yet done, and those of them below urgent priority.
    claimed: int
    claimed_non_urgent: int
    #: Messages asked for by the claims on their way through the journal, and those claims.
    claiming: int
    claims_out: int
    #: Messages holding a send slot.
    in_flight: int

    @property
    def lower_lanes_room(self) -> int:
        """Messages below urgent priority that may still be claimed (the reserve kept)."""
        return self.width + self.prefetch - self.reserve - self.claimed_non_urgent - self.claiming


class Claim(msgspec.Struct, frozen=True):
    """Claim up to `limit` due messages, at most `non_urgent` of them below urgent."""

    limit: int
    non_urgent: int


class Wait(msgspec.Struct, frozen=True):
    """Claim nothing now: wait until the bucket holds `tokens`, or (0) until woken."""

    tokens: float = 0.0


#: Nothing to claim until an answer, an arrival or the idle poll wakes the runner.
WAIT_FOR_WAKE = Wait()


def plan_claim(
    counts: ClaimCounts,
    bucket: Bucket,
    *,
    lower_lanes_room: int,
    claim_min: int,
    max_claim: int,
    urgent_waiting: bool,
    half_open: bool,
) -> Claim | Wait:
    """The next claim of a runner whose breaker lets messages through.

    `lower_lanes_room` is `counts.lower_lanes_room` as the runner measured it for its look at
    whether the last claim came back empty, before it resized the claim-ahead."""
    room = counts.width + counts.prefetch - counts.claimed - counts.claiming
    if half_open:
        room = min(room, 1 - counts.claimed - counts.claiming)  # one probe at a time
    if room <= 0:
        return WAIT_FOR_WAKE
    busy = counts.claimed or counts.claims_out
    if room < claim_min and busy and not urgent_waiting:
        return WAIT_FOR_WAKE  # a few more answers first: claim in batches
    limit = min(room, max_claim)
    if bucket.rate > 0:
        # Claimed messages still waiting for a slot will take tokens before these.
        queued = counts.claimed + counts.claiming - counts.in_flight
        # The share: of a rate shared between processes, this one can count on its part.
        horizon = bucket.share * CLAIM_HORIZON_SECONDS
        affordable = bucket.available() + horizon - queued
        if affordable < 1:
            return Wait(1 + max(queued, 0))
        limit = min(limit, int(affordable))
    non_urgent = limit if half_open else lower_lanes_room
    return Claim(limit, max(0, min(limit, non_urgent)))


def urgent_claim_limit(counts: ClaimCounts, max_claim: int) -> int:
    """The size of a claim of urgent messages only, made while the bulk claims are on their
    way: at least one, beyond the claim-ahead if need be, since it goes first in any case."""
    room = counts.width + counts.prefetch - counts.claimed - counts.claiming
    return min(max(1, room), max_claim)


def claim_ahead(sent: int, elapsed_seconds: float, width: int, max_claim: int) -> int:
    """The claim-ahead for a channel that finished `sent` messages in `elapsed_seconds`:
    CLAIM_AHEAD_SECONDS of that rate, at least one width, at most `max_claim`."""
    rate = sent / elapsed_seconds
    return max(width, min(int(rate * CLAIM_AHEAD_SECONDS), max_claim))


def claim_min(width: int) -> int:
    """Free places a busy runner waits for before it claims again: an eighth of the width,
    at least one, at most CLAIM_MIN_CAP."""
    return max(1, min(width // 8, CLAIM_MIN_CAP))
