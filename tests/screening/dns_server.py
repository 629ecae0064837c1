"""A real DNS server on loopback for tests: records that change at runtime, silent zones.

Examples:
    with ZoneServer(negative_ttl=120) as server:
        server.set("2.0.0.127.zen.test", ["127.0.0.2"], ttl=300)
        server.set_mx("example.test", [(10, "mx1.example.test")])
        server.set("mx1.example.test", ["192.0.2.25", "2001:db8::25"])
        server.silence("slow.test")  # queries under slow.test get no reply at all
        server.fail("broken.test")  # queries under broken.test get SERVFAIL
        resolver.nameservers = [Do53Nameserver(*server.address)]
        ...
        assert server.queries("2.0.0.127.zen.test") == 1

Unknown names get NXDOMAIN, names without the asked type an empty NOERROR; both carry an SOA
in the authority section whose TTL and minimum are ``negative_ttl`` (no SOA when it is None).
"""

from __future__ import annotations

import collections
import ipaddress
import threading
from collections.abc import Iterable
from types import TracebackType

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, A, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

_QUIET = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)


def _key(name: str) -> str:
    return name.lower().removesuffix(".")


def _under(name: str, zones: set[str]) -> bool:
    return any(name == zone or name.endswith("." + zone) for zone in zones)


class _Silenced(DNSError):
    """Raised to make dnslib's handler drop the query without replying."""


class _Zones(BaseResolver):
    """The records, shared between the test and the server thread under one lock."""

    def __init__(self, negative_ttl: int | None) -> None:
        self.negative_ttl = negative_ttl
        self.lock = threading.Lock()
        self.records: dict[tuple[str, int], list[RR]] = {}
        self.silent: set[str] = set()
        self.failing: set[str] = set()
        self.counts: collections.Counter[str] = collections.Counter()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = _key(str(request.q.qname))
        with self.lock:
            self.counts[name] += 1
            if _under(name, self.silent):
                raise _Silenced(name)
            failing = _under(name, self.failing)
            answers = list(self.records.get((name, request.q.qtype), ()))
            known = any(key[0] == name for key in self.records)
        reply = request.reply()
        if failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for answer in answers:
            reply.add_answer(answer)
        if not answers:
            reply.header.rcode = RCODE.NOERROR if known else RCODE.NXDOMAIN
            self._add_soa(reply, name)
        return reply

    def _add_soa(self, reply: DNSRecord, name: str) -> None:
        ttl = self.negative_ttl
        if ttl is not None:
            apex = ".".join(name.split(".")[-2:])  # "zen.test" for "2.0.0.127.zen.test"
            soa = SOA(f"ns.{apex}", f"hostmaster.{apex}", (1, 3600, 600, 86400, ttl))
            reply.add_auth(RR(apex, QTYPE.SOA, rdata=soa, ttl=ttl))


class ZoneServer:
    """dnslib's DNSServer on 127.0.0.1, a free UDP port, in a daemon thread."""

    def __init__(self, negative_ttl: int | None = 60) -> None:
        self._zones = _Zones(negative_ttl)
        self._server = DNSServer(self._zones, address="127.0.0.1", port=0, logger=_QUIET)
        # serve_forever checks for shutdown every poll_interval; its default 0.5 s slows teardown.
        self._thread = threading.Thread(
            target=self._server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as ``DnsblScorer(nameservers=[server.address])`` takes it."""
        host, port = self._server.server.server_address[:2]
        return host, port

    @property
    def negative_ttl(self) -> int | None:
        return self._zones.negative_ttl

    @negative_ttl.setter
    def negative_ttl(self, ttl: int | None) -> None:
        self._zones.negative_ttl = ttl

    def set(self, name: str, addresses: Iterable[str], ttl: int = 300) -> None:
        """Replace the A and AAAA records of ``name`` (the kind follows each address)."""
        by_type: dict[int, list[RR]] = {QTYPE.A: [], QTYPE.AAAA: []}
        for address in addresses:
            if ipaddress.ip_address(address).version == 4:
                by_type[QTYPE.A].append(RR(name, QTYPE.A, rdata=A(address), ttl=ttl))
            else:
                by_type[QTYPE.AAAA].append(RR(name, QTYPE.AAAA, rdata=AAAA(address), ttl=ttl))
        self._replace(name, by_type)

    def set_mx(self, name: str, exchanges: Iterable[tuple[int, str]], ttl: int = 300) -> None:
        """Replace the MX records of ``name`` with ``(preference, host)`` pairs."""
        records = [RR(name, QTYPE.MX, rdata=MX(host, pref), ttl=ttl) for pref, host in exchanges]
        self._replace(name, {QTYPE.MX: records})

    def remove(self, name: str) -> None:
        """Forget every record of ``name``: it answers NXDOMAIN from now on."""
        with self._zones.lock:
            for key in [key for key in self._zones.records if key[0] == _key(name)]:
                del self._zones.records[key]

    def silence(self, zone: str) -> None:
        """Never reply to queries for ``zone`` or names under it, as a dead server would."""
        with self._zones.lock:
            self._zones.silent.add(_key(zone))

    def fail(self, zone: str) -> None:
        """Answer SERVFAIL to queries for ``zone`` or names under it, as a broken server would."""
        with self._zones.lock:
            self._zones.failing.add(_key(zone))

    def queries(self, name: str) -> int:
        """How many queries for ``name`` arrived, of any type, answered or not."""
        with self._zones.lock:
            return self._zones.counts[_key(name)]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        self._thread.join()
        self._server.server.server_close()

    def __enter__(self) -> ZoneServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _replace(self, name: str, records: dict[int, list[RR]]) -> None:
        with self._zones.lock:
            for qtype, rrs in records.items():
                if rrs:
                    self._zones.records[(_key(name), qtype)] = rrs
                else:
                    self._zones.records.pop((_key(name), qtype), None)
