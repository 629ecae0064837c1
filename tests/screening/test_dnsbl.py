"""DNSBL/DNSWL scoring against a real DNS server on loopback, time driven by a fake clock."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import dns.nameserver
import dns.resolver
import pytest
from dns_server import ZoneServer

from fake_clock import FakeClock
from sluice.screening.dnsbl import DnsblScorer, DnsblZone, parse_zone, query_name

CLIENT = "192.0.2.7"


@pytest.fixture
def server() -> Iterator[ZoneServer]:
    with ZoneServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def scorer_for(server: ZoneServer, clock: FakeClock, *sites: str, **options: Any) -> DnsblScorer:
    zones = [parse_zone(site) for site in sites]
    return DnsblScorer(zones, nameservers=[server.address], clock=clock, **options)


def listed(
    server: ZoneServer, zone: str, *answers: str, client: str = CLIENT, ttl: int = 300
) -> str:
    name = query_name(client, zone).removesuffix(".")
    server.set(name, answers, ttl=ttl)
    return name


async def test_weights_of_the_zones_that_list_the_client_are_summed(
    server: ZoneServer, clock: FakeClock
) -> None:
    listed(server, "zen.test", "127.0.0.2")
    listed(server, "bl.test", "127.0.0.2", "127.0.0.3")
    scorer = scorer_for(server, clock, "zen.test*3", "bl.test*2", "clean.test*4")

    result = await scorer.score(CLIENT)

    assert result.score == 5
    assert result.hits == (("zen.test", ("127.0.0.2",)), ("bl.test", ("127.0.0.2", "127.0.0.3")))
    assert result.timed_out == result.failed == ()
    assert not result.cached


async def test_an_allowlist_listing_subtracts_its_weight(
    server: ZoneServer, clock: FakeClock
) -> None:
    listed(server, "bl.test", "127.0.0.2")
    listed(server, "wl.test", "127.0.15.2")
    scorer = scorer_for(server, clock, "bl.test*2", "wl.test=127.0.[0..255].[1..3]*-5")

    result = await scorer.score(CLIENT)

    assert result.score == -3
    assert result.hits == (("bl.test", ("127.0.0.2",)), ("wl.test", ("127.0.15.2",)))


async def test_the_filter_decides_which_answers_count(server: ZoneServer, clock: FakeClock) -> None:
    listed(server, "zen.test", "127.0.0.2", client="192.0.2.1")
    listed(server, "zen.test", "127.0.0.10", client="192.0.2.2")
    scorer = scorer_for(server, clock, "zen.test=127.0.0.[2..4]*3")

    assert (await scorer.score("192.0.2.1")).score == 3
    result = await scorer.score("192.0.2.2")
    assert (result.score, result.hits) == (0, ())


async def test_sites_sharing_a_zone_share_its_query(server: ZoneServer, clock: FakeClock) -> None:
    name = listed(server, "zen.test", "127.0.0.2", "127.0.0.4")
    sites = ("zen.test=127.0.0.2*3", "zen.test=127.0.0.[4..7]*2", "zen.test=127.0.0.10*9")
    scorer = scorer_for(server, clock, *sites)

    result = await scorer.score(CLIENT)

    assert result.score == 5
    assert result.hits == (("zen.test", ("127.0.0.2",)), ("zen.test", ("127.0.0.4",)))
    assert server.queries(name) == 1


@pytest.mark.parametrize(
    ("weight", "blocked", "allowlisted"),
    [(4, True, False), (3, True, False), (2, False, False), (0, False, False), (-1, False, True)],
)
async def test_thresholds_block_at_or_above_and_allowlist_at_or_below(
    server: ZoneServer, clock: FakeClock, weight: int, blocked: bool, allowlisted: bool
) -> None:
    listed(server, "zen.test", "127.0.0.2")
    options = {"block_threshold": 3, "allow_threshold": -1}
    scorer = scorer_for(server, clock, f"zen.test*{weight}", **options)

    result = await scorer.score(CLIENT)

    assert (result.score, result.blocked, result.allowlisted) == (weight, blocked, allowlisted)


async def test_allowlisting_is_off_at_the_default_threshold_of_zero(
    server: ZoneServer, clock: FakeClock
) -> None:
    listed(server, "wl.test", "127.0.0.2")
    scorer = scorer_for(server, clock, "wl.test*-5")

    result = await scorer.score(CLIENT)

    assert (result.score, result.blocked, result.allowlisted) == (-5, False, False)


def test_thresholds_that_overlap_are_refused() -> None:
    with pytest.raises(ValueError, match="block_threshold -2 must be above allow_threshold -1"):
        DnsblScorer([], block_threshold=-2, allow_threshold=-1, nameservers=[])


def test_query_names_reverse_octets_and_nibbles() -> None:
    assert query_name("192.0.2.7", "zen.test") == "7.2.0.192.zen.test."
    assert query_name("::ffff:192.0.2.7", "Zen.Test.") == "7.2.0.192.zen.test."
    assert query_name("2001:db8::1", "zen.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test."
    )


async def test_an_ipv6_client_is_looked_up_by_nibbles(server: ZoneServer, clock: FakeClock) -> None:
    server.set(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test", ["127.0.0.2"]
    )
    scorer = scorer_for(server, clock, "zen.test*2")

    assert (await scorer.score("2001:db8::1")).score == 2


async def test_a_silent_zone_times_out_and_the_others_still_count(
    server: ZoneServer, clock: FakeClock
) -> None:
    server.silence("slow.test")
    listed(server, "zen.test", "127.0.0.2")
    scorer = scorer_for(server, clock, "slow.test*5", "zen.test*1", timeout=0.3)

    started = time.monotonic()
    result = await scorer.score(CLIENT)
    elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 0.3 + 0.5
    assert (result.score, result.timed_out) == (1, ("slow.test",))
    assert scorer.stats().timeouts == 1


async def test_a_timeout_is_not_cached(server: ZoneServer, clock: FakeClock) -> None:
    server.silence("slow.test")
    scorer = scorer_for(server, clock, "slow.test*5", timeout=0.1)

    await scorer.score(CLIENT)
    result = await scorer.score(CLIENT)

    assert result.timed_out == ("slow.test",)
    assert server.queries(query_name(CLIENT, "slow.test")) >= 2


async def test_a_failing_zone_is_reported_and_not_cached(
    server: ZoneServer, clock: FakeClock
) -> None:
    server.fail("broken.test")
    listed(server, "zen.test", "127.0.0.2")
    scorer = scorer_for(server, clock, "broken.test*5", "zen.test*1")

    await scorer.score(CLIENT)
    result = await scorer.score(CLIENT)

    assert (result.score, result.failed, result.timed_out) == (1, ("broken.test",), ())
    assert scorer.stats().failures == 2


async def test_an_answer_is_cached_for_its_ttl(server: ZoneServer, clock: FakeClock) -> None:
    name = listed(server, "zen.test", "127.0.0.2", ttl=300)
    scorer = scorer_for(server, clock, "zen.test*3")

    await scorer.score(CLIENT)
    clock.advance(299)
    again = await scorer.score(CLIENT)
    assert (again.score, again.cached, server.queries(name)) == (3, True, 1)

    server.remove(name)
    clock.advance(1)
    fresh = await scorer.score(CLIENT)
    assert (fresh.score, fresh.cached, server.queries(name)) == (0, False, 2)


@pytest.mark.parametrize(
    ("ttl", "kept_for"),
    [(5, 60), (100_000, 3600), (600, 600)],
    ids=["raised-to-min", "cut-to-max", "within-bounds"],
)
async def test_ttls_are_clamped_to_min_and_max(
    server: ZoneServer, clock: FakeClock, ttl: int, kept_for: int
) -> None:
    name = listed(server, "zen.test", "127.0.0.2", ttl=ttl)
    scorer = scorer_for(server, clock, "zen.test*3", min_ttl=60, max_ttl=3600)

    await scorer.score(CLIENT)
    clock.advance(kept_for - 1)
    await scorer.score(CLIENT)
    assert server.queries(name) == 1
    clock.advance(1)
    await scorer.score(CLIENT)
    assert server.queries(name) == 2


async def test_not_listed_is_cached_for_the_negative_ttl(
    server: ZoneServer, clock: FakeClock
) -> None:
    server.negative_ttl = 120
    name = query_name(CLIENT, "zen.test")
    scorer = scorer_for(server, clock, "zen.test*3")

    await scorer.score(CLIENT)
    clock.advance(119)
    assert (await scorer.score(CLIENT)).cached
    clock.advance(1)
    assert not (await scorer.score(CLIENT)).cached
    assert server.queries(name) == 2


async def test_not_listed_without_an_soa_is_cached_for_min_ttl(
    server: ZoneServer, clock: FakeClock
) -> None:
    server.negative_ttl = None
    name = query_name(CLIENT, "zen.test")
    scorer = scorer_for(server, clock, "zen.test*3", min_ttl=30)

    await scorer.score(CLIENT)
    clock.advance(29)
    await scorer.score(CLIENT)
    clock.advance(1)
    await scorer.score(CLIENT)
    assert server.queries(name) == 2


async def test_the_least_recently_used_answer_leaves_a_full_cache(
    server: ZoneServer, clock: FakeClock
) -> None:
    scorer = scorer_for(server, clock, "zen.test*3", cache_size=2)

    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.3"):
        await scorer.score(client)

    assert (await scorer.score("192.0.2.1")).cached
    assert not (await scorer.score("192.0.2.2")).cached
    assert scorer.stats().cache_entries == 2


async def test_concurrent_lookups_of_one_client_share_one_query(
    server: ZoneServer, clock: FakeClock
) -> None:
    name = listed(server, "zen.test", "127.0.0.2")
    scorer = scorer_for(server, clock, "zen.test*3")

    first, second = await asyncio.gather(scorer.score(CLIENT), scorer.score(CLIENT))

    assert first.score == second.score == 3
    assert server.queries(name) == 1
    stats = scorer.stats()
    assert (stats.queries, stats.coalesced) == (1, 1)


async def test_answers_outside_loopback_are_ignored_and_reported_once(
    server: ZoneServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    listed(server, "lapsed.test", "198.51.100.1", client="192.0.2.1")
    listed(server, "lapsed.test", "198.51.100.1", client="192.0.2.2")
    scorer = scorer_for(server, clock, "lapsed.test*5")

    with caplog.at_level(logging.WARNING, logger="sluice.screening"):
        first = await scorer.score("192.0.2.1")
        second = await scorer.score("192.0.2.2")

    assert first.score == second.score == 0
    assert first.hits == second.hits == ()
    warnings = [r.getMessage() for r in caplog.records if "lapsed.test" in r.getMessage()]
    assert len(warnings) == 1
    assert "outside 127.0.0.0/8" in warnings[0]


async def test_a_refused_query_does_not_list_the_client(
    server: ZoneServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    listed(server, "zen.test", "127.255.255.254")
    scorer = scorer_for(server, clock, "zen.test*5")

    with caplog.at_level(logging.WARNING, logger="sluice.screening"):
        result = await scorer.score(CLIENT)

    assert result.score == 0
    assert "zen.test answered 127.255.255.254, a refusal" in caplog.text


@pytest.mark.parametrize(
    ("spec", "zone"),
    [
        ("zen.test", DnsblZone("zen.test", 1)),
        ("Zen.Test.*3", DnsblZone("zen.test", 3)),
        ("wl.test*-5", DnsblZone("wl.test", -5)),
        ("zen.test=127.0.0.2*3", DnsblZone("zen.test", 3, frozenset({2}))),
        ("zen.test=127.0.0.[2..4]*3", DnsblZone("zen.test", 3, frozenset({2, 3, 4}))),
        ("zen.test=127.0.0.[2;5;9]", DnsblZone("zen.test", 1, frozenset({2, 5, 9}))),
        ("zen.test=127.0.0.[1;3..4]*2", DnsblZone("zen.test", 2, frozenset({1, 3, 4}))),
        (
            "wl.test=127.0.[0..1].[1..3]*-2",
            DnsblZone(
                "wl.test",
                -2,
                frozenset({1, 2, 3}),
                prefix=(frozenset({127}), frozenset({0}), frozenset({0, 1})),
            ),
        ),
    ],
)
def test_parse_zone_reads_postscreen_sites(spec: str, zone: DnsblZone) -> None:
    assert parse_zone(spec) == zone


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "is not a DNS zone name"),
        ("localhost", "is not a DNS zone name"),
        ("zen test.org", "is not a DNS zone name"),
        ("zen.test*", "weight '' after '\\*' is not an integer"),
        ("zen.test*three", "weight 'three' after '\\*' is not an integer"),
        ("zen.test=127.0.2", "is not four octet patterns"),
        ("zen.test=127.0.0.[2..4", "is not four octet patterns"),
        ("zen.test=10.0.0.2", "must start with 127"),
        ("zen.test=127.0.0.256", "'256' is not an octet pattern"),
        ("zen.test=127.0.0.[4..2]", "'\\[4..2\\]' is not an octet pattern"),
        ("zen.test=127.0.0.[]", "is not an octet pattern"),
    ],
)
def test_parse_zone_names_the_site_and_its_fault(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"DNSBL site {spec!r}: ") + f".*{problem}"):
        parse_zone(spec)


def test_zone_server_answers_mx_and_addresses(server: ZoneServer) -> None:
    server.set_mx("example.test", [(10, "mx1.example.test")])
    server.set("mx1.example.test", ["192.0.2.25", "2001:db8::25"])
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*server.address)]

    assert [r.to_text() for r in resolver.resolve("example.test", "MX")] == ["10 mx1.example.test."]
    assert [r.to_text() for r in resolver.resolve("mx1.example.test", "AAAA")] == ["2001:db8::25"]
    assert server.queries("example.test") == 1
