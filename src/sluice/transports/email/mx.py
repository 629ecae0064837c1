"""The MX lookup: a recipient domain's mail hosts, from DNS, cached for their TTL.

Without ``relay_host`` the recipient domain's MX records are looked up (dnspython, cached for
their TTL) and its mail servers tried by preference, falling back to the domain's own address
when it has no MX (the implicit MX of RFC 5321 §5.1).
"""

from __future__ import annotations

import ipaddress
import random

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from sluice.model import Outcome
from sluice.transports.base import SendResult

#: MX hosts tried per message, and addresses per host (Postfix stops at 5 addresses in all,
#: smtp_mx_address_limit): a dead domain must not hold a send for many connect timeouts.
MX_HOST_LIMIT = 5
ADDRESSES_PER_HOST = 2
#: DNS answers kept (MX, A and AAAA, each for its TTL); least recently used go first.
DNS_CACHE_SIZE = 10_000


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"10.0.0.1"``, ``"10.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` as (address, port)."""
    text = text.strip()
    port = "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(
            f"email.nameservers: expected an IP address as 'host' or 'host:port', got {text!r}"
        ) from None
    if not 1 <= number <= 65535:
        raise ValueError(f"email.nameservers: port must be 1..65535, got {text!r}")
    return host, number


class DnsError(Exception):
    """A lookup that may work later (timeout, SERVFAIL)."""


class MxLookup:
    """A domain's mail hosts in the order to try them, from dnspython's asyncio resolver.

    Answers, negative ones included, are cached for their TTL in a bounded LRU cache.
    """

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver
        self._rng = random.Random()

    @classmethod
    def create(cls, nameservers: list[str], timeout: float) -> MxLookup:
        """A lookup through ``nameservers`` ("host" or "host:port"), or the system's when
        empty (this reads /etc/resolv.conf: call it off the event loop)."""
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(text)) for text in nameservers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise ValueError(
                    "email.nameservers: empty, and this system has no resolver configuration; "
                    "list DNS servers for MX lookups"
                ) from None
        resolver.cache = dns.resolver.LRUCache(DNS_CACHE_SIZE)
        resolver.timeout = timeout
        resolver.lifetime = timeout
        return cls(resolver)

    async def hosts(self, domain: str) -> list[str] | SendResult:
        """Mail hosts of ``domain`` by preference (ties shuffled), or why there are none."""
        try:
            dns.name.from_text(domain)
        except dns.exception.DNSException as exc:
            return SendResult(
                Outcome.PERMANENT, detail=f"recipient domain {domain!r} is not a domain: {exc}"
            )
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return _no_mail_server(domain, "the domain does not exist")
        except DnsError as exc:
            return SendResult(
                Outcome.TRANSIENT, detail=f"MX lookup for {domain}: {exc}", attempted=False
            )
        if answer.rrset is None:  # no MX: the domain itself is the mail host
            try:
                addresses = await self.addresses(domain)
            except DnsError as exc:
                return SendResult(
                    Outcome.TRANSIENT, detail=f"address lookup for {domain}: {exc}", attempted=False
                )
            if not addresses:
                return _no_mail_server(domain, "no MX, A or AAAA record")
            return [domain]
        records = sorted(answer.rrset, key=lambda r: (r.preference, self._rng.random()))
        hosts = [
            r.exchange.to_text(omit_final_dot=True).lower()
            for r in records
            if r.exchange != dns.name.root
        ]
        if not hosts:
            return _no_mail_server(domain, "it publishes a null MX (RFC 7505)")
        return hosts[:MX_HOST_LIMIT]

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of ``host``; empty when it has none."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(host, rdtype)
            except dns.resolver.NXDOMAIN:
                return found
            if answer.rrset is not None:
                found.extend(r.address for r in answer.rrset)
        return found

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise
        except dns.exception.Timeout:
            raise DnsError(f"DNS timed out after {self._resolver.lifetime:g} s") from None
        except dns.resolver.NoNameservers:
            raise DnsError("no DNS server could answer (SERVFAIL or refused)") from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"DNS failed: {exc}") from None


def _no_mail_server(domain: str, why: str) -> SendResult:
    return SendResult(Outcome.PERMANENT, detail=f"no mail server for {domain}: {why}")
