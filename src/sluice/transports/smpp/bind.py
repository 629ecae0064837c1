"""One SMPP bind: a TCP connection to the SMSC around the sans-IO session, with its window.

The bind keeps up to `window` submit_sm outstanding at once — the link stays full instead of
carrying one PDU per round trip — and matches responses to requests by sequence number. Every
request has a deadline (`response_timeout_seconds`); a response that never comes frees its
slot and fails its sender, a connection that goes quiet past an enquire_link is closed.

Incoming deliver_sm (receipts and mobile-originated messages) are handed to the owner, whose
answer becomes the deliver_sm_resp status, so a receipt is acknowledged only once it is
committed.
"""

from __future__ import annotations

import asyncio
import functools
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
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DeliverSm,
    EnquireLink,
    Fatal,
    LocalProtocolError,
    Pdu,
    PduReceived,
    ProtocolViolation,
    Rejected,
    Role,
    SmppSession,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    describe,
    is_request,
    response_for,
)

log = logging.getLogger("sluice.smpp")

#: Seconds an unbind waits for its response while closing before the socket is dropped.
UNBIND_WAIT_SECONDS = 1.0

OnDeliver = Callable[[DeliverSm], Awaitable[int]]
#: Take a deliver_sm without a task: call the reply function with the command status once it
#: is handled (from the event loop), and return True; or return False to have `OnDeliver`
#: handle it in a task.
OnDeliverNow = Callable[[DeliverSm, Callable[[int], None]], bool]
#: Starts a task in the owner's task group (the bind's connection outlives none of them).
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class BindError(Exception):
    """The SMSC refused the bind or the connection failed while binding."""


#: PDUs written while a read is handled (answers make room for new submit_sm) are gathered and
#: written when the read is done, or as soon as they make up this fraction (1/n) of the read's
#: PDUs (at most of the window): fewer system calls than one write each, and the SMSC works on
#: the first ones while the rest are encoded. Other writes go out at once.
FLUSH_SHARE = 4


#: Called with a request's response, or with the LinkLost / ResponseTimeout in its place.
Answer = Callable[["Pdu | Exception"], None]


class LinkLost(Exception):
    """The connection dropped (or was closed) while a request waited for its response."""


class ResponseTimeout(Exception):
    """No response within the configured time."""


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
    ) -> None:
        self.name = name
        self._config = config
        self._on_deliver = on_deliver
        self._on_deliver_now = on_deliver_now
        self._spawn = spawn
        self._session = SmppSession(Role.ESME)
        self._transport: asyncio.Transport | None = None
        #: PDUs written while a read is handled, sent together (see FLUSH_SHARE).
        self._outbox: list[bytes] = []
        self._gather_max = max(1, config.window // FLUSH_SHARE)
        self._flush_at = self._gather_max
        #: Inside `data_received`: what it writes goes out when it returns.
        self._reading = False
        #: What to call with the response (or LinkLost / ResponseTimeout), by sequence number.
        self._outstanding: dict[int, Answer] = {}
        #: (deadline, sequence) of requests in sending order, swept by `_expire`.
        self._deadlines: deque[tuple[float, int]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._slot_freed = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bound = False
        # Stamps what the SMSC sends (for the keepalive) and paces the rate; response deadlines
        # run on the event loop's clock, which is the same time.monotonic by default.
        self._clock = clock
        self.last_heard = clock()
        burst = max(1.0, config.bind_rate / 10) if config.bind_rate else 1.0
        self.bucket = TokenBucket(config.bind_rate, burst, clock)
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
    def free(self) -> int:
        return self._config.window - len(self._outstanding) if self.bound else 0

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
                self._dispatch(event.pdu)
            elif isinstance(event, Rejected):
                log.warning("%s: refused %s from the SMSC: %s", self.name,
                            type(event.pdu).__name__, event.reason)  # fmt: skip
                if event.reply:
                    self._write(event.reply)
            elif isinstance(event, ProtocolViolation):
                log.warning("%s: bad response from the SMSC: %s", self.name, event.reason)
                self._answer(event.sequence_number, LinkLost(f"{self.name}: {event.reason}"))
            elif isinstance(event, Fatal):
                log.error("%s: protocol error from the SMSC, closing: %s", self.name, event.reason)
                if event.reply:
                    self._write(event.reply)
                self._abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bound = False
        self._transport = None
        self._outbox = []
        error = LinkLost(f"{self.name}: connection lost" + (f": {exc}" if exc else ""))
        outstanding, self._outstanding = self._outstanding, {}
        for answer in outstanding.values():
            answer(error)
        self._deadlines.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
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

    async def submit(self, pdu: SubmitSm) -> Pdu:
        """Send one submit_sm within the window and the rate; return its response
        (submit_sm_resp, or generic_nack)."""
        await self.wait_slot()
        if not self.bound:
            raise LinkLost(f"{self.name}: not bound")
        if self.bucket.rate > 0:
            delay = self.bucket.reserve()
            if delay > 0:
                await asyncio.sleep(delay)
        return await self._request(pdu)

    def on_throttled(self) -> None:
        self.throttled += 1
        self.bucket.rate = self.pacer.on_throttle()

    def on_accepted(self) -> None:
        rate = self.pacer.on_success()
        if rate != self.bucket.rate:
            self.bucket.rate = rate

    def submit_soon(self, pdu: SubmitSm, answer: Answer) -> None:
        """Send one submit_sm now, without a task: the caller saw a free window slot (`free`)
        on a bind that is not paced (`bucket`). `answer` is called with the response, or with
        LinkLost or ResponseTimeout, from the event loop. Raises LinkLost if the link is down."""
        self._send_request(pdu, True, answer)

    async def _request(self, pdu: Pdu, bound_required: bool = True) -> Pdu:
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()

        def answer(response: Pdu | Exception) -> None:
            if future.done():
                return
            if isinstance(response, Exception):
                future.set_exception(response)
            else:
                future.set_result(response)

        sequence = self._send_request(pdu, bound_required, answer)
        try:
            return await future
        finally:  # cancelled: the window slot is free again
            if self._outstanding.pop(sequence, None) is not None:
                self._slot_freed.set()

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
        if isinstance(response, SubmitSmResp):
            self.submitted += 1
        answer(response)
        return True

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
                self._answer(
                    sequence,
                    ResponseTimeout(
                        f"{self.name}: no response within "
                        f"{self._config.response_timeout_seconds:g} s"
                    ),
                )
        if deadlines:
            self._sweeper = loop.call_at(deadlines[0][0], self._expire)

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            return
        if not self._reading:
            self._transport.write(data)
            return
        outbox = self._outbox
        outbox.append(data)
        if len(outbox) >= self._flush_at:  # the SMSC starts on these while we go on
            self._write_out()

    def _write_out(self) -> None:
        """Write the PDUs gathered while handling a read (the requests its answers made room
        for): one write for many."""
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
                log.debug("%s: response to an unknown request %d", self.name, pdu.sequence_number)
            return
        if isinstance(pdu, DeliverSm):
            if not self._on_deliver_now(pdu, functools.partial(self._answer_deliver, pdu)):
                self._spawn(self._deliver(pdu))
        elif isinstance(pdu, Unbind):
            self._reply(response_for(pdu, CommandStatus.ESME_ROK))
            self.bound = False
            self._abort()
        else:  # enquire_link and anything else the session let through: answer it
            self._reply(response_for(pdu, CommandStatus.ESME_ROK))

    async def _deliver(self, pdu: DeliverSm) -> None:
        try:
            status = await self._on_deliver(pdu)
        except Exception:
            log.exception("%s: handling a deliver_sm failed", self.name)
            status = CommandStatus.ESME_RX_T_APPN  # temporary: the SMSC will try again
        self._reply(response_for(pdu, status))

    def _answer_deliver(self, pdu: DeliverSm, status: int) -> None:
        self._reply(response_for(pdu, status))

    def _reply(self, response: Pdu) -> None:
        """Answer the SMSC unless the link is gone (then the SMSC will repeat its request)."""
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._write(self._session.send(response))
        except LocalProtocolError as exc:  # the session closed under us (unbind, fatal)
            log.debug("%s: not answering: %s", self.name, exc)
