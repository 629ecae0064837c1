"""The SMSC simulator's delivery receipts: each accepted message's fate, and the deliver_sm
that report it.

An accepted message whose registered_delivery asks for one (bits 0-1 = 1, or 2 and the
message failed) gets a deliver_sm with esm_class 0x04 ``receipt_delay_ms`` (+ a uniform draw
up to ``receipt_jitter_ms``) after its submit_sm_resp. The final state is drawn from the
``receipt_states`` weights when the message is accepted; the short_message is the Appendix B
text (``format_receipt_text``, GSM 7-bit, the id exactly as in submit_sm_resp) and the TLVs
receipted_message_id, message_state and, for failures, network_error_code (GSM; UNDELIV 1,
EXPIRED 27, REJECTD 13, DELETED and UNKNOWN 34; the text's ``err`` is the same number).
``receipt_enroute`` sends an ENROUTE receipt right after the submit_sm_resp as well.
Receipts go round-robin to the account's receiver and transceiver binds, at most
``deliver_window`` unanswered per bind (0 = no limit); while none can take them they wait in a
queue of ``max_pending_receipts`` per account (the oldest dropped and counted), sent as soon as
one binds. A receipt refused with a transient status (ESME_RX_T_APPN…) is sent again after
``receipt_retry_ms``, up to ``receipt_retries`` times, then abandoned; a permanent refusal is
abandoned at once. Receipts unanswered when their bind ends (unbind, or the connection
drops) go back to the front of the queue (`SmscSimulator` puts them there).
query_sm reports ENROUTE until the final receipt's due time, then the drawn final state (the
same for messages that asked for no receipt), or ESME_RQUERYFAIL for an id not in the record.
"""

from __future__ import annotations

import bisect
import collections
import random
import time
from collections.abc import Callable, Sized
from datetime import datetime
from typing import TYPE_CHECKING

from sluice.protocols.smpp import (
    ESM_CLASS_DELIVERY_RECEIPT,
    REG_DLV_SMSC_RECEIPT,
    REG_DLV_SMSC_RECEIPT_MASK,
    REG_DLV_SMSC_RECEIPT_ON_FAILURE,
    DataSm,
    DeliverSm,
    Pdu,
    SubmitSm,
    Tag,
    Tlv,
    is_transient,
    tlv_cstring,
    tlv_u8,
)
from sluice.protocols.smpp.gsm import is_gsm, try_encode_gsm
from sluice.protocols.smpp.receipt import MESSAGE_STATES, format_receipt_text
from sluice.sim.smsc.options import MAX_ADDRESS_LENGTH, SmscOptions
from sluice.sim.smsc.records import Accepted, text_of
from sluice.sim.smsc.stats import Counts
from sluice.sim.smsc.timeline import Timeline

if TYPE_CHECKING:
    from sluice.sim.smsc.session import EsmeLink

#: message_state of each receipt stat code (DELIVRD 2, ...).
STATE_CODES: dict[str, int] = {stat: code for code, stat in MESSAGE_STATES.items()}
FAILED_STATES = frozenset({"EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})
#: GSM MAP error causes (3GPP TS 29.002) reported for failed receipts: unknown subscriber,
#: absent subscriber, call barred, system failure.
NETWORK_ERRORS: dict[str, int] = {
    "UNDELIV": 1,
    "EXPIRED": 27,
    "REJECTD": 13,
    "DELETED": 34,
    "UNKNOWN": 34,
}
_NETWORK_TYPE_GSM = 3
# Per-state TLVs, built once: message_state, and network_error_code for failures.
_STATE_TLVS: dict[str, tuple[Tlv, ...]] = {
    stat: (tlv_u8(Tag.message_state, code),)
    + (
        (
            Tlv(
                Tag.network_error_code,
                bytes((_NETWORK_TYPE_GSM, NETWORK_ERRORS[stat] >> 8, NETWORK_ERRORS[stat] & 0xFF)),
            ),
        )
        if stat in FAILED_STATES
        else ()
    )
    for stat, code in STATE_CODES.items()
}
# Minutes whose receipt date text is kept: the current one and a few back.
_MINUTE_TEXTS_KEPT = 64


class Account:
    """Per system_id: its open binds, the receivers among them, and receipts waiting."""

    __slots__ = ("binds", "next_receiver", "pending", "receivers", "system_id")

    def __init__(self, system_id: str) -> None:
        self.system_id = system_id
        self.binds = 0
        self.receivers: list[EsmeLink] = []
        self.next_receiver = 0
        self.pending: collections.deque[Delivery] = collections.deque()


class Delivery:
    """A deliver_sm the SMSC sends: a receipt (``record`` set) or an MO part."""

    __slots__ = ("account", "attempts", "pdu", "record")

    def __init__(self, pdu: DeliverSm, account: Account, record: Accepted | None) -> None:
        self.pdu = pdu
        self.account = account
        self.record = record
        self.attempts = 0


class Receipts:
    """What the SMSC owes for accepted messages: their record, fate and receipts, per account.

    ``records`` (oldest first) and ``by_id`` are the last ``record_limit`` accepted messages;
    ``accounts`` holds every system_id that bound or is owed a receipt.
    """

    def __init__(
        self,
        counts: Counts,
        rng: random.Random,
        emit: Callable[[EsmeLink, bytes], None],
        waiters: Sized,
        wake: Callable[[], None],
    ) -> None:
        self._counts = counts
        self._rng = rng
        self._emit = emit
        # The simulator's waiters, read to skip waking when nobody waits.
        self._waiters = waiters
        self._wake = wake
        self._timeline: Timeline | None = None
        self._minute_texts: dict[int, str] = {}
        self.accounts: dict[str, Account] = {}
        self.records: collections.deque[Accepted] = collections.deque()
        self.by_id: dict[str, Accepted] = {}
        self.apply(SmscOptions())

    def start(self, timeline: Timeline) -> None:
        self._timeline = timeline

    def apply(self, options: SmscOptions) -> None:
        """Take new options: the record and the queues are trimmed to the new limits, and
        waiting receipts go out if a bigger window lets them."""
        self._receipt_delay = options.receipt_delay_ms / 1000.0
        self._receipt_jitter = options.receipt_jitter_ms / 1000.0
        self._receipt_retry = options.receipt_retry_ms / 1000.0
        self._receipt_retries = options.receipt_retries
        self._enroute = options.receipt_enroute
        self._max_pending = options.max_pending_receipts
        self._deliver_window = options.deliver_window
        self._record_limit = options.record_limit
        states = [stat for stat, weight in options.receipt_states.items() if weight > 0]
        self._states = states
        cumulative = []
        running = 0.0
        for stat in states:
            running += options.receipt_states[stat]
            cumulative.append(running)
        self._state_weights = cumulative
        while len(self.records) > options.record_limit:
            self.by_id.pop(self.records.popleft().message_id, None)
        for account in self.accounts.values():
            self.trim_pending(account)
            self.dispatch(account)

    def account(self, system_id: str) -> Account:
        account = self.accounts.get(system_id)
        if account is None:
            account = self.accounts[system_id] = Account(system_id)
        return account

    def pending(self) -> int:
        """Receipts waiting for a receiver, over all accounts."""
        return sum(len(account.pending) for account in self.accounts.values())

    def accept(
        self, link: EsmeLink, pdu: SubmitSm | DataSm, message_id: str, answer_at: float
    ) -> Accepted:
        """Record an accepted message with its fate: its final state, drawn from the weights,
        and when it takes it (the final receipt's due time)."""
        final_at = answer_at + self._receipt_delay
        if self._receipt_jitter:
            final_at += self._rng.uniform(0.0, self._receipt_jitter)
        states = self._states
        if len(states) == 1:
            stat = states[0]
        else:
            weights = self._state_weights
            stat = states[bisect.bisect_right(weights, self._rng.random() * weights[-1])]
        account = link.account
        assert account is not None
        record = Accepted(message_id, account.system_id, pdu, time.time(), final_at, stat)
        limit = self._record_limit
        if limit:
            records = self.records
            if len(records) >= limit:
                self.by_id.pop(records.popleft().message_id, None)
            records.append(record)
            self.by_id[message_id] = record
        return record

    def schedule(self, record: Accepted, answer_at: float, now: float) -> None:
        """Receipts due at ``answer_at`` or later; ``now`` is the time of the read that brought
        the submit_sm, so a receipt goes out at once only when its answer just did."""
        wanted = record.pdu.registered_delivery & REG_DLV_SMSC_RECEIPT_MASK
        if wanted != REG_DLV_SMSC_RECEIPT and not (
            wanted == REG_DLV_SMSC_RECEIPT_ON_FAILURE and record.final_stat in FAILED_STATES
        ):
            return
        timeline = self._timeline
        assert timeline is not None
        if self._enroute:
            if answer_at <= now:
                self._due((record, "ENROUTE"))
            else:
                timeline.at(answer_at, self._due, (record, "ENROUTE"))
        if record.final_at <= now:
            self._due((record, record.final_stat))
        else:
            timeline.at(record.final_at, self._due, (record, record.final_stat))

    def _due(self, item: tuple[Accepted, str]) -> None:
        record, stat = item
        account = self.accounts.get(record.system_id)
        if account is None:
            account = self.accounts[record.system_id] = Account(record.system_id)
        account.pending.append(Delivery(self._receipt_pdu(record, stat), account, record))
        self.trim_pending(account)
        self.dispatch(account)

    def trim_pending(self, account: Account) -> None:
        pending = account.pending
        excess = len(pending) - self._max_pending
        for _ in range(excess):
            pending.popleft()
        if excess > 0:
            self._counts.receipts_dropped += excess

    def dispatch(self, account: Account) -> None:
        """Send waiting receipts round-robin to the account's receivers with room."""
        pending = account.pending
        receivers = account.receivers
        window = self._deliver_window
        while pending and receivers:
            count = len(receivers)
            for _ in range(count):
                link = receivers[account.next_receiver % count]
                account.next_receiver += 1
                if not window or len(link.inflight) < window:
                    break
            else:
                return  # every receiver's window is full
            self.send(link, pending.popleft())
            self._counts.receipts_sent += 1

    def send(self, link: EsmeLink, delivery: Delivery) -> int:
        """Write one deliver_sm on ``link``; its sequence_number."""
        session = link.session
        self._emit(link, session.send(delivery.pdu))
        seq = session.last_sequence
        link.inflight[seq] = delivery
        delivery.attempts += 1
        return seq

    def on_answer(self, link: EsmeLink, pdu: Pdu, now: float) -> None:
        """A deliver_sm_resp (or generic_nack) to a receipt or an MO part."""
        delivery = link.inflight.pop(pdu.sequence_number, None)
        counts = self._counts
        if delivery is None:
            counts.protocol_errors += 1
            return
        status = pdu.command_status
        if delivery.record is None:
            if status:
                counts.mo_refused += 1
            else:
                counts.mo_acked += 1
            return
        if not status:
            counts.receipts_acked += 1
            if self._waiters:
                self._wake()
        else:
            counts.receipts_refused += 1
            if is_transient(status) and delivery.attempts <= self._receipt_retries:
                counts.receipts_retried += 1
                timeline = self._timeline
                assert timeline is not None
                timeline.at(now + self._receipt_retry, self._retry, delivery)
            else:
                counts.receipts_abandoned += 1
        account = delivery.account
        if account.pending and self._deliver_window:
            self.dispatch(account)

    def _retry(self, delivery: Delivery) -> None:
        account = delivery.account
        account.pending.append(delivery)
        self.trim_pending(account)
        self.dispatch(account)

    def _receipt_date(self, unix_time: float) -> str:
        """YYMMDDhhmm in local time, as Appendix B writes it; one strftime per minute, not per
        receipt (formatting dates was a tenth of a receipt's cost)."""
        minute = int(unix_time // 60)
        texts = self._minute_texts
        text = texts.get(minute)
        if text is None:
            if len(texts) > _MINUTE_TEXTS_KEPT:
                texts.clear()
            text = texts[minute] = datetime.fromtimestamp(minute * 60).strftime("%y%m%d%H%M")
        return text

    def _receipt_pdu(self, record: Accepted, stat: str) -> DeliverSm:
        """The deliver_sm carrying the receipt of ``record`` in state ``stat``."""
        submit = record.pdu
        preview = text_of(submit)[:20]
        if not is_gsm(preview):
            preview = "".join(char if is_gsm(char) else "?" for char in preview)
        text = format_receipt_text(
            record.message_id,
            stat,
            submitted=self._receipt_date(record.received_at),
            done=self._receipt_date(time.time()),
            err=NETWORK_ERRORS.get(stat, 0),
            text=preview,
        )
        return DeliverSm(
            source_addr_ton=submit.dest_addr_ton,
            source_addr_npi=submit.dest_addr_npi,
            source_addr=submit.destination_addr[:MAX_ADDRESS_LENGTH],
            dest_addr_ton=submit.source_addr_ton,
            dest_addr_npi=submit.source_addr_npi,
            destination_addr=submit.source_addr[:MAX_ADDRESS_LENGTH],
            esm_class=ESM_CLASS_DELIVERY_RECEIPT,
            short_message=try_encode_gsm(text) or text.encode("ascii", "replace"),
            tlvs=(tlv_cstring(Tag.receipted_message_id, record.message_id), *_STATE_TLVS[stat]),
        )
