"""Per-client connection limits and the screening gate, driven by a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from fake_clock import FakeClock
from sluice.screening.limits import GATE_FULL_REPLY, ClientLimiter, ScreeningGate

# --- ClientLimiter: concurrency -------------------------------------------------------------


def test_concurrency_limit_per_client() -> None:
    limiter = ClientLimiter(max_concurrent=2, rate_per_minute=0, burst=0, clock=FakeClock())
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("192.0.2.1") == "too many connections from 192.0.2.1 (limit 2)"
    assert limiter.try_open("192.0.2.2") is None  # another client has its own count
    limiter.close("192.0.2.1")
    assert limiter.try_open("192.0.2.1") is None


def test_ipv4_mapped_client_shares_the_ipv4_count() -> None:
    limiter = ClientLimiter(max_concurrent=1, rate_per_minute=0, burst=0, clock=FakeClock())
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("::ffff:192.0.2.1") == "too many connections from 192.0.2.1 (limit 1)"
    limiter.close("::ffff:192.0.2.1")
    assert limiter.try_open(IPv4Address("192.0.2.1")) is None


def test_ipv6_clients_are_counted_per_address() -> None:
    limiter = ClientLimiter(max_concurrent=1, rate_per_minute=0, burst=0, clock=FakeClock())
    assert limiter.try_open("2001:db8::1") is None
    assert limiter.try_open("2001:db8::1") == "too many connections from 2001:db8::1 (limit 1)"
    assert limiter.try_open("2001:db8::2") is None
    assert limiter.try_open("::c000:201") is None  # same integer as 192.0.2.1, another family
    assert limiter.try_open("192.0.2.1") is None


def test_closing_an_unknown_client_is_ignored() -> None:
    limiter = ClientLimiter(max_concurrent=1, rate_per_minute=0, burst=0, clock=FakeClock())
    limiter.close("192.0.2.1")
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("192.0.2.1") is not None


def test_each_close_gives_back_one_connection() -> None:
    limiter = ClientLimiter(max_concurrent=3, rate_per_minute=0, burst=0, clock=FakeClock())
    assert [limiter.try_open("192.0.2.1") for _ in range(3)] == [None] * 3
    limiter.close("192.0.2.1")
    limiter.close("192.0.2.1")
    assert [limiter.try_open("192.0.2.1") for _ in range(2)] == [None] * 2
    assert limiter.try_open("192.0.2.1") == "too many connections from 192.0.2.1 (limit 3)"


def test_closed_clients_leave_no_state_when_rate_is_unlimited() -> None:
    limiter = ClientLimiter(max_concurrent=5, rate_per_minute=0, burst=0, clock=FakeClock())
    for _ in range(3):
        assert limiter.try_open("192.0.2.1") is None
    assert len(limiter) == 1
    for _ in range(3):
        limiter.close("192.0.2.1")
    assert len(limiter) == 0


# --- ClientLimiter: rate --------------------------------------------------------------------


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(max_concurrent=0, rate_per_minute=30, burst=3, clock=clock)
    assert [limiter.try_open("192.0.2.1") for _ in range(3)] == [None] * 3
    assert limiter.try_open("192.0.2.1") == (
        "connection rate limit exceeded for 192.0.2.1 (30/min)"
    )
    assert limiter.try_open("192.0.2.2") is None
    clock.advance(1.999)
    assert limiter.try_open("192.0.2.1") is not None
    clock.advance(0.001)  # 30/min: one connection every 2 s
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("192.0.2.1") is not None


def test_steady_rate_over_a_long_run() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(max_concurrent=0, rate_per_minute=7, burst=2, clock=clock)
    admitted = 0
    for _ in range(6000):  # 10 minutes in 0.1 s steps, trying every step
        if limiter.try_open("192.0.2.1") is None:
            admitted += 1
        clock.advance(0.1)
    assert admitted in (2 + 70 - 1, 2 + 70)


def test_refused_attempts_use_no_tokens() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(max_concurrent=0, rate_per_minute=60, burst=1, clock=clock)
    assert limiter.try_open("192.0.2.1") is None
    for _ in range(9):  # hammering while the bucket is empty does not push it back
        clock.advance(0.1)
        assert limiter.try_open("192.0.2.1") is not None
    clock.advance(0.1)
    assert limiter.try_open("192.0.2.1") is None


def test_concurrency_refusal_uses_no_token() -> None:
    limiter = ClientLimiter(max_concurrent=1, rate_per_minute=60, burst=2, clock=FakeClock())
    assert limiter.try_open("192.0.2.1") is None
    assert limiter.try_open("192.0.2.1") == "too many connections from 192.0.2.1 (limit 1)"
    limiter.close("192.0.2.1")
    assert limiter.try_open("192.0.2.1") is None  # the second token of the burst is still there


def test_fractional_rate_is_reported_as_configured() -> None:
    limiter = ClientLimiter(max_concurrent=0, rate_per_minute=0.5, burst=1, clock=FakeClock())
    assert limiter.try_open("2001:db8::1") is None
    assert limiter.try_open("2001:db8::1") == (
        "connection rate limit exceeded for 2001:db8::1 (0.5/min)"
    )


def test_both_limits_unlimited() -> None:
    limiter = ClientLimiter(max_concurrent=0, rate_per_minute=0, burst=0, clock=FakeClock())
    assert all(limiter.try_open("192.0.2.1") is None for _ in range(10_000))
    assert len(limiter) == 0


def test_idle_clients_are_forgotten() -> None:
    clock = FakeClock(1000.0)
    limiter = ClientLimiter(max_concurrent=50, rate_per_minute=30, burst=10, clock=clock)
    first = int(IPv4Address("10.0.0.0"))
    for i in range(100_000):  # one-off clients: connect, disconnect, never come back
        client = IPv4Address(first + i)
        assert limiter.try_open(client) is None
        limiter.close(client)
    assert len(limiter) == 100_000  # each bucket is one token short for 2 s
    clock.advance(20)  # the refill time: burst 10 at one token per 2 s
    assert limiter.try_open("192.0.2.1") is None
    assert len(limiter) == 1


def test_clients_with_open_connections_are_kept() -> None:
    clock = FakeClock()
    limiter = ClientLimiter(max_concurrent=1, rate_per_minute=60, burst=1, clock=clock)
    assert limiter.try_open("192.0.2.1") is None
    clock.advance(3600)
    assert limiter.try_open("192.0.2.2") is None  # sweeps the full buckets
    assert limiter.try_open("192.0.2.1") == "too many connections from 192.0.2.1 (limit 1)"


@pytest.mark.parametrize(
    ("max_concurrent", "rate", "burst", "message"),
    [
        (-1, 0, 0, "max_concurrent must be"),
        (0, -1, 0, "rate_per_minute must be"),
        (0, float("inf"), 1, "rate_per_minute must be"),
        (0, 10, 0, "burst must be"),
    ],
)
def test_bad_settings(max_concurrent: int, rate: float, burst: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientLimiter(max_concurrent, rate, burst, clock=FakeClock())


# --- ScreeningGate --------------------------------------------------------------------------


def test_gate_admits_up_to_the_limit() -> None:
    gate = ScreeningGate(max_screening=3)
    assert [gate.try_enter() for _ in range(4)] == [True, True, True, False]
    assert gate.busy == 3
    gate.leave()
    assert gate.try_enter()
    assert GATE_FULL_REPLY == (421, "4.3.2 All server ports are busy")


def test_gate_stress_flag() -> None:
    gate = ScreeningGate(max_screening=10, nearly_full=0.7)
    for _ in range(6):
        gate.try_enter()
    assert not gate.stressed
    gate.try_enter()
    assert gate.stressed  # 7 >= 0.7 * 10
    gate.leave()
    assert not gate.stressed


def test_gate_stress_threshold_rounds_up() -> None:
    gate = ScreeningGate(max_screening=5, nearly_full=0.5)
    gate.try_enter()
    gate.try_enter()
    assert not gate.stressed  # 2 < 2.5
    gate.try_enter()
    assert gate.stressed


def test_unlimited_gate_is_never_stressed() -> None:
    gate = ScreeningGate(max_screening=0)
    assert all(gate.try_enter() for _ in range(1000))
    assert gate.busy == 1000
    assert not gate.stressed


def test_leave_without_enter_raises() -> None:
    gate = ScreeningGate(max_screening=1)
    with pytest.raises(RuntimeError, match="without a matching try_enter"):
        gate.leave()


@pytest.mark.parametrize(("max_screening", "nearly_full"), [(-1, 0.8), (10, 0), (10, 1.5)])
def test_bad_gate_settings(max_screening: int, nearly_full: float) -> None:
    with pytest.raises(ValueError):
        ScreeningGate(max_screening, nearly_full)
