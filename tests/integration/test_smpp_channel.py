"""SMS end to end: HTTP → journal → SMPP binds → the SMSC simulator → receipts → delivered."""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness import eventually, gateway_config, running_gateway

from sluice.model import State
from sluice.sim.smsc import SmscOptions, SmscSimulator
from sluice.sim.webhook_sink import WebhookSink

pytestmark = pytest.mark.integration


def smpp_channel(port: int, **options: Any) -> dict[str, Any]:
    smpp = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "sluice",
        "password": "secret",
        "window": 10,
        "response_timeout_seconds": 2,
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.5,
        "enquire_link_seconds": 5,
    }
    channel: dict[str, Any] = {"type": "smpp", "width": 40}
    for key, value in options.items():
        if key in ("width", "rate", "retry", "breaker", "failover"):
            channel[key] = value
        else:
            smpp[key] = value
    channel["smpp"] = smpp
    channel["width"] = max(channel["width"], smpp.get("binds", 1) * smpp["window"])
    return channel


async def test_sms_is_submitted_then_delivered_with_callbacks(
    journal_section: dict[str, Any],
) -> None:
    smsc = SmscSimulator(SmscOptions(receipt_delay_ms=20))
    await smsc.start()
    try:
        async with WebhookSink() as app:
            config = gateway_config(journal_section, {"sms": smpp_channel(smsc.port, binds=2)})
            async with running_gateway(config) as run:
                texts = ["Your code is 123456", "Prix: 10€ [promo] {ok}", "Привет 👋 " * 20]
                ids = await run.post(
                    [
                        {"channel": "sms", "to": f"+4470000000{i}", "body": text,
                         "from": "Sluice", "callback_url": f"{app.url}/status"}
                        for i, text in enumerate(texts)
                    ]
                )  # fmt: skip
                await eventually(
                    lambda: (
                        app.stats().by_path.get("/status") is not None
                        and app.stats().by_path["/status"].accepted >= 6
                    ),
                    what="sent and delivered callbacks",
                )
                for mid in ids:
                    record = await run.message(mid)
                    assert record["state"] == "delivered", record
                    states = [e["state"] for e in record["timeline"]]
                    assert states[-3:] == ["sending", "sent", "delivered"]
                assert sorted(smsc.messages()) == sorted(texts)
                long_parts = [s for s in smsc.received() if s.destination.endswith("2")]
                assert len(long_parts) > 1  # the long UCS-2 text went as concatenated parts
                assert all(p.data_coding == 0x08 for p in long_parts)
                assert {p.data_coding for p in smsc.received() if p.destination.endswith("1")} == {
                    0
                }  # the euro sign and brackets fit GSM 7-bit
                async with run.client.get("/metrics") as response:
                    metrics = await response.text()
                assert 'sluice_smpp_binds{channel="sms"} 2.0' in metrics
                receipts = re.search(r'sluice_smpp_receipts_total\{channel="sms"\} (\S+)', metrics)
                assert receipts is not None and float(receipts[1]) >= 3  # one a part
    finally:
        await smsc.close()


async def test_the_window_holds_and_urgent_messages_go_before_the_bulk(
    journal_section: dict[str, Any],
) -> None:
    smsc = SmscSimulator(SmscOptions(latency_ms=20, max_window=5))
    await smsc.start()
    try:
        channel = smpp_channel(smsc.port, window=5, width=5, receipts=False)
        async with running_gateway(gateway_config(journal_section, {"sms": channel})) as run:
            await run.post(
                [{"channel": "sms", "to": f"+44700{i:04d}", "body": "news", "priority": "bulk"}
                 for i in range(300)]
            )  # fmt: skip
            await eventually(lambda: smsc.stats().accepted >= 20, what="bulk flowing")
            before = smsc.stats().accepted
            await run.post(
                [{"channel": "sms", "to": f"+44799{i:04d}", "body": "code", "priority": "urgent"}
                 for i in range(5)]
            )  # fmt: skip
            await eventually(lambda: run.gateway.backlog() == 0, within=30, what="all sent")
            order = [s.destination for s in smsc.received()]
            urgent_at = [order.index(f"+44799{i:04d}") for i in range(5)]
            # ~250 bulk messages were still queued, some claimed ahead and waiting for the
            # window: the urgent ones went out within a few windows of their arrival.
            assert max(urgent_at) < before + 40, (before, urgent_at)
            stats = smsc.stats()
            assert stats.max_outstanding <= 5
            assert stats.throttled_window == 0  # never more than the window outstanding
    finally:
        await smsc.close()


async def test_permanent_and_transient_smsc_errors(journal_section: dict[str, Any]) -> None:
    smsc = SmscSimulator(SmscOptions(destinations_rejected={"+100"}, receipt_delay_ms=10))
    await smsc.start()
    try:
        retry = {"base_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 3}
        config = gateway_config(journal_section, {"sms": smpp_channel(smsc.port, retry=retry)})
        async with running_gateway(config) as run:
            [bad] = await run.post([{"channel": "sms", "to": "+100", "body": "x"}])
            await eventually(lambda: run.gateway.backlog() == 0, what="a final state")
            record = await run.message(bad)
            assert record["state"] == "failed"
            assert record["attempts"] == 1
            assert "ESME_RINVDSTADR" in record["timeline"][-1]["detail"]
            smsc.configure(error_ratio=1.0)
            [flaky] = await run.post([{"channel": "sms", "to": "+200", "body": "y"}])
            await eventually(lambda: run.gateway.backlog() == 0, what="a final state")
            record = await run.message(flaky)
            assert record["state"] == "failed"
            assert record["attempts"] == 3
            assert "ESME_RSYSERR" in record["timeline"][-1]["detail"]
    finally:
        await smsc.close()


async def test_throttling_slows_the_bind_and_fails_nothing(journal_section: dict[str, Any]) -> None:
    smsc = SmscSimulator(SmscOptions(tps=200, receipt_delay_ms=10))
    await smsc.start()
    try:
        config = gateway_config(journal_section, {"sms": smpp_channel(smsc.port, window=20)})
        async with running_gateway(config) as run:
            ids = await run.post(
                [{"channel": "sms", "to": "+1", "body": str(i)} for i in range(600)]
            )
            await eventually(lambda: run.gateway.backlog() == 0, within=30, what="all sent")
            counts = await run.gateway.journal.count_by_state()
            assert counts.get(State.FAILED, 0) == 0
            assert smsc.stats().throttled_tps > 0
            for mid in ids[::50]:
                assert (await run.message(mid))["attempts"] == 1
    finally:
        await smsc.close()


@pytest.mark.parametrize(
    "fault",
    [
        {"disconnect_ratio": 0.05},
        {"late_ratio": 0.05, "late_ms": 3000},
        {"garbage_ratio": 0.02},
        {"tps": 100},
    ],
    ids=["disconnects", "late-answers", "garbage", "throttling"],
)
async def test_faults_lose_nothing_and_the_channel_recovers(
    journal_section: dict[str, Any], fault: dict[str, Any]
) -> None:
    smsc = SmscSimulator(SmscOptions(seed=7, receipt_delay_ms=5, **fault))
    await smsc.start()
    try:
        retry = {"base_seconds": 0.05, "max_seconds": 0.2, "max_attempts": 50}
        breaker = {"failure_threshold": 1000}
        channel = smpp_channel(
            smsc.port, binds=2, window=10, retry=retry, breaker=breaker,
            response_timeout_seconds=0.5,
        )  # fmt: skip
        async with running_gateway(gateway_config(journal_section, {"sms": channel})) as run:
            ids = await run.post(
                [{"channel": "sms", "to": f"+1{i:05d}", "body": f"m{i}"} for i in range(300)]
            )
            await eventually(lambda: run.gateway.backlog() == 0, within=60, what="all final")

            # On PostgreSQL the backlog is read back every second and may count a change
            # twice until then (journal/postgres/pending.py): the states decide.
            async def all_final() -> bool:
                counts = await run.gateway.journal.count_by_state()
                return set(counts) <= {State.SENT, State.DELIVERED}

            await eventually(all_final, within=10, what="every message sent or delivered")
            counts = await run.gateway.journal.count_by_state()
            assert set(counts) <= {State.SENT, State.DELIVERED}, counts
            assert sum(counts.values()) == len(ids)
            delivered = {s.destination for s in smsc.received()}
            assert delivered == {f"+1{i:05d}" for i in range(300)}
            smsc.configure(disconnect_ratio=0.0, late_ratio=0.0, garbage_ratio=0.0, tps=0)
            [after] = await run.post([{"channel": "sms", "to": "+999", "body": "recovered"}])
            await eventually(lambda: run.gateway.backlog() == 0, what="recovered")
            assert (await run.message(after))["attempts"] == 1
    finally:
        await smsc.close()


async def test_mobile_originated_messages_reach_the_mo_webhook(
    journal_section: dict[str, Any],
) -> None:
    smsc = SmscSimulator(SmscOptions())
    await smsc.start()
    try:
        async with WebhookSink() as app:
            channel = smpp_channel(smsc.port, mo_webhook=f"{app.url}/inbound")
            async with running_gateway(gateway_config(journal_section, {"sms": channel})):
                await smsc.wait_for(binds=1)
                smsc.send_mo("+447700900123", "12345", "STOP 🙏")
                await app.wait_for(1, path="/inbound")
                await eventually(lambda: smsc.stats().mo_acked == 1, what="the MO acknowledged")
                assert len(app.received("/inbound")) == 1
    finally:
        await smsc.close()


async def test_a_refused_bind_keeps_messages_queued_until_it_succeeds(
    journal_section: dict[str, Any],
) -> None:
    smsc = SmscSimulator(SmscOptions(accounts={"sluice": "other"}))
    await smsc.start()
    try:
        channel = smpp_channel(
            smsc.port,
            response_timeout_seconds=0.2,
            retry={"base_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 2},
            breaker={"failure_threshold": 2, "cooldown_seconds": 0.2},
        )
        async with running_gateway(gateway_config(journal_section, {"sms": channel})) as run:
            [mid] = await run.post([{"channel": "sms", "to": "+1", "body": "waiting"}])
            await eventually(lambda: run.gateway.runners["sms"].breaker.state.name == "OPEN",
                             what="the channel parked")  # fmt: skip
            assert (await run.message(mid))["state"] in ("queued", "sending")  # waiting for a bind
            smsc.configure(accounts={"sluice": "secret"})
            await eventually(lambda: run.gateway.backlog() == 0, within=30, what="sent")
            record = await run.message(mid)
            assert record["state"] in ("sent", "delivered")
            assert record["attempts"] == 1  # waiting for a bind never used up its attempts
    finally:
        await smsc.close()


async def test_a_message_whose_receipt_never_comes_is_expired_saying_so(
    journal_section: dict[str, Any],
) -> None:
    """smpp.receipt_deadline_seconds, wired into the running gateway: the SMSC accepts the
    message and never sends its receipt; the message does not stay `sent` for ever."""
    smsc = SmscSimulator(SmscOptions(receipt_delay_ms=3_600_000))
    await smsc.start()
    try:
        channel = smpp_channel(smsc.port, receipt_deadline_seconds=0.5, receipt_sweep_seconds=0.1)
        config = gateway_config(journal_section, {"sms": channel})
        async with running_gateway(config) as run:
            [mid] = await run.post([{"channel": "sms", "to": "+447000000001", "body": "hi"}])

            async def expired() -> bool:
                return bool((await run.message(mid))["state"] == "expired")

            await eventually(lambda: smsc.messages() == ["hi"], what="the SMSC has it")
            await eventually(expired, what="the message expired")
            record = await run.message(mid)
            states = [e["state"] for e in record["timeline"]]
            assert states[-2:] == ["sent", "expired"]
            assert "receipt" in record["timeline"][-1].get("detail", "")
    finally:
        await smsc.close()
