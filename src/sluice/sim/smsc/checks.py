"""What the SMSC simulator checks in a request before it answers it, as a real SMSC does.

Each check has its option (on by default) and the SMPP v3.4 status it answers with:

- ``check_sequence_numbers``: a request's sequence_number must be in 0x00000001..0x7FFFFFFF
  (section 3.2). SMPP v3.4 has no status for a bad one; it is a header error, so the answer
  is a generic_nack (section 4.3) echoing the number, of status ``sequence_status``
  (ESME_RUNKNOWNERR by default), and the request is not acted on. Two exceptions: a bind is
  answered with its own bind_resp of that status (the session waits for one before another
  bind), a refused bind like any other, so ``close_on_bind_failure`` applies; an unbind is
  answered as usual, since the session has ended with it whatever its number.
- ``check_time_fields``: submit_sm's schedule_delivery_time and validity_period must be empty
  or in the absolute or relative format of section 7.1.1 (`sluice.protocols.smpp.time_fields`):
  ESME_RINVSCHED / ESME_RINVEXPIRY otherwise.
- ``check_sar``: the SAR TLVs of a submit_sm or data_sm (sections 5.3.2.22-24) come all three
  or none (ESME_RMISSINGOPTPARAM), each of its length (ESME_RINVPARLEN), with
  sar_total_segments at least 1 and sar_segment_seqnum in 1..sar_total_segments
  (ESME_RINVOPTPARAMVAL).

A submit_sm refused by a check is answered at once, counted ``invalid_fields``, and neither
recorded nor counted against the window.

Examples:
    >>> from sluice.protocols.smpp import SubmitSm, Tag, tlv_u8, tlv_u16
    >>> time_fields_status(SubmitSm(validity_period="000001000000000R"))
    0
    >>> hex(time_fields_status(SubmitSm(schedule_delivery_time="2501311200000000")))
    '0x61'
    >>> parts = (tlv_u16(Tag.sar_msg_ref_num, 7), tlv_u8(Tag.sar_total_segments, 2))
    >>> hex(sar_status(SubmitSm(tlvs=parts)))  # sar_segment_seqnum missing
    '0xc3'
    >>> hex(sar_status(SubmitSm(tlvs=(*parts, tlv_u8(Tag.sar_segment_seqnum, 3)))))
    '0xc4'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.protocols.smpp import (
    MAX_SEQUENCE_NUMBER,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DataSm,
    GenericNack,
    Pdu,
    SmppProtocolError,
    SubmitSm,
    Unbind,
    encode,
    is_request,
    response_for,
    sar_info,
)
from sluice.protocols.smpp.time_fields import parse_time

if TYPE_CHECKING:
    from sluice.sim.smsc.session import EsmeLink

_BINDS = (BindTransmitter, BindReceiver, BindTransceiver)

__all__ = ["refuse_bad_sequence", "sar_status", "sequence_in_range", "time_fields_status"]


def sequence_in_range(sequence_number: int) -> bool:
    """Whether a request may carry ``sequence_number`` (SMPP v3.4 section 3.2)."""
    return 0 < sequence_number <= MAX_SEQUENCE_NUMBER


def refuse_bad_sequence(link: EsmeLink, pdu: Pdu) -> bool:
    """Answer ``pdu``, a PDU whose sequence_number is out of range, when it is a request and
    the check is on (module docstring); True when answered: the caller then drops it, and
    stops reading if ``link.closing`` was set.

    Responses are left to the caller: they match nothing we sent and are ignored anyway.
    """
    sim = link.sim
    options = sim.options
    kind = type(pdu)
    if not options.check_sequence_numbers or kind is Unbind or not is_request(pdu):
        return False
    counts = sim._counts
    counts.bad_sequence_numbers += 1
    status = options.sequence_status
    if kind in _BINDS:
        counts.binds_refused += 1
        link.out.append(link.session.send(response_for(pdu, status)))
        if options.close_on_bind_failure:
            link.closing = True
    else:
        link.out.append(encode(GenericNack(pdu.sequence_number, status)))
    return True


def time_fields_status(pdu: SubmitSm) -> int:
    """0 when both time fields of ``pdu`` are empty or well formed, else the status refusing it."""
    for text, status in (
        (pdu.schedule_delivery_time, CommandStatus.ESME_RINVSCHED),
        (pdu.validity_period, CommandStatus.ESME_RINVEXPIRY),
    ):
        if text:
            try:
                parse_time(text)
            except ValueError:
                return status
    return 0


def sar_status(pdu: SubmitSm | DataSm) -> int:
    """0 when the SAR TLVs of ``pdu`` are absent or consistent, else the status refusing it."""
    if not pdu.tlvs:
        return 0
    try:
        sar = sar_info(pdu)
    except SmppProtocolError as exc:  # some missing, or of the wrong length
        return exc.status
    if sar is None:
        return 0
    _ref, total, seqnum = sar
    if total < 1 or not 1 <= seqnum <= total:
        return CommandStatus.ESME_RINVOPTPARAMVAL
    return 0
