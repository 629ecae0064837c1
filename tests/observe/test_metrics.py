"""Send latencies: counted into buckets as they happen, exported as a Prometheus histogram."""

from __future__ import annotations

from prometheus_client import generate_latest

from sluice.observe.metrics import GatewayMetrics, LatencyHistogram


def test_buckets_are_cumulative_and_bounds_inclusive() -> None:
    histogram = LatencyHistogram((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]
    assert histogram.total == 3.065


def test_observations_are_exported_per_channel_and_outcome() -> None:
    metrics = GatewayMetrics()
    observe = metrics.observer("sms")
    observe("sent", 0.003)
    observe("sent", 0.2)
    observe("transient", 12.0)
    text = generate_latest(metrics.registry).decode()
    assert 'sluice_send_seconds_bucket{channel="sms",le="0.005",outcome="sent"} 1.0' in text
    assert 'sluice_send_seconds_count{channel="sms",outcome="sent"} 2.0' in text
    assert 'sluice_send_seconds_bucket{channel="sms",le="10.0",outcome="transient"} 0.0' in text
    assert 'sluice_send_seconds_count{channel="sms",outcome="transient"} 1.0' in text
