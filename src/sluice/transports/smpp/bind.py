"""One SMPP bind: a TCP connection to the SMSC around the sans-IO session, with its window.

The bind keeps up to `window` submit_sm outstanding at once — the link stays full instead of
carrying one PDU per round trip — and matches responses to requests by sequence number. Every
request has a deadline (`response_timeout_seconds`); a response that never comes frees its
slot and fails its sender, a connection that goes quiet past an enquire_link is closed.

Incoming deliver_sm and data_sm (receipts and mobile-originated messages) are handed to the
owner, whose answer becomes the response status, so a receipt is acknowledged only once it is
committed. alert_notification has no response (SMPP v3.4 section 4.12); it is logged.

A third-party SMSC gets things wrong, and the bind survives it: a PDU that cannot be understood
is answered with an error and the session goes on; an unbind from the SMSC is answered once the
responses still in flight have arrived (or `unbind_drain_seconds` passed), so they are not sent
again. Each fault is counted (`SmppFaults`, shared by a channel's binds) and logged as a warning
at most once per `fault_log_interval_seconds` per kind and bind, with how many were not logged.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from sluice.config import SmppConfig
from sluice.flow.cap_finder import CapFinder
from sluice.flow.rate import AdaptiveRate, TokenBucket
from sluice.protocols.smpp import (
    AlertNotification,
    BindTransceiver,
    BindTransmitter,
    CommandId,
    CommandStatus,
    DataSm,
    DeliverSm,
    EnquireLink,
    Fatal,
    GenericNack,
    LocalProtocolError,
    Pdu,
    PduReceived,
    ProtocolViolation,
    Rejected,
    Role,
    SmppProtocolError,
    SmppSession,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    describe,
    is_known_status,
    is_request,
    response_for,
)

log = logging.getLogger("sluice.smpp")

#: Seconds an unbind waits for its response while closing before the socket is dropped.
UNBIND_WAIT_SECONDS = 1.0

#: A deliver_sm or data_sm from the SMSC (a receipt or an MO message).
Delivery = DeliverSm | DataSm
OnDeliver = Callable[[Delivery], Awaitable[int]]
#: Take a delivery without a task: call the reply function with the command status once it
#: is handled (from the event loop), and return True; or return False to have `OnDeliver`
#: handle it in a task.
OnDeliverNow = Callable[[Delivery, Callable[[int], None]], bool]
#: Starts a task in the owner's task group (the bind's connection outlives none of them).
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class BindError(Exception):
    """The SMSC refused the bind or the connection failed while binding."""


class SmppFaults:
    """What the SMSC got wrong, by kind, counted since start (shared by a channel's binds, so
    the counts outlive reconnects). `counts()` is the snapshot to report."""

    #: The kinds, in the order they are reported.
    KINDS = (
        "unknown_response",  # a response to no request in the window (a wrong sequence_number)
        "bad_response",  # a response that does not decode or is not allowed in the state
        "generic_nack",  # a request answered with generic_nack
        "unknown_status",  # a command_status SMPP v3.4 does not define
        "response_timeout",  # no response within response_timeout_seconds
        "refused_request",  # a request the session refused (wrong state, undecodable)
        "bad_request",  # a request that decoded but could not be understood (a bad TLV)
        "no_message_id",  # an accepted submit_sm without a usable message_id
        "fatal",  # a broken stream (a bad command_length): the connection is closed
    )

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.KINDS, 0)

    def add(self, kind: str) -> None:
        self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


class _FaultLog:
    """Warnings about the SMSC's faults, at most one per kind per `interval` seconds."""

    __slots__ = ("_clock", "_interval", "_last", "_name", "_unlogged")

    def __init__(self, name: str, interval: float, clock: Callable[[], float]) -> None:
        self._name = name
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._last[kind] = now
        unlogged = self._unlogged.pop(kind, 0)
        more = f" ({unlogged} more {kind} not logged)" if unlogged else ""
        log.warning("%s: %s%s", self._name, message, more)


#: PDUs written while a read is handled (answers make room for new submit_sm) are gathered and
#: written when the read is done, or as soon as they make up this fraction (1/n) of the read's
#: PDUs (at most of the window): fewer system calls than one write each, and the SMSC works on
#: the first ones while the rest are encoded. Other writes go out at once.
FLUSH_SHARE = 4


#: Called with a request's response, or with the LinkLost / ResponseTimeout in its place.
Answer = Callable[["Pdu | Exception"], None]


def _settling(future: asyncio.Future[Pdu]) -> Answer:
    """An `Answer` that settles `future` with the response or the error (once)."""

    def answer(response: Pdu | Exception) -> None:
        if future.done():
            return
        if isinstance(response, Exception):
            future.set_exception(response)
        else:
            future.set_result(response)

    return answer


class Queued:
    """A submit waiting in a paced bind's queue; `dropped` once its sender gave up or it was
    answered without being sent."""

    __slots__ = ("answer", "dropped", "pdu")

    def __init__(self, pdu: SubmitSm, answer: Answer) -> None:
        self.pdu = pdu
        self.answer = answer
        self.dropped = False


class LinkLost(Exception):
    """The connection dropped (or was closed) while a request waited for its response."""


class NotSent(LinkLost):
    """A queued submit given up before it was written (the channel is stopping)."""


class ResponseTimeout(Exception):
    """No response within the configured time."""


#: The shortest wait for a bind's next token (a float refill can ask for ~0 s and not
#: have the token yet).
_MIN_PACE_SECONDS = 0.0002


class SmppBind(asyncio.Protocol):
    """Examples:
    bind = SmppBind("sms#0", config, on_deliver)
    await bind.open()                    # connect and bind
    resp = await bind.submit(submit_sm)  # waits for a window slot and a token
    await bind.closed                    # the connection ended
    """

    def __init__(
        self,
        name: str,
        config: SmppConfig,
        on_deliver: OnDeliver,
        spawn: Spawn,
        on_deliver_now: OnDeliverNow = lambda pdu, reply: False,
        clock: Callable[[], float] = time.monotonic,
        faults: SmppFaults | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._on_deliver = on_deliver
        self._on_deliver_now = on_deliver_now
        self._spawn = spawn
        self._session = SmppSession(Role.ESME, max_command_length=config.max_pdu_bytes)
        self.faults = faults if faults is not None else SmppFaults()
        self._fault_log = _FaultLog(name, config.fault_log_interval_seconds, clock)
        #: The SMSC's unbind, held while the window drains (see `_drain_then_answer`).
        self._unbind: Unbind | None = None
        self._unbind_timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        #: PDUs written while a read is handled, sent together (see FLUSH_SHARE).
        self._outbox: list[bytes] = []
        self._gather_max = max(1, config.window // FLUSH_SHARE)
        self._flush_at = self._gather_max
        #: Inside `data_received`: what it writes goes out when it returns.
        self._reading = False
        #: A write of the outbox is scheduled for the end of this turn of the loop.
        self._flush_due = False
        #: What to call with the response (or LinkLost / ResponseTimeout), by sequence number.
        self._outstanding: dict[int, Answer] = {}
        #: (deadline, sequence) of requests in sending order, swept by `_expire`.
        self._deadlines: deque[tuple[float, int]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        #: Submits waiting for a token or a window slot (`submit_paced`): a heap of (0 for
        #: urgent else 1, arrival, the entry), released by one timer per bind.
        self._paced: list[tuple[int, int, Queued]] = []
        self._paced_order = itertools.count()
        self._pacer: asyncio.TimerHandle | None = None
        #: A token reserved for the head of `_paced` (its timer ran, or is set).
        self._token_held = False
        self._slot_freed = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bound = False
        # Stamps what the SMSC sends (for the keepalive) and paces the rate; response deadlines
        # run on the event loop's clock, which is the same time.monotonic by default.
        self._clock = clock
        self.last_heard = clock()
        self.bucket = TokenBucket(config.bind_rate, config.bind_burst, clock)
        #: AIMD under a configured bind_rate; without one, the bind measures the SMSC's cap
        #: from its throttles.
        self.pacer: AdaptiveRate | CapFinder = (
            AdaptiveRate(ceiling=config.bind_rate, floor=min(1.0, config.bind_rate), clock=clock)
            if config.bind_rate > 0
            else CapFinder(start=max(10.0, config.window * 20.0), clock=clock)
        )
        self.submitted = 0
        self.throttled = 0

    # ------------------------------------------------------------------ state

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def window(self) -> int:
        """Requests this bind may have outstanding at once (smpp.window)."""
        return self._config.window

    @property
    def free(self) -> int:
        return self._config.window - len(self._outstanding) if self.bound else 0

    @property
    def queued(self) -> int:
        """Submits waiting in this bind for a token or a window slot (`submit_paced`)."""
        return len(self._paced)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._clock()
        self._reading = True
        try:
            self._handle(data)
        finally:
            self._reading = False
            self._write_out()

    def _handle(self, data: bytes) -> None:
        events = self._session.receive_data(data)
        # Gather in proportion to what this read brings: many answers at once (a fast SMSC)
        # make room for many submit_sm, written a quarter of them at a time; a few (a slow
        # one) go out one by one, so none waits for the others to be encoded.
        self._flush_at = max(1, min(self._gather_max, len(events) // FLUSH_SHARE))
        for event in events:
            if isinstance(event, PduReceived):
                try:
                    self._dispatch(event.pdu)
                except Exception as exc:  # one PDU we cannot understand must not end the link
                    self._not_understood(event.pdu, exc)
            elif isinstance(event, Rejected):
                self._fault("refused_request", f"refused a PDU from the SMSC: {event.reason}")
                if event.reply:
                    self._write(event.reply)
            elif isinstance(event, ProtocolViolation):
                self._bad_response(event)
            elif isinstance(event, Fatal):
                self.faults.add("fatal")
                log.error("%s: protocol error from the SMSC, closing: %s", self.name, event.reason)
                if event.reply:
                    self._write(event.reply)
                self._abort()

    def _fault(self, kind: str, message: str) -> None:
        self.faults.add(kind)
        self._fault_log.warn(kind, message)

    def _not_understood(self, pdu: Pdu, exc: Exception) -> None:
        """Answer a request whose handling failed with an error (a response is never
        answered); the session goes on."""
        if isinstance(exc, SmppProtocolError):
            status, reason = exc.status, exc.message
        else:
            status, reason = CommandStatus.ESME_RSYSERR, f"{type(exc).__name__}: {exc}"
        what = f"{type(pdu).__name__} (sequence_number {pdu.sequence_number})"
        self._fault("bad_request", f"cannot handle {what} from the SMSC: {reason}")
        if is_request(pdu) and not isinstance(pdu, AlertNotification):
            self._reply(response_for(pdu, status))

    def _bad_response(self, event: ProtocolViolation) -> None:
        """A response that does not decode, or is not allowed now. A submit_sm_resp whose
        header says ESME_ROK still means the message was accepted: sending it again would put
        a duplicate on the handset, so it is answered as accepted, without a message_id."""
        if (
            event.command_id == CommandId.submit_sm_resp
            and event.command_status == CommandStatus.ESME_ROK
            and event.sequence_number in self._outstanding
        ):
            self._fault(
                "no_message_id",
                f"submit_sm_resp {event.sequence_number} accepted without a usable message_id "
                f"({event.reason}); its receipt cannot be matched",
            )
            self._answer(event.sequence_number, SubmitSmResp(event.sequence_number, 0, ""))
            return
        self._fault("bad_response", f"bad response from the SMSC: {event.reason}")
        self._answer(event.sequence_number, LinkLost(f"{self.name}: {event.reason}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.bound = False
        self._transport = None
        self._outbox = []
        self._unbind = None
        if self._unbind_timer is not None:
            self._unbind_timer.cancel()
            self._unbind_timer = None
        error = LinkLost(f"{self.name}: connection lost" + (f": {exc}" if exc else ""))
        outstanding, self._outstanding = self._outstanding, {}
        for answer in outstanding.values():
            answer(error)
        self._deadlines.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._fail_paced(error)
        self._slot_freed.set()
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ open / close

    async def open(self) -> None:
        """Connect and bind; raise BindError with the SMSC's reason if that fails."""
        config = self._config
        context: ssl.SSLContext | None = None
        if config.tls:
            context = ssl.create_default_context()
            if not config.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(config.connect_timeout_seconds):
                await loop.create_connection(lambda: self, config.host, config.port, ssl=context)
        except (OSError, TimeoutError) as exc:
            raise BindError(f"cannot connect to {config.host}:{config.port}: {exc}") from None
        kind = BindTransceiver if config.bind_type == "transceiver" else BindTransmitter
        request = kind(
            sequence_number=0,
            system_id=config.system_id,
            password=config.password,
            system_type=config.system_type,
        )
        try:
            response = await self._request(request, bound_required=False)
        except (LinkLost, ResponseTimeout) as exc:
            self._abort()
            raise BindError(f"bind failed: {exc}") from None
        if response.command_status != CommandStatus.ESME_ROK:
            self._abort()
            raise BindError(f"the SMSC refused the bind: {describe(response.command_status)}")
        self.bound = True
        self._slot_freed.set()

    async def close(self) -> None:
        """Unbind politely, then drop the connection."""
        if self._transport is None:
            return
        if self.bound:
            self.bound = False
            try:
                async with asyncio.timeout(UNBIND_WAIT_SECONDS):
                    await self._request(Unbind(sequence_number=0), bound_required=False)
            except (LinkLost, ResponseTimeout, TimeoutError):
                pass
        self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._write_out()  # a last answer (generic_nack, unbind_resp) before the close
            self._transport.close()

    # ------------------------------------------------------------------ requests

    async def keepalive(self) -> None:
        """Send enquire_link after `enquire_link_seconds` of silence; returns when closed."""
        interval = self._config.enquire_link_seconds
        while not self.closed.done():
            idle = self._clock() - self.last_heard
            if idle >= interval:
                try:
                    await self._request(EnquireLink(sequence_number=0), bound_required=False)
                except (LinkLost, ResponseTimeout) as exc:
                    log.warning("%s: enquire_link failed (%s); closing", self.name, exc)
                    self._abort()
                    return
                continue
            done, _ = await asyncio.wait({self.closed}, timeout=interval - idle)
            if done:
                return

    async def wait_slot(self) -> None:
        """Wait until this bind has a free window slot (or is closed)."""
        while self.bound and self.free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def submit(self, pdu: SubmitSm, *, urgent: bool = False) -> Pdu:
        """Send one submit_sm within the window and the rate; return its response
        (submit_sm_resp, or generic_nack). On a paced bind it waits in the bind's queue like
        `submit_paced` (in its order, within the window); cancelled there, it is never sent."""
        if self.bucket.rate > 0:
            future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()

            entry = self.submit_paced(pdu, _settling(future), urgent=urgent)
            try:
                return await future
            finally:
                entry.dropped = True  # cancelled while queued: skipped, never sent
        await self.wait_slot()
        if not self.bound:
            raise LinkLost(f"{self.name}: not bound")
        return await self._request(pdu)

    def on_throttled(self) -> None:
        self.throttled += 1
        self.bucket.rate = self.pacer.on_throttle()

    def on_accepted(self) -> None:
        rate = self.pacer.on_success()
        if rate != self.bucket.rate:
            self.bucket.rate = rate

    def submit_paced(self, pdu: SubmitSm, answer: Answer, *, urgent: bool) -> Queued:
        """Send one submit_sm as soon as the bind's rate and window allow, urgent ones ahead
        of those waiting, without a task. `answer` as for `submit_soon` (LinkLost when the link
        goes first). Raises LinkLost if the bind is not up.

        Why a queue and not a sleep per submit: a sleeping submit holds its place, so an
        urgent one waited behind every bulk submit already reserved (40-60 ms on a bind paced
        at 500/s beside a broadcast); and a task and a timer per message cost more CPU than
        one timer per bind."""
        if not self.bound:
            raise LinkLost(f"{self.name}: not bound")
        entry = Queued(pdu, answer)
        heapq.heappush(self._paced, (0 if urgent else 1, next(self._paced_order), entry))
        self._pace()
        return entry

    def _pace(self) -> None:
        """Send queued submits while there are a token and a window slot; then wait for the
        next token (a timer) or a freed slot (`_answer` calls this again)."""
        if self._pacer is not None:
            return  # the timer for the next token is set
        paced = self._paced
        bucket = self.bucket
        while paced and self.free > 0:
            if bucket.rate > 0 and not self._token_held:
                # Reserved, not tried: a timer that fires late (the loop's timers have a
                # millisecond's grain) shortens the next wait instead of losing the token.
                delay = bucket.reserve()
                self._token_held = True
                if delay > 0:
                    self._pacer = asyncio.get_running_loop().call_later(
                        max(delay, _MIN_PACE_SECONDS), self._paced_due
                    )
                    return
            entry = heapq.heappop(paced)[2]
            if entry.dropped:
                continue  # its sender gave up (cancelled): the token serves the next one
            self._token_held = False
            try:
                self._send_request(entry.pdu, True, entry.answer)
            except LinkLost as exc:
                if bucket.rate > 0:
                    bucket.give_back()
                entry.answer(exc)

    def _paced_due(self) -> None:
        self._pacer = None
        self._pace()

    def drop_queued(self) -> int:
        """Answer every submit still waiting in the queue `NotSent` (the channel is
        stopping: none of them reaches the SMSC after this); returns how many."""
        waiting = sum(1 for _, _, entry in self._paced if not entry.dropped)
        self._fail_paced(NotSent(f"{self.name}: not sent, the channel is stopping"))
        return waiting

    def _fail_paced(self, error: LinkLost) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        if self._token_held:
            self._token_held = False
            self.bucket.give_back()
        paced, self._paced = self._paced, []
        for _, _, entry in paced:
            if not entry.dropped:
                entry.dropped = True
                entry.answer(error)

    def submit_soon(self, pdu: SubmitSm, answer: Answer) -> None:
        """Send one submit_sm now, without a task: the caller saw a free window slot (`free`)
        on a bind that is not paced (`bucket`). `answer` is called with the response, or with
        LinkLost or ResponseTimeout, from the event loop. Raises LinkLost if the link is down."""
        self._send_request(pdu, True, answer)

    async def _request(self, pdu: Pdu, bound_required: bool = True) -> Pdu:
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        sequence = self._send_request(pdu, bound_required, _settling(future))
        try:
            return await future
        finally:  # cancelled: the window slot is free again
            if self._outstanding.pop(sequence, None) is not None:
                self._slot_freed.set()
                if self._paced:
                    self._pace()

    def _send_request(self, pdu: Pdu, bound_required: bool, answer: Answer) -> int:
        """Write `pdu`, remember who waits for its response; swept at the response timeout."""
        if self._transport is None or (bound_required and not self.bound):
            raise LinkLost(f"{self.name}: not connected")
        try:
            data = self._session.send(pdu)
        except LocalProtocolError as exc:
            raise LinkLost(f"{self.name}: {exc}") from None
        sequence = self._session.last_sequence
        loop = asyncio.get_running_loop()
        self._outstanding[sequence] = answer
        self._deadlines.append((loop.time() + self._config.response_timeout_seconds, sequence))
        if self._sweeper is None:
            self._sweeper = loop.call_at(self._deadlines[0][0], self._expire)
        self._write(data)
        return sequence

    def _answer(self, sequence: int, response: Pdu | Exception) -> bool:
        """Hand a response (or the error in its place) to its request; frees the slot."""
        answer = self._outstanding.pop(sequence, None)
        if answer is None:
            return False
        self._slot_freed.set()
        if self._paced:
            self._pace()
        if isinstance(response, SubmitSmResp):
            self.submitted += 1
        if isinstance(response, Pdu):
            self._check_status(response)
        answer(response)
        if self._unbind is not None and not self._outstanding:
            self._answer_unbind()
        return True

    def _check_status(self, response: Pdu) -> None:
        status = response.command_status
        if isinstance(response, GenericNack):
            self._fault(
                "generic_nack",
                f"generic_nack to request {response.sequence_number}: {describe(status)}",
            )
        elif status and not is_known_status(status):
            self._fault(
                "unknown_status",
                f"{type(response).__name__} {response.sequence_number}: {describe(status)}",
            )

    def _expire(self) -> None:
        """Fail the requests whose deadline passed: one timer per bind, not one per request.
        Every request has the same timeout, so deadlines are in sending order."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, sequence = deadlines.popleft()
            if sequence in self._outstanding:
                message = f"no response within {self._config.response_timeout_seconds:g} s"
                self._fault("response_timeout", f"request {sequence}: {message}")
                self._answer(sequence, ResponseTimeout(f"{self.name}: {message}"))
        if deadlines:
            self._sweeper = loop.call_at(deadlines[0][0], self._expire)

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            return
        outbox = self._outbox
        outbox.append(data)
        if self._reading:
            if len(outbox) >= self._flush_at:  # the SMSC starts on these while we go on
                self._write_out()
        elif not self._flush_due:
            # Written at the end of this turn of the loop, with whatever else this turn
            # writes: a runner sending a claimed batch makes one write (one syscall) a bind,
            # not one a message (a write was a tenth of the event loop's time at 6,000
            # messages/s over 10 binds).
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._write_out)
        elif len(outbox) >= self._gather_max:
            self._write_out()

    def _write_out(self) -> None:
        """Write the PDUs gathered while handling a read (the requests its answers made room
        for): one write for many."""
        self._flush_due = False
        outbox = self._outbox
        if not outbox:
            return
        self._outbox = []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))

    # ------------------------------------------------------------------ incoming

    def _dispatch(self, pdu: Pdu) -> None:
        if not is_request(pdu):
            if not self._answer(pdu.sequence_number, pdu):
                self._fault(
                    "unknown_response",
                    f"{type(pdu).__name__} {pdu.sequence_number} answers no request in the "
                    f"window ({describe(pdu.command_status)})",
                )
            return
        if isinstance(pdu, DeliverSm | DataSm):
            if not self._on_deliver_now(pdu, functools.partial(self._answer_deliver, pdu)):
                self._spawn(self._deliver(pdu))
        elif isinstance(pdu, Unbind):
            self._on_unbind(pdu)
        elif isinstance(pdu, AlertNotification):
            # No response exists for it (SMPP v3.4 section 4.12): a generic_nack would be a fault.
            log.info("%s: alert_notification: %s is available again", self.name, pdu.source_addr)
        else:  # enquire_link and anything else the session let through: answer it
            self._reply(response_for(pdu, CommandStatus.ESME_ROK))

    def _on_unbind(self, pdu: Unbind) -> None:
        """The SMSC unbinds: submit no more, let the responses in flight arrive (the session
        allows them while UNBOUND), then answer, within `unbind_drain_seconds`."""
        self.bound = False
        self._fail_paced(LinkLost(f"{self.name}: the SMSC unbinds"))
        self._slot_freed.set()  # senders waiting for a slot learn that the bind is gone
        if not self._outstanding:
            self._reply(response_for(pdu, CommandStatus.ESME_ROK))
            self._abort()
            return
        self._unbind = pdu
        self._unbind_timer = asyncio.get_running_loop().call_later(
            self._config.unbind_drain_seconds, self._answer_unbind
        )

    def _answer_unbind(self) -> None:
        unbind, self._unbind = self._unbind, None
        if self._unbind_timer is not None:
            self._unbind_timer.cancel()
            self._unbind_timer = None
        if unbind is None:
            return
        self._reply(response_for(unbind, CommandStatus.ESME_ROK))
        self._abort()

    async def _deliver(self, pdu: Delivery) -> None:
        try:
            status = await self._on_deliver(pdu)
        except SmppProtocolError as exc:  # the PDU cannot be understood: say so, for good
            self._not_understood(pdu, exc)
            return
        except Exception:
            log.exception("%s: handling a %s failed", self.name, type(pdu).__name__)
            status = CommandStatus.ESME_RX_T_APPN  # temporary: the SMSC will try again
        self._reply(response_for(pdu, status))

    def _answer_deliver(self, pdu: Delivery, status: int) -> None:
        self._reply(response_for(pdu, status))

    def _reply(self, response: Pdu) -> None:
        """Answer the SMSC unless the link is gone (then the SMSC will repeat its request)."""
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._write(self._session.send(response))
        except LocalProtocolError as exc:  # the session closed under us (unbind, fatal)
            log.debug("%s: not answering: %s", self.name, exc)
