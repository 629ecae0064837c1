"""Greylisting of (client network, sender, recipient) triplets, driven by a fake wall clock."""

from __future__ import annotations

import pytest

from fake_clock import FakeClock
from sluice.screening.access import AccessList
from sluice.screening.greylist import (
    Greylist,
    GreylistVerdict,
    normalise_sender,
    reply,
)

START = 1_750_000_000.0  # a wall-clock time, as time.time() reads
HOUR = 3600.0
DAY = 86400.0


def make(clock: FakeClock, **settings: object) -> Greylist:
    return Greylist(clock=clock, **settings)  # type: ignore[arg-type]


def passes(greylist: Greylist, client: str, sender: str = "a@example.com") -> bool:
    return greylist.check(client, sender, "rcpt@example.org").passed


# --- the triplet's life ---------------------------------------------------------------------


def test_first_attempt_is_greylisted_with_451() -> None:
    greylist = make(FakeClock(START))
    verdict = greylist.check("192.0.2.1", "alice@example.com", "bob@example.org")
    assert verdict == GreylistVerdict(passed=False, reason="new", retry_after=300.0)
    code, text = reply(verdict)
    assert code == 451
    assert text.startswith("4.7.1 Greylisted")
    assert text.endswith("please try again in 300 seconds")
    assert len(greylist) == 1


def test_early_retry_is_still_refused_and_the_timer_keeps_running() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(100)
    verdict = greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    assert verdict == GreylistVerdict(passed=False, reason="early", retry_after=200.0)
    clock.advance(199.5)
    verdict = greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    assert verdict.reason == "early"
    assert reply(verdict)[1].endswith("try again in 1 second")
    clock.advance(0.5)  # 300 s after the first attempt, not after the retries
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").reason == "passed"


def test_retry_after_the_delay_passes_and_stays_passed() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(300)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org") == GreylistVerdict(
        passed=True, reason="passed", retry_after=0.0
    )
    for _ in range(3):
        clock.advance(30 * DAY)  # each pass renews the memory for max_age (35 days)
        assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").passed


def test_passed_triplet_expires_after_max_age() -> None:
    clock = FakeClock(START)
    greylist = make(clock, max_age=10 * DAY)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(300)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").passed
    clock.advance(10 * DAY)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").passed
    clock.advance(10 * DAY + 1)
    verdict = greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    assert verdict == GreylistVerdict(passed=False, reason="new", retry_after=300.0)


def test_retry_within_the_window_passes() -> None:
    clock = FakeClock(START)
    greylist = make(clock, retry_window=DAY)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(DAY)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").passed


def test_retry_after_the_window_restarts_the_timer() -> None:
    clock = FakeClock(START)
    greylist = make(clock, retry_window=DAY)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(DAY + 1)
    verdict = greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    assert verdict == GreylistVerdict(passed=False, reason="expired-retry", retry_after=300.0)
    clock.advance(299)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").reason == "early"
    clock.advance(1)
    assert greylist.check("192.0.2.1", "a@example.com", "b@example.org").passed


# --- what makes a triplet -------------------------------------------------------------------


def test_same_ipv4_slash24_shares_the_triplet() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(300)
    assert greylist.check("192.0.2.200", "a@example.com", "b@example.org").passed
    assert greylist.check("::ffff:192.0.2.7", "a@example.com", "b@example.org").passed
    assert not greylist.check("192.0.3.1", "a@example.com", "b@example.org").passed


def test_ipv6_slash64_shares_the_triplet() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("2001:db8:1:2::1", "a@example.com", "b@example.org")
    clock.advance(300)
    assert greylist.check("2001:db8:1:2:ffff::9", "a@example.com", "b@example.org").passed
    assert not greylist.check("2001:db8:1:3::1", "a@example.com", "b@example.org").passed


def test_ipv6_client_does_not_share_with_ipv4() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    clock.advance(300)
    assert not greylist.check("::c000:201", "a@example.com", "b@example.org").passed


def test_sender_and_recipient_are_normalised() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "Alice+news-4711@Example.COM", "Bob@Example.org")
    clock.advance(300)
    assert greylist.check("192.0.2.1", "alice+news-4712@example.com", "bob@example.org").passed
    assert greylist.check("192.0.2.1", "alice@example.com", "BOB@EXAMPLE.ORG").passed
    assert not greylist.check("192.0.2.1", "alice@example.com", "bob+x@example.org").passed
    assert not greylist.check("192.0.2.1", "alicia@example.com", "bob@example.org").passed


def test_normalise_sender() -> None:
    assert normalise_sender("Bob+List-4711@Example.org") == "bob@example.org"
    assert normalise_sender("bob@example.org") == "bob@example.org"
    assert normalise_sender("+tag@example.org") == "+tag@example.org"
    assert normalise_sender("") == ""
    assert normalise_sender("MAILER-DAEMON") == "mailer-daemon"


def test_null_sender_and_non_ascii_addresses() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    assert greylist.check("192.0.2.1", "", "jösé@exämple.org").reason == "new"
    assert greylist.check("192.0.2.1", "\udcff@example.com", "b@example.org").reason == "new"
    clock.advance(300)
    assert greylist.check("192.0.2.1", "", "JÖSÉ@exämple.org").passed


# --- auto-allowlist -------------------------------------------------------------------------


def pass_once(greylist: Greylist, clock: FakeClock, client: str, sender: str) -> None:
    assert not greylist.check(client, sender, "rcpt@example.org").passed
    clock.advance(300)
    assert greylist.check(client, sender, "rcpt@example.org").reason == "passed"


def test_auto_allowlist_after_five_passes_an_hour_apart() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    for n in range(5):
        pass_once(greylist, clock, f"192.0.2.{n}", f"sender{n}@example.com")
        clock.advance(HOUR)
    verdict = greylist.check("192.0.2.99", "someone-new@example.net", "rcpt@example.org")
    assert verdict == GreylistVerdict(passed=True, reason="auto-allowlisted", retry_after=0.0)
    assert not passes(greylist, "192.0.3.1", "someone-new@example.net")  # another network


def test_five_passes_within_one_hour_do_not_auto_allowlist() -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    for n in range(5):
        greylist.check("192.0.2.1", f"sender{n}@example.com", "rcpt@example.org")
    clock.advance(300)
    for n in range(5):
        assert passes(greylist, "192.0.2.1", f"sender{n}@example.com")
    clock.advance(HOUR - 301)
    for n in range(5):  # remembered triplets pass again, but this hour counted already
        assert passes(greylist, "192.0.2.1", f"sender{n}@example.com")
    assert greylist.check("192.0.2.1", "new@example.com", "rcpt@example.org").reason == "new"


def test_auto_allowlist_can_be_turned_off() -> None:
    clock = FakeClock(START)
    greylist = make(clock, auto_allowlist_passes=0)
    for n in range(10):
        pass_once(greylist, clock, "192.0.2.1", f"sender{n}@example.com")
        clock.advance(HOUR)
    assert greylist.check("192.0.2.1", "new@example.com", "rcpt@example.org").reason == "new"
    assert greylist.client_networks == 0


def test_auto_allowlist_lapses_after_max_age_without_mail() -> None:
    clock = FakeClock(START)
    greylist = make(clock, auto_allowlist_passes=2, max_age=10 * DAY)
    for n in range(2):
        pass_once(greylist, clock, "2001:db8::1", f"sender{n}@example.com")
        clock.advance(HOUR)
    assert passes(greylist, "2001:db8::2", "new@example.com")
    clock.advance(10 * DAY)  # the pass above kept it fresh until now
    assert greylist.check("2001:db8::3", "x@example.com", "r@example.org").reason == (
        "auto-allowlisted"
    )
    clock.advance(10 * DAY + 1)
    assert greylist.check("2001:db8::3", "y@example.com", "r@example.org").reason == "new"


# --- configured allow lists -----------------------------------------------------------------


def test_client_allowlist() -> None:
    greylist = make(
        FakeClock(START), client_allowlist=AccessList.parse(["192.0.2.0/28", "2001:db8::/32"])
    )
    for client in ("192.0.2.15", "::ffff:192.0.2.1", "2001:db8::1"):
        verdict = greylist.check(client, "a@example.com", "b@example.org")
        assert verdict == GreylistVerdict(passed=True, reason="allowlisted-client")
    assert greylist.check("192.0.2.16", "a@example.com", "b@example.org").reason == "new"
    assert len(greylist) == 1


def test_recipient_allowlist() -> None:
    greylist = make(
        FakeClock(START),
        recipient_allowlist=[
            "Postmaster@Example.com",
            "@lists.example.org",
            "example.net",
            "abuse@",
        ],
    )
    allowed = (
        "postmaster@example.com",
        "POSTMASTER@example.com",
        "anyone@lists.example.org",
        "anyone@example.net",
        "abuse@anywhere.example",
    )
    for recipient in allowed:
        verdict = greylist.check("192.0.2.1", "a@example.com", recipient)
        assert verdict.reason == "allowlisted-recipient", recipient
    refused = ("hostmaster@example.com", "x@sub.lists.example.org", "x@example.org")
    for recipient in refused:
        assert greylist.check("192.0.2.1", "a@example.com", recipient).reason == "new", recipient


@pytest.mark.parametrize("entry", ["", "@", "a@b@c"])
def test_bad_recipient_allowlist_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=r"recipient_allowlist\[1\]"):
        Greylist(recipient_allowlist=["postmaster@", entry])


@pytest.mark.parametrize(
    "settings",
    [
        {"delay": -1},
        {"delay": 600, "retry_window": 300},
        {"max_age": float("nan")},
        {"auto_allowlist_passes": 256},
        {"pass_interval": float("inf")},
    ],
)
def test_bad_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Greylist(**settings)  # type: ignore[arg-type]


# --- reply ----------------------------------------------------------------------------------


def test_reply_text() -> None:
    verdict = GreylistVerdict(passed=False, reason="early", retry_after=41.2)
    assert reply(verdict) == (
        451,
        "4.7.1 Greylisted: mail from a new sender is delayed, please try again in 42 seconds",
    )
    assert reply(verdict, help_url="https://mx.example.com/greylisting")[1].endswith(
        "42 seconds (see https://mx.example.com/greylisting)"
    )
    with pytest.raises(ValueError):
        reply(verdict, help_url="https://x\r\n250 OK")
    with pytest.raises(ValueError, match="passed verdict"):
        reply(GreylistVerdict(passed=True, reason="passed"))


# --- cleanup and persistence ----------------------------------------------------------------


def test_cleanup_forgets_aged_triplets_and_client_networks() -> None:
    clock = FakeClock(START)
    greylist = make(clock, retry_window=DAY, max_age=10 * DAY)
    pass_once(greylist, clock, "192.0.2.1", "passed@example.com")  # passed at START + 300
    greylist.check("198.51.100.1", "never-retried@example.com", "rcpt@example.org")
    assert (len(greylist), greylist.client_networks) == (2, 1)
    clock.advance(DAY)
    assert greylist.cleanup() == 0
    clock.advance(1)
    assert greylist.cleanup() == 1  # the unretried triplet is past its retry window
    clock.advance(9 * DAY - 1)
    assert greylist.cleanup() == 0
    assert greylist.client_networks == 1
    clock.advance(1)
    assert greylist.cleanup() == 1  # the passed one is past max_age since its pass
    assert (len(greylist), greylist.client_networks) == (0, 0)


def test_snapshot_round_trip() -> None:
    clock = FakeClock(START)
    greylist = make(clock, auto_allowlist_passes=2)
    for n in range(2):
        pass_once(greylist, clock, "192.0.2.1", f"sender{n}@example.com")
        clock.advance(HOUR)
    greylist.check("2001:db8::1", "waiting@example.com", "rcpt@example.org")
    data = greylist.snapshot()
    assert len(data) == 24 + 16 * (len(greylist) + greylist.client_networks)

    clock.advance(300)
    restored = Greylist.restore(data, clock=clock, auto_allowlist_passes=2)
    assert (len(restored), restored.client_networks) == (3, 1)
    assert restored.snapshot() == data
    assert restored.check("2001:db8::1", "waiting@example.com", "rcpt@example.org").passed
    assert restored.check("192.0.2.9", "new@example.com", "rcpt@example.org").reason == (
        "auto-allowlisted"
    )


def test_empty_snapshot_round_trip() -> None:
    data = Greylist().snapshot()
    assert len(Greylist.restore(data)) == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"",
        lambda data: b"garbage" * 10,
        lambda data: b"XXXX" + data[4:],
        lambda data: data[:4] + b"\x02\x00" + data[6:],  # a version from the future
        lambda data: data[:-1],
        lambda data: data + b"\x00",
        lambda data: data[:24] + b"\xff" * 8 + data[32:],  # key outside 60 bits
    ],
)
def test_restore_rejects_garbage(damage: object) -> None:
    clock = FakeClock(START)
    greylist = make(clock)
    greylist.check("192.0.2.1", "a@example.com", "b@example.org")
    with pytest.raises(ValueError, match="snapshot"):
        Greylist.restore(damage(greylist.snapshot()), clock=clock)  # type: ignore[operator]
