"""Metrics rendered from the components' snapshots: names, labels and values as Prometheus
reads them."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec
from prometheus_client import generate_latest

from sluice.delivery.callbacks import CallbackStats
from sluice.delivery.latency import LatencyHistogram
from sluice.delivery.runner import RunnerStats
from sluice.flow.breaker import BreakerState, BreakerStats
from sluice.flow.stage import StageStats
from sluice.ingress.smtp.door import FrontDoorStats
from sluice.journal.base import JournalStats
from sluice.observe.metrics import GatewayMetrics, cumulative_buckets
from sluice.sharing.breaker_news import BreakerNewsStats
from sluice.sharing.build import SharingStats
from sluice.sharing.idempotency_cache import IdempotencyCacheStats
from sluice.sharing.rate import SharedRateStats

S = TypeVar("S")


class Snapshot(Generic[S]):
    """A component reduced to what metrics may see of it: its `stats()`."""

    def __init__(self, value: S) -> None:
        self.value = value

    def stats(self) -> S:
        return self.value


class FaultyJournal(Snapshot[JournalStats]):
    """A journal's figures, and a fault the test sets."""

    current: str | None = None

    def fault(self) -> str | None:
        return self.current


def runner_stats(name: str, **latencies: LatencyHistogram) -> RunnerStats:
    return RunnerStats(
        name,
        sent=5,
        failed=1,
        retried=2,
        throttled=3,
        in_flight=4,
        claimed=6,
        width=32,
        rate=250.0,
        burst=25.0,
        breaker=BreakerStats(BreakerState.HALF_OPEN, opened_count=1, consecutive_failures=0),
        # As a runner does: only the outcomes seen so far.
        latency={
            outcome: histogram.stats()
            for outcome, histogram in latencies.items()
            if histogram.stats().observations
        },
    )


def render(metrics: GatewayMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_buckets_are_cumulative_and_bounds_inclusive() -> None:
    histogram = LatencyHistogram((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 3.0):
        histogram.observe(seconds)
    assert cumulative_buckets(histogram.stats()) == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert histogram.stats().total == 3.065


def test_observations_are_exported_per_channel_and_outcome() -> None:
    metrics = GatewayMetrics()
    sent, transient = LatencyHistogram(), LatencyHistogram()
    sent.observe(0.003)
    sent.observe(0.2)
    transient.observe(12.0)
    metrics.watch_delivery(
        [Snapshot(runner_stats("sms", sent=sent, transient=transient))],
        [],
        Snapshot(CallbackStats(0, 0, 0)),
    )
    text = render(metrics)
    assert 'sluice_send_seconds_bucket{channel="sms",le="0.005",outcome="sent"} 1.0' in text
    assert 'sluice_send_seconds_count{channel="sms",outcome="sent"} 2.0' in text
    assert 'sluice_send_seconds_bucket{channel="sms",le="10.0",outcome="transient"} 0.0' in text
    assert 'sluice_send_seconds_count{channel="sms",outcome="transient"} 1.0' in text


def test_a_process_that_does_not_deliver_exports_an_empty_histogram() -> None:
    text = render(GatewayMetrics())
    assert "# TYPE sluice_send_seconds histogram" in text
    assert "sluice_send_seconds_count" not in text


def test_send_latencies_are_read_at_scrape_time_in_channel_order() -> None:
    metrics = GatewayMetrics()
    web, sms = LatencyHistogram(), LatencyHistogram()
    runners = {"web": web, "sms": sms}

    class Runner:
        def __init__(self, name: str) -> None:
            self.name = name

        def stats(self) -> RunnerStats:
            return runner_stats(self.name, sent=runners[self.name])

    metrics.watch_delivery([Runner("web"), Runner("sms")], [], Snapshot(CallbackStats(0, 0, 0)))
    web.observe(0.5)  # after the wiring: the scrape sees it
    text = render(metrics)
    assert 'sluice_send_seconds_count{channel="web",outcome="sent"} 1.0' in text
    assert 'sluice_send_seconds_count{channel="sms",outcome="sent"}' not in text  # none yet
    sms.observe(0.1)
    text = render(metrics)
    assert text.index('channel="sms",outcome="sent"') < text.index('channel="web",outcome="sent"')


def test_delivery_figures() -> None:
    metrics = GatewayMetrics()
    stage = StageStats(
        "completions",
        depth=7,
        capacity=100,
        width=1,
        processed=40,
        batches=4,
        dropped=0,
        busy_seconds=0.5,
        wait_seconds=1.25,
        max_wait_seconds=0.1,
    )
    metrics.watch_delivery(
        [Snapshot(runner_stats("sms"))],
        [Snapshot(stage)],
        Snapshot(CallbackStats(delivered=9, retried=2, dropped=1)),
    )
    text = render(metrics)
    for line in (
        'sluice_channel_messages_total{channel="sms",result="sent"} 5.0',
        'sluice_channel_messages_total{channel="sms",result="failed"} 1.0',
        'sluice_channel_messages_total{channel="sms",result="retried"} 2.0',
        'sluice_channel_messages_total{channel="sms",result="throttled"} 3.0',
        'sluice_channel_in_flight{channel="sms"} 4.0',
        'sluice_channel_width{channel="sms"} 32.0',
        'sluice_channel_rate{channel="sms"} 250.0',
        'sluice_channel_breaker{channel="sms"} 1.0',
        'sluice_stage_depth{stage="completions"} 7.0',
        'sluice_stage_processed_total{stage="completions"} 40.0',
        'sluice_stage_batches_total{stage="completions"} 4.0',
        'sluice_stage_wait_seconds_total{stage="completions"} 1.25',
        'sluice_stage_busy_seconds_total{stage="completions"} 0.5',
        'sluice_callbacks_total{result="delivered"} 9.0',
        'sluice_callbacks_total{result="retried"} 2.0',
        'sluice_callbacks_total{result="dropped"} 1.0',
    ):
        assert line in text, line


def test_journal_figures() -> None:
    metrics = GatewayMetrics()
    journal = JournalStats(
        pending={"sms": 3, "web": 4}, commits=10, ops=25, busy_seconds=0.75, queue_depth=2
    )
    observed = FaultyJournal(journal)
    metrics.watch_journal(observed, ["sms", "web", "email"])
    text = render(metrics)
    for line in (
        'sluice_channel_pending{channel="sms"} 3.0',
        'sluice_channel_pending{channel="email"} 0.0',
        "sluice_backlog 7.0",
        "sluice_journal_commits_total 10.0",
        "sluice_journal_operations_total 25.0",
        "sluice_journal_busy_seconds_total 0.75",
        "sluice_journal_queue_depth 2.0",
        "sluice_journal_fault 0.0",
    ):
        assert line in text, line
    observed.current = "the disk is almost full"
    assert "sluice_journal_fault 1.0" in render(metrics)


def test_front_door_figures() -> None:
    metrics = GatewayMetrics()
    door = FrontDoorStats(
        verdicts={("pregreet", "fail"): 2, ("connect", "busy"): 1},
        screening=3,
        clients=12,
        client_memory_bytes=4096,
        greylist_triplets=None,
    )
    metrics.watch_front_door(Snapshot(door))
    text = render(metrics)
    for line in (
        'sluice_smtp_screening_total{test="pregreet",verdict="fail"} 2.0',
        'sluice_smtp_screening_total{test="connect",verdict="busy"} 1.0',
        "sluice_smtp_screening_busy 3.0",
        "sluice_smtp_clients 12.0",
        "sluice_smtp_client_memory_bytes 4096.0",
    ):
        assert line in text, line
    assert "sluice_smtp_greylist_triplets" not in text
    greylisting = GatewayMetrics()
    greylisting.watch_front_door(Snapshot(msgspec.structs.replace(door, greylist_triplets=5)))
    assert "sluice_smtp_greylist_triplets 5.0" in render(greylisting)


def test_sharing_figures() -> None:
    metrics = GatewayMetrics()
    sharing = SharingStats(
        redis=True,
        rates={"sms": SharedRateStats(True, 3, 100.0, exchanges=4, granted=50.0)},
        news=BreakerNewsStats(published=1, heard=2),
        idempotency=IdempotencyCacheStats(hits=5, misses=6, errors=7, skipped=0, down=False),
    )
    metrics.watch_sharing(Snapshot(sharing))
    text = render(metrics)
    for line in (
        'sluice_channel_rate_shared{channel="sms"} 1.0',
        'sluice_channel_rate_processes{channel="sms"} 3.0',
        'sluice_channel_rate_share{channel="sms"} 100.0',
        'sluice_breaker_news_total{direction="published"} 1.0',
        'sluice_breaker_news_total{direction="heard"} 2.0',
        'sluice_idempotency_cache_total{result="hit"} 5.0',
        'sluice_idempotency_cache_total{result="miss"} 6.0',
        'sluice_idempotency_cache_total{result="error"} 7.0',
    ):
        assert line in text, line


def test_nothing_shared_without_redis() -> None:
    metrics = GatewayMetrics()
    metrics.watch_sharing(Snapshot(SharingStats(False, {}, None, None)))
    text = render(metrics)
    assert "sluice_channel_rate" not in text
    assert "sluice_breaker_news" not in text
    assert "sluice_idempotency_cache" not in text
