"""What the SMSC simulator counts: the counters its parts share, and the snapshots it reports
(`SmscSimulator.stats`, ``GET /_smsc/stats``): binds, submit_sm by outcome, receipts and MO by
outcome, outstanding submit_sm per bind (now and at most), and arrivals per wall-clock second
per bind and in total over the last `ARRIVAL_WINDOW_SECONDS`."""

from __future__ import annotations

import dataclasses

import msgspec

from sluice.sim.arrivals import ARRIVAL_WINDOW_SECONDS

__all__ = ["ARRIVAL_WINDOW_SECONDS", "BindStats", "Counts", "SmscStats"]


@dataclasses.dataclass(slots=True)
class Counts:
    """Every counter a reset zeroes; one object for the simulator's lifetime, shared by its
    parts (a reset zeroes it in place, so none holds a stale one)."""

    accepted: int = 0
    answer_delay_seconds: float = 0.0
    bad_sequence_numbers: int = 0
    bind_timeouts: int = 0
    binds_refused: int = 0
    binds_total: int = 0
    delayed_answers: int = 0
    disconnects: int = 0
    enquire_link_timeouts: int = 0
    enquire_links_sent: int = 0
    errors: int = 0
    garbage: int = 0
    invalid_fields: int = 0
    late: int = 0
    max_outstanding: int = 0
    mo_acked: int = 0
    mo_refused: int = 0
    mo_sent: int = 0
    mo_unanswered: int = 0
    protocol_errors: int = 0
    queries: int = 0
    receipts_abandoned: int = 0
    receipts_acked: int = 0
    receipts_dropped: int = 0
    receipts_refused: int = 0
    receipts_requeued: int = 0
    receipts_retried: int = 0
    receipts_sent: int = 0
    rejected: int = 0
    submits: int = 0
    throttled_tps: int = 0
    throttled_window: int = 0

    def zero(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, field.default)


class BindStats(msgspec.Struct, kw_only=True, frozen=True):
    """One open connection, bound or not."""

    #: Connection number, counting from 1 for the simulator's lifetime.
    number: int
    peer: str
    #: ``transmitter``, ``receiver``, ``transceiver``, or ``""`` while not bound.
    bind_type: str
    system_id: str
    #: submit_sm and data_sm received on this connection, whatever the answer.
    submits: int
    #: submit_sm accepted or refused but not answered yet.
    outstanding: int
    max_outstanding: int
    #: deliver_sm (receipts, MO) sent on this connection and not answered yet.
    deliveries_unanswered: int
    #: Arrivals in each wall-clock second, oldest first, from the bind (or the reset) or at
    #: most `ARRIVAL_WINDOW_SECONDS` back; the last entry is the current, partial second.
    arrivals_per_second: list[int]
    arrivals_last_second: int


class SmscStats(msgspec.Struct, kw_only=True, frozen=True):
    """A snapshot of what the SMSC did since it started or was last reset."""

    connections: int
    #: Binds open now, in all and by type.
    binds: int
    binds_by_type: dict[str, int]
    #: Successful binds since the start (or reset), and binds refused.
    binds_total: int
    binds_refused: int
    #: submit_sm and data_sm received, whatever the answer.
    submits: int
    accepted: int
    throttled_window: int
    throttled_tps: int
    errors: int
    rejected: int
    disconnects: int
    late: int
    garbage: int
    queries: int
    #: Requests refused as unsupported or not allowed in the bind state, responses nobody
    #: asked for, and broken frames.
    protocol_errors: int
    #: submit_sm and data_sm refused by a field check (time fields, SAR TLVs), and requests
    #: answered generic_nack for a sequence_number out of 1..0x7FFFFFFF
    #: (`sluice.sim.smsc.checks`).
    invalid_fields: int
    bad_sequence_numbers: int
    #: Connections closed for not binding within ``bind_timeout_ms``; enquire_link sent to
    #: silent binds, and binds closed for leaving one unanswered.
    bind_timeouts: int
    enquire_links_sent: int
    enquire_link_timeouts: int
    receipts_sent: int
    receipts_acked: int
    receipts_refused: int
    receipts_retried: int
    receipts_abandoned: int
    receipts_dropped: int
    receipts_requeued: int
    #: Receipts waiting for a receiver now, over all accounts.
    receipts_pending: int
    #: MO parts (deliver_sm) sent, answered ESME_ROK, answered with an error, and lost with
    #: their connection before an answer.
    mo_sent: int
    mo_acked: int
    mo_refused: int
    mo_unanswered: int
    #: The most submit_sm one bind had unanswered at once.
    max_outstanding: int
    #: Mean time from a submit_sm's arrival to its answer's write, over the answers that
    #: were delayed (latency_ms > 0): what the link really had, timer precision included.
    answer_delay_ms: float
    #: Accepted messages in the record now (at most ``record_limit``).
    recorded: int
    arrivals_per_second: list[int]
    arrivals_last_second: int
    by_bind: list[BindStats]

    def summary(self) -> str:
        """One line for a terminal, e.g. ``binds 2 submits 1200 (400/s) accepted 1150 ...``."""
        last_full = self.arrivals_per_second[-2] if len(self.arrivals_per_second) > 1 else 0
        return (
            f"binds {self.binds} submits {self.submits} ({last_full}/s) "
            f"accepted {self.accepted} throttled {self.throttled_window}+{self.throttled_tps} "
            f"errors {self.errors} rejected {self.rejected} disconnects {self.disconnects} "
            f"late {self.late} garbage {self.garbage} max-outstanding {self.max_outstanding} "
            f"receipts {self.receipts_acked}/{self.receipts_sent} acked "
            f"(pending {self.receipts_pending}, dropped {self.receipts_dropped}) "
            f"mo {self.mo_acked}/{self.mo_sent} acked"
        )
