"""The SMTP front door: screen each connection cheaply, then hand it to an SMTP session.

Most unwanted connections come from bots that can be told apart in the first seconds, so the
listener judges the raw connection before any SMTP work, in the manner of Postfix postscreen:

1. PROXY header (when behind a load balancer): the real client address.
2. The global screening limit (421 when busy), the permanent allow and deny lists, the
   per-client connection count and rate.
3. A client whose tests passed recently (the client memory) goes straight on: PASS OLD.
4. Otherwise the tests run together: the first line of a multi-line greeting ("220-") is
   sent and the client must stay silent until the greeting ends (pregreet: bots talk at
   once); meanwhile the DNSBL / DNSWL zones are asked in parallel. A client that passes
   everything is remembered (PASS NEW).
5. The connection becomes an aiosmtpd session (STARTTLS, AUTH over TLS only, size and
   command limits); its own "220 " line completes the greeting. A test that failed with the
   "enforce" action lets the session run but refuses every RCPT TO with 550 5.7.1. A session
   that has had `max_errors` error replies, or `max_auth_failures` failed AUTHs, is answered
   421 4.7.0 and closed (session_limits.py).

Log lines use postscreen's words: CONNECT, PASS NEW, PASS OLD, ALLOWLISTED, DENYLISTED,
PREGREET, DNSBL rank N, HANGUP, NOQUEUE, GREYLISTED, DISCONNECT; the session adds its own
(counted as log/<word>): AUTH-FAIL, TLS-FAIL (one line, no traceback), ERROR-LIMIT, QUEUED.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, AnyStr, cast

import msgspec
from aiosmtpd.smtp import SMTP

from sluice.config import Config, SmtpConfig
from sluice.ingress.contract import Gateway
from sluice.ingress.http.auth import ApiKeys
from sluice.ingress.sms_length import SmsLength
from sluice.ingress.smtp.aiosmtpd_lookups import install_lookup_caches
from sluice.ingress.smtp.mail import MailHandler, SessionVerdict
from sluice.protocols.proxy import ProxyError
from sluice.protocols.proxy import parse as parse_proxy
from sluice.screening.access import AccessList
from sluice.screening.client_memory import ClientMemory, ScreenTest
from sluice.screening.dnsbl import DnsblScorer, parse_zone
from sluice.screening.greylist import Greylist
from sluice.screening.limits import ClientLimiter, ScreeningGate

log = logging.getLogger("sluice.smtp")


#: Bytes a client may send before its SMTP session starts (pregreeters, PROXY); more: dropped.
MAX_EARLY_BYTES = 4096


class VerdictCounts:
    """Counts per test and verdict, for metrics ("pregreet", "fail"), ("connect", "pass_old")."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, test: str, verdict: str) -> None:
        key = (test, verdict)
        self.counts[key] = self.counts.get(key, 0) + 1


class FrontDoorStats(msgspec.Struct, frozen=True):
    """What the front door tells of itself (for metrics)."""

    #: Screening outcomes by (test, verdict), as `VerdictCounts` keeps them.
    verdicts: dict[tuple[str, str], int]
    #: Connections being screened.
    screening: int
    #: Client addresses remembered, and the bytes that memory holds.
    clients: int
    client_memory_bytes: int
    #: Greylist triplets remembered (None: no greylisting).
    greylist_triplets: int | None


class SmtpFrontDoor:
    """Examples:
    door = SmtpFrontDoor(config, gateway, memory=ClientMemory())
    async with asyncio.TaskGroup() as tg:
        tg.create_task(door.run())   # listens until door.close()
    """

    def __init__(
        self,
        config: Config,
        gateway: Gateway,
        *,
        memory: ClientMemory | None = None,
        greylist: Greylist | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.smtp is not None
        smtp = config.smtp
        screening = smtp.screening
        self.config: SmtpConfig = smtp
        self._gateway = gateway
        self._clock = clock
        self.allow = AccessList.parse(screening.allow, what="smtp.screening.allow")
        self.deny = AccessList.parse(screening.deny, what="smtp.screening.deny")
        self.limiter = ClientLimiter(
            screening.max_connections_per_client,
            screening.connection_rate_per_minute,
            screening.connection_burst,
        )
        self.gate = ScreeningGate(screening.max_screening, screening.stress_share)
        self.memory = memory if memory is not None else ClientMemory()
        self.dnsbl: DnsblScorer | None = None
        if screening.dnsbl_zones:
            self.dnsbl = DnsblScorer(
                [parse_zone(z) for z in screening.dnsbl_zones],
                block_threshold=screening.dnsbl_threshold,
                allow_threshold=screening.dnsbl_allowlist_threshold,
                timeout=screening.dnsbl_timeout_seconds,
                min_ttl=screening.dnsbl_min_ttl_seconds,
                max_ttl=screening.dnsbl_max_ttl_seconds,
                nameservers=[_host_port(n, 53) for n in screening.nameservers] or None,
            )
        grey = smtp.greylist
        self._greylist_settings: dict[str, Any] = {
            "delay": grey.delay_seconds,
            "retry_window": grey.retry_window_seconds,
            "max_age": grey.max_age_seconds,
            "auto_allowlist_passes": grey.auto_allowlist_passes,
            "client_allowlist": AccessList.parse(grey.clients, what="smtp.greylist.clients"),
            "recipient_allowlist": grey.recipients,
            "clock": clock,
        }
        if greylist is None and grey.enabled:
            greylist = Greylist(**self._greylist_settings)
        self.greylist = greylist
        self._keys = ApiKeys(config.tenants)
        self._tls = _tls_context(smtp)
        self._sms_length = _sms_length(config)
        self.verdicts = VerdictCounts()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = asyncio.Event()
        #: Set once the listening socket is bound (`port` is then known).
        self.listening = asyncio.Event()
        self.port = 0

    # ------------------------------------------------------------------ life cycle

    async def run(self, sock: socket.socket | None = None) -> None:
        """Listen (on `sock`, or on smtp.listen) until `close`."""
        install_lookup_caches()
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            if sock is None:
                host, port = _host_port(self.config.listen, 25)
                self._server = await loop.create_server(
                    lambda: ScreeningConnection(self),
                    host,
                    port,
                    reuse_address=True,
                    backlog=self.config.listen_backlog,
                )
            else:
                # An inherited socket is bound, not listening: create_server calls listen.
                self._server = await loop.create_server(
                    lambda: ScreeningConnection(self), sock=sock, backlog=self.config.listen_backlog
                )
            self.port = self._server.sockets[0].getsockname()[1]
            self.listening.set()
            log.info("smtp front door listening on port %d", self.port)
            await self._closing.wait()
            self._server.close()
            await self._server.wait_closed()

    def close(self) -> None:
        self._closing.set()

    @property
    def closing(self) -> bool:
        """`close` was called: connections still arriving are refused, nothing is started."""
        return self._closing.is_set()

    def stats(self) -> FrontDoorStats:
        return FrontDoorStats(
            dict(self.verdicts.counts),
            self.gate.busy,
            len(self.memory),
            self.memory.bytes_used(),
            len(self.greylist) if self.greylist is not None else None,
        )

    def restore_memory(self, data: bytes) -> None:
        """Take the client memory saved by an earlier run (ValueError if unreadable)."""
        self.memory = ClientMemory.restore(data)

    def restore_greylist(self, data: bytes) -> None:
        """Take the greylist saved by an earlier run (ValueError if unreadable)."""
        self.greylist = Greylist.restore(data, **self._greylist_settings)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._tasks is not None, "the front door is not running"
        self._tasks.create_task(coro)

    def check_login(self, user: str, password: str) -> bool:
        return self._keys.tenant_for(b"Bearer " + password.encode()) == user

    def event(self, word: str, line: str, level: int = logging.INFO) -> None:
        """One log line in the front door's vocabulary, counted for metrics.

        CONNECT and DISCONNECT, one each per connection, are logged at DEBUG: at thousands of
        connections a second they were a quarter of the CPU per connection (~25 µs a line),
        and the verdict line (PASS OLD, DENYLISTED …) names the client anyway."""
        self.verdicts.add("log", word)
        log.log(level, "%s", line)

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ hand-over

    def start_session(
        self,
        transport: asyncio.Transport,
        verdict: SessionVerdict,
        early: bytes,
        on_end: Callable[[], None],
    ) -> None:
        """Greet the screened client and start its SMTP session at its first command;
        `on_end` runs when the connection ends.

        The session (aiosmtpd: ~0.2 ms of CPU to set up and run) is created only when the
        client sends something: a client that greets nothing and QUITs — a prober — costs the
        greeting, the 221 and nothing more."""
        waiting = FirstCommand(self, transport, verdict, on_end)
        transport.set_protocol(waiting)
        self._write_greeting(transport)
        if early:
            waiting.data_received(early)

    def _write_greeting(self, transport: asyncio.Transport) -> None:
        # The same line aiosmtpd would send; the session is told not to send it again.
        transport.write(f"220 {self.config.hostname} ESMTP Sluice\r\n".encode())

    def open_session(
        self,
        transport: asyncio.Transport,
        verdict: SessionVerdict,
        on_end: Callable[[], None],
        deadline: asyncio.TimerHandle,
        data: bytes,
    ) -> None:
        """The aiosmtpd session for an already greeted client, fed its first bytes."""
        smtp = self.config
        handler = MailHandler(
            smtp,
            self._gateway,
            verdict,
            self.greylist,
            self.check_login,
            self.event,
            self._sms_length,
        )
        session = _GreetedSession(
            handler,
            deadline,
            on_end,
            self.event,
            hostname=smtp.hostname,
            ident="ESMTP Sluice",
            data_size_limit=smtp.max_message_bytes,
            tls_context=self._tls,
            require_starttls=smtp.require_starttls,
            timeout=smtp.command_timeout_seconds,
            auth_require_tls=True,
            authenticator=handler.authenticate,
            command_call_limit=smtp.max_commands,
            loop=asyncio.get_running_loop(),
        )
        transport.set_protocol(session)
        session.connection_made(transport)
        assert session.session is not None
        # aiosmtpd types `peer` as str, but its own sessions hold the (host, port) of
        # `peername` there, as this one does: its stub is wrong.
        session.session.peer = (verdict.client, verdict.port)  # type: ignore[assignment]
        session.data_received(data)


class _GreetedSession(SMTP):
    """An aiosmtpd session whose greeting the front door already sent. When its connection
    is lost, the session's deadline is cancelled and `on_end` runs, before aiosmtpd's own
    clean-up.

    Every reply goes through `push`, which counts the errors (`MailHandler.errors`): the one
    that reaches a limit is followed by 421 4.7.0 and the end of the session, as in Postfix,
    and commands the client had already sent are not carried out."""

    _greeting_pending = True
    _hung_up = False

    def __init__(
        self,
        handler: MailHandler,
        deadline: asyncio.TimerHandle,
        on_end: Callable[[], None],
        on_event: Callable[[str, str], None],
        **settings: Any,
    ) -> None:
        super().__init__(handler, **settings)
        self._handler = handler
        self._session_deadline = deadline
        self._on_session_end = on_end
        self._on_event = on_event
        self._ended = False

    def connection_lost(self, error: Exception | None) -> None:
        # aiosmtpd calls this itself after a failed STARTTLS handshake, then the transport
        # does: the session ends once.
        if not self._ended:
            self._ended = True
            self._session_deadline.cancel()
            self._on_session_end()
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if self._greeting_pending:
            self._greeting_pending = False
            if isinstance(status, str) and status.startswith("220 "):
                return
        if self._hung_up:
            await asyncio.sleep(0)  # the session task was cancelled: it ends here
            return
        await super().push(status)
        reason = self._handler.errors.count(status)
        if reason is not None:
            await self._hang_up(reason)

    async def _hang_up(self, reason: str) -> None:
        """421 and close; the session task (the caller's) is cancelled at its next wait."""
        self._hung_up = True
        assert self.transport is not None
        errors = self._handler.errors
        self._on_event(
            "ERROR-LIMIT",
            f"{reason} ({errors.errors} errors, {errors.auth_failures} failed AUTH) "
            f"from {self._handler.where()}; 421 and disconnect",
        )
        self._writer.write(f"421 4.7.0 {self.hostname} Error: {reason}\r\n".encode())
        self.transport.close()
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        await asyncio.sleep(0)


class FirstCommand(asyncio.Protocol):
    """A greeted connection until its first command: QUIT is answered here; anything else
    starts the SMTP session with it."""

    def __init__(
        self,
        door: SmtpFrontDoor,
        transport: asyncio.Transport,
        verdict: SessionVerdict,
        on_end: Callable[[], None],
    ) -> None:
        self._door = door
        self._transport = transport
        self._verdict = verdict
        self._on_end = on_end
        self._buffer = b""
        self._started = False
        loop = asyncio.get_running_loop()
        # A session ends after max_session_seconds whatever the client does; the first
        # command must come within the command timeout.
        self._deadline = loop.call_later(door.config.max_session_seconds, _hang_up, transport)
        self._idle = loop.call_later(door.config.command_timeout_seconds, _hang_up, transport)

    def data_received(self, data: bytes) -> None:
        if self._started:
            return
        buffer = self._buffer + data
        if buffer.upper() in (b"QUIT\r\n", b"QUIT\n"):
            self._transport.write(b"221 2.0.0 Bye\r\n")
            self._transport.close()
            return
        if len(buffer) < 6 and b"QUIT\r\n".startswith(buffer.upper()):
            self._buffer = buffer  # "QU" … may still become QUIT
            return
        self._started = True
        self._idle.cancel()
        self._door.open_session(
            self._transport, self._verdict, self._on_end, self._deadline, buffer
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._started:
            return
        self._deadline.cancel()
        self._idle.cancel()
        self._on_end()


def _hang_up(transport: asyncio.BaseTransport) -> None:
    if not transport.is_closing():
        transport.close()


class ScreeningConnection(asyncio.Protocol):
    """One connection while it is screened (before its SMTP session)."""

    def __init__(self, door: SmtpFrontDoor) -> None:
        self._door = door
        self._transport: asyncio.Transport | None = None
        self._early = bytearray()
        self._proxy_done = asyncio.Event()
        self._talked = asyncio.Event()
        self._handed_over = False
        self._client = ""
        self._port = 0
        self._started = 0.0
        self._admitted = False
        self._limited = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        self._client, self._port = _plain(peer[0]), int(peer[1])
        self._started = time.monotonic()
        if self._door.closing:
            # Accepted as the listener closed (the door's tasks may be gone already).
            self._refuse("421 4.3.2 Service shutting down, try again later")
            return
        if self._door.config.proxy_protocol:
            self._door.spawn(self._screen())
            return
        # Without a PROXY header the cheap checks run at once; a task only for the tests.
        self._proxy_done.set()
        due = self._admit()
        if due is not None:
            self._door.spawn(self._test(*due))

    def data_received(self, data: bytes) -> None:
        if self._handed_over:
            return
        self._early += data
        if len(self._early) > MAX_EARLY_BYTES:
            self._close()
            return
        if not self._proxy_done.is_set():
            self._read_proxy()
            return
        self._talked.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handed_over:
            self._release()
            elapsed = time.monotonic() - self._started
            self._door.event(
                "HANGUP",
                f"HANGUP after {elapsed:.2f} from {self._where()} in tests before SMTP handshake",
            )
        self._proxy_done.set()
        self._talked.set()

    # ------------------------------------------------------------------ screening

    def _read_proxy(self) -> None:
        try:
            header = parse_proxy(bytes(self._early))
        except ProxyError as exc:
            self._door.event("PROXY", f"PROXY error from {self._where()}: {exc}")
            self._close()
            return
        if header is None:
            return
        if header.source is not None:
            self._client, self._port = _plain(header.source[0]), header.source[1]
        del self._early[: header.length]
        self._proxy_done.set()
        if self._early:
            self._talked.set()

    async def _screen(self) -> None:
        """Screening behind a load balancer: the PROXY header first."""
        door = self._door
        try:
            async with asyncio.timeout(door.config.proxy_timeout_seconds):
                await self._proxy_done.wait()
        except TimeoutError:
            door.event("PROXY", f"PROXY timeout from {self._where()}")
            self._close()
            return
        if self._transport is None or self._transport.is_closing():
            return
        due = self._admit()
        if due is not None:
            await self._test(*due)

    async def _test(self, tests: list[ScreenTest], now: int, reject: str | None) -> None:
        reject = await self._run_tests(tests, now, reject)
        if reject != _DROPPED:
            self._hand_over(reject)

    def _admit(self) -> tuple[list[ScreenTest], int, str | None] | None:
        """The checks that need no waiting; returns the tests still due (and the reason
        RCPT TO will be refused so far), or None when the connection was handed over or
        refused."""
        door = self._door
        screening = door.config.screening
        where = self._where()
        door.event("CONNECT", f"CONNECT from {where}", logging.DEBUG)
        if not door.gate.try_enter():
            door.verdicts.add("connect", "busy")
            self._refuse("421 4.3.2 All server ports are busy")
            return None
        self._admitted = True
        client = self._client
        if door.allow.contains(client):
            door.event("ALLOWLISTED", f"ALLOWLISTED {where}")
            door.verdicts.add("access", "allowlisted")
            self._hand_over(None)
            return None
        reject: str | None = None
        if door.deny.contains(client):
            door.event("DENYLISTED", f"DENYLISTED {where}")
            door.verdicts.add("access", "denylisted")
            reject = self._act(screening.deny_action, "blocked by the deny list", reject)
            if reject == _DROPPED:
                return None
        refusal = door.limiter.try_open(client)
        if refusal is not None:
            door.event("NOQUEUE", f"NOQUEUE: reject: CONNECT from {where}: {refusal}")
            door.verdicts.add("limits", "refused")
            self._refuse(f"421 4.7.0 {refusal}")
            return None
        self._limited = True
        now = int(door.now())
        door.memory.seen(client, now)
        tests = self._tests_due(now)
        if not tests and reject is None:
            door.event("PASS OLD", f"PASS OLD {where}")
            door.verdicts.add("screening", "pass_old")
            self._hand_over(None)
            return None
        return tests, now, reject

    def _tests_due(self, now: int) -> list[ScreenTest]:
        door, screening = self._door, self._door.config.screening
        due = []
        if screening.greet_wait_seconds > 0 and not door.memory.passed(
            self._client, ScreenTest.PREGREET, now
        ):
            due.append(ScreenTest.PREGREET)
        if door.dnsbl is not None and not door.memory.passed(self._client, ScreenTest.DNSBL, now):
            due.append(ScreenTest.DNSBL)
        return due

    async def _run_tests(self, tests: list[ScreenTest], now: int, reject: str | None) -> str | None:
        door, screening = self._door, self._door.config.screening
        where = self._where()
        passed: list[ScreenTest] = []
        # The DNSBL lookup runs while the client is watched for a pregreet; it belongs to this
        # screening, which cancels it when the connection is dropped first.
        async with asyncio.TaskGroup() as lookups:
            lookup = (
                lookups.create_task(door.dnsbl.score(self._client))
                if ScreenTest.DNSBL in tests and door.dnsbl is not None
                else None
            )
            try:
                # The first greeting line; the session's "220 " line will end it.
                self._write(f"220-{door.config.hostname} ESMTP\r\n".encode())
                if ScreenTest.PREGREET in tests:
                    wait = (
                        screening.greet_wait_stressed_seconds
                        if door.gate.stressed
                        else screening.greet_wait_seconds
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._talked.wait()
                    if self._transport is None or self._transport.is_closing():
                        return _DROPPED
                    if self._early:
                        elapsed = time.monotonic() - self._started
                        door.event(
                            "PREGREET",
                            f"PREGREET {len(self._early)} after {elapsed:.2f} from {where}: "
                            f"{bytes(self._early[:100])!r}",
                        )
                        door.verdicts.add("pregreet", "fail")
                        reject = self._act(screening.pregreet_action, "talked too early", reject)
                        if reject == _DROPPED:
                            return _DROPPED
                    else:
                        door.verdicts.add("pregreet", "pass")
                        passed.append(ScreenTest.PREGREET)
                if lookup is not None:
                    result = await lookup
                    lookup = None
                    if result.blocked:
                        door.event("DNSBL", f"DNSBL rank {result.score} for {where}")
                        door.verdicts.add("dnsbl", "fail")
                        zones = ", ".join(zone for zone, _ in result.hits)
                        reject = self._act(screening.dnsbl_action, f"blocked using {zones}", reject)
                        if reject == _DROPPED:
                            return _DROPPED
                    else:
                        door.verdicts.add("dnsbl", "allowlisted" if result.allowlisted else "pass")
                        passed.append(ScreenTest.DNSBL)
            finally:
                if lookup is not None:
                    lookup.cancel()
        for test in passed:
            ttl = (
                screening.pregreet_ttl_seconds
                if test is ScreenTest.PREGREET
                else screening.dnsbl_ttl_seconds
            )
            door.memory.record_pass(self._client, test, now + int(ttl))
        if reject is None and len(passed) == len(tests):
            door.event("PASS NEW", f"PASS NEW {where}")
            door.verdicts.add("screening", "pass_new")
        return reject

    def _act(self, action: str, why: str, reject: str | None) -> str | None:
        """Apply a failed test's action; returns the reason RCPT TO will be refused for."""
        if action == "drop":
            self._refuse("521 5.7.1 Service unavailable")
            return _DROPPED
        if action == "enforce":
            return reject or why
        return reject  # ignore: logged only

    # ------------------------------------------------------------------ endings

    def _hand_over(self, reject: str | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._handed_over = True
        door = self._door
        self._release(keep_limiter=True)
        early = bytes(self._early)
        self._early.clear()
        verdict = SessionVerdict(self._client, self._port, reject)
        door.start_session(transport, verdict, early, self._ended)

    def _ended(self) -> None:
        """The SMTP session's connection is gone: the per-client count ends with it."""
        if self._limited:
            self._limited = False
            self._door.limiter.close(self._client)
        self._door.event("DISCONNECT", f"DISCONNECT {self._where()}", logging.DEBUG)

    def _refuse(self, reply: str) -> None:
        self._write(reply.encode() + b"\r\n")
        self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _release(self, keep_limiter: bool = False) -> None:
        if self._admitted:
            self._admitted = False
            self._door.gate.leave()
        if self._limited and not keep_limiter:
            self._limited = False
            self._door.limiter.close(self._client)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _where(self) -> str:
        return f"[{self._client}]:{self._port}"


#: `_act`'s answer when the connection was dropped.
_DROPPED = "\0dropped"


def _plain(address: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view) as plain IPv4."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    """ "host", "host:port", "[v6]:port" or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def _sms_length(config: Config) -> SmsLength | None:
    """The SMS channel's segment limit, when it is an SMPP channel (others have none)."""
    assert config.smtp is not None
    name = config.smtp.sms_channel
    channel = config.channels.get(name) if name is not None else None
    if name is None or channel is None or channel.type != "smpp" or channel.smpp is None:
        return None
    return SmsLength(name, channel.smpp)


def _tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    if smtp.tls_cert is None or smtp.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(smtp.tls_cert, smtp.tls_key)
    return context
