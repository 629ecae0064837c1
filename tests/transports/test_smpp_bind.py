"""The SMPP bind's state: its window, responses matched to their senders, response deadlines,
a disconnect, throttle answers and enquire_link, against a scripted SMSC on loopback.

Time is the event loop's and moves only when a test moves it (`ClockLoop`); the bind takes the
same clock for its keepalive and its pacing, so no test sleeps or depends on the machine's speed.
Where a test must show that something did *not* happen, it sends probes through the bind and
checks what reaches the SMSC before them: TCP keeps the order of what the bind writes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import pytest

from sluice.config import SmppConfig
from sluice.protocols.smpp import (
    AlertNotification,
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    PduParser,
    SmppProtocolError,
    SubmitSm,
    SubmitSmResp,
    Tag,
    Tlv,
    Unbind,
    UnbindResp,
    encode,
    response_for,
)
from sluice.transports.smpp.bind import BindError, LinkLost, ResponseTimeout, SmppBind

S = CommandStatus


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock stands still until the test calls `advance`."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Scenario = Callable[[ClockLoop], Coroutine[Any, Any, None]]


def run(scenario: Scenario) -> None:
    """Run `scenario` on a ClockLoop; any error the loop only logs fails the test."""
    errors: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=ClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ClockLoop)
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        runner.run(scenario(loop))
    assert errors == []


class Smsc:
    """A scripted SMSC on 127.0.0.1: answers bind and unbind itself, queues every other PDU the
    ESME sends for the test, and writes what the test gives it."""

    def __init__(self, bind_status: int = S.ESME_ROK, answer_binds: bool = True) -> None:
        self.bind_status = bind_status
        self.answer_binds = answer_binds
        self.received: asyncio.Queue[Pdu] = asyncio.Queue()
        self.port = 0
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._sequence = 1000
        #: The server's connection handlers, awaited on exit so that none is left to cancel.
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Smsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop()
        assert self._server is not None
        self._server.close()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writer = writer
        parser = PduParser()
        try:
            while data := await reader.read(65536):
                for pdu in parser.feed(data):
                    if isinstance(pdu, BindTransceiver | BindTransmitter) and self.answer_binds:
                        writer.write(encode(response_for(pdu, self.bind_status, system_id="SC")))
                    elif isinstance(pdu, Unbind):
                        writer.write(encode(response_for(pdu)))
                    self.received.put_nowait(pdu)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def send(self, *pdus: Pdu) -> None:
        assert self._writer is not None
        for pdu in pdus:
            self._writer.write(encode(pdu))

    def drop(self) -> None:
        """Close the connection as an SMSC that goes away would."""
        if self._writer is not None:
            self._writer.close()

    async def next(self) -> Pdu:
        return await self.received.get()

    async def next_submit_sm(self) -> SubmitSm:
        pdu = await self.next()
        assert isinstance(pdu, SubmitSm), pdu
        return pdu

    async def round_trip(self) -> None:
        """An enquire_link from the SMSC, answered by the bind: traffic the bind hears."""
        self._sequence += 1
        self.send(EnquireLink(sequence_number=self._sequence))
        answer = await self.next()
        assert answer == EnquireLinkResp(sequence_number=self._sequence)


def smpp_config(smsc: Smsc, **fields: Any) -> SmppConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": smsc.port,
        "system_id": "sluice",
        "password": "secret",
        "window": 3,
        "response_timeout_seconds": 10.0,
        "enquire_link_seconds": 30.0,
    }
    values.update(fields)
    return SmppConfig(**values)


async def accept_all(pdu: DeliverSm) -> int:
    return S.ESME_ROK


def make_bind(
    smsc: Smsc, tg: asyncio.TaskGroup, loop: ClockLoop, on_deliver: Any = accept_all, **fields: Any
) -> SmppBind:
    return SmppBind(
        "sms#0", smpp_config(smsc, **fields), on_deliver, tg.create_task, clock=loop.time
    )


async def bound(smsc: Smsc, tg: asyncio.TaskGroup, loop: ClockLoop, **fields: Any) -> SmppBind:
    bind = make_bind(smsc, tg, loop, **fields)
    await bind.open()
    assert isinstance(await smsc.next(), BindTransceiver)
    return bind


async def settled(awaitable: Coroutine[Any, Any, Any]) -> Any:
    """The outcome of `awaitable`, its exception included (a task group fails on raised ones)."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` while the loop runs I/O, for at most 10 s of real time."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached within 10 s"
        await asyncio.sleep(0)


def submit(n: int) -> SubmitSm:
    return SubmitSm(source_addr="Sluice", destination_addr=f"4915100000{n:02d}")


# --- bind --------------------------------------------------------------------------------------


def test_open_binds_and_close_unbinds() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop)
            assert (bind.bound, bind.free) == (False, 0)
            await bind.open()
            request = await smsc.next()
            assert isinstance(request, BindTransceiver)
            assert (request.system_id, request.password) == ("sluice", "secret")
            assert (bind.bound, bind.free, bind.outstanding) == (True, 3, 0)
            await bind.close()
            assert isinstance(await smsc.next(), Unbind)
            await bind.closed
            assert (bind.bound, bind.free) == (False, 0)

    run(scenario)


def test_refused_bind_raises_bind_error_and_closes() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc(bind_status=S.ESME_RINVPASWD) as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop)
            with pytest.raises(BindError, match="refused the bind"):
                await bind.open()
            await bind.closed
            assert not bind.bound

    run(scenario)


def test_unanswered_bind_times_out() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc(answer_binds=False) as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop, bind_type="transmitter")
            opening = tg.create_task(settled(bind.open()))
            assert isinstance(await smsc.next(), BindTransmitter)
            loop.advance(10)
            error = await opening
            assert isinstance(error, BindError)
            assert str(error) == "bind failed: sms#0: no response within 10 s"
            await bind.closed
            assert not bind.bound

    run(scenario)


# --- the window --------------------------------------------------------------------------------


def test_window_fills_and_each_response_frees_one_slot() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            answers = [loop.create_future() for _ in range(3)]
            for n, answer in enumerate(answers):
                bind.submit_soon(submit(n), answer.set_result)
                assert (bind.outstanding, bind.free) == (n + 1, 2 - n)
            requests = [await smsc.next_submit_sm() for _ in answers]
            assert [r.destination_addr for r in requests] == [
                submit(n).destination_addr for n in range(3)
            ]
            assert len({r.sequence_number for r in requests}) == 3

            waiting = tg.create_task(bind.wait_slot())
            await smsc.round_trip()
            assert not waiting.done()  # the window is full

            smsc.send(response_for(requests[1], message_id="m-1"))
            await waiting
            assert await answers[1] == SubmitSmResp(requests[1].sequence_number, message_id="m-1")
            assert (bind.outstanding, bind.free, bind.submitted) == (2, 1, 1)
            assert not answers[0].done() and not answers[2].done()

            smsc.send(response_for(requests[2], message_id="m-2"))
            smsc.send(response_for(requests[0], message_id="m-0"))
            assert (await answers[2]).message_id == "m-2"
            assert (await answers[0]).message_id == "m-0"
            assert (bind.outstanding, bind.free, bind.submitted) == (0, 3, 3)

    run(scenario)


def test_responses_out_of_order_reach_their_own_senders() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            senders = [tg.create_task(settled(bind.submit(submit(n)))) for n in range(3)]
            requests = [await smsc.next_submit_sm() for _ in senders]
            by_address = {r.destination_addr: r for r in requests}
            first, second, third = (by_address[submit(n).destination_addr] for n in range(3))
            smsc.send(
                response_for(third, message_id="c"),
                GenericNack(sequence_number=second.sequence_number, command_status=S.ESME_RSYSERR),
                response_for(first, S.ESME_RINVDSTADR),
            )
            results = [await sender for sender in senders]
            assert results[0] == SubmitSmResp(first.sequence_number, S.ESME_RINVDSTADR)
            assert results[1] == GenericNack(second.sequence_number, S.ESME_RSYSERR)
            assert results[2] == SubmitSmResp(third.sequence_number, message_id="c")
            assert (bind.outstanding, bind.free) == (0, 3)

    run(scenario)


def test_response_to_no_request_changes_nothing() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            answer = loop.create_future()
            bind.submit_soon(submit(1), answer.set_result)
            request = await smsc.next()
            smsc.send(SubmitSmResp(sequence_number=request.sequence_number + 100, message_id="x"))
            await smsc.round_trip()
            assert not answer.done()
            assert (bind.bound, bind.outstanding, bind.submitted) == (True, 1, 0)
            smsc.send(response_for(request, message_id="y"))
            assert (await answer).message_id == "y"

    run(scenario)


def test_cancelled_submit_frees_its_slot() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            sender = tg.create_task(bind.submit(submit(1)))
            request = await smsc.next()
            assert bind.outstanding == 1
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            assert (bind.outstanding, bind.free) == (0, 3)
            smsc.send(response_for(request, message_id="late"))  # nobody waits for it now
            await smsc.round_trip()
            assert bind.submitted == 0

    run(scenario)


# --- response deadlines ------------------------------------------------------------------------


def test_requests_fail_at_their_own_deadline() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            first, second = loop.create_future(), loop.create_future()
            bind.submit_soon(submit(1), first.set_result)
            loop.advance(4)
            bind.submit_soon(submit(2), second.set_result)
            late = await smsc.next()
            await smsc.next()

            loop.advance(6)  # 10 s after the first
            error = await first
            assert isinstance(error, ResponseTimeout)
            assert str(error) == "sms#0: no response within 10 s"
            assert not second.done()
            assert (bind.outstanding, bind.free) == (1, 2)

            loop.advance(3.5)
            await smsc.round_trip()
            assert not second.done()  # 9.5 s after it was sent
            loop.advance(0.5)
            assert isinstance(await second, ResponseTimeout)
            assert (bind.outstanding, bind.free) == (0, 3)

            smsc.send(response_for(late, message_id="too late"))  # after its deadline: dropped
            await smsc.round_trip()
            assert (bind.bound, bind.outstanding, bind.submitted) == (True, 0, 0)

    run(scenario)


def test_answered_request_has_no_deadline_left() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            results: list[Pdu | Exception] = []
            bind.submit_soon(submit(1), results.append)
            request = await smsc.next()
            smsc.send(response_for(request, message_id="m"))
            await smsc.round_trip()
            loop.advance(60)  # long past the deadline it had
            await smsc.round_trip()
            assert results == [SubmitSmResp(request.sequence_number, message_id="m")]

    run(scenario)


# --- disconnect --------------------------------------------------------------------------------


def test_disconnect_fails_the_window_and_closes_the_bind() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            answers = [loop.create_future() for _ in range(3)]
            for n, answer in enumerate(answers):
                bind.submit_soon(submit(n), answer.set_result)
            for _ in answers:
                await smsc.next()
            blocked = tg.create_task(settled(bind.submit(submit(3))))  # waits for a slot

            smsc.drop()
            await bind.closed
            for answer in answers:
                error = await answer
                assert isinstance(error, LinkLost) and "connection lost" in str(error)
            error = await blocked
            assert isinstance(error, LinkLost) and "not bound" in str(error)
            assert (bind.bound, bind.outstanding, bind.free) == (False, 0, 0)

            with pytest.raises(LinkLost):
                bind.submit_soon(submit(4), answers[0].set_result)
            await bind.wait_slot()  # returns at once: nothing to wait for on a closed bind
            # The failed requests' deadlines pass: nothing is answered twice (the loop's error
            # handler would see the second answer when the runner drains the loop).
            loop.advance(60)

    run(scenario)


def test_unbind_from_the_smsc_is_answered_and_closes() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            smsc.send(Unbind(sequence_number=77))
            assert await smsc.next() == UnbindResp(sequence_number=77)
            await bind.closed
            assert (bind.bound, bind.free) == (False, 0)

    run(scenario)


def test_unbind_from_the_smsc_waits_for_the_responses_in_flight() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            answers = [loop.create_future() for _ in range(3)]
            for n, answer in enumerate(answers):
                bind.submit_soon(submit(n), answer.set_result)
            requests = [await smsc.next_submit_sm() for _ in answers]
            smsc.send(Unbind(sequence_number=77))
            await until(lambda: not bind.bound)  # the unbind is read: no more submits
            assert (bind.bound, bind.free, bind.outstanding) == (False, 0, 3)
            with pytest.raises(LinkLost):
                bind.submit_soon(submit(9), answers[0].set_result)
            for n, request in enumerate(requests):
                smsc.send(response_for(request, message_id=f"m{n}"))
            # The unbind is answered only after the last response, which reaches its sender.
            assert await smsc.next() == UnbindResp(sequence_number=77)
            await bind.closed
            assert [(await a).message_id for a in answers] == ["m0", "m1", "m2"]

    run(scenario)


def test_unbind_from_the_smsc_is_answered_at_the_drain_deadline() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, unbind_drain_seconds=2.0)
            answer = loop.create_future()
            bind.submit_soon(submit(1), answer.set_result)
            await smsc.next()
            smsc.send(Unbind(sequence_number=77))
            await until(lambda: not bind.bound)
            assert not answer.done()
            loop.advance(2)  # the response never comes: the unbind is answered all the same
            assert await smsc.next() == UnbindResp(sequence_number=77)
            await bind.closed
            assert isinstance(await answer, LinkLost)

    run(scenario)


# --- throttling --------------------------------------------------------------------------------


def test_throttle_answer_frees_the_slot_and_slows_the_bind() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)  # no bind_rate: the bind finds the SMSC's cap
            assert bind.bucket.rate == 0
            answer = loop.create_future()
            bind.submit_soon(submit(1), answer.set_result)
            request = await smsc.next()
            smsc.send(response_for(request, S.ESME_RTHROTTLED))
            response = await answer
            assert response == SubmitSmResp(request.sequence_number, S.ESME_RTHROTTLED)
            assert (bind.outstanding, bind.free) == (0, 3)

            # The channel reads the status and tells the bind: the first throttle slows it
            # from unlimited to 85 % of its starting estimate (20 per second per window slot).
            bind.on_throttled()
            assert bind.throttled == 1
            assert bind.bucket.rate == pytest.approx(3 * 20 * 0.85)

    run(scenario)


def test_configured_rate_halves_on_throttles_a_second_apart_and_recovers() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, bind_rate=100.0)
            assert bind.bucket.rate == 100
            bind.on_throttled()
            assert bind.bucket.rate == 50
            bind.on_throttled()  # within a second: answers to what went out at the old rate
            assert bind.bucket.rate == 50
            loop.advance(1)
            bind.on_throttled()
            assert (bind.bucket.rate, bind.throttled) == (25, 3)
            loop.advance(2)
            bind.on_accepted()  # recovers at the ceiling's twentieth per second
            assert bind.bucket.rate == pytest.approx(25 + 2 * 100 / 20)
            loop.advance(60)
            bind.on_accepted()
            assert bind.bucket.rate == 100  # never above the configured rate

    run(scenario)


def test_paced_bind_holds_a_submit_until_its_token_is_due() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            # 100 per second with a burst of 10: ten go at once, the eleventh 10 ms later.
            bind = await bound(smsc, tg, loop, bind_rate=100.0, bind_burst=10.0, window=20)
            senders = [tg.create_task(settled(bind.submit(submit(n)))) for n in range(11)]
            for n in range(10):
                assert (await smsc.next_submit_sm()).destination_addr == submit(n).destination_addr
            await smsc.round_trip()
            assert bind.outstanding == 10  # the eleventh waits for its token
            loop.advance(0.01)
            assert (await smsc.next_submit_sm()).destination_addr == submit(10).destination_addr
            for n in range(11):
                smsc.send(SubmitSmResp(sequence_number=n + 2, message_id=str(n)))
            results = [await sender for sender in senders]
            assert [r.message_id for r in results if isinstance(r, SubmitSmResp)] == [
                str(n) for n in range(11)
            ]

    run(scenario)


def test_a_paced_bind_sends_strictly_at_its_rate_by_default() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            # 100 per second, bind_burst 1: one at once, then one every 10 ms, so an SMSC
            # counting per second never sees more than 100 in one.
            bind = await bound(smsc, tg, loop, bind_rate=100.0, window=20)
            senders = [tg.create_task(settled(bind.submit(submit(n)))) for n in range(3)]
            assert (await smsc.next_submit_sm()).destination_addr == submit(0).destination_addr
            await smsc.round_trip()
            assert bind.outstanding == 1
            for n in (1, 2):
                loop.advance(0.01)
                received = await smsc.next_submit_sm()
                assert received.destination_addr == submit(n).destination_addr
            for n in range(3):
                smsc.send(SubmitSmResp(sequence_number=n + 2, message_id=str(n)))
            assert len([await sender for sender in senders]) == 3

    run(scenario)


def test_an_urgent_submit_goes_ahead_of_those_waiting_for_their_token() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, bind_rate=100.0, window=2)
            answers: list[Any] = []
            for n in range(4):
                bind.submit_paced(submit(n), answers.append, urgent=False)
            bind.submit_paced(submit(50), answers.append, urgent=True)
            assert (await smsc.next_submit_sm()).destination_addr == submit(0).destination_addr
            assert bind.queued == 4
            loop.advance(0.01)  # the next token: the urgent one, not bulk 1
            assert (await smsc.next_submit_sm()).destination_addr == submit(50).destination_addr
            # The window (2) is full: a token alone sends nothing more.
            loop.advance(0.05)
            await smsc.round_trip()
            assert bind.outstanding == 2 and bind.queued == 3
            smsc.send(SubmitSmResp(sequence_number=2, message_id="a"))
            assert (await smsc.next_submit_sm()).destination_addr == submit(1).destination_addr
            # The link goes: what still waits hears so, nothing is left behind.
            smsc.drop()
            await bind.closed
            assert bind.queued == 0
            assert [type(a).__name__ for a in answers] == ["SubmitSmResp"] + ["LinkLost"] * 4

    run(scenario)


def test_a_paced_bind_queues_multi_part_submits_too_and_never_exceeds_its_window() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, bind_rate=1000.0, window=1)
            answers: list[Any] = []
            for n in range(2):
                bind.submit_paced(submit(n), answers.append, urgent=False)
            # A part of a long message waits in the same queue, in its turn: not starved by
            # the queue refilling every freed slot, and never beside it over the window.
            part = tg.create_task(settled(bind.submit(submit(30))))
            given_up = tg.create_task(settled(bind.submit(submit(31))))
            assert (await smsc.next_submit_sm()).destination_addr == submit(0).destination_addr
            await smsc.round_trip()
            assert bind.outstanding == 1 and bind.queued == 3
            given_up.cancel()  # its sender is gone while it waits: it is never sent
            seen = [submit(0).destination_addr]
            for sequence in (2, 3):
                smsc.send(SubmitSmResp(sequence_number=sequence, message_id=str(sequence)))
                await smsc.round_trip()
                loop.advance(0.001)
                seen.append((await smsc.next_submit_sm()).destination_addr)
                assert bind.outstanding == 1
            assert seen == [submit(n).destination_addr for n in (0, 1, 30)]
            smsc.send(SubmitSmResp(sequence_number=4, message_id="4"))
            assert isinstance(await part, SubmitSmResp)
            loop.advance(0.01)
            await smsc.round_trip()
            assert bind.queued == 0 and bind.outstanding == 0

    run(scenario)


def test_a_stopping_channel_drops_what_waits_in_the_queue_unsent() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, bind_rate=100.0, window=5)
            answers: list[Any] = []
            for n in range(3):
                bind.submit_paced(submit(n), answers.append, urgent=False)
            assert (await smsc.next_submit_sm()).destination_addr == submit(0).destination_addr
            assert bind.drop_queued() == 2
            assert [type(a).__name__ for a in answers] == ["NotSent", "NotSent"]
            loop.advance(1.0)  # no token left unused sends anything now
            smsc.send(SubmitSmResp(sequence_number=2, message_id="0"))
            await smsc.round_trip()
            assert bind.queued == 0 and bind.submitted == 1
            assert [type(a).__name__ for a in answers] == ["NotSent", "NotSent", "SubmitSmResp"]

    run(scenario)


# --- enquire_link --------------------------------------------------------------------------------


async def nothing_sent_but(smsc: Smsc, bind: SmppBind, count: int) -> None:
    """Send `count` probes through the bind; the SMSC must see exactly those, in order."""
    for n in range(count):
        bind.submit_soon(submit(90 + n), lambda _response: None)
        received = await smsc.next()
        assert isinstance(received, SubmitSm), received
        assert received.destination_addr == submit(90 + n).destination_addr


def test_enquire_link_after_silence_and_close_when_unanswered() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, window=10)
            keepalive = tg.create_task(bind.keepalive())

            loop.advance(29)
            await nothing_sent_but(smsc, bind, 2)
            loop.advance(1)  # 30 s without a word from the SMSC
            link = await smsc.next()
            assert isinstance(link, EnquireLink)
            smsc.send(response_for(link))  # heard at +30

            loop.advance(20)
            await smsc.round_trip()  # heard at +50: the SMSC's own traffic counts
            loop.advance(10)  # +60: 30 s after the last enquire_link, 10 after the SMSC spoke
            await nothing_sent_but(smsc, bind, 2)
            loop.advance(20)  # +80: 30 s of silence again
            link = await smsc.next()
            assert isinstance(link, EnquireLink)

            loop.advance(10)  # unanswered for the response timeout: the link is dead
            await bind.closed
            await keepalive  # returns once the bind is closed
            assert not bind.bound

    run(scenario)


def test_keepalive_returns_when_the_bind_closes() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            keepalive = tg.create_task(bind.keepalive())
            await smsc.round_trip()
            await bind.close()
            await keepalive

    run(scenario)


def test_enquire_link_from_the_smsc_is_answered() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            await smsc.round_trip()
            assert (bind.bound, bind.outstanding) == (True, 0)

    run(scenario)


# --- deliver_sm --------------------------------------------------------------------------------


def test_deliver_sm_is_answered_with_the_owners_status() -> None:
    async def scenario(loop: ClockLoop) -> None:
        seen: list[DeliverSm] = []

        async def on_deliver(pdu: DeliverSm) -> int:
            seen.append(pdu)
            return S.ESME_ROK if pdu.short_message == b"ok" else S.ESME_RX_P_APPN

        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop, on_deliver=on_deliver)
            await bind.open()
            await smsc.next()
            smsc.send(DeliverSm(sequence_number=5, short_message=b"ok"))
            assert await smsc.next() == DeliverSmResp(sequence_number=5)
            smsc.send(DeliverSm(sequence_number=6, short_message=b"no"))
            assert await smsc.next() == DeliverSmResp(6, S.ESME_RX_P_APPN)
            assert [pdu.sequence_number for pdu in seen] == [5, 6]

    run(scenario)


def test_deliver_sm_whose_handler_fails_is_answered_temporarily() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async def on_deliver(pdu: DeliverSm) -> int:
            raise RuntimeError("journal unavailable")

        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop, on_deliver=on_deliver)
            await bind.open()
            await smsc.next()
            smsc.send(DeliverSm(sequence_number=9))
            assert await smsc.next() == DeliverSmResp(9, S.ESME_RX_T_APPN)

    run(scenario)


def test_data_sm_from_the_smsc_is_handed_to_the_owner_like_deliver_sm() -> None:
    async def scenario(loop: ClockLoop) -> None:
        seen: list[Pdu] = []

        async def on_deliver(pdu: DeliverSm | DataSm) -> int:
            seen.append(pdu)
            return S.ESME_RX_T_APPN

        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop, on_deliver=on_deliver)
            await bind.open()
            await smsc.next()
            receipt = DataSm(
                sequence_number=8, esm_class=0x04, tlvs=(Tlv(Tag.message_payload, b"x"),)
            )
            smsc.send(receipt)
            assert await smsc.next() == DataSmResp(8, S.ESME_RX_T_APPN)
            assert seen == [receipt]

    run(scenario)


def test_alert_notification_is_not_answered() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            smsc.send(AlertNotification(sequence_number=4, source_addr="491510000001"))
            await smsc.round_trip()  # the enquire_link_resp is the first thing the SMSC hears
            assert bind.bound

    run(scenario)


# --- hostile SMSCs -----------------------------------------------------------------------------


def test_a_pdu_over_max_pdu_bytes_is_refused_before_it_is_decoded() -> None:
    async def scenario(loop: ClockLoop) -> None:
        seen: list[Pdu] = []

        async def on_deliver(pdu: DeliverSm | DataSm) -> int:
            seen.append(pdu)
            return S.ESME_ROK

        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = make_bind(smsc, tg, loop, on_deliver=on_deliver, max_pdu_bytes=4096)
            await bind.open()
            await smsc.next()
            big = DeliverSm(sequence_number=5, tlvs=(Tlv(Tag.message_payload, bytes(10_000)),))
            smsc.send(big)
            assert await smsc.next() == GenericNack(5, S.ESME_RINVCMDLEN)
            await bind.closed
            assert seen == []
            assert bind.faults.counts()["fatal"] == 1

    run(scenario)


def test_a_request_that_cannot_be_understood_is_answered_and_the_session_goes_on() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:

            def on_deliver_now(pdu: DeliverSm | DataSm, reply: Callable[[int], None]) -> bool:
                if pdu.short_message == b"bad":
                    raise SmppProtocolError(S.ESME_RINVPARLEN, "message_state: 2 octets")
                reply(S.ESME_ROK)
                return True

            bind = SmppBind(
                "sms#0",
                smpp_config(smsc),
                accept_all,
                tg.create_task,
                on_deliver_now,
                clock=loop.time,
            )
            await bind.open()
            await smsc.next()
            smsc.send(DeliverSm(sequence_number=5, short_message=b"bad"))
            assert await smsc.next() == DeliverSmResp(5, S.ESME_RINVPARLEN)
            smsc.send(DeliverSm(sequence_number=6, short_message=b"good"))
            assert await smsc.next() == DeliverSmResp(6)
            assert bind.bound
            assert bind.faults.counts()["bad_request"] == 1

    run(scenario)


def test_accepted_submit_without_a_usable_message_id_is_accepted() -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop)
            answers = [loop.create_future() for _ in range(2)]
            for n, answer in enumerate(answers):
                bind.submit_soon(submit(n), answer.set_result)
            first, second = [await smsc.next_submit_sm() for _ in answers]
            assert smsc._writer is not None
            # No body at all, then a message_id with no NUL within its 65 octets.
            smsc._writer.write(struct.pack(">IIII", 16, 0x80000004, 0, first.sequence_number))
            smsc._writer.write(
                struct.pack(">IIII", 16 + 80, 0x80000004, 0, second.sequence_number) + b"9" * 80
            )
            assert await answers[0] == SubmitSmResp(first.sequence_number, 0, "")
            assert await answers[1] == SubmitSmResp(second.sequence_number, 0, "")
            assert bind.faults.counts()["no_message_id"] == 2

    run(scenario)


def test_smsc_faults_are_counted_and_warned_about_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(loop: ClockLoop) -> None:
        async with Smsc() as smsc, asyncio.TaskGroup() as tg:
            bind = await bound(smsc, tg, loop, fault_log_interval_seconds=10.0)
            for sequence in (900, 901, 902):  # responses to nothing we sent
                smsc.send(SubmitSmResp(sequence_number=sequence, message_id="x"))
            await smsc.round_trip()
            loop.advance(10)
            smsc.send(SubmitSmResp(sequence_number=903, message_id="x"))
            answers = [loop.create_future() for _ in range(3)]
            for n, answer in enumerate(answers):
                bind.submit_soon(submit(n), answer.set_result)
            nacked, odd, _unanswered = [await smsc.next_submit_sm() for _ in answers]
            smsc.send(GenericNack(nacked.sequence_number, S.ESME_RINVCMDID))
            smsc.send(SubmitSmResp(odd.sequence_number, 0x4FF))
            await answers[0]
            await answers[1]
            loop.advance(10)  # the third one's response deadline
            assert isinstance(await answers[2], ResponseTimeout)
            counts = bind.faults.counts()
            assert (
                counts["unknown_response"],
                counts["generic_nack"],
                counts["unknown_status"],
                counts["response_timeout"],
            ) == (4, 1, 1, 1)

    with caplog.at_level(logging.WARNING, logger="sluice.smpp"):
        run(scenario)
    unknown = [r.getMessage() for r in caplog.records if "answers no request" in r.getMessage()]
    assert len(unknown) == 2
    assert "900" in unknown[0] and "903" in unknown[1]
    assert "2 more unknown_response not logged" in unknown[1]
    for words in ("generic_nack to request", "unknown status 0x4FF", "no response within 10 s"):
        assert any(words in r.getMessage() for r in caplog.records), words
