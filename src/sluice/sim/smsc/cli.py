"""The ``sluice sim smsc`` command: a flag for every `SmscOptions` field, and the run loop."""

from __future__ import annotations

import argparse
from typing import Any

from sluice.protocols.smpp import CommandStatus
from sluice.sim.control import http_host
from sluice.sim.options import check_port, options_from_flags
from sluice.sim.report import add_report_argument, check_report_seconds, run_until_cancelled
from sluice.sim.smsc.options import SmscOptions
from sluice.sim.smsc.server import SmscSimulator

# Option fields whose flag is not simply the field name with dashes.
_FLAGS = {
    "accounts": "--account",
    "receipt_states": "--receipt-state",
    "destinations_rejected": "--reject-destination",
}
# Option fields whose flag takes the value as it is.
_PLAIN_FIELDS = (
    "system_id",
    "max_binds_per_account",
    "close_on_bind_failure",
    "bind_timeout_ms",
    "enquire_link_ms",
    "enquire_link_timeout_ms",
    "bind_tlvs_for_v33",
    "check_sequence_numbers",
    "sequence_status",
    "check_time_fields",
    "check_sar",
    "latency_ms",
    "latency_jitter_ms",
    "latency_distribution",
    "max_window",
    "window_status",
    "tps",
    "tps_burst",
    "error_ratio",
    "error_status",
    "reject_ratio",
    "reject_status",
    "disconnect_ratio",
    "late_ratio",
    "late_ms",
    "garbage_ratio",
    "receipt_delay_ms",
    "receipt_jitter_ms",
    "receipt_enroute",
    "receipt_retry_ms",
    "receipt_retries",
    "max_pending_receipts",
    "deliver_window",
    "record_limit",
    "seed",
)


def _command_status(text: str) -> int:
    """A command_status from ``0x58``, ``88`` or ``ESME_RTHROTTLED``."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return int(CommandStatus[text.upper()])
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"expected a number (0x58) or a name (ESME_RTHROTTLED), got {text!r}"
        ) from None


_command_status.__name__ = "command_status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sluice sim smsc`` options to ``parser``."""
    d = SmscOptions()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    add("--port", type=int, default=2775, help="SMPP port, 0 for any (%(default)s)")
    add("--control-port", type=int, default=2776, help="control HTTP port; 0 = off")
    add(
        "--account",
        action="append",
        metavar="SYSTEM_ID:PASSWORD",
        help="an account allowed to bind; repeatable (default sluice:secret)",
    )
    add("--system-id", default=d.system_id, help="system_id sent in bind responses")
    add("--max-binds-per-account", type=int, default=d.max_binds_per_account,
        help="binds per account above which a bind is refused ESME_RBINDFAIL; 0 = any")  # fmt: skip
    add("--close-on-bind-failure", action=argparse.BooleanOptionalAction,
        default=d.close_on_bind_failure,
        help="close the connection after a refused bind (on; off: it may retry)")  # fmt: skip
    add("--bind-timeout-ms", type=float, default=d.bind_timeout_ms,
        help="close a connection still unbound this long after connect; 0 = never")  # fmt: skip
    add("--enquire-link-ms", type=float, default=d.enquire_link_ms,
        help="send enquire_link to a bind silent this long; 0 = never")  # fmt: skip
    add("--enquire-link-timeout-ms", type=float, default=d.enquire_link_timeout_ms,
        help="close the bind if that enquire_link is unanswered this long")  # fmt: skip
    add("--bind-tlvs-for-v33", action="store_true",
        help="send sc_interface_version in bind_resp to SMPP v3.3 binds too")  # fmt: skip
    add("--check-sequence-numbers", action=argparse.BooleanOptionalAction,
        default=d.check_sequence_numbers,
        help="refuse requests numbered outside 1..0x7FFFFFFF with a generic_nack (on)")  # fmt: skip
    add("--sequence-status", type=_command_status, default=d.sequence_status,
        help="status of that generic_nack (ESME_RUNKNOWNERR)")  # fmt: skip
    add("--check-time-fields", action=argparse.BooleanOptionalAction,
        default=d.check_time_fields,
        help="refuse bad schedule_delivery_time / validity_period (on)")  # fmt: skip
    add("--check-sar", action=argparse.BooleanOptionalAction, default=d.check_sar,
        help="refuse incomplete or inconsistent SAR TLVs (on)")  # fmt: skip
    add("--latency-ms", type=float, default=d.latency_ms, help="milliseconds before answering")
    add("--latency-jitter-ms", type=float, default=d.latency_jitter_ms,
        help="uniform: up to this much more; exponential: its mean")  # fmt: skip
    add("--latency-distribution", choices=("fixed", "uniform", "exponential"),
        default=d.latency_distribution, help="how the jitter is drawn (%(default)s)")  # fmt: skip
    add("--max-window", type=int, default=d.max_window,
        help="unanswered submit_sm per bind above which they are refused; 0 = off")  # fmt: skip
    add("--window-status", type=_command_status, default=d.window_status,
        help="status refusing a submit_sm over the window (0x58; some SMSCs use 0x14)")  # fmt: skip
    add("--tps", type=float, default=d.tps, help="submit_sm per second per bind; 0 = off")
    add("--tps-burst", type=float, default=d.tps_burst,
        help="token bucket size; 0 = max(1, tps / 10)")  # fmt: skip
    add("--error-ratio", type=float, default=d.error_ratio, help="share answered --error-status")
    add("--error-status", type=_command_status, default=d.error_status,
        help="transient error status (ESME_RSYSERR)")  # fmt: skip
    add("--reject-ratio", type=float, default=d.reject_ratio,
        help="share answered --reject-status")  # fmt: skip
    add("--reject-status", type=_command_status, default=d.reject_status,
        help="permanent error status (ESME_RINVDSTADR)")  # fmt: skip
    add("--reject-destination", action="append", metavar="NUMBER",
        help="a destination always answered --reject-status; repeatable")  # fmt: skip
    add("--disconnect-ratio", type=float, default=d.disconnect_ratio,
        help="share of submit_sm that drop the connection unanswered")  # fmt: skip
    add("--late-ratio", type=float, default=d.late_ratio,
        help="share accepted but answered after --late-ms")  # fmt: skip
    add("--late-ms", type=float, default=d.late_ms, help="delay of late answers")
    add("--garbage-ratio", type=float, default=d.garbage_ratio,
        help="share answered with a broken frame")  # fmt: skip
    add("--receipt-delay-ms", type=float, default=d.receipt_delay_ms,
        help="milliseconds from submit_sm_resp to the receipt")  # fmt: skip
    add("--receipt-jitter-ms", type=float, default=d.receipt_jitter_ms,
        help="up to this much more, uniform")  # fmt: skip
    add("--receipt-state", action="append", metavar="STAT=WEIGHT",
        help="final state and its weight, e.g. DELIVRD=0.9; repeatable (DELIVRD=1)")  # fmt: skip
    add("--receipt-enroute", action="store_true", help="send an ENROUTE receipt first")
    add("--receipt-retry-ms", type=float, default=d.receipt_retry_ms,
        help="delay before a refused receipt is sent again")  # fmt: skip
    add("--receipt-retries", type=int, default=d.receipt_retries,
        help="times a refused receipt is sent again")  # fmt: skip
    add("--max-pending-receipts", type=int, default=d.max_pending_receipts,
        help="receipts held per account while no receiver is bound")  # fmt: skip
    add("--deliver-window", type=int, default=d.deliver_window,
        help="unanswered receipts per bind; 0 = no limit")  # fmt: skip
    add("--record-limit", type=int, default=d.record_limit,
        help="accepted messages kept for /_smsc/received and query_sm")  # fmt: skip
    add("--seed", type=int, default=d.seed, help="seed of every random draw")
    add_report_argument(parser)


def options_from_args(args: argparse.Namespace) -> SmscOptions:
    """`SmscOptions` from parsed arguments; ValueError names the flag (``--error-ratio: ...``)."""
    fields: dict[str, Any] = {}
    if args.account:
        accounts = {}
        for item in args.account:
            system_id, sep, password = item.partition(":")
            if not sep or not system_id:
                raise ValueError(f"--account: expected SYSTEM_ID:PASSWORD, got {item!r}")
            accounts[system_id] = password
        fields["accounts"] = accounts
    if args.receipt_state:
        states: dict[str, float] = {}
        for item in args.receipt_state:
            stat, sep, weight = item.partition("=")
            try:
                states[stat.upper()] = float(weight) if sep else 1.0
            except ValueError:
                raise ValueError(
                    f"--receipt-state: expected STAT=WEIGHT such as DELIVRD=0.9, got {item!r}"
                ) from None
        fields["receipt_states"] = states
    if args.reject_destination:
        fields["destinations_rejected"] = frozenset(args.reject_destination)
    return options_from_flags(SmscOptions, args, _PLAIN_FIELDS, _FLAGS, **fields)


async def run_from_args(args: argparse.Namespace) -> None:
    """Run the simulator until cancelled, printing a summary every ``--report-seconds``."""
    options = options_from_args(args)
    check_report_seconds(args.report_seconds)
    check_port("--port", args.port)
    check_port("--control-port", args.control_port)
    smsc = SmscSimulator(options)
    await smsc.start(args.host, args.port)

    async def listening() -> str:
        control = await smsc.start_control(args.control_port) if args.control_port else None
        return (
            f"{http_host(args.host)}:{smsc.port} "
            f"(control {control if control is not None else 'off'})"
        )

    await run_until_cancelled(smsc, listening, args.report_seconds)
