"""Channel behaviour a user relies on: throttling, leases, shutdown, callbacks that fail."""

from __future__ import annotations

from typing import Any

import pytest
from harness import eventually, gateway_config, running_gateway, webhook_channel

from sluice.config import from_dict
from sluice.model import State
from sluice.process.gateway import SluiceGateway
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration


async def test_a_peer_that_answers_429_slows_the_channel_and_loses_nothing(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(rate_limit=100)) as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", width=16)}  # rate unlimited
        async with running_gateway(gateway_config(journal_section, channels)) as run:
            runner = run.gateway.runners["web"]
            ids = await run.post(
                [{"channel": "web", "to": "+1", "body": str(i)} for i in range(400)]
            )
            await sink.wait_for(400, path="/hook", timeout=30)

            async def all_sent() -> bool:
                # The journal itself, not backlog(): on PostgreSQL the pending counts a
                # process reads back once a second may miss an outcome for that second.
                return await run.gateway.journal.count_by_state() == {State.SENT: 400}

            await eventually(all_sent, what="all 400 sent")
            assert runner.throttled > 0
            assert runner.bucket.rate > 0  # the channel found a rate below unlimited
            # A throttled try is not counted as an attempt: every message shows one.
            throttled_seen = 0
            for mid in ids:
                record = await run.message(mid)
                assert record["state"] == "sent"
                assert record["attempts"] == 1
                throttled_seen += any(e.get("outcome") == "throttled" for e in record["timeline"])
            assert throttled_seen > 0


async def test_leases_are_renewed_while_a_slow_send_is_in_flight(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=1500)) as sink:
        channels = {"web": webhook_channel(f"{sink.url}/hook", width=4)}
        journal = {"lease_seconds": 0.5, "heartbeat_seconds": 0.1, "sweep_seconds": 0.1}
        async with running_gateway(
            gateway_config(journal_section, channels, journal=journal)
        ) as run:
            ids = await run.post([{"channel": "web", "to": "+1", "body": str(i)} for i in range(4)])
            await sink.wait_for(4, path="/hook", timeout=10)
            await eventually(lambda: run.gateway.backlog() == 0, what="all sent")
            # Three times the lease passed during each send, yet no sweep reclaimed them.
            assert sink.stats().received == 4
            for mid in ids:
                record = await run.message(mid)
                assert [e["state"] for e in record["timeline"]][-2:] == ["sending", "sent"]
                assert record["attempts"] == 1


async def test_shutdown_after_the_grace_period_returns_unfinished_work_to_the_queue(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=30_000)) as sink:
        raw = gateway_config(
            journal_section,
            {"web": webhook_channel(f"{sink.url}/hook", width=3)},
            server={"shutdown_grace_seconds": 0.2},
        )
        async with running_gateway(raw) as run:
            await run.post([{"channel": "web", "to": "+1", "body": str(i)} for i in range(5)])
            await sink.wait_for(3, path="/hook", accepted_only=False)
            gateway = run.gateway
        # running_gateway has stopped it: the three stuck sends were cut off after 0.2 s.
        reopened = SluiceGateway(from_dict(raw))
        await reopened.journal.open()
        try:
            counts = await reopened.journal.count_by_state()
            assert counts == {State.QUEUED: 5}
            record = await reopened.journal.get("acme", min(await _ids(reopened)))
            assert record is not None
            assert record.timeline[-1].detail == "released at shutdown"
        finally:
            await reopened.journal.close()
        assert gateway.ready() is False


async def _ids(gateway: SluiceGateway) -> list[int]:
    return [r.message.id for r in await gateway.journal.by_recipient("acme", "+1", None, 10)]


async def test_callbacks_are_retried_until_the_producer_answers(
    journal_section: dict[str, Any],
) -> None:
    async with (
        WebhookSink() as sink,
        WebhookSink(SinkOptions(fail_status=503)) as producer,
    ):
        channels = {"web": webhook_channel(f"{sink.url}/hook")}
        callbacks = {"base_seconds": 0.05, "max_seconds": 0.1}
        config = gateway_config(journal_section, channels, callbacks=callbacks)
        async with running_gateway(config) as run:
            [mid] = await run.post(
                [{"channel": "web", "to": "+1", "body": "x", "callback_url": f"{producer.url}/cb"}]
            )
            await producer.wait_for(3, path="/cb", accepted_only=False)
            producer.configure(fail_status=None)
            await producer.wait_for(1, path="/cb")
            assert producer.received("/cb") == [mid]
            assert run.gateway.callbacks.retried >= 3
            await eventually(lambda: run.gateway.callbacks.delivered == 1, what="delivered")
