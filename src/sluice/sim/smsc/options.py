"""What the SMSC simulator does: its options, checked so that a bad value names its field.

`SmscOptions` is the whole configuration of `sluice.sim.smsc.SmscSimulator`; every field can
be changed while it runs (``SmscSimulator.configure``, ``POST /_smsc/config``). The meaning of
each field is on the field; how they combine (which check wins, when the latency is drawn) is
in the `sluice.sim.smsc.policy` and `sluice.sim.smsc.receipts` module docstrings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from sluice.protocols.smpp import CommandStatus
from sluice.protocols.smpp.receipt import MESSAGE_STATES
from sluice.sim.options import check_number, with_changes

#: SMPP v3.4 section 4.1: system_id is a C-Octet String of at most 16 octets, password of 9,
#: both NUL included.
MAX_SYSTEM_ID_LENGTH = 15
MAX_PASSWORD_LENGTH = 8
#: submit_sm destination_addr is at most 21 octets with its NUL (section 4.4.1).
MAX_ADDRESS_LENGTH = 20
#: command_status is four octets; 0 is success, so a refusal is 1 and up.
MAX_COMMAND_STATUS = 0xFFFFFFFF

LatencyDistribution = Literal["fixed", "uniform", "exponential"]

#: The receipt states a simulator can report, as 7-letter receipt ``stat`` codes.
RECEIPT_STATES = tuple(MESSAGE_STATES.values())
#: Fault ratios drawn from one number per submit_sm, in this order (see the module docstring
#: of `sluice.sim.smsc.policy`); together they may not exceed 1.
FAULT_RATIOS = ("disconnect_ratio", "garbage_ratio", "error_ratio", "reject_ratio", "late_ratio")
#: The options that are true or false.
_SWITCHES = (
    "close_on_bind_failure",
    "bind_tlvs_for_v33",
    "check_sequence_numbers",
    "check_time_fields",
    "check_sar",
    "receipt_enroute",
)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {bounds}, got {value!r}")


def _check_status(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_COMMAND_STATUS
    ):
        raise ValueError(
            f"{name}: expected a non-zero command_status such as "
            f"0x{CommandStatus.ESME_RTHROTTLED:X} (ESME_RTHROTTLED), got {value!r}"
        )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")


def _check_word(name: str, value: object, max_length: int, *, empty: bool = False) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    if not value.isascii() or "\0" in value or len(value) > max_length or not (empty or value):
        least = 0 if empty else 1
        raise ValueError(
            f"{name}: expected {least} to {max_length} ASCII characters without NUL, got {value!r}"
        )


def _default_accounts() -> dict[str, str]:
    return {"sluice": "secret"}


def _default_receipt_states() -> dict[str, float]:
    return {"DELIVRD": 1.0}


class SmscOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the simulated SMSC answers; a bad value raises ValueError naming the field.

    Examples:
        >>> SmscOptions(accounts={"acme": "pw"}, latency_ms=5, tps=100).tps_burst_tokens
        10.0
        >>> SmscOptions(error_ratio=1.5)
        Traceback (most recent call last):
        ...
        ValueError: error_ratio: expected a number between 0 and 1, got 1.5
    """

    #: system_id -> password of the accounts allowed to bind (1-15 / 0-8 ASCII characters).
    accounts: dict[str, str] = msgspec.field(default_factory=_default_accounts)
    #: The simulator's own system_id, sent back in every bind_resp.
    system_id: str = "sluicesim"
    #: Binds open at once per account above which a bind is refused ESME_RBINDFAIL; 0 = any.
    max_binds_per_account: int = 0
    #: Close the connection once a refused bind's bind_resp is written, as real SMSCs do;
    #: false keeps it open for another try.
    close_on_bind_failure: bool = True
    #: Milliseconds a connection may stay open without a successful bind before it is closed
    #: (SMPP v5.0's session_init_timer); counted from the connect; 0 = never.
    bind_timeout_ms: float = 30_000.0
    #: Milliseconds a bind may go without sending anything before the SMSC sends it an
    #: enquire_link; 0 = never.
    enquire_link_ms: float = 30_000.0
    #: Milliseconds the ESME has to answer that enquire_link before the bind is closed.
    enquire_link_timeout_ms: float = 10_000.0
    #: Send the sc_interface_version TLV in the bind_resp to an ESME binding with an
    #: interface_version below 0x34 as well. SMPP v3.3 has no TLVs, so a real SMSC sends none.
    bind_tlvs_for_v33: bool = False

    #: Requests checked before they are answered, as `sluice.sim.smsc.checks` says:
    #: sequence_number in 0x00000001..0x7FFFFFFF (else a generic_nack of ``sequence_status``),
    #: the submit_sm time fields (ESME_RINVSCHED, ESME_RINVEXPIRY), the SAR TLVs
    #: (ESME_RMISSINGOPTPARAM, ESME_RINVPARLEN, ESME_RINVOPTPARAMVAL).
    check_sequence_numbers: bool = True
    #: SMPP v3.4 has no status for a bad sequence_number; ESME_RUNKNOWNERR (0xFF) by default.
    sequence_status: int = CommandStatus.ESME_RUNKNOWNERR
    check_time_fields: bool = True
    check_sar: bool = True

    #: Milliseconds before a submit_sm (or data_sm) is answered.
    latency_ms: float = 0.0
    #: Spread added to ``latency_ms``: the upper bound of a uniform draw, or the mean of an
    #: exponential one; unused by ``fixed``.
    latency_jitter_ms: float = 0.0
    #: ``fixed``: latency_ms exactly; ``uniform``: latency_ms + U[0, jitter];
    #: ``exponential``: latency_ms + Exp(mean = jitter), a long tail (1 answer in 1,000 waits
    #: more than 6.9 jitters).
    latency_distribution: LatencyDistribution = "uniform"

    #: submit_sm unanswered on one bind above which more are refused at once; 0 = no window.
    max_window: int = 0
    #: Status refusing a submit_sm over the window. Real SMSCs differ: many send
    #: ESME_RTHROTTLED (0x58), some ESME_RMSGQFUL (0x14).
    window_status: int = CommandStatus.ESME_RTHROTTLED
    #: submit_sm per second per bind above which they are answered ESME_RTHROTTLED; 0 = off.
    tps: float = 0.0
    #: Tokens of the per-bind bucket (the largest burst); 0 means max(1, tps / 10), i.e.
    #: 100 ms worth of traffic, strict like an SMSC that counts in short windows.
    tps_burst: float = 0.0

    #: Share of submit_sm dropped by closing the TCP connection abruptly, without an answer.
    disconnect_ratio: float = 0.0
    #: Share of submit_sm "answered" with a broken frame (invalid command_length + random
    #: bytes) instead of a response.
    garbage_ratio: float = 0.0
    #: Share of submit_sm answered ``error_status`` (transient by default).
    error_ratio: float = 0.0
    error_status: int = CommandStatus.ESME_RSYSERR
    #: Share of submit_sm answered ``reject_status`` (permanent by default).
    reject_ratio: float = 0.0
    reject_status: int = CommandStatus.ESME_RINVDSTADR
    #: Share of submit_sm accepted but answered only after ``late_ms``.
    late_ratio: float = 0.0
    #: Past Sluice's default response timeout of 10 s.
    late_ms: float = 15_000.0
    #: Destination numbers always answered ``reject_status``.
    destinations_rejected: frozenset[str] = frozenset()

    #: Milliseconds from the submit_sm_resp to the final delivery receipt, plus up to
    #: ``receipt_jitter_ms`` drawn uniformly.
    receipt_delay_ms: float = 0.0
    receipt_jitter_ms: float = 0.0
    #: Final receipt states and their weights (stat codes such as DELIVRD, UNDELIV, EXPIRED).
    receipt_states: dict[str, float] = msgspec.field(default_factory=_default_receipt_states)
    #: Send an ENROUTE receipt right after the submit_sm_resp, before the final one.
    receipt_enroute: bool = False
    #: Milliseconds before a receipt refused with a transient status is sent again.
    receipt_retry_ms: float = 1_000.0
    #: Times a refused receipt is sent again before it is abandoned.
    receipt_retries: int = 3
    #: Receipts held per account while no receiver is bound; past it the oldest is dropped.
    max_pending_receipts: int = 100_000
    #: deliver_sm (receipts) unanswered per bind above which receipts wait; 0 = no window.
    deliver_window: int = 0

    #: Accepted submit_sm kept for `received` and query_sm; the oldest are forgotten first.
    record_limit: int = 1_000_000
    #: Seed of every random draw (faults, latency, receipt states, garbage); unset = from the OS.
    seed: int | None = None

    def __post_init__(self) -> None:
        self._check_accounts()
        _check_word("system_id", self.system_id, MAX_SYSTEM_ID_LENGTH)
        _check_int("max_binds_per_account", self.max_binds_per_account, 0)
        for name in ("bind_timeout_ms", "enquire_link_ms", "enquire_link_timeout_ms"):
            check_number(name, getattr(self, name), 0.0)
        if self.enquire_link_ms and not self.enquire_link_timeout_ms:
            raise ValueError(
                "enquire_link_timeout_ms: expected a number > 0 while enquire_link_ms is on, got 0"
            )
        _check_status("sequence_status", self.sequence_status)
        for name in _SWITCHES:
            _check_bool(name, getattr(self, name))
        for name in ("latency_ms", "latency_jitter_ms", "late_ms", "tps", "tps_burst"):
            check_number(name, getattr(self, name), 0.0)
        for name in ("receipt_delay_ms", "receipt_jitter_ms", "receipt_retry_ms"):
            check_number(name, getattr(self, name), 0.0)
        if self.latency_distribution not in ("fixed", "uniform", "exponential"):
            raise ValueError(
                "latency_distribution: expected 'fixed', 'uniform' or 'exponential', "
                f"got {self.latency_distribution!r}"
            )
        _check_int("max_window", self.max_window, 0)
        for name in ("window_status", "error_status", "reject_status"):
            _check_status(name, getattr(self, name))
        for name in FAULT_RATIOS:
            check_number(name, getattr(self, name), 0.0, 1.0)
        total = sum(getattr(self, name) for name in FAULT_RATIOS)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"late_ratio: {' + '.join(FAULT_RATIOS)} must be at most 1, got {total:g}"
            )
        for number in self.destinations_rejected:
            _check_word("destinations_rejected", number, MAX_ADDRESS_LENGTH)
        self._check_receipt_states()
        _check_int("receipt_retries", self.receipt_retries, 0)
        _check_int("max_pending_receipts", self.max_pending_receipts, 0)
        _check_int("deliver_window", self.deliver_window, 0)
        _check_int("record_limit", self.record_limit, 0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0)

    def _check_accounts(self) -> None:
        if not isinstance(self.accounts, dict) or not self.accounts:
            raise ValueError(
                f"accounts: expected at least one system_id -> password, got {self.accounts!r}"
            )
        for system_id, password in self.accounts.items():
            _check_word("accounts", system_id, MAX_SYSTEM_ID_LENGTH)
            _check_word(f"accounts[{system_id!r}]", password, MAX_PASSWORD_LENGTH, empty=True)

    def _check_receipt_states(self) -> None:
        states = self.receipt_states
        if not isinstance(states, dict) or not states:
            raise ValueError(
                f"receipt_states: expected stat -> weight, e.g. {{'DELIVRD': 1.0}}, got {states!r}"
            )
        for stat, weight in states.items():
            if stat not in RECEIPT_STATES:
                raise ValueError(
                    f"receipt_states: unknown state {stat!r}; known: {', '.join(RECEIPT_STATES)}"
                )
            check_number(f"receipt_states[{stat!r}]", weight, 0.0)
        if sum(states.values()) <= 0:
            raise ValueError(f"receipt_states: the weights must not all be 0, got {states!r}")

    @property
    def tps_burst_tokens(self) -> float:
        """The burst the per-bind bucket really holds (``tps_burst`` with 0 resolved)."""
        return self.tps_burst if self.tps_burst > 0 else max(1.0, self.tps / 10.0)

    def with_changes(self, changes: Mapping[str, object]) -> SmscOptions:
        """These options with ``changes`` applied, type-checked as if decoded from JSON."""
        return with_changes(self, changes, "SMSC")

    def redacted(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, passwords masked."""
        shown: dict[str, Any] = msgspec.to_builtins(self)
        shown["accounts"] = dict.fromkeys(self.accounts, "***")
        return shown
