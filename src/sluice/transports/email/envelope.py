"""What is sent: the envelope and the bytes after DATA, and what they need of the server.

A message whose metadata has ``"format": "rfc5322"`` carries a whole message (headers and
body) that goes as it is, UTF-8 encoded; any other is built here as text/plain with From, To,
Subject (``metadata["subject"]``), Date and a Message-ID made of the sluice id. Non-ASCII
headers or addresses need the server's SMTPUTF8, a non-ASCII body its 8BITMIME; a server
without them gets nothing and the message fails for good.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import NamedTuple

from sluice.model import Message, format_id

#: The right side of generated Message-IDs: ``<ID@sluice>``.
MESSAGE_ID_DOMAIN = "sluice"

#: How the text of a built message is encoded: 7-bit (quoted-printable or base64 when not
#: ASCII), so it goes to any server; the UTF-8 variant is for non-ASCII addresses.
_POLICY_7BIT = email.policy.SMTP.clone(cte_type="7bit")
_POLICY_UTF8 = email.policy.SMTPUTF8.clone(cte_type="7bit")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FORMAT_RFC5322 = "rfc5322"
_FORMATS_TEXT = (None, "text")


class Envelope(NamedTuple):
    """One message ready for an SMTP transaction."""

    sender: str
    recipient: str
    #: The recipient's domain, lower-cased, for the MX lookup.
    domain: str
    #: The message as it goes after DATA (line ends and dot-stuffing are the client's).
    data: bytes
    #: Non-ASCII addresses or headers: needs the server's SMTPUTF8.
    smtputf8: bool
    #: Non-ASCII bytes anywhere: needs the server's 8BITMIME.
    eight_bit: bool


def build_envelope(message: Message, default_from: str, now: datetime | None = None) -> Envelope:
    """The envelope and data for `message`; ValueError says why it cannot be sent at all."""
    sender = message.sender or default_from
    recipient = message.recipient.strip()
    for role, address in (("sender", sender), ("recipient", recipient)):
        if not address or any(c in address for c in "\r\n\0"):
            raise ValueError(f"{role} {address!r} is not an email address")
    local, at, domain = recipient.rpartition("@")
    if not (at and local and domain):
        raise ValueError(f"recipient {recipient!r} is not an email address (no @domain)")
    addresses_utf8 = not (sender.isascii() and recipient.isascii())
    metadata = message.metadata or {}
    form = metadata.get("format")
    if form == _FORMAT_RFC5322:
        data = message.body.encode("utf-8", "surrogateescape")
        head = _HEADER_END.split(data, 1)[0]
        return Envelope(
            sender, recipient, domain.lower(), data,
            smtputf8=addresses_utf8 or not head.isascii(), eight_bit=not data.isascii(),
        )  # fmt: skip
    if form not in _FORMATS_TEXT:
        raise ValueError(
            f"metadata format {form!r} is not supported: use {_FORMAT_RFC5322!r} for a "
            "complete message, or leave it out for plain text"
        )
    mail = EmailMessage(policy=_POLICY_UTF8 if addresses_utf8 else _POLICY_7BIT)
    try:
        mail["From"] = sender
        mail["To"] = recipient
        mail["Subject"] = metadata.get("subject", "")
        mail["Date"] = format_datetime(now or datetime.now(UTC))
        mail["Message-ID"] = f"<{format_id(message.id)}@{MESSAGE_ID_DOMAIN}>"
        mail.set_content(message.body)
        data = mail.as_bytes()
    except (ValueError, IndexError, email.errors.MessageError) as exc:
        raise ValueError(f"cannot build the message: {exc}") from None
    return Envelope(
        sender, recipient, domain.lower(), data,
        smtputf8=addresses_utf8, eight_bit=not data.isascii(),
    )  # fmt: skip
