"""SMTP sink: a mail server on loopback that stands in for a relay or a recipient's MX.

Sluice's email channel hands each message to an SMTP server. The sink is that server for the
demo, the integration tests and the benchmarks (``sluice sim smtp``): aiosmtpd speaks the
protocol (EHLO, STARTTLS, AUTH, SIZE, 8BITMIME, SMTPUTF8, dot-stuffing), the sink decides the
answers, keeps the last messages it accepted and counts what happened.

The options, aiosmtpd's hooks and the counts are one module, as they are one concept: every
hook reads the options and counts what it answered (the STARTTLS certificates are made in
`sluice.sim.certificates`).

How it answers:

- Greeting and EHLO name: ``hostname``. EHLO offers SIZE (``max_message_size``, 0: no limit),
  8BITMIME and SMTPUTF8 (each can be turned off), STARTTLS when it has a certificate
  (``tls_cert``/``tls_key``, or ``self_signed``), and AUTH PLAIN LOGIN only once the session
  is encrypted, and only when ``auth`` lists users.
- ``require_starttls``: everything but EHLO, NOOP, STARTTLS and QUIT is answered ``530``
  before STARTTLS. With ``auth``, MAIL is answered ``530`` until the client authenticates.
- ``RCPT TO``: the reply in ``reject_recipients`` for the address, else for ``@domain``
  (case-insensitive), else ``250 2.1.5 Ok``.
- End of DATA: one draw from ``random.Random(seed)``: the first ``temp_fail_ratio`` of [0, 1)
  answers ``451 4.3.0``, the next ``perm_fail_ratio`` answers ``554 5.3.0``; otherwise the
  message is kept and answered ``250 2.0.0 Ok: queued as <HEXID>``; every answer is held
  back ``data_latency_ms``, decided and counted before that wait. More data than
  ``max_message_size`` is answered ``552`` by aiosmtpd.
- Any ``421`` reply (a ``reject_recipients`` entry, say) closes the connection after it is
  sent, as RFC 5321 §3.8 has servers do.

What it counts (`SmtpSink.stats`): connections (and open now, and at most), STARTTLS
sessions and failed handshakes, AUTH successes and failures, messages accepted, their
recipients and bytes, recipients and DATA commands refused, and every reply by code.

Examples:
    From the shell::

        sluice sim smtp --port 2525 --self-signed --auth demo:secret \\
            --reject '@greylist.test=451:4.7.1 Try again later' --report-seconds 5

    In a test::

        async with SmtpSink(SmtpSinkOptions(self_signed=True)) as sink:
            ...                                   # point the channel at 127.0.0.1:sink.port
            await sink.wait_for(messages=3)       # wakes on the third accepted message
            assert sink.messages()[0].tls

Warning:
    The STARTTLS certificate made by ``self_signed`` is trusted by nobody: clients must turn
    verification off or trust `SmtpSink.certificate_pem`. It is made with the ``openssl``
    command line tool, which must be on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import math
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, AnyStr

import msgspec
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from sluice.sim.base import Simulator
from sluice.sim.certificates import load_tls, self_signed_context
from sluice.sim.options import check_number, check_port, options_from_flags
from sluice.sim.report import add_report_argument, check_report_seconds, run_until_cancelled

log = logging.getLogger("sluice.sim.smtp")

#: aiosmtpd's own default limit on message data (32 MiB), kept as the sink's default.
DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024
#: Seconds of silence after which a session is closed: RFC 5321 §4.5.3.2.7 asks servers to
#: wait at least 5 minutes for the next command.
DEFAULT_SESSION_TIMEOUT_SECONDS = 300.0
#: Seconds `SmtpSink.close` lets open sessions end before it aborts them.
CLOSE_GRACE_SECONDS = 1.0
#: Listen backlog: a channel opens its whole width of connections at once (see webhook_sink).
LISTEN_BACKLOG = 1024

_OK_RCPT = "250 2.1.5 Ok"
_TEMP_FAIL = "451 4.3.0 Simulated temporary failure (temp_fail_ratio)"
_PERM_FAIL = "554 5.3.0 Simulated permanent failure (perm_fail_ratio)"


class SmtpSinkOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the sink listens and answers.

    A bad value raises ValueError naming the field (``temp_fail_ratio: expected a number
    between 0 and 1, got 2``).
    """

    #: Address to listen on.
    host: str = "127.0.0.1"
    #: Port to listen on; 0 lets the OS pick a free one (see `SmtpSink.port`).
    port: int = 0
    #: Name in the greeting and the EHLO reply, and the certificate's name when self-signed.
    hostname: str = "sink.sluice.test"
    #: PEM certificate and key for STARTTLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Make a throwaway certificate for STARTTLS at start (needs ``openssl`` on PATH).
    self_signed: bool = False
    #: Refuse every command but EHLO, NOOP, STARTTLS and QUIT before STARTTLS.
    require_starttls: bool = False
    #: Users allowed to AUTH (username → password); when set, AUTH is required before MAIL.
    #: AUTH is offered only on encrypted sessions, so this needs a certificate.
    auth: dict[str, str] | None = None
    #: Recipient address or "@domain" → (code, text) answered to RCPT TO, e.g.
    #: ``{"nobody@x.test": (550, "5.1.1 No such user")}``.
    reject_recipients: dict[str, tuple[int, str]] = {}
    #: Share of messages refused with 451 at the end of DATA.
    temp_fail_ratio: float = 0.0
    #: Share of messages refused with 554 at the end of DATA (drawn after temp_fail_ratio).
    perm_fail_ratio: float = 0.0
    #: Seed for the failure draws; unset seeds from the OS.
    seed: int | None = None
    #: Milliseconds the reply to the end of DATA is held back (a slow or loaded server).
    data_latency_ms: float = 0.0
    #: Largest message in bytes (announced in EHLO SIZE, 552 above it); 0: no limit.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Accepted messages kept for `SmtpSink.messages`, the newest; 0 keeps none.
    record_limit: int = 1000
    #: Offer 8BITMIME / SMTPUTF8 in EHLO (off: a server that takes only 7-bit mail).
    eight_bit_mime: bool = True
    smtputf8: bool = True
    #: Seconds of client silence after which the sink closes a session.
    session_timeout_seconds: float = DEFAULT_SESSION_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        check_port("port", self.port)
        if not self.hostname or any(c.isspace() for c in self.hostname):
            raise ValueError(
                f"hostname: expected a host name without spaces, got {self.hostname!r}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: tls_cert and tls_key go together; give both or neither")
        if self.self_signed and self.tls_cert is not None:
            raise ValueError("self_signed: give either self_signed or tls_cert/tls_key, not both")
        has_tls = self.self_signed or self.tls_cert is not None
        if self.require_starttls and not has_tls:
            raise ValueError("require_starttls: needs a certificate (self_signed or tls_cert)")
        if self.auth is not None:
            if not self.auth:
                raise ValueError("auth: expected at least one username, got {}")
            if not has_tls:
                raise ValueError(
                    "auth: AUTH is offered only over TLS; set self_signed or tls_cert/tls_key"
                )
        for key, (code, text) in self.reject_recipients.items():
            if "@" not in key:
                raise ValueError(
                    f"reject_recipients: expected an address or '@domain', got {key!r}"
                )
            if not 400 <= code <= 599:
                raise ValueError(
                    f"reject_recipients[{key!r}]: expected a 4xx or 5xx code, got {code}"
                )
            if "\r" in text or "\n" in text:
                raise ValueError(f"reject_recipients[{key!r}]: reply text must be one line")
        check_number("temp_fail_ratio", self.temp_fail_ratio, 0.0, 1.0)
        check_number("perm_fail_ratio", self.perm_fail_ratio, 0.0, 1.0)
        if self.temp_fail_ratio + self.perm_fail_ratio > 1.0:
            raise ValueError(
                "perm_fail_ratio: temp_fail_ratio + perm_fail_ratio must be at most 1, got "
                f"{self.temp_fail_ratio!r} + {self.perm_fail_ratio!r}"
            )
        check_number("data_latency_ms", self.data_latency_ms, 0.0)
        if self.max_message_size < 0:
            raise ValueError(f"max_message_size: expected >= 0, got {self.max_message_size}")
        if self.record_limit < 0:
            raise ValueError(f"record_limit: expected >= 0, got {self.record_limit}")
        if not (math.isfinite(self.session_timeout_seconds) and self.session_timeout_seconds > 0):
            raise ValueError(
                "session_timeout_seconds: expected a number > 0, got "
                f"{self.session_timeout_seconds}"
            )

    @property
    def has_tls(self) -> bool:
        return self.self_signed or self.tls_cert is not None


class ReceivedMail(msgspec.Struct, kw_only=True, frozen=True):
    """One accepted message as the sink got it."""

    queue_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: MAIL FROM parameters as sent, upper-cased ("BODY=8BITMIME", "SMTPUTF8", "SIZE=…").
    mail_options: tuple[str, ...]
    #: The message exactly as received, dot-stuffing undone, CRLF line ends.
    data: bytes
    #: The session was encrypted (STARTTLS) when the message came.
    tls: bool
    #: Who authenticated the session, if anyone.
    auth_user: str | None
    #: The client, "host:port".
    peer: str
    #: Unix time of the end of DATA.
    received_at: float


class SmtpSinkStats(msgspec.Struct, kw_only=True, frozen=True):
    """A snapshot of what the sink saw since it started or was last reset."""

    connections: int
    active_connections: int
    max_active_connections: int
    tls_sessions: int
    #: STARTTLS handshakes that failed (a client refusing the certificate, say).
    tls_failures: int
    auth_successes: int
    auth_failures: int
    #: Messages accepted (250 at the end of DATA), their recipients and data bytes.
    messages: int
    recipients: int
    bytes: int
    #: RCPT TO answered from ``reject_recipients``.
    rejected_recipients: int
    #: DATA commands answered 4xx/5xx (failure ratios, size limit, protocol errors).
    rejected_messages: int
    #: Every reply sent, greetings included, by code.
    replies: dict[int, int]

    def summary(self) -> str:
        """One line for a terminal, e.g. ``connections 3 (open 1) messages 120 ...``."""
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.replies.items()))
        return (
            f"connections {self.connections} (open {self.active_connections}, "
            f"max {self.max_active_connections}) tls {self.tls_sessions} "
            f"messages {self.messages} recipients {self.recipients} bytes {self.bytes} "
            f"rejected rcpt {self.rejected_recipients} data {self.rejected_messages} "
            f"replies [{codes}]"
        )


@dataclass(slots=True)
class _Waiter:
    messages: int
    event: asyncio.Event


class _QuietSession(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every successful AUTH
    (aiosmtpd itself still sets the legacy ``login_data``)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SinkSession(SMTP):
    """aiosmtpd's session with the sink's counting: connections, replies, refused DATA, 421."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        self._sink = sink
        self._last_code = 0
        super().__init__(_SinkHandler(sink), **kwargs)

    def _create_session(self) -> Session:
        return _QuietSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again with the TLS transport
        super().connection_made(transport)
        if first:
            self._sink._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._sink._closed(self)

    async def push(self, status: AnyStr) -> None:
        line = status.encode() if isinstance(status, str) else status
        code = int(line[:3]) if line[:3].isdigit() else 0
        self._last_code = code
        if line[3:4] != b"-":  # the last line of a reply: count the reply once
            self._sink._replied(code)
        await super().push(status)
        if code == 421 and self.transport is not None:
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        self._last_code = 0
        await super().smtp_DATA(arg)
        if self._last_code >= 400:
            self._sink._stats_rejected_messages += 1

    def abort(self) -> None:
        """Drop the connection at once (the raw socket under TLS, so no close_notify wait)."""
        raw = self._original_transport or self.transport
        if raw is not None:
            raw.abort()  # type: ignore[attr-defined]


class _SinkHandler:
    """aiosmtpd hooks: the sink's answers to EHLO, RCPT TO, DATA and STARTTLS."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        options = self._sink.options
        dropped = set()
        if not options.eight_bit_mime:
            dropped.add("8BITMIME")
        if not options.smtputf8:
            dropped.add("SMTPUTF8")
        if options.auth is None:
            dropped.add("AUTH")
        return [line for line in responses if line[4:].split(" ")[0] not in dropped]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self._sink._refusal(address)
        if refusal is not None:
            self._sink._stats_rejected_recipients += 1
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return _OK_RCPT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._sink._accept(session, envelope)
        latency_ms = self._sink.options.data_latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000.0)
        return reply

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        self._sink._stats_tls_sessions += 1
        return True

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that does not trust the certificate hangs up mid-handshake: routine
            # for a self-signed sink, so counted and logged without a traceback.
            self._sink._stats_tls_failures += 1
            log.info("SMTP sink: STARTTLS handshake failed: %r", error.__cause__)
        else:
            log.exception("SMTP sink: session error")
        return f"500 Error: ({type(error).__name__}) {error}"


class SmtpSink(Simulator):
    """The sink server; see the module docstring for what it answers and counts."""

    NAME = "SMTP sink"

    def __init__(self, options: SmtpSinkOptions | None = None) -> None:
        self._options = options if options is not None else SmtpSinkOptions()
        self._rng = random.Random(self._options.seed)
        self._refusals = {key.lower(): f"{code} {text}" for key, (code, text) in
                          self._options.reject_recipients.items()}  # fmt: skip
        self._server: asyncio.Server | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._certificate_pem: str | None = None
        self._port = 0
        self._sessions: set[_SinkSession] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._waiters: list[_Waiter] = []
        self._queue_prefix = random.Random().getrandbits(16)
        self._queue_seq = 0
        self.reset()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on ``options.host:options.port`` and return the bound port."""
        if self._server is not None:
            raise RuntimeError(f"{self.NAME} already started on port {self._port}")
        options = self._options
        if options.self_signed:
            self._tls_context, self._certificate_pem = await self_signed_context(
                options.hostname, options.host
            )
        elif options.tls_cert is not None and options.tls_key is not None:
            self._tls_context, self._certificate_pem = await asyncio.to_thread(
                load_tls, options.tls_cert, options.tls_key
            )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session, options.host, options.port, backlog=LISTEN_BACKLOG
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def close(self) -> None:
        """Stop listening and end open sessions (aborted after `CLOSE_GRACE_SECONDS`)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        try:
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self._all_closed.wait()
        except TimeoutError:
            for session in list(self._sessions):
                session.abort()
            async with asyncio.timeout(CLOSE_GRACE_SECONDS):
                await self._all_closed.wait()
        await server.wait_closed()

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def host(self) -> str:
        return self._options.host

    @property
    def options(self) -> SmtpSinkOptions:
        return self._options

    @property
    def certificate_pem(self) -> str | None:
        """The STARTTLS certificate (PEM), for clients that want to verify it."""
        return self._certificate_pem

    # -- what arrived ----------------------------------------------------------------------

    def messages(self) -> list[ReceivedMail]:
        """Accepted messages, oldest first (the last ``record_limit`` of them)."""
        return list(self._records)

    def stats(self) -> SmtpSinkStats:
        return SmtpSinkStats(
            connections=self._stats_connections,
            active_connections=len(self._sessions),
            max_active_connections=self._stats_max_active,
            tls_sessions=self._stats_tls_sessions,
            tls_failures=self._stats_tls_failures,
            auth_successes=self._stats_auth_successes,
            auth_failures=self._stats_auth_failures,
            messages=self._stats_messages,
            recipients=self._stats_recipients,
            bytes=self._stats_bytes,
            rejected_recipients=self._stats_rejected_recipients,
            rejected_messages=self._stats_rejected_messages,
            replies=dict(self._stats_replies),
        )

    def reset(self) -> None:
        """Zero every count and forget kept messages; queue ids carry on."""
        self._records: collections.deque[ReceivedMail] = collections.deque(
            maxlen=self._options.record_limit
        )
        self._stats_connections = 0
        self._stats_max_active = len(self._sessions)
        self._stats_tls_sessions = 0
        self._stats_tls_failures = 0
        self._stats_auth_successes = 0
        self._stats_auth_failures = 0
        self._stats_messages = 0
        self._stats_recipients = 0
        self._stats_bytes = 0
        self._stats_rejected_recipients = 0
        self._stats_rejected_messages = 0
        self._stats_replies: dict[int, int] = {}

    async def wait_for(
        self,
        messages: int,
        # A test's wait always needs a bound and a message naming what was missing.
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Return once ``messages`` messages were accepted since the start or the last reset.

        Raises TimeoutError, with the counts, after ``timeout`` s.
        """
        if self._stats_messages >= messages:
            return
        waiter = _Waiter(messages, asyncio.Event())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.NAME}: waited {timeout:g} s for {messages} messages, got "
                f"{self._stats_messages} ({self.stats().summary()})"
            ) from None
        finally:
            self._waiters.remove(waiter)

    # -- internals -------------------------------------------------------------------------

    def _new_session(self) -> _SinkSession:
        options = self._options
        return _SinkSession(
            self,
            hostname=options.hostname,
            data_size_limit=options.max_message_size or None,
            enable_SMTPUTF8=True,  # accepts it always; whether EHLO offers it is an option
            tls_context=self._tls_context,
            require_starttls=options.require_starttls,
            timeout=options.session_timeout_seconds,
            auth_required=options.auth is not None,
            auth_require_tls=True,
            authenticator=self._authenticate,
            loop=asyncio.get_running_loop(),
        )

    def _opened(self, session: _SinkSession) -> None:
        self._sessions.add(session)
        self._all_closed.clear()
        self._stats_connections += 1
        self._stats_max_active = max(self._stats_max_active, len(self._sessions))

    def _closed(self, session: _SinkSession) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._all_closed.set()

    def _replied(self, code: int) -> None:
        self._stats_replies[code] = self._stats_replies.get(code, 0) + 1

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        users = self._options.auth or {}
        if isinstance(data, LoginPassword):
            user = data.login.decode("utf-8", "replace")
            expected = users.get(user)
            if expected is not None and expected == data.password.decode("utf-8", "replace"):
                self._stats_auth_successes += 1
                return AuthResult(success=True, auth_data=user)
        self._stats_auth_failures += 1
        return AuthResult(success=False, handled=False)

    def _refusal(self, address: str) -> str | None:
        key = address.lower()
        refusal = self._refusals.get(key)
        if refusal is None and "@" in key:
            refusal = self._refusals.get("@" + key.rpartition("@")[2])
        return refusal

    def _accept(self, session: Session, envelope: Envelope) -> str:
        """The reply to the end of DATA; keeps and counts an accepted message."""
        options = self._options
        if options.temp_fail_ratio > 0 or options.perm_fail_ratio > 0:
            draw = self._rng.random()
            if draw < options.temp_fail_ratio:
                return _TEMP_FAIL
            if draw < options.temp_fail_ratio + options.perm_fail_ratio:
                return _PERM_FAIL
        self._queue_seq += 1
        queue_id = f"{self._queue_prefix:04X}{self._queue_seq:06X}"
        data = envelope.original_content or b""
        self._stats_messages += 1
        self._stats_recipients += len(envelope.rcpt_tos)
        self._stats_bytes += len(data)
        if self._records.maxlen:
            user = session.auth_data if isinstance(session.auth_data, str) else None
            self._records.append(
                ReceivedMail(
                    queue_id=queue_id,
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    mail_options=tuple(envelope.mail_options),
                    data=data,
                    tls=session.ssl is not None,
                    auth_user=user,
                    peer=_format_peer(session.peer),
                    received_at=time.time(),
                )
            )
        for waiter in self._waiters:
            if self._stats_messages >= waiter.messages:
                waiter.event.set()
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


# -- command line (`sluice sim smtp`) --------------------------------------------------------


# Option fields whose flag takes the value as it is (the others are not on the command line,
# or are built from repeated flags).
_PLAIN_FIELDS = (
    "host",
    "port",
    "hostname",
    "tls_cert",
    "tls_key",
    "self_signed",
    "require_starttls",
    "temp_fail_ratio",
    "perm_fail_ratio",
    "seed",
    "data_latency_ms",
    "max_message_size",
)


def _parse_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError(f"expected user:password, got {value!r}")
    return user, password


def _parse_reject(value: str) -> tuple[str, tuple[int, str]]:
    key, sep, reply = value.partition("=")
    code, sep2, text = reply.partition(":")
    if not sep or not sep2 or not code.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected ADDRESS=CODE:TEXT (e.g. '@x.test=550:5.1.1 No such user'), got {value!r}"
        )
    return key, (int(code), text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sluice sim smtp`` options to ``parser``."""
    defaults = SmtpSinkOptions()
    parser.add_argument("--host", default=defaults.host, help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=2525, help="port to bind, 0 for any")
    parser.add_argument("--hostname", default=defaults.hostname, help="name in greeting/EHLO")
    parser.add_argument("--tls-cert", help="PEM certificate for STARTTLS")
    parser.add_argument("--tls-key", help="PEM key for STARTTLS")
    parser.add_argument(
        "--self-signed", action="store_true", help="make a throwaway certificate for STARTTLS"
    )
    parser.add_argument(
        "--require-starttls", action="store_true", help="refuse mail before STARTTLS"
    )
    parser.add_argument(
        "--auth",
        action="append",
        type=_parse_auth,
        metavar="USER:PASSWORD",
        help="require AUTH (over TLS) with these users; repeatable",
    )
    parser.add_argument(
        "--reject",
        action="append",
        type=_parse_reject,
        metavar="ADDRESS=CODE:TEXT",
        help="answer RCPT TO for an address or @domain with this reply; repeatable",
    )
    parser.add_argument(
        "--temp-fail-ratio", type=float, default=0.0, help="share of DATA answered 451 (0..1)"
    )
    parser.add_argument(
        "--perm-fail-ratio", type=float, default=0.0, help="share of DATA answered 554 (0..1)"
    )
    parser.add_argument("--seed", type=int, help="seed for the failure draws")
    parser.add_argument(
        "--data-latency-ms",
        type=float,
        default=0.0,
        help="milliseconds the reply to the end of DATA is held back",
    )
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=defaults.max_message_size,
        help="largest message in bytes, 0 = no limit (%(default)s)",
    )
    add_report_argument(parser)


def options_from_args(args: argparse.Namespace) -> SmtpSinkOptions:
    """`SmtpSinkOptions` from parsed arguments; ValueError names the flag."""
    return options_from_flags(
        SmtpSinkOptions,
        args,
        _PLAIN_FIELDS,
        {"reject_recipients": "--reject"},
        auth=dict(args.auth) if args.auth else None,
        reject_recipients=dict(args.reject or ()),
    )


async def run_from_args(args: argparse.Namespace) -> None:
    """Run the sink until cancelled, printing a summary every ``--report-seconds``."""
    options = options_from_args(args)
    check_report_seconds(args.report_seconds)
    sink = SmtpSink(options)
    await sink.start()

    async def listening() -> str:
        tls = " with STARTTLS" if options.has_tls else ""
        return f"{options.host}:{sink.port}{tls}"

    await run_until_cancelled(sink, listening, args.report_seconds)
