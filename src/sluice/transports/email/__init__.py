"""Email transport: SMTP to a relay, or straight to each recipient domain's mail servers.

One message is one SMTP transaction on a pooled connection, through the relay
(``relay_host``) or the recipient domain's MX hosts. The parts, one concept each:

- `envelope`: what is sent (the envelope, the message's bytes, its need of SMTPUTF8 or
  8BITMIME);
- `mx`: the MX lookup (a domain's mail hosts by preference, cached for their TTL);
- `replies`: how an SMTP answer maps to an outcome, a detail and a provider id;
- `transport`: `EmailTransport`, its routes, TLS and AUTH, and the connection pool per
  destination.

Examples:
    Through a local sink (``sluice sim smtp --port 2525``)::

        config = EmailConfig(relay_host="127.0.0.1", relay_port=2525, starttls="never")
        transport = EmailTransport("mail", config, width=8)
        await transport.start()
        result = await transport.send(Message(1, "acme", "mail", "bob@example.test", "Hi",
                                              metadata={"subject": "Hello"}))
        result.outcome, result.provider_id, result.detail
        # (Outcome.SENT, 'A3F1000001', '250 2.0.0 Ok: queued as A3F1000001')

Warning:
    In MX mode each transient failure of one recipient domain (greylisting, a dead MX) also
    counts against the channel's breaker, which knows only the channel as a whole. Give
    domains with flaky mail servers a breaker threshold that allows for them.
"""

from sluice.transports.email.envelope import MESSAGE_ID_DOMAIN, Envelope, build_envelope
from sluice.transports.email.mx import (
    ADDRESSES_PER_HOST,
    DNS_CACHE_SIZE,
    MX_HOST_LIMIT,
    DnsError,
    MxLookup,
    parse_nameserver,
)
from sluice.transports.email.replies import classify, queue_id, reply_text
from sluice.transports.email.transport import QUIT_TIMEOUT_SECONDS, EmailTransport

__all__ = [
    "ADDRESSES_PER_HOST",
    "DNS_CACHE_SIZE",
    "MESSAGE_ID_DOMAIN",
    "MX_HOST_LIMIT",
    "QUIT_TIMEOUT_SECONDS",
    "DnsError",
    "EmailTransport",
    "Envelope",
    "MxLookup",
    "build_envelope",
    "classify",
    "parse_nameserver",
    "queue_id",
    "reply_text",
]
