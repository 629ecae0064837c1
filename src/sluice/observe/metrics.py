"""Prometheus metrics for one gateway, in a registry of its own (no process-wide state).

Only the two request counters are counted here. Every other figure is read at scrape time
from the frozen snapshots the components hand out through `stats()` (runners, stages, the
callback sender, the journal, the sharing, the SMTP front door), so measuring costs nothing
per message: the send latencies are counted by each runner into plain bucket lists
(delivery/latency.py), since a prometheus_client Histogram takes locks for every observation.
The process wiring hands the components over (`watch_*`); this module only renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from sluice.audience.expander import ExpanderStats
    from sluice.delivery.callbacks import CallbackStats
    from sluice.delivery.latency import LatencyStats
    from sluice.delivery.runner import RunnerStats
    from sluice.flow.stage import StageStats
    from sluice.ingress.http.gate import GateStats
    from sluice.ingress.http.server import ServerStats
    from sluice.ingress.smtp.door import FrontDoorStats
    from sluice.journal.base import JournalStats
    from sluice.sharing.build import SharingStats
    from sluice.transports.smpp.channel import SmppStats

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}

S_co = TypeVar("S_co", covariant=True)


class HasStats(Protocol[S_co]):
    """A component that tells what it knows as a frozen snapshot."""

    def stats(self) -> S_co: ...


def cumulative_buckets(latency: LatencyStats) -> list[tuple[str, float]]:
    """Prometheus buckets: (upper bound, observations at or below it)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*latency.bounds, float("inf")), latency.counts, strict=True):
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
        #: The runners whose send latencies are exported (none in a process that does not
        #: deliver: the histogram is there, empty).
        self._runners: list[HasStats[RunnerStats]] = []
        self.registry.register(_SendLatencyCollector(self._runners))

    def watch_edge(self, gate: HasStats[GateStats], server: HasStats[ServerStats]) -> None:
        """The HTTP edge: connections, refusals written by the gate, the adaptive limit."""
        self.registry.register(_EdgeCollector(gate, server))

    def watch_front_door(self, door: HasStats[FrontDoorStats]) -> None:
        self.registry.register(_FrontDoorCollector(door))

    def watch_journal(self, journal: ObservedJournal, channels: Iterable[str]) -> None:
        """The journal's figures: backlog, queue depth per channel, commits (every process)."""
        self.registry.register(_JournalCollector(journal, list(channels)))

    def watch_sharing(self, sharing: HasStats[SharingStats]) -> None:
        """What this process shares through Redis: channel rates, breaker news, the
        idempotency cache (nothing without Redis)."""
        self.registry.register(_SharingCollector(sharing))

    def watch_delivery(
        self,
        runners: Iterable[HasStats[RunnerStats]],
        stages: Iterable[HasStats[StageStats]],
        callbacks: HasStats[CallbackStats],
    ) -> None:
        """The delivery side's figures (processes that deliver)."""
        runners = list(runners)
        self._runners.extend(runners)
        self.registry.register(_DeliveryCollector(runners, list(stages), callbacks))

    def watch_expander(self, expander: HasStats[ExpanderStats]) -> None:
        """Broadcast expansion in this process."""
        self.registry.register(_ExpanderCollector(expander))

    def watch_smpp(self, channels: dict[str, HasStats[SmppStats]]) -> None:
        """The SMPP channels' binds, receipts, MO messages and the SMSCs' faults."""
        if channels:
            self.registry.register(_SmppCollector(channels))


class _ExpanderCollector:
    def __init__(self, expander: HasStats[ExpanderStats]) -> None:
        self._expander = expander

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._expander.stats()
        yield GaugeMetricFamily(
            "sluice_broadcasts_expanding", "Broadcasts this process expands now.", stats.expanding
        )
        yield CounterMetricFamily(
            "sluice_broadcast_chunks",
            "Expansion chunks committed (members planned and their messages, one transaction).",
            stats.chunks,
        )
        yield CounterMetricFamily(
            "sluice_broadcast_planned", "Broadcast messages planned by this process.", stats.planned
        )
        yield CounterMetricFamily(
            "sluice_broadcast_chunks_refused",
            "Chunks the journal refused: the broadcast paused, cancelled or taken over.",
            stats.refused,
        )


class _SmppCollector:
    def __init__(self, channels: dict[str, HasStats[SmppStats]]) -> None:
        self._channels = channels

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        binds = GaugeMetricFamily("sluice_smpp_binds", "SMPP binds up.", labels=["channel"])
        receipts = CounterMetricFamily(
            "sluice_smpp_receipts", "Delivery receipts taken from the SMSC.", labels=["channel"]
        )
        inbound = CounterMetricFamily(
            "sluice_smpp_inbound", "Mobile-originated messages taken.", labels=["channel"]
        )
        faults = CounterMetricFamily(
            "sluice_smpp_faults",
            "The SMSC's faults by kind (unknown sequence numbers, generic_nack, unknown "
            "statuses, response timeouts, PDUs that cannot be understood …).",
            labels=["channel", "kind"],
        )
        for name, transport in self._channels.items():
            stats = transport.stats()
            binds.add_metric([name], stats.binds)
            receipts.add_metric([name], stats.receipts)
            inbound.add_metric([name], stats.inbound)
            for kind, count in stats.faults.items():
                faults.add_metric([name, kind], count)
        yield from (binds, receipts, inbound, faults)


class _SendLatencyCollector:
    def __init__(self, runners: list[HasStats[RunnerStats]]) -> None:
        self._runners = runners

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "sluice_send_seconds",
            "Time from handing a message to a transport to its answer.",
            labels=["channel", "outcome"],
        )
        observed = sorted(
            (
                ((s.name, outcome), latency)
                for s in (runner.stats() for runner in self._runners)
                for outcome, latency in s.latency.items()
            ),
            key=lambda item: item[0],
        )
        for (channel, outcome), latency in observed:
            family.add_metric([channel, outcome], cumulative_buckets(latency), latency.total)
        yield family


class _EdgeCollector:
    """The HTTP server's connections and the gate's admission figures."""

    def __init__(self, gate: HasStats[GateStats], server: HasStats[ServerStats]) -> None:
        self._gate = gate
        self._server = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        server = self._server.stats()
        yield GaugeMetricFamily(
            "sluice_http_connections", "HTTP connections open.", value=server.connections
        )
        yield CounterMetricFamily(
            "sluice_http_connections_accepted", "HTTP connections accepted.", value=server.accepted
        )
        yield CounterMetricFamily(
            "sluice_http_connections_refused",
            "HTTP connections refused at once (server.max_connections).",
            value=server.refused,
        )
        gate = self._gate.stats()
        refusals = CounterMetricFamily(
            "sluice_http_gate_refusals",
            "Requests refused from their headers, before their body was read, by code "
            "(overloaded, rate_limited, backlog_full, unauthorized).",
            labels=["code"],
        )
        for code, count in sorted(gate.refusals.items()):
            refusals.add_metric([code], count)
        yield refusals
        yield CounterMetricFamily(
            "sluice_http_probes", "Health and readiness probes answered.", value=gate.probes
        )
        limit = gate.limit
        if limit is None:
            return
        yield GaugeMetricFamily(
            "sluice_admission_limit", "Requests the adaptive limit lets in flight.", limit.limit
        )
        yield GaugeMetricFamily(
            "sluice_admission_in_flight", "Requests admitted and not yet answered.", limit.in_flight
        )
        yield CounterMetricFamily(
            "sluice_admission_admitted", "Requests admitted by the limit.", value=limit.admitted
        )
        yield CounterMetricFamily(
            "sluice_admission_shed", "Requests refused by the limit (503).", value=limit.shed
        )
        yield GaugeMetricFamily(
            "sluice_admission_shedding",
            "1 while requests are being shed (within the last second).",
            value=int(limit.shedding),
        )
        yield GaugeMetricFamily(
            "sluice_admission_latency_seconds",
            "Response time of admitted requests at the target's quantile, last interval.",
            value=limit.latency_ms / 1000,
        )
        yield GaugeMetricFamily(
            "sluice_event_loop_lag_seconds",
            "Mean lag of the event loop in the last interval.",
            value=limit.loop_lag_ms / 1000,
        )


class _FrontDoorCollector:
    """The SMTP front door's verdicts per test and its live sizes."""

    def __init__(self, door: HasStats[FrontDoorStats]) -> None:
        self._door = door

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._door.stats()
        verdicts = CounterMetricFamily(
            "sluice_smtp_screening",
            "Screening outcomes: connect/busy, access/allowlisted, pregreet/fail, dnsbl/pass, "
            "screening/pass_new, log/GREYLISTED …",
            labels=["test", "verdict"],
        )
        for (test, verdict), count in sorted(stats.verdicts.items()):
            verdicts.add_metric([test, verdict], count)
        yield verdicts
        yield GaugeMetricFamily(
            "sluice_smtp_screening_busy", "Connections being screened.", value=stats.screening
        )
        yield GaugeMetricFamily(
            "sluice_smtp_clients", "Client addresses remembered.", value=stats.clients
        )
        yield GaugeMetricFamily(
            "sluice_smtp_client_memory_bytes",
            "Bytes held by the client memory.",
            value=stats.client_memory_bytes,
        )
        if stats.greylist_triplets is not None:
            yield GaugeMetricFamily(
                "sluice_smtp_greylist_triplets",
                "Greylist triplets remembered.",
                value=stats.greylist_triplets,
            )


class ObservedJournal(Protocol):
    """A journal's figures and whether it can serve now."""

    def stats(self) -> JournalStats: ...

    def fault(self) -> str | None: ...


class _JournalCollector:
    def __init__(self, journal: ObservedJournal, channels: list[str]) -> None:
        self._journal = journal
        self._channels = channels

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._journal.stats()
        pending = stats.pending
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
        yield CounterMetricFamily("sluice_journal_commits", "Group commits.", value=stats.commits)
        yield CounterMetricFamily(
            "sluice_journal_operations", "Operations committed.", value=stats.ops
        )
        yield CounterMetricFamily(
            "sluice_journal_busy_seconds",
            "Time the journal writer spent in transactions.",
            value=stats.busy_seconds,
        )
        yield GaugeMetricFamily(
            "sluice_journal_queue_depth",
            "Operations waiting for the journal writer.",
            value=stats.queue_depth,
        )
        yield GaugeMetricFamily(
            "sluice_journal_fault",
            "1 while the journal cannot serve (a damaged file, a disk below its reserve, "
            "PostgreSQL out of reach; /readyz says which), else 0.",
            value=0 if self._journal.fault() is None else 1,
        )


class _SharingCollector:
    def __init__(self, sharing: HasStats[SharingStats]) -> None:
        self._sharing = sharing

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._sharing.stats()
        if not stats.redis:
            return
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
        for name, rate in stats.rates.items():
            shared.add_metric([name], 1 if rate.shared else 0)
            live.add_metric([name], rate.live)
            share.add_metric([name], rate.share)
        yield from (shared, live, share)
        if stats.news is not None:
            news = CounterMetricFamily(
                "sluice_breaker_news",
                "Breaker openings published to other processes, and heard from them.",
                labels=["direction"],
            )
            news.add_metric(["published"], stats.news.published)
            news.add_metric(["heard"], stats.news.heard)
            yield news
        cache = stats.idempotency
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
        self,
        runners: list[HasStats[RunnerStats]],
        stages: list[HasStats[StageStats]],
        callbacks: HasStats[CallbackStats],
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
        for r in (runner.stats() for runner in self._runners):
            for result, value in (
                ("sent", r.sent),
                ("failed", r.failed),
                ("retried", r.retried),
                ("throttled", r.throttled),
            ):
                results.add_metric([r.name, result], value)
            gauges["in_flight"].add_metric([r.name], r.in_flight)
            gauges["width"].add_metric([r.name], r.width)
            gauges["rate"].add_metric([r.name], r.rate)
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
        c = self._callbacks.stats()
        callbacks = CounterMetricFamily(
            "sluice_callbacks", "Status callbacks by result.", labels=["result"]
        )
        callbacks.add_metric(["delivered"], c.delivered)
        callbacks.add_metric(["retried"], c.retried)
        callbacks.add_metric(["dropped"], c.dropped)
        yield callbacks
