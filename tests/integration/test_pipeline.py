"""The pipeline end to end: HTTP API → journal → channel runner → a real webhook sink."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from harness import KEY, eventually, gateway_config, running_gateway, webhook_channel

from sluice.model import State, now_ms
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration


def _states(record: dict[str, object]) -> list[str]:
    return [e["state"] for e in record["timeline"]]  # type: ignore[index, union-attr]


async def test_messages_reach_the_sink_signed_and_callbacks_arrive(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(secret="s3cret", latency_ms=2)) as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", secret="s3cret", width=16)}
        config = gateway_config(journal_section, channels, callbacks={"secret": "s3cret"})
        async with running_gateway(config) as run:
            messages = [
                {
                    "channel": "web",
                    "to": f"+1555{i:04d}",
                    "body": f"hello {i}",
                    "metadata": {"n": str(i)},
                    "callback_url": f"{sink.url}/callbacks",
                }
                for i in range(200)
            ]
            ids = await run.post(messages)
            await sink.wait_for(200, path="/hook")
            await sink.wait_for(200, path="/callbacks")
            assert sorted(sink.received("/hook")) == sorted(ids)
            stats = sink.stats()
            assert stats.bad_signatures == 0
            assert stats.by_path["/hook"].duplicates == 0
            record = await run.message(ids[7])
            assert record["state"] == "sent"
            assert _states(record) == ["accepted", "queued", "sending", "sent"]
            sent = record["timeline"][-1]
            assert sent["outcome"] == "sent"
            assert sent["provider_id"].startswith("sink-")
            assert sent["latency_ms"] > 0
            assert record["provider_id"] == sent["provider_id"]
            await eventually(lambda: run.gateway.backlog() == 0, what="an empty backlog")
            counts = await run.gateway.journal.count_by_state()
            assert counts == {State.SENT: 200}


async def test_a_slow_sink_never_sees_more_than_width_or_rate(
    journal_section: dict[str, Any],
) -> None:
    rate, burst, width = 40, 4, 3
    async with WebhookSink(SinkOptions(latency_ms=30)) as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", width=width, rate=rate, burst=burst)}
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            ids = await run.post(
                [{"channel": "web", "to": "+1555", "body": str(i)} for i in range(60)]
            )
            await sink.wait_for(len(ids), path="/hook")
            stats = sink.stats()
            assert stats.max_in_flight <= width
            # Each wall-clock second holds at most one second of tokens plus the burst.
            assert max(stats.arrivals_per_second) <= rate + burst


async def test_urgent_messages_overtake_a_bulk_backlog(journal_section: dict[str, Any]) -> None:
    async with WebhookSink(SinkOptions(latency_ms=5)) as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", width=4, rate=100, burst=5)}
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            bulk = await run.post(
                [
                    {"channel": "web", "to": "+1", "body": "news", "priority": "bulk"}
                    for _ in range(1000)
                ]
            )
            await sink.wait_for(20, path="/hook")
            urgent = await run.post(
                [
                    {"channel": "web", "to": "+2", "body": "otp", "priority": "urgent"}
                    for _ in range(5)
                ]
            )
            await eventually(
                lambda: set(urgent) <= set(sink.received("/hook")), what="urgent delivered"
            )
            received = sink.received("/hook")
            bulk_before = len(set(received) & set(bulk))
            # At 100/s the backlog needs ~10 s; the urgent ones arrived within a few claims.
            assert bulk_before < 200, bulk_before


async def test_retries_back_off_then_succeed(journal_section: dict[str, Any]) -> None:
    async with WebhookSink(SinkOptions(fail_status=503)) as sink:
        retry = {"base_seconds": 0.2, "max_seconds": 5, "max_attempts": 5, "jitter": 0.0}
        channels = {"web": webhook_channel(f"{sink.url}/hook", retry=retry)}
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            [mid] = await run.post([{"channel": "web", "to": "+1", "body": "x"}])
            await sink.wait_for(3, path="/hook", accepted_only=False)
            sink.configure(fail_status=None)
            await sink.wait_for(1, path="/hook")
            await eventually(lambda: run.gateway.backlog() == 0, what="the message sent")
            record = await run.message(mid)
            assert record["state"] == "sent"
            sending = [e for e in record["timeline"] if e["state"] == "sending"]
            assert len(sending) >= 4
            queued = [e for e in record["timeline"] if e.get("outcome") == "transient"]
            assert all(e["detail"] == "HTTP 503" for e in queued)
            times = [_ms(e["at"]) for e in sending]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # base 0.2 s doubling, no jitter: 200, 400, 800 ms between attempts
            for i, gap in enumerate(gaps[:3]):
                assert gap >= 200 * 2**i - 5, gaps


async def test_retries_give_up_after_max_attempts_and_permanent_errors_fail_at_once(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(fail_status=503)) as sink:
        retry = {"base_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 3}
        channels = {"web": webhook_channel(f"{sink.url}/hook", retry=retry)}
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            [mid] = await run.post([{"channel": "web", "to": "+1", "body": "x"}])
            await eventually(lambda: run.gateway.backlog() == 0, what="the message final")
            record = await run.message(mid)
            assert record["state"] == "failed"
            assert record["attempts"] == 3
            assert "gave up after 3 attempts" in record["timeline"][-1]["detail"]
            sink.configure(fail_status=400)
            [bad] = await run.post([{"channel": "web", "to": "+1", "body": "x"}])
            await eventually(lambda: run.gateway.backlog() == 0, what="the message final")
            record = await run.message(bad)
            assert record["state"] == "failed"
            assert record["attempts"] == 1
            assert record["timeline"][-1]["outcome"] == "permanent"


async def test_breaker_opens_parks_the_channel_then_closes(journal_section: dict[str, Any]) -> None:
    async with WebhookSink(SinkOptions(fail_status=503)) as sink:
        channels = {
            "web": webhook_channel(
                f"{sink.url}/hook",
                width=1,
                breaker={"failure_threshold": 3, "cooldown_seconds": 0.5},
                retry={"base_seconds": 0.01, "max_seconds": 0.02, "max_attempts": 100},
            )
        }
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            runner = run.gateway.runners["web"]
            ids = await run.post(
                [{"channel": "web", "to": "+1", "body": str(i)} for i in range(10)]
            )
            await eventually(lambda: runner.breaker.state.name == "OPEN", what="breaker open")
            assert (await run.channels())["web"]["breaker"] == "open"
            seen = sink.stats().received
            assert seen == 3  # parked: nothing more goes to the failing peer
            sink.configure(fail_status=None)
            await sink.wait_for(10, path="/hook")
            await eventually(lambda: run.gateway.backlog() == 0, what="all sent")
            assert runner.breaker.state.name == "CLOSED"
            assert (await run.channels())["web"]["breaker"] == "closed"
            for mid in ids:
                assert (await run.message(mid))["state"] == "sent"


async def test_failover_takes_the_queue_of_a_parked_channel(
    journal_section: dict[str, Any],
) -> None:
    async with (
        WebhookSink(SinkOptions(fail_status=503)) as primary,
        WebhookSink() as backup,
    ):
        channels = {
            "main": webhook_channel(
                f"{primary.url}/hook",
                width=1,
                failover="backup",
                breaker={"failure_threshold": 2, "cooldown_seconds": 30},
                retry={"base_seconds": 0.01, "max_seconds": 0.02, "max_attempts": 100},
            ),
            "backup": webhook_channel(f"{backup.url}/hook", width=4),
        }
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            ids = await run.post(
                [{"channel": "main", "to": "+1", "body": str(i)} for i in range(20)]
            )
            await backup.wait_for(20, path="/hook")
            assert sorted(backup.received("/hook")) == sorted(ids)

            async def last_is_sent() -> bool:  # the sink answered; the commit follows
                return (await run.message(ids[-1]))["state"] == "sent"

            await eventually(last_is_sent, what="the SENT commit")
            record = await run.message(ids[-1])
            assert record["channel"] == "backup"
            assert any("failover from main" in (e.get("detail") or "") for e in record["timeline"])


async def test_cancel_a_scheduled_message_and_expire_a_stuck_one(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink() as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", rate=0.01, burst=1)}
        config = gateway_config(
            journal_section, channels, journal={"sweep_seconds": 0.1, "heartbeat_seconds": 0.1}
        )
        async with running_gateway(config) as run:
            callback = f"{sink.url}/callbacks"
            [first] = await run.post([{"channel": "web", "to": "+1", "body": "takes the token"}])
            await sink.wait_for(1, path="/hook")
            [later, stuck] = await run.post(
                [
                    {
                        "channel": "web",
                        "to": "+1",
                        "body": "later",
                        "callback_url": callback,
                        "not_before": "2099-01-01T00:00:00Z",
                    },
                    {
                        "channel": "web",
                        "to": "+1",
                        "body": "stuck",
                        "callback_url": callback,
                        "expires_at": now_ms() + 300,
                    },
                ]
            )
            async with run.client.delete(
                f"/v1/messages/{later}", headers={"Authorization": f"Bearer {KEY}"}
            ) as resp:
                assert resp.status == 200
            async with run.client.delete(
                f"/v1/messages/{first}", headers={"Authorization": f"Bearer {KEY}"}
            ) as resp:
                assert resp.status == 409
            await sink.wait_for(2, path="/callbacks")
            assert (await run.message(later))["state"] == "cancelled"
            assert (await run.message(stuck))["state"] == "expired"
            assert sink.received("/hook") == [first]


def _ms(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp() * 1000
