"""What the SMTP session does with mail: routes recipients, greylists, stores, answers.

The session itself is aiosmtpd's; this is its handler. A recipient is accepted when it has a
route: `<number>@<sms_domain>` becomes an SMS on the SMS channel; any other address goes to the
email channel — to `local_domains` from anyone, elsewhere only from authenticated clients, so
the front door is never an open relay. Accepted mail is one message per recipient, and the
client hears `250` only once those messages are committed to the journal.

Examples (the replies a client sees):
    RCPT TO:<+447700900123@sms.example.com>  250 2.1.5 OK
    RCPT TO:<bob@elsewhere.example>          554 5.7.1 <bob@elsewhere.example>: Relay access
                                             denied (authenticate to send to other domains)
    DATA … .                                 250 2.0.0 Ok: queued as 0J4R2K1V8M2QE
    DATA … (3,118 characters to an SMS)      552 5.3.4 SMS text too long: 3118 characters
                                             need 21 segments; channels.sms.smpp.max_segments
                                             is 10
"""

from __future__ import annotations

import email.parser
import email.policy
import logging
import re
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from sluice.config import SmtpConfig
from sluice.ingress.contract import Gateway
from sluice.ingress.sms_length import SmsLength
from sluice.ingress.smtp.session_limits import ErrorCount
from sluice.journal.base import DeadlinePassed, JournalBusy, JournalError
from sluice.model import Message, format_id
from sluice.screening.greylist import Greylist, reply

log = logging.getLogger("sluice.smtp")

#: A phone number as the local part of an SMS address: an optional "+" and 6 to 15 digits.
_NUMBER = re.compile(r"^\+?[0-9]{6,15}$")
_parser = email.parser.BytesParser(policy=email.policy.default)


class SessionVerdict:
    """What screening decided about a connection, carried into its SMTP session."""

    __slots__ = ("client", "port", "reject")

    def __init__(self, client: str, port: int, reject: str | None) -> None:
        self.client = client
        self.port = port
        #: Why every RCPT TO is refused (an "enforce" action), or None.
        self.reject = reject


class MailHandler:
    """aiosmtpd handler for one connection (it knows the client's screening verdict)."""

    def __init__(
        self,
        config: SmtpConfig,
        gateway: Gateway,
        verdict: SessionVerdict,
        greylist: Greylist | None,
        check_login: Callable[[str, str], bool],
        on_event: Callable[[str, str], None],
        sms_length: SmsLength | None = None,
    ) -> None:
        self._config = config
        self._gateway = gateway
        self._verdict = verdict
        self._greylist = greylist
        self._check_login = check_login
        self._event = on_event
        #: The SMS channel's segment limit (None: the channel has none, as a webhook).
        self._sms_length = sms_length
        self._sms_domain = (config.sms_domain or "").lower()
        self._local = {d.lower() for d in config.local_domains}
        #: The session's error replies, counted by the session as it sends them.
        self.errors = ErrorCount(
            max_errors=config.max_errors, max_auth_failures=config.max_auth_failures
        )

    # ------------------------------------------------------------------ aiosmtpd hooks

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """AUTH PLAIN / LOGIN: the user name is a tenant, the password one of its API keys.
        aiosmtpd offers AUTH only over TLS (auth_require_tls)."""
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        if self._check_login(user, data.password.decode("utf-8", "replace")):
            return AuthResult(success=True, auth_data=user)
        self._event("AUTH-FAIL", f"AUTH failed for {user!r} from {self.where()}")
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        verdict = self._verdict
        if verdict.reject is not None:
            self._event(
                "NOQUEUE",
                f"NOQUEUE: reject: RCPT from {self.where()}: 550 5.7.1 {verdict.reject}; "
                f"from=<{envelope.mail_from}> to=<{address}>",
            )
            return f"550 5.7.1 Service unavailable; client [{verdict.client}] {verdict.reject}"
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self._config.max_recipients})"
        route = self._route(address, authenticated=session.authenticated)
        if isinstance(route, str) and route.startswith(("5", "4")):
            return route
        if self._greylist is not None and not session.authenticated:
            grey = self._greylist.check(verdict.client, envelope.mail_from or "", address)
            if not grey.passed:
                code, text = reply(grey)
                self._event(
                    "GREYLISTED",
                    f"GREYLISTED {self.where()}: from=<{envelope.mail_from}> to=<{address}> "
                    f"({grey.reason})",
                )
                return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw).encode()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "554 5.6.0 Message must be 7-bit ASCII or UTF-8"
        tenant = session.auth_data if session.authenticated else self._config.tenant
        assert isinstance(tenant, str)
        sms = _sms_text(raw) if any(self._is_sms(a) for a in envelope.rcpt_tos) else ""
        # RFC 5322 forbids NUL, and the PostgreSQL journal cannot store one: refused for good
        # (not 451 for ever), in the mail or in the text its transfer encoding decodes to.
        if "\0" in text or "\0" in sms:
            return "554 5.6.0 Message must not contain NUL characters"
        refusal = self._sms_refusal(sms) if sms else None
        if refusal is not None:
            self._event(
                "NOQUEUE",
                f"NOQUEUE: reject: DATA from {self.where()}: {refusal}; "
                f"from=<{envelope.mail_from}>",
            )
            return refusal
        messages = [
            self._message(tenant, address, envelope.mail_from or "", sms, text)
            for address in envelope.rcpt_tos
        ]
        try:
            await self._gateway.submit(tenant, messages)
        except JournalBusy:
            return "451 4.3.1 Insufficient system resources, try again later"
        except DeadlinePassed:  # the journal too busy to begin its commit in time: none made
            return "451 4.3.1 Insufficient system resources, try again later"
        except JournalError:
            log.exception("storing mail from %s failed", self.where())
            return "451 4.3.0 Local error in processing, try again later"
        self.errors.delivered()
        first = format_id(messages[0].id)
        self._event(
            "QUEUED",
            f"{first}: from=<{envelope.mail_from}>, {len(messages)} recipient(s), "
            f"{len(raw)} bytes, client {self.where()}",
        )
        return f"250 2.0.0 Ok: queued as {first}"

    async def handle_exception(self, error: Exception) -> str:
        """A failed STARTTLS handshake is the client's doing (an old TLS version, a cipher
        in common with nobody, a port scanner): one line, not a traceback. Anything else is
        a fault here and is logged in full, as aiosmtpd would."""
        if isinstance(error, TLSSetupException):
            reason = str(error.__cause__ or error) or type(error.__cause__ or error).__name__
            self._event("TLS-FAIL", f"TLS handshake failed from {self.where()}: {reason}")
            return "454 4.7.0 TLS not available"  # not sent: aiosmtpd closes the connection
        log.exception("SMTP session of %s failed", self.where())
        return f"500 Error: ({type(error).__name__}) {error}"

    # ------------------------------------------------------------------ routing

    def _route(self, address: str, *, authenticated: bool | None) -> str | None:
        """None when the recipient has a route, else the refusal reply (`authenticated` is
        aiosmtpd's session flag: None until an AUTH succeeds)."""
        local, _, domain = address.rpartition("@")
        domain = domain.lower()
        if not local:
            return f"501 5.1.3 <{address}>: Bad recipient address syntax"
        if self._sms_domain and domain == self._sms_domain:
            if not _NUMBER.match(local):
                return f"550 5.1.1 <{address}>: not a phone number (+ and 6 to 15 digits)"
            return None
        if self._config.email_channel is None:
            return f"550 5.1.2 <{address}>: no route to this domain"
        if authenticated or domain in self._local:
            return None
        return f"554 5.7.1 <{address}>: Relay access denied (authenticate to send to other domains)"

    def _is_sms(self, address: str) -> bool:
        return bool(self._sms_domain) and address.rpartition("@")[2].lower() == self._sms_domain

    def _sms_refusal(self, sms: str) -> str | None:
        """Why the SMS text `sms` can never be sent on the SMS channel, as a reply, or None."""
        return self._sms_length.refusal(sms) if self._sms_length is not None else None

    def _message(self, tenant: str, address: str, sender: str, sms: str, text: str) -> Message:
        """The message for one recipient: `sms` is the text for an SMS, `text` the mail."""
        gateway = self._gateway
        if self._is_sms(address):
            assert self._config.sms_channel is not None
            return Message(
                gateway.next_id(),
                tenant,
                self._config.sms_channel,
                address.rpartition("@")[0],
                sms,
                None,
            )
        assert self._config.email_channel is not None
        return Message(
            gateway.next_id(),
            tenant,
            self._config.email_channel,
            address,
            text,
            sender or None,
            metadata={"format": "rfc5322"},
        )

    def where(self) -> str:
        """The client as log lines name it: "[address]:port"."""
        return f"[{self._verdict.client}]:{self._verdict.port}"


def _sms_text(raw: bytes) -> str:
    """An SMS's text from a mail: its plain-text body, else its subject."""
    parsed = _parser.parsebytes(raw)
    body = parsed.get_body(preferencelist=("plain",))
    text = body.get_content().strip() if body is not None else ""
    return text or str(parsed.get("subject", "")).strip() or "(empty)"
