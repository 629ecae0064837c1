"""How the SMSC simulator answers a submit_sm: window, TPS, faults and latency.

How a submit_sm (or data_sm) is answered, checked in this order:

0. A field check failing (``check_time_fields``, ``check_sar``; see `sluice.sim.smsc.checks`):
   its status at once.
1. More than ``max_window`` of this bind's submit_sm unanswered (counting those that arrived
   in the same read and are about to be answered): ``window_status`` at once.
2. ``tps`` > 0 and the bind's token bucket (``tps_burst`` tokens, 0 = max(1, tps / 10))
   empty: ESME_RTHROTTLED at once.
3. Destination in ``destinations_rejected``: ``reject_status``, after the latency.
4. One draw u from ``random.Random(seed)``, the ratios taken in this order:
   u < ``disconnect_ratio``: the connection is aborted, nothing answered (the client's window
   keeps the request); next ``garbage_ratio``: instead of the answer, a broken frame is sent
   (a command_length below 16 or above 16 MiB, then 12-63 random octets), which any client
   must treat as fatal; next ``error_ratio``: ``error_status`` after the latency; next
   ``reject_ratio``: ``reject_status`` after the latency; next ``late_ratio``: accepted, but
   answered after ``late_ms`` instead of the latency.
5. Otherwise accepted: a fresh message id (10 lower-case hex digits from a counter that a
   reset does not restart), answered after the latency.

The latency is ``latency_ms`` plus, by ``latency_distribution``: ``fixed`` nothing,
``uniform`` a draw from [0, ``latency_jitter_ms``], ``exponential`` a draw of mean
``latency_jitter_ms``. A zero latency answers in the same ``data_received`` turn, with no
timer, all answers of one read in one write. Delayed answers are grouped into 1 ms ticks, one
loop timer per tick, so they come out at most 1 ms late and batched as well.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from sluice.flow.rate import TokenBucket
from sluice.protocols.smpp import (
    REG_DLV_SMSC_RECEIPT_MASK,
    CommandStatus,
    DataSm,
    DataSmResp,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    encode,
)
from sluice.sim.smsc.checks import sar_status, time_fields_status
from sluice.sim.smsc.options import FAULT_RATIOS, SmscOptions
from sluice.sim.smsc.records import Accepted
from sluice.sim.smsc.stats import Counts
from sluice.sim.smsc.timeline import Timeline

if TYPE_CHECKING:
    from sluice.sim.smsc.session import EsmeLink

_RESPONSES: dict[type[Pdu], type[SubmitSmResp] | type[DataSmResp]] = {
    SubmitSm: SubmitSmResp,
    DataSm: DataSmResp,
}
# Garbage frames: a command_length no parser accepts (below the 16-octet header, or far above
# any sane maximum), then this many random octets.
_GARBAGE_HUGE_LENGTH = 0x01000000
_GARBAGE_TAIL = (12, 64)

#: Keeps an accepted message and draws its fate: (link, pdu, message id, answer time).
Accept = Callable[["EsmeLink", SubmitSm | DataSm, str, float], Accepted]
#: Schedules the receipts of a record: (record, answer time, time of the read).
ScheduleReceipts = Callable[[Accepted, float, float], None]


class AnswerPolicy:
    """The answer to each submit_sm, from the options in force (see the module docstring).

    The options are turned into plain numbers once (`apply`), so that answering reads a few
    attributes and draws at most twice; `answer` runs once per submit_sm.
    """

    def __init__(
        self,
        counts: Counts,
        rng: random.Random,
        accept: Accept,
        schedule_receipts: ScheduleReceipts,
        drop: Callable[[EsmeLink], None],
        emit: Callable[[EsmeLink, bytes], None],
    ) -> None:
        self._counts = counts
        self._rng = rng
        self._accept = accept
        self._schedule_receipts = schedule_receipts
        self._drop = drop
        self._emit = emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeline: Timeline | None = None
        self._next_id = 1
        self.apply(SmscOptions())

    def start(self, loop: asyncio.AbstractEventLoop, timeline: Timeline) -> None:
        self._loop = loop
        self._timeline = timeline

    def apply(self, options: SmscOptions) -> None:
        self._check_time_fields = options.check_time_fields
        self._check_sar = options.check_sar
        self._checks_on = options.check_time_fields or options.check_sar
        self._tps = options.tps
        self._tps_burst = options.tps_burst_tokens
        self._max_window = options.max_window
        self._window_status = options.window_status
        self._error_status = options.error_status
        self._reject_status = options.reject_status
        self._rejected_destinations = options.destinations_rejected
        # Cumulative thresholds of the one fault draw, in FAULT_RATIOS order.
        ratios = [getattr(options, name) for name in FAULT_RATIOS]
        self._fault_total = sum(ratios)
        thresholds = []
        running = 0.0
        for ratio in ratios:
            running += ratio
            thresholds.append(running)
        (
            self._disconnect_below,
            self._garbage_below,
            self._error_below,
            self._reject_below,
            self._late_below,
        ) = thresholds
        self._latency = options.latency_ms / 1000.0
        self._jitter = options.latency_jitter_ms / 1000.0
        self._distribution = options.latency_distribution
        self._latency_fixed = self._jitter == 0 or self._distribution == "fixed"
        self._late = options.late_ms / 1000.0

    def new_bucket(self) -> TokenBucket | None:
        """A bind's TPS bucket, full; None when ``tps`` is off or the SMSC is not started."""
        if self._tps <= 0 or self._loop is None:
            return None
        return TokenBucket(self._tps, self._tps_burst, self._loop.time)

    def answer(self, link: EsmeLink, pdu: SubmitSm | DataSm, now: float) -> int:
        """Handle one submit_sm/data_sm; 1 when answered in this turn, 0 if later, -1 if
        the connection was dropped."""
        counts = self._counts
        counts.submits += 1
        link.submits += 1
        seq = pdu.sequence_number
        resp_cls = _RESPONSES[type(pdu)]
        # Most submit_sm have no TLVs and empty time fields: nothing to check, no call.
        if (
            self._checks_on
            and (
                pdu.tlvs
                or (type(pdu) is SubmitSm and (pdu.schedule_delivery_time or pdu.validity_period))
            )
            and (invalid := self._invalid_status(pdu))
        ):
            counts.invalid_fields += 1
            link.out.append(encode(resp_cls(seq, invalid)))
            return 0
        if self._max_window and link.outstanding >= self._max_window:
            counts.throttled_window += 1
            link.out.append(encode(resp_cls(seq, self._window_status)))
            return 0
        bucket = link.bucket
        if bucket is not None and not bucket.try_take():
            counts.throttled_tps += 1
            link.out.append(encode(resp_cls(seq, CommandStatus.ESME_RTHROTTLED)))
            return 0
        status = 0
        late = False
        rejected = False
        if self._rejected_destinations and pdu.destination_addr in self._rejected_destinations:
            status = self._reject_status
            rejected = True
        elif self._fault_total:
            draw = self._rng.random()
            if draw < self._disconnect_below:
                counts.disconnects += 1
                self._drop(link)
                return -1
            if draw < self._garbage_below:
                counts.garbage += 1
                link.out.append(self._garbage())
                return 0
            if draw < self._error_below:
                status = self._error_status
            elif draw < self._reject_below:
                status = self._reject_status
                rejected = True
            elif draw < self._late_below:
                late = True
        delay = self._latency if self._latency_fixed else self._draw_latency()
        record = None
        if status:
            if rejected:
                counts.rejected += 1
            else:
                counts.errors += 1
            data = encode(resp_cls(seq, status))
        else:
            message_id = f"{self._next_id:010x}"
            self._next_id += 1
            counts.accepted += 1
            if late:
                counts.late += 1
                delay = self._late
            record = self._accept(link, pdu, message_id, now + delay)
            data = encode(resp_cls(seq, 0, message_id))
        outstanding = link.outstanding + 1
        link.outstanding = outstanding
        if outstanding > link.max_outstanding:
            link.max_outstanding = outstanding
        if delay <= 0:
            link.out.append(data)
            if record is not None and pdu.registered_delivery & REG_DLV_SMSC_RECEIPT_MASK:
                self._schedule_receipts(record, now, now)
            return 1
        timeline = self._timeline
        assert timeline is not None
        timeline.at(now + delay, self._answer_later, (link, data, now))
        if record is not None and pdu.registered_delivery & REG_DLV_SMSC_RECEIPT_MASK:
            self._schedule_receipts(record, now + delay, now)
        return 0

    def _invalid_status(self, pdu: SubmitSm | DataSm) -> int:
        if self._check_time_fields and type(pdu) is SubmitSm:
            status = time_fields_status(pdu)
            if status:
                return status
        return sar_status(pdu) if self._check_sar else 0

    def _draw_latency(self) -> float:
        if self._distribution == "uniform":
            return self._latency + self._rng.uniform(0.0, self._jitter)
        return self._latency + self._rng.expovariate(1.0 / self._jitter)

    def _garbage(self) -> bytes:
        rng = self._rng
        if rng.random() < 0.5:
            length = rng.randrange(0, 16)
        else:
            length = rng.randrange(_GARBAGE_HUGE_LENGTH, 0x100000000)
        return length.to_bytes(4, "big") + rng.randbytes(rng.randrange(*_GARBAGE_TAIL))

    def _answer_later(self, item: tuple[EsmeLink, bytes, float]) -> None:
        link, data, received = item
        if not link.is_open or link.closing:
            return
        link.outstanding -= 1
        counts = self._counts
        loop = self._loop
        assert loop is not None
        counts.delayed_answers += 1
        counts.answer_delay_seconds += loop.time() - received
        self._emit(link, data)
