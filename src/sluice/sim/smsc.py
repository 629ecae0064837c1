"""SMSC simulator: an SMPP v3.4 server that stands in for an operator's SMS centre.

Sluice's SMPP channel binds to an SMSC, keeps a window of submit_sm in flight, and takes
delivery receipts and mobile-originated (MO) messages back. This simulator is that SMSC for the
demo, the integration tests and the benchmarks (``sluice sim smsc``): a real TCP server built
on the sans-IO `SmppSession` (asyncio Protocol API, one write per batch of answers) that
answers like a loaded operator link would, slow, throttling, flaky or strict, and that counts
and records what it got so a test can check at-least-once delivery.

Binds: ``bind_transmitter``, ``bind_receiver`` and ``bind_transceiver`` against ``accounts``
(system_id -> password): an unknown system_id is answered ESME_RINVSYSID, a wrong password
ESME_RINVPASWD, a bind beyond ``max_binds_per_account`` ESME_RBINDFAIL; the connection stays
open for another try. enquire_link is answered; unbind is answered and the connection closed.
cancel_sm, replace_sm and submit_multi are refused (ESME_RCANCELFAIL, ESME_RREPLACEFAIL,
ESME_RINVCMDID); anything the session table forbids is refused by the session itself.

How a submit_sm (or data_sm) is answered, checked in this order:

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

Receipts: an accepted message whose registered_delivery asks for one (bits 0-1 = 1, or 2 and
the message failed) gets a deliver_sm with esm_class 0x04 ``receipt_delay_ms`` (+ a uniform
draw up to ``receipt_jitter_ms``) after its submit_sm_resp. The final state is drawn from the
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
drops) go back to the front of the queue.
query_sm reports ENROUTE until the final receipt's due time, then the drawn final state (the
same for messages that asked for no receipt), or ESME_RQUERYFAIL for an id not in the record.

MO: `SmscSimulator.send_mo` (or ``POST /_smsc/mo``) sends a deliver_sm with esm_class 0 to a
receiver or transceiver of the account, GSM 7-bit when the text allows, else UCS-2 (or as
``data_coding`` says), a long text split in parts with a UDH (8-bit reference).

What it counts (`SmscSimulator.stats`, ``GET /_smsc/stats``): binds, submit_sm by outcome,
receipts and MO by outcome, outstanding submit_sm per bind (now and at most), and arrivals per
wall-clock second per bind and in total over the last `ARRIVAL_WINDOW_SECONDS`. What it records
(`SmscSimulator.received`, ``messages``): the last ``record_limit`` accepted messages.

Control endpoints (``start_control``):
    ``GET /_smsc/stats``               the counts as JSON
    ``GET /_smsc/received?limit=100``  the last ``limit`` (default 1000) accepted messages
    ``GET /_smsc/config``              current options (passwords shown as "***")
    ``POST /_smsc/config``             change options: ``{"error_ratio": 0.1}``; an unknown
                                       key or a bad value is a 400 naming it
    ``POST /_smsc/reset``              zero every count and forget the record
    ``POST /_smsc/mo``                 ``{"from", "to", "body", "account"?, "data_coding"?}``:
                                       send an MO; 409 when no receiver is bound

Examples:
    From the shell::

        sluice sim smsc --port 2775 --account acme:pw --latency-ms 20 --max-window 50 \\
            --tps 200 --receipt-delay-ms 500 --receipt-state DELIVRD=0.9 \\
            --receipt-state UNDELIV=0.1 --report-seconds 5
        curl -s -XPOST localhost:2776/_smsc/config -d '{"error_ratio": 0.05}'
        curl -s -XPOST localhost:2776/_smsc/mo -d '{"from": "4915112345678", "to": "1234",
            "body": "STOP"}'

    In a test::

        smsc = SmscSimulator(SmscOptions(accounts={"acme": "pw"}, seed=1))
        port = await smsc.start()            # port 0: the OS picks a free one
        ...                                  # point an SMPP channel at 127.0.0.1:port
        await smsc.wait_for(submits=100, receipts_acked=100)
        assert smsc.messages() == expected_texts
        await smsc.close()

Warning:
    The record keeps each accepted PDU (about 600 bytes with its bookkeeping, measured with
    tracemalloc for a 19-character message): a million messages, the default
    ``record_limit``, is about 600 MB. Lower ``record_limit`` (0 keeps
    none, and query_sm then knows no id) for long benchmark runs, or reset between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from aiohttp import web

from sluice.flow.rate import TokenBucket
from sluice.protocols.smpp import (
    ESM_CLASS_DELIVERY_RECEIPT,
    ESM_CLASS_UDHI,
    REG_DLV_SMSC_RECEIPT,
    REG_DLV_SMSC_RECEIPT_MASK,
    REG_DLV_SMSC_RECEIPT_ON_FAILURE,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    Fatal,
    GenericNack,
    LocalProtocolError,
    MessageState,
    Pdu,
    PduReceived,
    QuerySm,
    QuerySmResp,
    Rejected,
    ReplaceSm,
    Role,
    SessionState,
    SmppSession,
    SubmitMulti,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    Unbind,
    UnbindResp,
    encode,
    is_transient,
    response_for,
    tlv_cstring,
    tlv_u8,
)
from sluice.protocols.smpp.gsm import encode_gsm, encode_ucs2, is_gsm, try_encode_gsm
from sluice.protocols.smpp.receipt import MESSAGE_STATES, format_receipt_text
from sluice.protocols.smpp.segmentation import PROTOCOL_MAX_SEGMENTS, split
from sluice.sim.smsc_options import (
    FAULT_RATIOS,
    MAX_ADDRESS_LENGTH,
    SmscOptions,
    check_number,
)
from sluice.sim.smsc_records import (
    Accepted,
    Concat,
    Submitted,
    reassemble,
    submitted,
    text_of,
)

__all__ = [
    "ARRIVAL_WINDOW_SECONDS",
    "BindStats",
    "Concat",
    "MoSent",
    "NoReceiverBound",
    "SmscOptions",
    "SmscSimulator",
    "SmscStats",
    "Submitted",
    "add_arguments",
    "options_from_args",
    "run_from_args",
]

#: Paths under this prefix are the control endpoints.
CONTROL_PREFIX = "/_smsc/"
#: Seconds of per-second arrival counts kept per bind and in total: five minutes covers a demo
#: or a benchmark run in two fixed lists of 300 ints.
ARRIVAL_WINDOW_SECONDS = 300
#: Listen backlog: a benchmark opening many binds at once must not see refused connects;
#: Linux caps it at net.core.somaxconn (4096 since 5.4).
LISTEN_BACKLOG = 1024
#: Seconds `SmscSimulator.close` waits for closed connections to report they are gone.
CLOSE_GRACE_SECONDS = 1.0
#: Delayed answers and receipts are grouped into ticks of this many seconds, one loop timer
#: per tick: a timer per PDU would cost more than answering it.
TICK_SECONDS = 0.001
#: Default ``limit`` of ``GET /_smsc/received``: a page a terminal or a test can read.
DEFAULT_RECEIVED_LIMIT = 1000

_BIND_TYPES: dict[type[Pdu], str] = {
    BindTransmitter: "transmitter",
    BindReceiver: "receiver",
    BindTransceiver: "transceiver",
}
_RESPONSES: dict[type[Pdu], type[SubmitSmResp] | type[DataSmResp]] = {
    SubmitSm: SubmitSmResp,
    DataSm: DataSmResp,
}
_UNSUPPORTED: dict[type[Pdu], int] = {
    CancelSm: CommandStatus.ESME_RCANCELFAIL,
    ReplaceSm: CommandStatus.ESME_RREPLACEFAIL,
    SubmitMulti: CommandStatus.ESME_RINVCMDID,
}
_STATE_CODES: dict[str, int] = {stat: code for code, stat in MESSAGE_STATES.items()}
_FAILED_STATES = frozenset({"EXPIRED", "DELETED", "UNDELIV", "UNKNOWN", "REJECTD"})
# GSM MAP error causes (3GPP TS 29.002) reported for failed receipts: unknown subscriber,
# absent subscriber, call barred, system failure.
_NETWORK_ERRORS: dict[str, int] = {
    "UNDELIV": 1,
    "EXPIRED": 27,
    "REJECTD": 13,
    "DELETED": 34,
    "UNKNOWN": 34,
}
_NETWORK_TYPE_GSM = 3
_SC_INTERFACE_VERSION = tlv_u8(Tag.sc_interface_version, 0x34)
# Garbage frames: a command_length no parser accepts (below the 16-octet header, or far above
# any sane maximum), then this many random octets.
_GARBAGE_HUGE_LENGTH = 0x01000000
_GARBAGE_TAIL = (12, 64)
# UCS-2 parts when the caller forces data_coding 8 (segmentation.split picks GSM when it can).
_UCS2_SINGLE_OCTETS = 140
_UCS2_PART_OCTETS = 134


class NoReceiverBound(RuntimeError):
    """An MO was asked for an account with no receiver or transceiver bound."""


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


class MoSent(msgspec.Struct, kw_only=True, frozen=True):
    """What `SmscSimulator.send_mo` sent."""

    account: str
    #: Connection number (`BindStats.number`) the parts went out on.
    bind: int
    source: str
    destination: str
    data_coding: int
    #: sequence_number of each deliver_sm, one per part.
    sequence_numbers: list[int]


class _Counts:
    """Every counter a reset zeroes."""

    __slots__ = (
        "accepted",
        "answer_delay_seconds",
        "binds_refused",
        "binds_total",
        "delayed_answers",
        "disconnects",
        "errors",
        "garbage",
        "late",
        "max_outstanding",
        "mo_acked",
        "mo_refused",
        "mo_sent",
        "mo_unanswered",
        "protocol_errors",
        "queries",
        "receipts_abandoned",
        "receipts_acked",
        "receipts_dropped",
        "receipts_refused",
        "receipts_requeued",
        "receipts_retried",
        "receipts_sent",
        "rejected",
        "submits",
        "throttled_tps",
        "throttled_window",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class _Arrivals:
    """Arrivals per wall-clock second over the last `ARRIVAL_WINDOW_SECONDS`, in a ring."""

    __slots__ = ("counts", "since", "stamps")

    def __init__(self, since: int) -> None:
        self.counts = [0] * ARRIVAL_WINDOW_SECONDS
        self.stamps = [-1] * ARRIVAL_WINDOW_SECONDS
        self.since = since

    def add(self, second: int, n: int) -> None:
        slot = second % ARRIVAL_WINDOW_SECONDS
        if self.stamps[slot] != second:
            self.stamps[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += n

    def series(self, now: int) -> list[int]:
        first = max(self.since, now - ARRIVAL_WINDOW_SECONDS + 1)
        return [
            self.counts[second % ARRIVAL_WINDOW_SECONDS]
            if self.stamps[second % ARRIVAL_WINDOW_SECONDS] == second
            else 0
            for second in range(first, now + 1)
        ]


class _Delivery:
    """A deliver_sm the SMSC sends: a receipt (``record`` set) or an MO part."""

    __slots__ = ("account", "attempts", "pdu", "record")

    def __init__(self, pdu: DeliverSm, account: _Account, record: Accepted | None) -> None:
        self.pdu = pdu
        self.account = account
        self.record = record
        self.attempts = 0


class _Account:
    """Per system_id: its open binds, the receivers among them, and receipts waiting."""

    __slots__ = ("binds", "next_receiver", "pending", "receivers", "system_id")

    def __init__(self, system_id: str) -> None:
        self.system_id = system_id
        self.binds = 0
        self.receivers: list[_Link] = []
        self.next_receiver = 0
        self.pending: collections.deque[_Delivery] = collections.deque()


class _Timeline:
    """Callbacks due at a loop time, fired in `TICK_SECONDS` buckets: one timer per bucket.
    A callback runs at the tick nearest its time, within half a tick of it.

    Within a bucket callbacks run in the order they were scheduled, so an answer scheduled
    before its receipt for the same tick goes out first. ``after`` runs once per bucket (the
    simulator's flush: every answer of the tick in one write per connection).
    """

    __slots__ = ("_after", "_buckets", "_handles", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, after: Callable[[], None]) -> None:
        self._loop = loop
        self._after = after
        self._buckets: dict[int, list[tuple[Callable[[Any], None], Any]]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}

    def at(self, when: float, callback: Callable[[Any], None], arg: Any) -> None:
        # The nearest tick, so that answers come on average after exactly the drawn latency
        # (each within half a tick of it) rather than always up to a tick late.
        tick = round(when / TICK_SECONDS)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = []
            self._handles[tick] = self._loop.call_at(tick * TICK_SECONDS, self._fire, tick)
        bucket.append((callback, arg))

    def _fire(self, tick: int) -> None:
        del self._handles[tick]
        for callback, arg in self._buckets.pop(tick):
            callback(arg)
        self._after()

    def cancel(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        self._buckets.clear()


class _Link(asyncio.Protocol):
    """One ESME connection: its session, what it owes and is owed, and its output buffer."""

    __slots__ = (
        "account",
        "arrivals",
        "bind_type",
        "bucket",
        "closing",
        "inflight",
        "is_open",
        "max_outstanding",
        "number",
        "out",
        "outstanding",
        "peer",
        "session",
        "sim",
        "submits",
        "transport",
    )

    def __init__(self, sim: SmscSimulator, number: int) -> None:
        self.sim = sim
        self.number = number
        self.session = SmppSession(Role.SMSC)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.is_open = False
        self.closing = False
        self.out: list[bytes] = []
        self.account: _Account | None = None
        self.bind_type = ""
        self.bucket: TokenBucket | None = None
        self.outstanding = 0
        self.max_outstanding = 0
        self.submits = 0
        self.inflight: dict[int, _Delivery] = {}
        self.arrivals = _Arrivals(int(time.time()))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.is_open = True
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.sim._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.sim._on_data(self, data)

    def eof_received(self) -> bool:
        return False  # the ESME closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        self.sim._on_lost(self)


@dataclass(slots=True)
class _Waiter:
    submits: int | None
    receipts_acked: int | None
    binds: int | None
    event: asyncio.Event


_ControlHandler = Callable[[web.BaseRequest], Awaitable[web.Response]]


def _error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


class SmscSimulator:
    """The SMSC; see the module docstring for what it answers, counts and records."""

    def __init__(self, options: SmscOptions | None = None) -> None:
        self._rng = random.Random()
        self._options = SmscOptions()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeline: _Timeline | None = None
        self._server: asyncio.Server | None = None
        self._runner: web.ServerRunner | None = None
        self._host = ""
        self._port = 0
        self._control_url: str | None = None
        self._links: set[_Link] = set()
        self._link_numbers = 0
        self._accounts: dict[str, _Account] = {}
        self._bound = 0
        self._next_id = 1
        self._mo_reference = 0
        self._dirty: list[_Link] = []
        self._waiters: list[_Waiter] = []
        self._all_closed: asyncio.Event | None = None
        self._records: collections.deque[Accepted] = collections.deque()
        self._by_id: dict[str, Accepted] = {}
        self._control_routes: dict[tuple[str, str], _ControlHandler] = {
            ("GET", "stats"): self._get_stats,
            ("GET", "received"): self._get_received,
            ("GET", "config"): self._get_config,
            ("POST", "config"): self._post_config,
            ("POST", "reset"): self._post_reset,
            ("POST", "mo"): self._post_mo,
        }
        self._apply(options if options is not None else SmscOptions(), None, reseed=True)
        self.reset()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for ESMEs on ``host:port`` (port 0 picks a free one); return the port."""
        if self._server is not None:
            raise RuntimeError(f"SMSC simulator already listening on {self._host}:{self._port}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timeline = _Timeline(loop, self._flush)
        self._rebuild_buckets()
        server = await loop.create_server(
            self._new_link, host, port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        self._server = server
        self._host = host
        self._port = int(server.sockets[0].getsockname()[1])
        return self._port

    async def start_control(self, port: int = 0, host: str | None = None) -> str:
        """Serve the control endpoints on ``host`` (the SMPP host by default); return the URL."""
        if self._runner is not None:
            raise RuntimeError(f"SMSC control server already running on {self._control_url}")
        host = host if host is not None else (self._host or "127.0.0.1")
        runner = web.ServerRunner(web.Server(self._control, access_log=None))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = int(runner.addresses[0][1])
        shown = f"[{host}]" if ":" in host else host
        self._control_url = f"http://{shown}:{bound_port}"
        return self._control_url

    async def close(self) -> None:
        """Stop listening, unbind and close every connection, stop the control server.

        Answers and receipts not yet due are dropped.
        """
        if self._timeline is not None:
            self._timeline.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            if link.is_open and link.session.is_bound:
                with contextlib.suppress(LocalProtocolError):
                    self._emit(link, link.session.send(Unbind()))
            self._unregister(link)
            link.closing = True
        self._flush()
        for link in list(self._links):
            if link.transport is not None:
                link.transport.close()
        if self._links:
            self._all_closed = asyncio.Event()
            try:
                async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                    await self._all_closed.wait()
            except TimeoutError:
                for link in list(self._links):
                    if link.transport is not None:
                        link.transport.abort()
        if server is not None:
            await server.wait_closed()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SmscSimulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The SMPP port, once started."""
        if self._server is None:
            raise RuntimeError("SMSC simulator is not started: call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to connect an ESME to, once started."""
        return self._host, self.port

    @property
    def control_url(self) -> str | None:
        """``http://host:port`` of the control endpoints, or None when not started."""
        return self._control_url

    @property
    def options(self) -> SmscOptions:
        return self._options

    # -- in-process control ----------------------------------------------------------------

    def configure(self, **changes: object) -> SmscOptions:
        """Change options while running; ValueError names an unknown or bad field.

        Binds already open stay open whatever ``accounts`` says. Changing ``seed`` restarts
        the random sequence; changing ``tps`` or ``tps_burst`` refills every bind's bucket;
        a smaller ``record_limit`` forgets the oldest records. Returns the options in force.
        """
        self._apply(self._options.with_changes(changes), self._options, reseed="seed" in changes)
        return self._options

    def reset(self) -> None:
        """Zero every count and forget the record; binds, queued receipts and options stay."""
        now = int(time.time())
        self._counts = _Counts()
        self._arrivals = _Arrivals(now)
        for link in self._links:
            link.arrivals = _Arrivals(now)
            link.max_outstanding = link.outstanding
            link.submits = 0
        self._records.clear()
        self._by_id.clear()
        self._wake()

    def stats(self) -> SmscStats:
        now = int(time.time())
        counts = self._counts
        by_type = dict.fromkeys(_BIND_TYPES.values(), 0)
        by_bind = []
        for link in sorted(self._links, key=lambda item: item.number):
            if link.account is not None:
                by_type[link.bind_type] += 1
            by_bind.append(
                BindStats(
                    number=link.number,
                    peer=link.peer,
                    bind_type=link.bind_type,
                    system_id=link.account.system_id if link.account is not None else "",
                    submits=link.submits,
                    outstanding=link.outstanding,
                    max_outstanding=link.max_outstanding,
                    deliveries_unanswered=len(link.inflight),
                    arrivals_per_second=link.arrivals.series(now),
                    arrivals_last_second=now,
                )
            )
        return SmscStats(
            connections=len(self._links),
            binds=self._bound,
            binds_by_type=by_type,
            binds_total=counts.binds_total,
            binds_refused=counts.binds_refused,
            submits=counts.submits,
            accepted=counts.accepted,
            throttled_window=counts.throttled_window,
            throttled_tps=counts.throttled_tps,
            errors=counts.errors,
            rejected=counts.rejected,
            disconnects=counts.disconnects,
            late=counts.late,
            garbage=counts.garbage,
            queries=counts.queries,
            protocol_errors=counts.protocol_errors,
            receipts_sent=counts.receipts_sent,
            receipts_acked=counts.receipts_acked,
            receipts_refused=counts.receipts_refused,
            receipts_retried=counts.receipts_retried,
            receipts_abandoned=counts.receipts_abandoned,
            receipts_dropped=counts.receipts_dropped,
            answer_delay_ms=(
                counts.answer_delay_seconds / counts.delayed_answers * 1000
                if counts.delayed_answers
                else 0.0
            ),
            receipts_requeued=counts.receipts_requeued,
            receipts_pending=sum(len(account.pending) for account in self._accounts.values()),
            mo_sent=counts.mo_sent,
            mo_acked=counts.mo_acked,
            mo_refused=counts.mo_refused,
            mo_unanswered=counts.mo_unanswered,
            max_outstanding=max(
                counts.max_outstanding, *(link.max_outstanding for link in self._links), 0
            ),
            recorded=len(self._records),
            arrivals_per_second=self._arrivals.series(now),
            arrivals_last_second=now,
            by_bind=by_bind,
        )

    def received(self, limit: int | None = None) -> list[Submitted]:
        """Accepted messages in arrival order, the last ``limit`` of them (all by default)."""
        records = self._records
        if limit is not None and limit < len(records):
            newest = list(itertools.islice(reversed(records), max(0, limit)))
            return [submitted(record) for record in reversed(newest)]
        return [submitted(record) for record in records]

    def messages(self) -> list[str]:
        """Texts of the accepted messages, concatenated parts joined (see `reassemble`)."""
        return reassemble(self.received())

    async def wait_for(
        self,
        submits: int | None = None,
        receipts_acked: int | None = None,
        binds: int | None = None,
        # A test's wait always needs a bound and a message naming what was missing; a bare
        # asyncio.timeout around the call would lose the counts in the error.
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Return once every given count is reached: accepted submit_sm (and data_sm) since
        the last reset, receipts acknowledged since the last reset, binds open now.

        Raises TimeoutError naming what was awaited and what was reached after ``timeout`` s.
        """
        if submits is None and receipts_acked is None and binds is None:
            raise ValueError("wait_for: give at least one of submits, receipts_acked, binds")
        waiter = _Waiter(submits, receipts_acked, binds, asyncio.Event())
        if self._reached(waiter):
            return
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            wanted = []
            counts = self._counts
            if submits is not None:
                wanted.append(f"{submits} accepted submit_sm (got {counts.accepted})")
            if receipts_acked is not None:
                wanted.append(f"{receipts_acked} receipts acked (got {counts.receipts_acked})")
            if binds is not None:
                wanted.append(f"{binds} binds (got {self._bound})")
            raise TimeoutError(
                f"SMSC simulator: waited {timeout:g} s for {' and '.join(wanted)}; "
                f"{self.stats().summary()}"
            ) from None
        finally:
            self._waiters.remove(waiter)

    def send_mo(
        self,
        source: str,
        destination: str,
        text: str,
        account: str | None = None,
        data_coding: int | None = None,
    ) -> MoSent:
        """Send ``text`` from the handset ``source`` to ``destination`` as an MO deliver_sm.

        ``account`` picks whose receivers get it (default: the first account, in the order
        of ``accounts``, with one bound). ``data_coding`` None chooses GSM 7-bit when every
        character allows it, else UCS-2; 0 or 8 forces one. A text longer than one SMS goes
        in parts with a UDH. Raises `NoReceiverBound`, or ValueError for a bad argument.
        """
        for name, value in (("source", source), ("destination", destination)):
            if not isinstance(value, str) or not value.isascii() or len(value) > MAX_ADDRESS_LENGTH:
                raise ValueError(
                    f"{name}: expected up to {MAX_ADDRESS_LENGTH} ASCII characters, got {value!r}"
                )
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {text!r}")
        target = self._mo_account(account)
        self._mo_reference = (self._mo_reference + 1) & 0xFF
        parts = _mo_parts(text, data_coding, self._mo_reference)
        receivers = target.receivers
        link = receivers[target.next_receiver % len(receivers)]
        target.next_receiver += 1
        sequence_numbers = []
        for payload, coding, udhi in parts:
            pdu = DeliverSm(
                source_addr=source,
                destination_addr=destination,
                esm_class=ESM_CLASS_UDHI if udhi else 0,
                data_coding=coding,
                short_message=payload,
            )
            sequence_numbers.append(self._send_delivery(link, _Delivery(pdu, target, None)))
        self._counts.mo_sent += len(parts)
        self._flush()
        return MoSent(
            account=target.system_id,
            bind=link.number,
            source=source,
            destination=destination,
            data_coding=parts[0][1],
            sequence_numbers=sequence_numbers,
        )

    # -- options ---------------------------------------------------------------------------

    def _apply(self, options: SmscOptions, previous: SmscOptions | None, *, reseed: bool) -> None:
        self._options = options
        if reseed:
            self._rng.seed(options.seed)
        self._max_window = options.max_window
        self._window_status = options.window_status
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
        self._receipt_delay = options.receipt_delay_ms / 1000.0
        self._receipt_jitter = options.receipt_jitter_ms / 1000.0
        self._receipt_retry = options.receipt_retry_ms / 1000.0
        states = [stat for stat, weight in options.receipt_states.items() if weight > 0]
        self._states = states
        cumulative = []
        running = 0.0
        for stat in states:
            running += options.receipt_states[stat]
            cumulative.append(running)
        self._state_weights = cumulative
        if previous is None or (options.tps, options.tps_burst) != (
            previous.tps,
            previous.tps_burst,
        ):
            self._rebuild_buckets()
        while len(self._records) > options.record_limit:
            self._by_id.pop(self._records.popleft().message_id, None)
        for account in self._accounts.values():
            self._trim_pending(account)
            self._dispatch(account)
        if self._dirty:
            self._flush()

    def _rebuild_buckets(self) -> None:
        options = self._options
        loop = self._loop
        for link in self._links:
            link.bucket = None
            if options.tps > 0 and loop is not None and link.account is not None:
                link.bucket = TokenBucket(options.tps, options.tps_burst_tokens, loop.time)

    def _new_bucket(self) -> TokenBucket | None:
        options = self._options
        if options.tps <= 0 or self._loop is None:
            return None
        return TokenBucket(options.tps, options.tps_burst_tokens, self._loop.time)

    # -- connections -----------------------------------------------------------------------

    def _new_link(self) -> _Link:
        self._link_numbers += 1
        return _Link(self, self._link_numbers)

    def _on_connect(self, link: _Link) -> None:
        self._links.add(link)

    def _on_lost(self, link: _Link) -> None:
        self._links.discard(link)
        self._unregister(link)
        counts = self._counts
        if counts.max_outstanding < link.max_outstanding:
            counts.max_outstanding = link.max_outstanding
        link.out.clear()
        # Receipts the ESME never answered go back to their account's queue (the SMSC still
        # owes them); MO parts are counted lost.
        requeued: dict[_Account, list[_Delivery]] = {}
        for delivery in link.inflight.values():
            if delivery.record is None:
                counts.mo_unanswered += 1
            else:
                requeued.setdefault(delivery.account, []).append(delivery)
        link.inflight.clear()
        for account, deliveries in requeued.items():
            counts.receipts_requeued += len(deliveries)
            account.pending.extendleft(reversed(deliveries))
            self._trim_pending(account)
            self._dispatch(account)
        if requeued:
            self._flush()
        if not self._links and self._all_closed is not None:
            self._all_closed.set()

    def _unregister(self, link: _Link) -> None:
        account = link.account
        if account is None:
            return
        link.account = None
        account.binds -= 1
        self._bound -= 1
        if link in account.receivers:
            account.receivers.remove(link)
        self._wake()

    def _emit(self, link: _Link, data: bytes) -> None:
        if not link.out:
            self._dirty.append(link)
        link.out.append(data)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for link in dirty:
            out = link.out
            if not out:
                continue
            transport = link.transport
            if link.is_open and transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
                if link.closing:
                    transport.close()
            out.clear()

    def _drop(self, link: _Link) -> None:
        """Abort the connection: what is already answered goes out, the rest is lost."""
        transport = link.transport
        if link.out and transport is not None and not transport.is_closing():
            transport.write(b"".join(link.out))
        link.out.clear()
        link.is_open = False
        self._unregister(link)
        if transport is not None:
            transport.abort()

    # -- receiving -------------------------------------------------------------------------

    def _on_data(self, link: _Link, data: bytes) -> None:
        session = link.session
        if session.state is SessionState.CLOSED or not link.is_open:
            return
        events = session.receive_data(data)
        if not link.out:
            self._dirty.append(link)
        out = link.out
        loop = self._loop
        assert loop is not None
        now = loop.time()
        before = link.submits
        accepted = self._counts.accepted
        answered_now = 0
        for event in events:
            if type(event) is PduReceived:
                pdu = event.pdu
                kind = type(pdu)
                if kind is SubmitSm or kind is DataSm:
                    answered = self._on_submit(link, pdu, now)
                    if answered < 0:
                        break  # the connection was dropped
                    answered_now += answered
                elif kind is DeliverSmResp or kind is GenericNack:
                    self._on_delivery_answer(link, pdu, now)
                elif kind in _BIND_TYPES:
                    self._on_bind(link, pdu)
                elif kind is EnquireLink:
                    out.append(session.send(response_for(pdu)))
                elif kind is QuerySm:
                    self._on_query(link, pdu, now)
                elif kind is Unbind:
                    out.append(session.send(response_for(pdu)))
                    self._unregister(link)
                    link.closing = True
                    break
                elif kind is UnbindResp:
                    pass  # the answer to our unbind while closing: the connection goes next
                elif kind in _UNSUPPORTED:
                    self._counts.protocol_errors += 1
                    out.append(session.send(response_for(pdu, _UNSUPPORTED[kind])))
                else:  # a response to nothing we sent (we never send enquire_link)
                    self._counts.protocol_errors += 1
            elif type(event) is Rejected:
                self._counts.protocol_errors += 1
                out.append(event.reply)
            elif type(event) is Fatal:
                self._counts.protocol_errors += 1
                out.append(event.reply)
                self._unregister(link)
                link.closing = True
                break
            else:  # ProtocolViolation: an unexpected or undecodable response
                self._counts.protocol_errors += 1
        link.outstanding -= answered_now
        arrived = link.submits - before
        if arrived:
            second = int(time.time())
            link.arrivals.add(second, arrived)
            self._arrivals.add(second, arrived)
        self._flush()
        if self._waiters and self._counts.accepted != accepted:
            self._wake()

    def _on_submit(self, link: _Link, pdu: SubmitSm | DataSm, now: float) -> int:
        """Handle one submit_sm/data_sm; 1 when answered in this turn, 0 if later, -1 if
        the connection was dropped."""
        counts = self._counts
        counts.submits += 1
        link.submits += 1
        seq = pdu.sequence_number
        resp_cls = _RESPONSES[type(pdu)]
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
            status = self._options.reject_status
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
                status = self._options.error_status
            elif draw < self._reject_below:
                status = self._options.reject_status
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

    def _accept(
        self, link: _Link, pdu: SubmitSm | DataSm, message_id: str, answer_at: float
    ) -> Accepted:
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
        limit = self._options.record_limit
        if limit:
            records = self._records
            if len(records) >= limit:
                self._by_id.pop(records.popleft().message_id, None)
            records.append(record)
            self._by_id[message_id] = record
        return record

    def _answer_later(self, item: tuple[_Link, bytes, float]) -> None:
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

    def _on_bind(self, link: _Link, pdu: Pdu) -> None:
        assert isinstance(pdu, BindTransmitter | BindReceiver | BindTransceiver)
        options = self._options
        password = options.accounts.get(pdu.system_id)
        account = self._accounts.get(pdu.system_id)
        if password is None:
            status = CommandStatus.ESME_RINVSYSID
        elif pdu.password != password:
            status = CommandStatus.ESME_RINVPASWD
        elif (
            options.max_binds_per_account
            and account is not None
            and account.binds >= options.max_binds_per_account
        ):
            status = CommandStatus.ESME_RBINDFAIL
        else:
            status = CommandStatus.ESME_ROK
        if status:
            self._counts.binds_refused += 1
            self._emit(link, link.session.send(response_for(pdu, status)))
            return
        resp = response_for(pdu, system_id=options.system_id, tlvs=(_SC_INTERFACE_VERSION,))
        self._emit(link, link.session.send(resp))
        if account is None:
            account = self._accounts[pdu.system_id] = _Account(pdu.system_id)
        link.account = account
        link.bind_type = _BIND_TYPES[type(pdu)]
        link.bucket = self._new_bucket()
        link.arrivals = _Arrivals(int(time.time()))
        account.binds += 1
        self._bound += 1
        self._counts.binds_total += 1
        if link.bind_type != "transmitter":
            account.receivers.append(link)
            self._dispatch(account)
        self._wake()

    def _on_query(self, link: _Link, pdu: QuerySm, now: float) -> None:
        self._counts.queries += 1
        record = self._by_id.get(pdu.message_id)
        if record is None:
            resp: Pdu = response_for(pdu, CommandStatus.ESME_RQUERYFAIL)
        elif now < record.final_at:
            resp = QuerySmResp(pdu.sequence_number, 0, record.message_id, "", MessageState.ENROUTE)
        else:
            done = time.time() - (now - record.final_at)
            resp = QuerySmResp(
                pdu.sequence_number,
                0,
                record.message_id,
                datetime.fromtimestamp(done, UTC).strftime("%y%m%d%H%M%S") + "000+",
                _STATE_CODES[record.final_stat],
                _NETWORK_ERRORS.get(record.final_stat, 0) & 0xFF,
            )
        self._emit(link, link.session.send(resp))

    # -- receipts and MO -------------------------------------------------------------------

    def _schedule_receipts(self, record: Accepted, answer_at: float, now: float) -> None:
        """Receipts due at ``answer_at`` or later; ``now`` is the time of the read that brought
        the submit_sm, so a receipt goes out at once only when its answer just did."""
        wanted = record.pdu.registered_delivery & REG_DLV_SMSC_RECEIPT_MASK
        if wanted != REG_DLV_SMSC_RECEIPT and not (
            wanted == REG_DLV_SMSC_RECEIPT_ON_FAILURE and record.final_stat in _FAILED_STATES
        ):
            return
        timeline = self._timeline
        assert timeline is not None
        if self._options.receipt_enroute:
            if answer_at <= now:
                self._receipt_due((record, "ENROUTE"))
            else:
                timeline.at(answer_at, self._receipt_due, (record, "ENROUTE"))
        if record.final_at <= now:
            self._receipt_due((record, record.final_stat))
        else:
            timeline.at(record.final_at, self._receipt_due, (record, record.final_stat))

    def _receipt_due(self, item: tuple[Accepted, str]) -> None:
        record, stat = item
        account = self._accounts.get(record.system_id)
        if account is None:
            account = self._accounts[record.system_id] = _Account(record.system_id)
        account.pending.append(_Delivery(_receipt_pdu(record, stat), account, record))
        self._trim_pending(account)
        self._dispatch(account)

    def _trim_pending(self, account: _Account) -> None:
        pending = account.pending
        excess = len(pending) - self._options.max_pending_receipts
        for _ in range(excess):
            pending.popleft()
        if excess > 0:
            self._counts.receipts_dropped += excess

    def _dispatch(self, account: _Account) -> None:
        """Send waiting receipts round-robin to the account's receivers with room."""
        pending = account.pending
        receivers = account.receivers
        window = self._options.deliver_window
        while pending and receivers:
            count = len(receivers)
            for _ in range(count):
                link = receivers[account.next_receiver % count]
                account.next_receiver += 1
                if not window or len(link.inflight) < window:
                    break
            else:
                return  # every receiver's window is full
            self._send_delivery(link, pending.popleft())
            self._counts.receipts_sent += 1

    def _send_delivery(self, link: _Link, delivery: _Delivery) -> int:
        session = link.session
        self._emit(link, session.send(delivery.pdu))
        seq = session.last_sequence
        link.inflight[seq] = delivery
        delivery.attempts += 1
        return seq

    def _on_delivery_answer(self, link: _Link, pdu: Pdu, now: float) -> None:
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
            if is_transient(status) and delivery.attempts <= self._options.receipt_retries:
                counts.receipts_retried += 1
                timeline = self._timeline
                assert timeline is not None
                timeline.at(now + self._receipt_retry, self._retry_receipt, delivery)
            else:
                counts.receipts_abandoned += 1
        account = delivery.account
        if account.pending and self._options.deliver_window:
            self._dispatch(account)

    def _retry_receipt(self, delivery: _Delivery) -> None:
        account = delivery.account
        account.pending.append(delivery)
        self._trim_pending(account)
        self._dispatch(account)

    def _mo_account(self, name: str | None) -> _Account:
        if name is not None:
            if name not in self._options.accounts:
                raise ValueError(
                    f"account: unknown system_id {name!r}; known: "
                    f"{', '.join(self._options.accounts)}"
                )
            account = self._accounts.get(name)
            if account is None or not account.receivers:
                raise NoReceiverBound(
                    f"no receiver or transceiver of account {name!r} is bound to take the MO"
                )
            return account
        for system_id in self._options.accounts:
            account = self._accounts.get(system_id)
            if account is not None and account.receivers:
                return account
        for account in self._accounts.values():
            if account.receivers:
                return account
        raise NoReceiverBound("no receiver or transceiver is bound to take the MO")

    # -- waiting ---------------------------------------------------------------------------

    def _reached(self, waiter: _Waiter) -> bool:
        counts = self._counts
        return (
            (waiter.submits is None or counts.accepted >= waiter.submits)
            and (waiter.receipts_acked is None or counts.receipts_acked >= waiter.receipts_acked)
            and (waiter.binds is None or self._bound >= waiter.binds)
        )

    def _wake(self) -> None:
        for waiter in self._waiters:
            if self._reached(waiter):
                waiter.event.set()

    # -- control endpoints -----------------------------------------------------------------

    async def _control(self, request: web.BaseRequest) -> web.Response:
        path = request.path
        name = path[len(CONTROL_PREFIX) :] if path.startswith(CONTROL_PREFIX) else None
        handler = self._control_routes.get((request.method, name or ""))
        if handler is not None:
            return await handler(request)
        allowed = [method for method, known in self._control_routes if known == name]
        if allowed:
            return web.Response(
                status=405,
                body=_error_body(f"{path}: use {' or '.join(allowed)}"),
                content_type="application/json",
                headers={"Allow": ", ".join(allowed)},
            )
        known = ", ".join(sorted({CONTROL_PREFIX + n for _, n in self._control_routes}))
        return _json_response(404, _error_body(f"unknown control endpoint {path}; known: {known}"))

    async def _get_stats(self, request: web.BaseRequest) -> web.Response:
        return _json_response(200, msgspec.json.encode(self.stats()))

    async def _get_received(self, request: web.BaseRequest) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_RECEIVED_LIMIT))
        if not raw.isdigit():
            return _json_response(
                400, _error_body(f"limit: expected a whole number of messages, got {raw!r}")
            )
        return _json_response(200, msgspec.json.encode(self.received(int(raw))))

    async def _get_config(self, request: web.BaseRequest) -> web.Response:
        return _json_response(200, msgspec.json.encode(self._options.redacted()))

    async def _post_config(self, request: web.BaseRequest) -> web.Response:
        changes = await _json_object(request, "config")
        if isinstance(changes, web.Response):
            return changes
        try:
            options = self.configure(**changes)
        except ValueError as exc:
            return _json_response(400, _error_body(str(exc)))
        return _json_response(200, msgspec.json.encode(options.redacted()))

    async def _post_reset(self, request: web.BaseRequest) -> web.Response:
        self.reset()
        return _json_response(200, b'{"reset":true}')

    async def _post_mo(self, request: web.BaseRequest) -> web.Response:
        body = await _json_object(request, "mo")
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - {"from", "to", "body", "account", "data_coding"})
        if unknown:
            return _json_response(
                400,
                _error_body(
                    f"{unknown[0]}: unknown MO field; known: from, to, body, account, data_coding"
                ),
            )
        for key in ("from", "to", "body"):
            if not isinstance(body.get(key), str):
                return _json_response(
                    400, _error_body(f"{key}: required string, got {body.get(key)!r}")
                )
        try:
            sent = self.send_mo(
                body["from"],
                body["to"],
                body["body"],
                account=body.get("account"),
                data_coding=body.get("data_coding"),
            )
        except NoReceiverBound as exc:
            return _json_response(409, _error_body(str(exc)))
        except ValueError as exc:
            return _json_response(400, _error_body(str(exc)))
        return _json_response(200, msgspec.json.encode(sent))


async def _json_object(request: web.BaseRequest, what: str) -> dict[str, Any] | web.Response:
    try:
        value = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        return _json_response(400, _error_body(f"{what}: body is not JSON: {exc}"))
    if not isinstance(value, dict):
        return _json_response(400, _error_body(f"{what}: expected a JSON object, got {value!r}"))
    return value


# Per-state TLVs, built once: message_state, and network_error_code for failures.
_STATE_TLVS: dict[str, tuple[Tlv, ...]] = {
    stat: (tlv_u8(Tag.message_state, code),)
    + (
        (
            Tlv(
                Tag.network_error_code,
                bytes(
                    (_NETWORK_TYPE_GSM, _NETWORK_ERRORS[stat] >> 8, _NETWORK_ERRORS[stat] & 0xFF)
                ),
            ),
        )
        if stat in _FAILED_STATES
        else ()
    )
    for stat, code in _STATE_CODES.items()
}
_minute_texts: dict[int, str] = {}


def _receipt_date(unix_time: float) -> str:
    """YYMMDDhhmm in local time, as Appendix B writes it; one strftime per minute, not per
    receipt (formatting dates was a tenth of a receipt's cost)."""
    minute = int(unix_time // 60)
    text = _minute_texts.get(minute)
    if text is None:
        if len(_minute_texts) > 64:
            _minute_texts.clear()
        text = _minute_texts[minute] = datetime.fromtimestamp(minute * 60).strftime("%y%m%d%H%M")
    return text


def _receipt_pdu(record: Accepted, stat: str) -> DeliverSm:
    """The deliver_sm carrying the receipt of ``record`` in state ``stat``."""
    submit = record.pdu
    preview = text_of(submit)[:20]
    if not is_gsm(preview):
        preview = "".join(char if is_gsm(char) else "?" for char in preview)
    text = format_receipt_text(
        record.message_id,
        stat,
        submitted=_receipt_date(record.received_at),
        done=_receipt_date(time.time()),
        err=_NETWORK_ERRORS.get(stat, 0),
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


def _mo_parts(text: str, data_coding: int | None, reference: int) -> list[tuple[bytes, int, bool]]:
    """(short_message, data_coding, has UDH) for each part of an MO text."""
    if data_coding is not None and (isinstance(data_coding, bool) or data_coding not in (0, 8)):
        raise ValueError(
            f"data_coding: expected 0 (GSM 7-bit), 8 (UCS-2) or null (choose), got {data_coding!r}"
        )
    if data_coding is None or data_coding == 0:
        if data_coding == 0:
            encode_gsm(text)  # ValueError naming the first character GSM cannot carry
        segments = split(text, reference=reference, max_segments=PROTOCOL_MAX_SEGMENTS)
        return [(s.payload, s.data_coding, s.needs_udhi) for s in segments]
    data = encode_ucs2(text)
    if len(data) <= _UCS2_SINGLE_OCTETS:
        return [(data, 8, False)]
    ends = []
    start = 0
    while len(data) - start > _UCS2_PART_OCTETS:
        end = start + _UCS2_PART_OCTETS
        if 0xD8 <= data[end - 2] <= 0xDB:  # never split a surrogate pair
            end -= 2
        ends.append(end)
        start = end
    ends.append(len(data))
    if len(ends) > PROTOCOL_MAX_SEGMENTS:
        raise ValueError(f"text: needs {len(ends)} parts; at most {PROTOCOL_MAX_SEGMENTS}")
    parts = []
    start = 0
    for seq, end in enumerate(ends, 1):
        udh = bytes((5, 0x00, 3, reference, len(ends), seq))
        parts.append((udh + data[start:end], 8, True))
        start = end
    return parts


# -- command line (`sluice sim smsc`) --------------------------------------------------------

# Option fields whose flag is not simply the field name with dashes.
_FLAGS = {
    "accounts": "--account",
    "receipt_states": "--receipt-state",
    "destinations_rejected": "--reject-destination",
}


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
    add("--report-seconds", type=float, default=0.0,
        help="print a one-line stats summary every N seconds; 0 = off")  # fmt: skip


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
    for name in (
        "system_id",
        "max_binds_per_account",
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
    ):
        fields[name] = getattr(args, name)
    try:
        return SmscOptions(**fields)
    except ValueError as exc:
        field, sep, reason = str(exc).partition(": ")
        base = field.split("[", 1)[0]
        flag = _FLAGS.get(base, "--" + base.replace("_", "-"))
        raise ValueError(f"{flag}{field[len(base) :]}{sep}{reason}") from None


async def run_from_args(args: argparse.Namespace) -> None:
    """Run the simulator until cancelled, printing a summary every ``--report-seconds``."""
    options = options_from_args(args)
    check_number("--report-seconds", args.report_seconds, 0.0)
    for flag, port in (("--port", args.port), ("--control-port", args.control_port)):
        if not 0 <= port <= 65535:
            raise ValueError(f"{flag}: expected 0..65535, got {port}")
    smsc = SmscSimulator(options)
    await smsc.start(args.host, args.port)
    try:
        control = await smsc.start_control(args.control_port) if args.control_port else None
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"SMSC simulator listening on {host}:{smsc.port} "
            f"(control {control if control is not None else 'off'})",
            flush=True,
        )
        if args.report_seconds > 0:
            while True:
                await asyncio.sleep(args.report_seconds)
                print(smsc.stats().summary(), flush=True)
        else:
            await asyncio.Event().wait()
    finally:
        await smsc.close()
        print(f"SMSC simulator closed: {smsc.stats().summary()}", flush=True)
