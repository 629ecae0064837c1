"""Prometheus metrics for one gateway, in a registry of its own (no process-wide state).

Counters that the hot path already keeps (runner and stage tallies, journal commits) are read
at scrape time by a collector, so measuring costs nothing per message; only send latencies
are observed as they happen, into plain bucket lists (`LatencyHistogram`) that the collector
exports: a prometheus_client Histogram takes locks for every observation.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from sluice.delivery.callbacks import CallbackSender
    from sluice.delivery.runner import ChannelRunner
    from sluice.flow.stage import Stage
    from sluice.ingress.smtp.door import SmtpFrontDoor
    from sluice.journal.base import Journal
    from sluice.sharing.build import Sharing

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
#: Upper bounds (seconds) of the send-latency buckets.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LatencyHistogram:
    """Observations counted per bucket, with their sum; read at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = SEND_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound, observations at or below it)."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "sluice_messages_accepted",
            "Messages committed to the journal.",
            ["tenant"],
            registry=self.registry,
        )
        self.refused = Counter(
            "sluice_requests_refused",
            "API requests refused, by error code (rate_limited, backlog_full, invalid_message …).",
            ["code"],
            registry=self.registry,
        )
        #: Send latencies by (channel, outcome).
        self.send_seconds: dict[tuple[str, str], LatencyHistogram] = {}
        self.registry.register(_SendLatencyCollector(self.send_seconds))

    def observer(self, channel: str) -> Callable[[str, float], None]:
        histograms = self.send_seconds
        children: dict[str, LatencyHistogram] = {}

        def observe(outcome: str, seconds: float) -> None:
            child = children.get(outcome)
            if child is None:
                child = children[outcome] = histograms.setdefault(
                    (channel, outcome), LatencyHistogram()
                )
            child.observe(seconds)

        return observe

    def watch_front_door(self, door: SmtpFrontDoor) -> None:
        self.registry.register(_FrontDoorCollector(door))

    def watch_journal(self, journal: Journal, channels: Iterable[str]) -> None:
        """The journal's figures: backlog, queue depth per channel, commits (every process)."""
        self.registry.register(_JournalCollector(journal, list(channels)))

    def watch_sharing(self, sharing: Sharing) -> None:
        """What this process shares through Redis: channel rates, breaker news, the
        idempotency cache (nothing without Redis)."""
        if sharing.client is not None:
            self.registry.register(_SharingCollector(sharing))

    def watch_delivery(
        self,
        runners: Iterable[ChannelRunner],
        stages: Iterable[Stage[object]],
        callbacks: CallbackSender,
    ) -> None:
        """The delivery side's figures (processes that deliver)."""
        self.registry.register(_DeliveryCollector(list(runners), list(stages), callbacks))


class _SendLatencyCollector:
    def __init__(self, histograms: dict[tuple[str, str], LatencyHistogram]) -> None:
        self._histograms = histograms

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "sluice_send_seconds",
            "Time from handing a message to a transport to its answer.",
            labels=["channel", "outcome"],
        )
        for (channel, outcome), histogram in sorted(self._histograms.items()):
            family.add_metric([channel, outcome], histogram.cumulative(), histogram.total)
        yield family


class _FrontDoorCollector:
    """The SMTP front door's verdicts per test and its live sizes."""

    def __init__(self, door: SmtpFrontDoor) -> None:
        self._door = door

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        door = self._door
        verdicts = CounterMetricFamily(
            "sluice_smtp_screening",
            "Screening outcomes: connect/busy, access/allowlisted, pregreet/fail, dnsbl/pass, "
            "screening/pass_new, log/GREYLISTED …",
            labels=["test", "verdict"],
        )
        for (test, verdict), count in sorted(door.stats.counts.items()):
            verdicts.add_metric([test, verdict], count)
        yield verdicts
        yield GaugeMetricFamily(
            "sluice_smtp_screening_busy", "Connections being screened.", value=door.gate.busy
        )
        yield GaugeMetricFamily(
            "sluice_smtp_clients", "Client addresses remembered.", value=len(door.memory)
        )
        yield GaugeMetricFamily(
            "sluice_smtp_client_memory_bytes",
            "Bytes held by the client memory.",
            value=door.memory.bytes_used(),
        )
        if door.greylist is not None:
            yield GaugeMetricFamily(
                "sluice_smtp_greylist_triplets",
                "Greylist triplets remembered.",
                value=len(door.greylist),
            )


class _JournalCollector:
    def __init__(self, journal: Journal, channels: list[str]) -> None:
        self._journal = journal
        self._channels = channels

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        journal = self._journal
        pending = journal.pending()
        by_channel = GaugeMetricFamily(
            "sluice_channel_pending",
            "Messages accepted for the channel and not yet final.",
            labels=["channel"],
        )
        for name in self._channels:
            by_channel.add_metric([name], pending.get(name, 0))
        yield by_channel
        backlog = GaugeMetricFamily("sluice_backlog", "Messages accepted and not yet final.")
        backlog.add_metric([], sum(pending.values()))
        yield backlog
        yield CounterMetricFamily("sluice_journal_commits", "Group commits.", value=journal.commits)
        yield CounterMetricFamily(
            "sluice_journal_operations", "Operations committed.", value=journal.ops
        )
        yield CounterMetricFamily(
            "sluice_journal_busy_seconds",
            "Time the journal writer spent in transactions.",
            value=journal.busy_seconds,
        )
        yield GaugeMetricFamily(
            "sluice_journal_queue_depth",
            "Operations waiting for the journal writer.",
            value=journal.queue_depth(),
        )


class _SharingCollector:
    def __init__(self, sharing: Sharing) -> None:
        self._sharing = sharing

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        sharing = self._sharing
        shared = GaugeMetricFamily(
            "sluice_channel_rate_shared",
            "1 while the channel's rate is shared through Redis, 0 while on a local share.",
            labels=["channel"],
        )
        live = GaugeMetricFamily(
            "sluice_channel_rate_processes",
            "Processes sharing the channel's rate, as Redis last counted them.",
            labels=["channel"],
        )
        share = GaugeMetricFamily(
            "sluice_channel_rate_share",
            "The part of the channel's rate this process can count on (messages/s).",
            labels=["channel"],
        )
        for name, bucket in sharing.buckets.items():
            shared.add_metric([name], 1 if bucket.shared else 0)
            live.add_metric([name], bucket.live)
            share.add_metric([name], bucket.share)
        yield from (shared, live, share)
        if sharing.news is not None:
            news = CounterMetricFamily(
                "sluice_breaker_news",
                "Breaker openings published to other processes, and heard from them.",
                labels=["direction"],
            )
            news.add_metric(["published"], sharing.news.published)
            news.add_metric(["heard"], sharing.news.tripped)
            yield news
        cache = sharing.idempotency
        if cache is not None:
            lookups = CounterMetricFamily(
                "sluice_idempotency_cache", "Idempotency cache lookups.", labels=["result"]
            )
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            lookups.add_metric(["error"], cache.errors)
            yield lookups


class _DeliveryCollector:
    def __init__(
        self, runners: list[ChannelRunner], stages: list[Stage[object]], callbacks: CallbackSender
    ) -> None:
        self._runners = runners
        self._stages = stages
        self._callbacks = callbacks

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        results = CounterMetricFamily(
            "sluice_channel_messages", "Attempt outcomes per channel.", labels=["channel", "result"]
        )
        gauges = {
            name: GaugeMetricFamily(f"sluice_channel_{name}", help_text, labels=["channel"])
            for name, help_text in (
                ("in_flight", "Messages handed to the transport and not yet answered."),
                ("width", "Configured maximum in flight."),
                ("rate", "Rate in force (messages/s, 0 = unlimited), after throttling."),
                ("breaker", "Breaker state: 0 closed, 1 half-open, 2 open."),
            )
        }
        for r in self._runners:
            for result, value in (
                ("sent", r.sent),
                ("failed", r.failed),
                ("retried", r.retried),
                ("throttled", r.throttled),
            ):
                results.add_metric([r.name, result], value)
            gauges["in_flight"].add_metric([r.name], r.in_flight)
            gauges["width"].add_metric([r.name], r.config.width)
            gauges["rate"].add_metric([r.name], r.bucket.rate)
            gauges["breaker"].add_metric([r.name], BREAKER_VALUES[r.breaker.state.name.lower()])
        yield results
        yield from gauges.values()
        depth = GaugeMetricFamily("sluice_stage_depth", "Items queued.", labels=["stage"])
        processed = CounterMetricFamily(
            "sluice_stage_processed", "Items handled.", labels=["stage"]
        )
        batches = CounterMetricFamily("sluice_stage_batches", "Batches handled.", labels=["stage"])
        wait = CounterMetricFamily(
            "sluice_stage_wait_seconds", "Total queue wait of items.", labels=["stage"]
        )
        busy = CounterMetricFamily(
            "sluice_stage_busy_seconds", "Time spent in the handler.", labels=["stage"]
        )
        for stage in self._stages:
            s = stage.stats()
            depth.add_metric([s.name], s.depth)
            processed.add_metric([s.name], s.processed)
            batches.add_metric([s.name], s.batches)
            wait.add_metric([s.name], s.wait_seconds)
            busy.add_metric([s.name], s.busy_seconds)
        yield from (depth, processed, batches, wait, busy)
        callbacks = CounterMetricFamily(
            "sluice_callbacks", "Status callbacks by result.", labels=["result"]
        )
        callbacks.add_metric(["delivered"], self._callbacks.delivered)
        callbacks.add_metric(["retried"], self._callbacks.retried)
        callbacks.add_metric(["dropped"], self._callbacks.dropped)
        yield callbacks
