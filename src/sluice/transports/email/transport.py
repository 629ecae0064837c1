"""The email transport: SMTP transactions on connections pooled per destination.

One message is one SMTP transaction (MAIL FROM, one RCPT TO, DATA) on a pooled connection.
With ``relay_host`` every message goes to that smart host, which may ask for AUTH; without it
each recipient domain's mail servers (`mx`) are tried in turn. A server that cannot be reached
at all (refused, timed out, no address) is transient and not counted as an attempt.

STARTTLS follows ``starttls``: "auto" upgrades whenever the server offers it; "always" also
refuses to send to a server that does not, as a *transient* failure, since the server (or the
next MX) may offer it later, and a permanent failure would drop mail over a passing
misconfiguration; "never" sends in clear. A failed TLS handshake is transient in both modes:
there is no fallback to clear text. Relay credentials are only ever sent over TLS; a relay that
would get them in clear is a configuration error, so the message fails permanently.

Connections are pooled per destination (host, port): a finished transaction leaves its
connection idle for the next message to the same place (RSET first, which also shows whether
the server has since hung up), up to ``max_idle_per_destination`` for ``idle_seconds``, and
replaced after ``max_messages_per_connection``. All destinations together hold at most
``width`` connections: a send that finds them all taken closes the longest idle one, or waits.
``connect_timeout_seconds`` bounds each DNS lookup and each connection up to the greeting,
``command_timeout_seconds`` every reply after it.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from typing import NamedTuple

import aiosmtplib

from sluice.config import EmailConfig
from sluice.model import Message, Outcome
from sluice.transports.base import SendResult
from sluice.transports.email.envelope import Envelope, build_envelope
from sluice.transports.email.mx import ADDRESSES_PER_HOST, DnsError, MxLookup
from sluice.transports.email.replies import classify, queue_id, reply_text

#: Longest wait for the reply to QUIT when closing; the message is already sent or given up.
QUIT_TIMEOUT_SECONDS = 5.0


class _Route(NamedTuple):
    host: str
    port: int
    #: Look the host's addresses up with the MX resolver (MX hosts), rather than connecting
    #: by name through the system's resolver (a relay).
    resolve: bool
    #: Log in with the configured credentials (the relay only).
    login: bool


class _Failure(NamedTuple):
    """Why one destination could not take the message before any transaction began."""

    outcome: Outcome
    detail: str
    #: A server answered (so the try counts as an attempt).
    reached: bool

    def result(self) -> SendResult:
        return SendResult(self.outcome, detail=self.detail, attempted=self.reached)


class _Connection:
    """One pooled SMTP session."""

    __slots__ = ("client", "idle_since", "key", "messages", "tls", "where")

    def __init__(
        self, client: aiosmtplib.SMTP, key: tuple[str, int], where: str, tls: bool
    ) -> None:
        self.client = client
        self.key = key
        self.where = where
        self.tls = tls
        self.messages = 0
        self.idle_since = 0.0


class _Closed(Exception):
    """The transport closed while a send waited for a connection."""


class EmailTransport:
    """SMTP transport; see the module docstring for TLS and pooling, `mx` for routing and
    `replies` for outcomes."""

    paces_itself = False

    def __init__(self, channel: str, config: EmailConfig, width: int) -> None:
        self._channel = channel
        self._config = config
        self._width = max(1, width)
        self._helo = config.helo_name
        self._tls_context: ssl.SSLContext | None = None
        self._mx: MxLookup | None = None
        self._idle: dict[tuple[str, int], collections.deque[_Connection]] = {}
        #: Connections open or being opened, idle ones included; at most `_width`.
        self._open = 0
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        return False  # an SMTP transaction is several round trips: it needs its task

    def drop_queued(self) -> int:
        return 0  # every send is a task of the runner's: nothing waits in here

    async def start(self) -> None:
        config = self._config
        if config.helo_name and not _valid_helo(config.helo_name):
            raise ValueError(
                f"email.helo_name: expected a host name without spaces, got {config.helo_name!r}"
            )
        if not self._helo:
            fqdn = await asyncio.to_thread(socket.getfqdn)
            self._helo = fqdn if _valid_helo(fqdn) else "localhost"
        self._tls_context = await asyncio.to_thread(_client_context, config.tls_verify)
        if config.relay_host is None:
            self._mx = await asyncio.to_thread(
                MxLookup.create, list(config.nameservers), config.connect_timeout_seconds
            )

    async def run(self) -> None:
        """Close connections idle for ``idle_seconds`` (checked every half of it) until close."""
        interval = self._config.idle_seconds / 2
        while not self._closing.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._closing.wait()
            except TimeoutError:
                await self._close_idle(time.monotonic() - self._config.idle_seconds)

    async def close(self) -> None:
        """QUIT every idle connection; busy ones close when their transaction ends."""
        self._closing.set()
        self._notify()
        await self._close_idle(float("inf"))

    @property
    def open_connections(self) -> int:
        """Connections open or being opened now, idle ones included."""
        return self._open

    async def send(self, message: Message) -> SendResult:
        assert self._tls_context is not None, "transport not started"
        if self._closing.is_set():
            return SendResult(Outcome.TRANSIENT, detail="email transport closed", attempted=False)
        try:
            envelope = build_envelope(message, self._config.default_from)
        except ValueError as exc:
            return SendResult(Outcome.PERMANENT, detail=str(exc))
        routes = await self._routes(envelope.domain)
        if isinstance(routes, SendResult):
            return routes
        failures: list[_Failure] = []
        try:
            for route in routes:
                result = await self._send_via(route, envelope)
                if isinstance(result, SendResult):
                    return result
                failures.append(result)
        except _Closed:
            failures.append(_Failure(Outcome.TRANSIENT, "email transport closed", False))
        return _merge(failures).result()

    # -- routing ---------------------------------------------------------------------------

    async def _routes(self, domain: str) -> list[_Route] | SendResult:
        config = self._config
        if config.relay_host is not None:
            return [_Route(config.relay_host, config.relay_port, resolve=False, login=True)]
        if domain.startswith("[") and domain.endswith("]"):  # address literal, RFC 5321 §4.1.3
            literal = domain[1:-1].removeprefix("ipv6:")
            try:
                ipaddress.ip_address(literal)
            except ValueError:
                return SendResult(Outcome.PERMANENT, detail=f"bad address literal {domain}")
            return [_Route(literal, config.mx_port, resolve=False, login=False)]
        assert self._mx is not None
        hosts = await self._mx.hosts(domain)
        if isinstance(hosts, SendResult):
            return hosts
        return [_Route(host, config.mx_port, resolve=True, login=False) for host in hosts]

    async def _send_via(self, route: _Route, envelope: Envelope) -> SendResult | _Failure:
        """Run the transaction on a pooled or new connection to ``route``."""
        key = (route.host.lower(), route.port)
        while True:
            conn = await self._lease(key)
            if conn is None:  # a slot is ours: open a connection in it
                try:
                    opened = await self._open_route(route, key)
                except BaseException:
                    self._release_slot()
                    raise
                if isinstance(opened, _Failure):
                    self._release_slot()
                    return opened
                conn = opened
                break
            if await self._still_there(conn):
                break
        try:
            result, reusable = await self._transact(conn, envelope)
        except BaseException:
            self._drop(conn)
            raise
        await self._give_back(conn, reusable)
        return result

    # -- connections -----------------------------------------------------------------------

    async def _open_route(self, route: _Route, key: tuple[str, int]) -> _Connection | _Failure:
        where = f"{route.host}:{route.port}"
        if route.resolve:
            assert self._mx is not None
            try:
                addresses = await self._mx.addresses(route.host)
            except DnsError as exc:
                return _Failure(Outcome.TRANSIENT, f"address lookup for {route.host}: {exc}", False)
            if not addresses:
                return _Failure(
                    Outcome.TRANSIENT, f"{route.host}: mail host has no A or AAAA record", False
                )
        else:
            addresses = [route.host]
        failures: list[_Failure] = []
        for address in addresses[:ADDRESSES_PER_HOST]:
            shown = where if address == route.host else f"{where} ({address})"
            opened = await self._connect(route, address, key, shown)
            if isinstance(opened, _Connection):
                return opened
            failures.append(opened)
        return _merge(failures)

    async def _connect(
        self, route: _Route, address: str, key: tuple[str, int], where: str
    ) -> _Connection | _Failure:
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=address,
            port=route.port,
            local_hostname=self._helo,
            timeout=config.command_timeout_seconds,
            start_tls=False,
        )
        try:
            await client.connect(timeout=config.connect_timeout_seconds)
        except aiosmtplib.SMTPConnectResponseError as exc:  # a greeting other than 220
            return _Failure(classify(exc.code), reply_text(exc.code, exc.message), True)
        except aiosmtplib.SMTPConnectTimeoutError:
            seconds = config.connect_timeout_seconds
            return _Failure(
                Outcome.TRANSIENT, f"{where}: no connection within {seconds:g} s", False
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return _Failure(Outcome.TRANSIENT, f"{where}: cannot connect: {_reason(exc)}", False)
        try:
            tls = await self._handshake(client, route, where)
        except BaseException:
            client.close()
            raise
        if isinstance(tls, _Failure):
            await _quit(client)
            return tls
        return _Connection(client, key, where, tls)

    async def _handshake(
        self, client: aiosmtplib.SMTP, route: _Route, where: str
    ) -> bool | _Failure:
        """EHLO, STARTTLS and AUTH as configured; whether the session is encrypted."""
        config = self._config
        tls = False
        try:
            await _hello(client)
            offered = client.supports_extension("starttls")
            if config.starttls != "never" and offered:
                await client.starttls(server_hostname=route.host, tls_context=self._tls_context)
                tls = True
                await _hello(client)
            elif config.starttls == "always":
                return _Failure(
                    Outcome.TRANSIENT,
                    f"{where} does not offer STARTTLS and email.starttls is 'always': "
                    "not sending in clear",
                    True,
                )
            if route.login and config.username is not None:
                if not tls:
                    why = (
                        "email.starttls is 'never'"
                        if config.starttls == "never"
                        else f"{where} does not offer STARTTLS"
                    )
                    return _Failure(
                        Outcome.PERMANENT,
                        f"configuration: {why}, so email.username would log in in clear; "
                        "refusing to send credentials unencrypted",
                        True,
                    )
                await client.login(config.username, config.password or "")
        except aiosmtplib.SMTPResponseException as exc:
            return _Failure(classify(exc.code), reply_text(exc.code, exc.message), True)
        except aiosmtplib.SMTPTimeoutError:
            seconds = config.command_timeout_seconds
            return _Failure(Outcome.TRANSIENT, f"{where}: no reply within {seconds:g} s", True)
        except ssl.SSLError as exc:
            return _Failure(Outcome.TRANSIENT, f"{where}: TLS failed: {_reason(exc)}", True)
        except aiosmtplib.SMTPServerDisconnected:
            return _Failure(Outcome.TRANSIENT, f"{where}: connection lost in the handshake", True)
        except aiosmtplib.SMTPException as exc:  # e.g. AUTH not offered
            return _Failure(Outcome.PERMANENT, f"{where}: {exc.message}", True)
        except OSError as exc:
            return _Failure(Outcome.TRANSIENT, f"{where}: {_reason(exc)}", True)
        return tls

    async def _transact(self, conn: _Connection, envelope: Envelope) -> tuple[SendResult, bool]:
        """MAIL, RCPT, DATA; the result and whether the connection can take another."""
        client, where = conn.client, conn.where
        options: list[str] = []
        if envelope.smtputf8:
            if not client.supports_extension("smtputf8"):
                why = "non-ASCII addresses or headers need SMTPUTF8"
                return _refuse(f"{where} does not offer SMTPUTF8 ({why})"), True
            options.append("SMTPUTF8")
        if envelope.eight_bit:
            if not client.supports_extension("8bitmime"):
                why = "a message with non-ASCII content needs 8BITMIME"
                return _refuse(f"{where} does not offer 8BITMIME ({why})"), True
            options.append("BODY=8BITMIME")
        if client.supports_extension("size"):
            options.append(f"SIZE={len(envelope.data)}")
        encoding = "utf-8" if envelope.smtputf8 else "ascii"
        step = "MAIL FROM"
        try:
            await client.mail(envelope.sender, options=options, encoding=encoding)
            step = "RCPT TO"
            await client.rcpt(envelope.recipient, encoding=encoding)
            step = "DATA"
            reply = await client.data(envelope.data)
        except aiosmtplib.SMTPResponseException as exc:
            detail = reply_text(exc.code, exc.message)
            # aiosmtplib has closed the connection on a 421; any other refusal leaves it usable
            return SendResult(classify(exc.code), detail=detail), client.is_connected
        except aiosmtplib.SMTPTimeoutError:
            seconds = self._config.command_timeout_seconds
            detail = f"{where}: no reply to {step} within {seconds:g} s"
            return SendResult(Outcome.TRANSIENT, detail=detail), False
        except aiosmtplib.SMTPServerDisconnected:
            detail = f"{where}: connection lost during {step}"
            return SendResult(Outcome.TRANSIENT, detail=detail), False
        except (aiosmtplib.SMTPException, OSError) as exc:
            detail = f"{where}: {step} failed: {_reason(exc)}"
            return SendResult(Outcome.TRANSIENT, detail=detail), False
        except ValueError as exc:  # an address aiosmtplib will not put on a command line
            return _refuse(f"{step}: {exc}"), True
        conn.messages += 1
        return SendResult(
            Outcome.SENT,
            provider_id=queue_id(reply.message),
            detail=reply_text(reply.code, reply.message),
        ), True

    # -- the pool --------------------------------------------------------------------------

    async def _lease(self, key: tuple[str, int]) -> _Connection | None:
        """An idle connection to ``key``, or None with a slot reserved for a new one."""
        while True:
            if self._closing.is_set():
                raise _Closed
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()  # the most recently used: the others may expire
                if not idle:
                    del self._idle[key]
                if conn.client.is_connected:
                    return conn
                self._drop(conn)
            if self._open < self._width:
                self._open += 1
                return None
            victim = self._take_oldest_idle()
            if victim is not None:
                # Its slot passes straight to this send, so nobody can take it meanwhile.
                try:
                    await _quit(victim.client)
                except BaseException:
                    self._release_slot()
                    raise
                return None
            await self._changed.wait()

    async def _still_there(self, conn: _Connection) -> bool:
        """RSET a reused connection: clears any transaction and shows the server is there."""
        try:
            await conn.client.rset()
        except BaseException as exc:
            self._drop(conn)
            if not isinstance(exc, Exception):
                raise
            return False
        return True

    async def _give_back(self, conn: _Connection, reusable: bool) -> None:
        config = self._config
        if (
            reusable
            and not self._closing.is_set()
            and conn.client.is_connected
            and conn.messages < config.max_messages_per_connection
            and len(self._idle.get(conn.key, ())) < config.max_idle_per_destination
        ):
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, collections.deque()).append(conn)
            self._notify()
            return
        try:
            await _quit(conn.client)
        finally:
            self._release_slot()

    def _take_oldest_idle(self) -> _Connection | None:
        oldest: collections.deque[_Connection] | None = None
        for idle in self._idle.values():
            if oldest is None or idle[0].idle_since < oldest[0].idle_since:
                oldest = idle
        if oldest is None:
            return None
        conn = oldest.popleft()
        if not oldest:
            del self._idle[conn.key]
        return conn

    async def _close_idle(self, idle_since_before: float) -> None:
        """QUIT idle connections last used before ``idle_since_before`` (monotonic)."""
        expired: list[_Connection] = []
        for key, idle in list(self._idle.items()):
            while idle and idle[0].idle_since < idle_since_before:
                expired.append(idle.popleft())
            if not idle:
                del self._idle[key]
        if not expired:
            return
        try:
            async with asyncio.TaskGroup() as tasks:
                for conn in expired:
                    tasks.create_task(_quit(conn.client))
        finally:
            for _ in expired:
                self._release_slot()

    def _drop(self, conn: _Connection) -> None:
        conn.client.close()
        self._release_slot()

    def _release_slot(self) -> None:
        self._open -= 1
        self._notify()

    def _notify(self) -> None:
        """Wake every send waiting for a connection slot (they re-check the pool)."""
        self._changed.set()
        self._changed = asyncio.Event()


def _merge(failures: list[_Failure]) -> _Failure:
    """One failure for several tried destinations: permanent only if all were."""
    if not failures:
        return _Failure(Outcome.TRANSIENT, "no mail host to try", False)
    if len(failures) == 1:
        return failures[0]
    permanent = all(f.outcome is Outcome.PERMANENT for f in failures)
    return _Failure(
        Outcome.PERMANENT if permanent else Outcome.TRANSIENT,
        "; ".join(f.detail for f in failures),
        any(f.reached for f in failures),
    )


def _refuse(detail: str) -> SendResult:
    return SendResult(Outcome.PERMANENT, detail=detail)


def _valid_helo(name: str) -> bool:
    return (
        bool(name) and name.isascii() and not any(c.isspace() or not c.isprintable() for c in name)
    )


def _client_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _hello(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO from a server that does not know EHLO (RFC 5321 §3.2)."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code < 500 or not client.is_connected:
            raise
        await client.helo()


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely, then close whatever the server said."""
    try:
        if client.is_connected:
            await client.quit(timeout=QUIT_TIMEOUT_SECONDS)
    except Exception:
        pass  # whatever it says, it was going away anyway
    finally:
        client.close()


def _reason(exc: BaseException) -> str:
    """The root cause of a connection error in a few words."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__
