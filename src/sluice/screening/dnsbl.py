"""DNSBL and DNSWL scoring of an SMTP client's address, in the manner of Postfix postscreen.

Each site of ``postscreen_dnsbl_sites`` is a DNS zone with a weight: a client listed in a
blocklist adds its positive weight, a client listed in an allowlist (DNSWL) adds a negative
one. The combined score is compared with ``postscreen_dnsbl_threshold`` (block at or above)
and ``postscreen_dnsbl_allowlist_threshold`` (allowlist at or below, when negative). All
zones are asked in parallel within ``postscreen_dnsbl_timeout``; answers, "not listed" ones
included, are cached for their DNS TTL clamped to ``postscreen_dnsbl_min_ttl`` ..
``postscreen_dnsbl_max_ttl``.

Examples:
    >>> zone = parse_zone("zen.spamhaus.org=127.0.0.[2..11]*3")
    >>> zone.name, zone.weight, sorted(zone.codes)
    ('zen.spamhaus.org', 3, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    >>> query_name("192.0.2.7", "zen.spamhaus.org")
    '7.2.0.192.zen.spamhaus.org.'

    Against a real resolver::

        sites = ["zen.spamhaus.org*3", "list.dnswl.org=127.0.[0..255].[1..3]*-5"]
        scorer = DnsblScorer([parse_zone(s) for s in sites], block_threshold=3, allow_threshold=-1)
        result = await scorer.score("192.0.2.7")
        if result.blocked: ...

Warning:
    A lapsed DNSBL domain can be re-registered by someone who answers every name with a public
    address, which would list the whole Internet. Only answers inside 127.0.0.0/8 are ever
    counted; others are ignored and logged once per zone. Spamhaus answers 127.255.255.x when
    it refuses a query (public resolver, excess volume); such answers only count when a filter
    names them explicitly. A zone that times out counts as "not listed" and is not cached, so
    a slow list weakens screening rather than stalling it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver
import msgspec

log = logging.getLogger("sluice.screening")

# DNSBLs answer from 127.0.0.0/8 (RFC 5782 section 2.1); anything else is a broken zone.
LISTED_NETWORK = ipaddress.IPv4Network("127.0.0.0/8")
# Spamhaus's "query refused" answers (typo in the zone, public resolver, over quota).
REFUSED_NETWORK = ipaddress.IPv4Network("127.255.255.0/24")

_LOOPBACK_PREFIX = (frozenset({127}), frozenset({0}), frozenset({0}))
_ZONE_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")
# A filter is four octet patterns; a bracketed pattern has dots of its own ("[2..11]").
_FILTER = re.compile(r"\.".join([r"(\[[^]]*\]|[^.[]*)"] * 4))
_OCTET_ITEM = re.compile(r"(\d{1,3})(?:\.\.(\d{1,3}))?")


class DnsblZone(msgspec.Struct, frozen=True):
    """One entry of ``postscreen_dnsbl_sites``: a zone, its weight and its reply filter.

    ``codes`` are the last octets of the answers that count, ``prefix`` the allowed values of
    the first three octets (``127.0.0`` unless the filter says otherwise, as DNSWL's
    ``127.0.[0..255].[1..3]`` does). ``codes=None`` means no filter: any answer in
    127.0.0.0/8 counts but Spamhaus's refusals (127.255.255.x). The same zone may appear
    several times with different filters and weights; it is still queried once per client.
    """

    name: str
    weight: int
    codes: frozenset[int] | None = None
    prefix: tuple[frozenset[int], frozenset[int], frozenset[int]] = _LOOPBACK_PREFIX

    def counts(self, answer: ipaddress.IPv4Address) -> bool:
        """Whether an answer in 127.0.0.0/8 passes this site's filter.

        Without a filter every answer counts except Spamhaus's refusals (127.255.255.x).
        """
        if self.codes is None:
            return answer not in REFUSED_NETWORK
        allowed = (*self.prefix, self.codes)
        return all(octet in octets for octet, octets in zip(answer.packed, allowed, strict=True))


def parse_zone(spec: str) -> DnsblZone:
    """Read one postscreen site: ``name[=filter][*weight]``, weight 1 when omitted.

    Each octet of the filter is a number, ``[A..B]``, ``[A;B;C]`` or a mix (``[1;3..5]``).

    Examples:
        >>> parse_zone("bl.example.org*2").weight, parse_zone("bl.example.org").weight
        (2, 1)
        >>> parse_zone("wl.example.org=127.0.0.[17;18]*-1").codes
        frozenset({17, 18})
    """
    site, star, weight_text = spec.strip().partition("*")
    name, equals, filter_text = site.partition("=")
    name = name.lower().removesuffix(".")
    if not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"DNSBL site {spec!r}: {name!r} is not a DNS zone name")
    weight = 1
    if star:
        try:
            weight = int(weight_text)
        except ValueError:
            raise ValueError(
                f"DNSBL site {spec!r}: weight {weight_text!r} after '*' is not an integer"
            ) from None
    if not equals:
        return DnsblZone(name, weight)
    first, second, third, last = _parse_filter(spec, filter_text)
    return DnsblZone(name, weight, codes=last, prefix=(first, second, third))


def _parse_filter(spec: str, text: str) -> list[frozenset[int]]:
    octets = _FILTER.fullmatch(text)
    if octets is None:
        raise ValueError(
            f"DNSBL site {spec!r}: filter {text!r} is not four octet patterns like 127.0.0.[2..11]"
        )
    parsed = [_parse_octet(spec, octet) for octet in octets.groups()]
    if parsed[0] != {127}:
        raise ValueError(
            f"DNSBL site {spec!r}: filter {text!r} must start with 127. "
            "(DNSBL answers outside 127.0.0.0/8 are never counted)"
        )
    return parsed


def _parse_octet(spec: str, text: str) -> frozenset[int]:
    items = text[1:-1].split(";") if text.startswith("[") and text.endswith("]") else [text]
    values: set[int] = set()
    for item in items:
        match = _OCTET_ITEM.fullmatch(item)
        low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, -1)
        if not 0 <= low <= high <= 255:
            raise ValueError(
                f"DNSBL site {spec!r}: {text!r} is not an octet pattern "
                "(use N, [A..B] or [A;B;C] with numbers 0..255, A <= B)"
            )
        values.update(range(low, high + 1))
    return frozenset(values)


def query_name(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """The absolute name to look up: reversed octets (IPv4) or nibbles (IPv6) under the zone.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.7``, as dual-stack sockets report IPv4
    clients) is looked up as the IPv4 address it carries.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        labels = str(ip).split(".")
    else:
        labels = list(ip.exploded.replace(":", ""))
    return ".".join([*reversed(labels), zone.lower().removesuffix(".")]) + "."


class DnsblResult(msgspec.Struct, frozen=True):
    """The combined score of one client, which sites listed it and which did not answer.

    ``hits`` holds, per site that counted, the answers that passed its filter. ``timed_out``
    names zones that gave no answer within the timeout, ``failed`` zones whose servers all
    failed (SERVFAIL, refused); both count as "not listed". ``cached`` is true when no DNS
    query was needed. ``blocked`` and ``allowlisted`` apply the scorer's thresholds.
    """

    score: int
    hits: tuple[tuple[str, tuple[str, ...]], ...]
    timed_out: tuple[str, ...]
    failed: tuple[str, ...]
    cached: bool
    blocked: bool
    allowlisted: bool


class DnsblStats(msgspec.Struct, frozen=True):
    """Counters since the scorer was made, for metrics."""

    queries: int  # DNS queries sent: one per (zone, client) that missed the cache
    cache_hits: int
    coalesced: int  # lookups that joined a query already in flight for another client
    timeouts: int  # queries that got no answer within the timeout
    failures: int  # queries that every nameserver failed (SERVFAIL, refused)
    cache_entries: int


class _Outcome(enum.Enum):
    ANSWERED = "answered"  # by DNS, just now ("not listed" included)
    CACHED = "cached"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


class _Lookup(msgspec.Struct, frozen=True):
    outcome: _Outcome
    answers: tuple[str, ...] = ()


class _AnswerCache:
    """A-record answers by query name until their TTL runs out; least recently used go first."""

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        self._capacity = capacity
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, tuple[str, ...]]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, qname: str) -> tuple[str, ...] | None:
        entry = self._entries.get(qname)
        if entry is None:
            return None
        expires_at, answers = entry
        if self._clock() >= expires_at:
            del self._entries[qname]
            return None
        self._entries.move_to_end(qname)
        return answers

    def put(self, qname: str, answers: tuple[str, ...], ttl: int) -> None:
        self._entries[qname] = (self._clock() + ttl, answers)
        self._entries.move_to_end(qname)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class DnsblScorer:
    """Scores clients against DNSBL/DNSWL sites, caching answers for their clamped TTL.

    Thresholds, as postscreen reads them:

    * ``block_threshold`` (``postscreen_dnsbl_threshold``): blocked when
      ``score >= block_threshold``.
    * ``allow_threshold`` (``postscreen_dnsbl_allowlist_threshold``): allowlisted when
      ``allow_threshold < 0`` and ``score <= allow_threshold``. Zero, the default, turns
      allowlisting off, so an unlisted client (score 0) is never allowlisted.

    ``timeout`` bounds the whole lookup of one client, all zones asked in parallel.
    ``nameservers`` are ``(host, port)`` pairs; ``None`` uses the system's resolv.conf.
    Concurrent lookups of the same name share one DNS query.
    """

    def __init__(
        self,
        zones: Iterable[DnsblZone],
        *,
        block_threshold: int = 1,
        allow_threshold: int = 0,
        timeout: float = 10.0,
        min_ttl: int = 60,
        max_ttl: int = 3600,
        cache_size: int = 100_000,
        nameservers: list[tuple[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if allow_threshold < 0 and block_threshold <= allow_threshold:
            raise ValueError(
                f"block_threshold {block_threshold} must be above allow_threshold "
                f"{allow_threshold}, or a client could be both blocked and allowlisted"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout}")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError(f"need 0 <= min_ttl <= max_ttl, got {min_ttl} and {max_ttl}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self.zones = tuple(zones)
        self.block_threshold = block_threshold
        self.allow_threshold = allow_threshold
        self.timeout = timeout
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._resolver = _make_resolver(nameservers)
        self._cache = _AnswerCache(cache_size, clock)
        self._in_flight: dict[str, asyncio.Future[_Lookup | None]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._queries = self._cache_hits = self._coalesced = self._timeouts = self._failures = 0

    async def score(
        self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> DnsblResult:
        """Look the client up in every zone and add up the weights of the sites that list it.

        Raises ValueError when ``address`` is not an IP address.
        """
        qnames = {zone.name: query_name(address, zone.name) for zone in self.zones}
        lookups = await self._lookup_all(set(qnames.values()))
        score = 0
        hits: list[tuple[str, tuple[str, ...]]] = []
        for zone in self.zones:
            counted = tuple(a for a in lookups[qnames[zone.name]].answers if self._counted(zone, a))
            if counted:
                score += zone.weight
                hits.append((zone.name, counted))
        outcomes = {zone: lookups[qname].outcome for zone, qname in qnames.items()}
        return DnsblResult(
            score=score,
            hits=tuple(hits),
            timed_out=tuple(z for z, outcome in outcomes.items() if outcome is _Outcome.TIMED_OUT),
            failed=tuple(z for z, outcome in outcomes.items() if outcome is _Outcome.FAILED),
            cached=all(outcome is _Outcome.CACHED for outcome in outcomes.values()),
            blocked=score >= self.block_threshold,
            allowlisted=self.allow_threshold < 0 and score <= self.allow_threshold,
        )

    def stats(self) -> DnsblStats:
        """A snapshot of the counters."""
        return DnsblStats(
            queries=self._queries,
            cache_hits=self._cache_hits,
            coalesced=self._coalesced,
            timeouts=self._timeouts,
            failures=self._failures,
            cache_entries=len(self._cache),
        )

    async def _lookup_all(self, qnames: set[str]) -> dict[str, _Lookup]:
        lookups = {
            qname: lookup for qname in qnames if (lookup := self._from_cache(qname)) is not None
        }
        missing = qnames - lookups.keys()
        if missing:
            deadline = asyncio.get_running_loop().time() + self.timeout
            async with asyncio.TaskGroup() as group:
                tasks = {q: group.create_task(self._lookup(q, deadline)) for q in missing}
            lookups.update((qname, task.result()) for qname, task in tasks.items())
        return lookups

    def _from_cache(self, qname: str) -> _Lookup | None:
        answers = self._cache.get(qname)
        if answers is None:
            return None
        self._cache_hits += 1
        return _Lookup(_Outcome.CACHED, answers)

    async def _lookup(self, qname: str, deadline: float) -> _Lookup:
        """Join the query in flight for ``qname``, or send one that later lookups can join."""
        try:
            async with asyncio.timeout_at(deadline):
                while (pending := self._in_flight.get(qname)) is not None:
                    # Shielded: one client giving up must not cancel the query for the others.
                    shared = await asyncio.shield(pending)
                    if shared is not None:
                        self._coalesced += 1
                        return shared
                    # The client that sent it was cancelled before the answer came: ask again.
        except TimeoutError:
            return _Lookup(_Outcome.TIMED_OUT)
        if (cached := self._from_cache(qname)) is not None:
            return cached
        future: asyncio.Future[_Lookup | None] = asyncio.get_running_loop().create_future()
        self._in_flight[qname] = future
        lookup: _Lookup | None = None
        try:
            lookup = await self._query(qname, deadline)
            return lookup
        finally:
            del self._in_flight[qname]
            future.set_result(lookup)

    async def _query(self, qname: str, deadline: float) -> _Lookup:
        """Ask DNS for the A records of ``qname`` and cache the answer, even a negative one."""
        self._queries += 1
        lifetime = max(deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self._resolver.resolve(
                    qname, "A", lifetime=lifetime, search=False, raise_on_no_answer=False
                )
        except dns.resolver.NXDOMAIN as error:
            # dnspython leaves NXDOMAIN.responses() unannotated: it maps names to Messages.
            replies: dict[object, dns.message.Message] = error.responses()  # type: ignore[no-untyped-call]
            responses = list(replies.values())
            negative_ttl = _negative_ttl(responses[0]) if responses else None
            self._cache.put(qname, (), self._clamp(negative_ttl))
            return _Lookup(_Outcome.ANSWERED)
        except (TimeoutError, dns.exception.Timeout):
            self._timeouts += 1
            return _Lookup(_Outcome.TIMED_OUT)
        except dns.exception.DNSException as error:
            self._failures += 1
            log.debug("DNSBL query %s failed: %s", qname, error)
            return _Lookup(_Outcome.FAILED)
        if answer.rrset is None:  # the name exists but has no A record
            answers: tuple[str, ...] = ()
            ttl = _negative_ttl(answer.response)
        else:
            answers = tuple(rdata.address for rdata in answer.rrset)
            ttl = answer.rrset.ttl
        self._cache.put(qname, answers, self._clamp(ttl))
        return _Lookup(_Outcome.ANSWERED, answers)

    def _clamp(self, ttl: int | None) -> int:
        return self.min_ttl if ttl is None else min(max(ttl, self.min_ttl), self.max_ttl)

    def _counted(self, zone: DnsblZone, answer: str) -> bool:
        ip = ipaddress.IPv4Address(answer)
        if ip not in LISTED_NETWORK:
            self._warn_once(zone.name, ip, "outside 127.0.0.0/8, so ignored: has the zone lapsed?")
            return False
        if ip in REFUSED_NETWORK:
            self._warn_once(
                zone.name, ip, "a refusal: public resolvers and excess queries get refused"
            )
        return zone.counts(ip)

    def _warn_once(self, zone: str, answer: ipaddress.IPv4Address, problem: str) -> None:
        if (zone, problem) not in self._warned:
            self._warned.add((zone, problem))
            log.warning("DNSBL zone %s answered %s, %s", zone, answer, problem)


def _negative_ttl(response: dns.message.Message) -> int | None:
    """How long "not listed" may be cached: the SOA's TTL or its minimum, whichever is lower."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            minimum: int = rrset[0].minimum
            return min(rrset.ttl, minimum)
    return None


def _make_resolver(nameservers: list[tuple[str, int]] | None) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
    return resolver
