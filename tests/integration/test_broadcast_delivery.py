"""Broadcasts delivered by a real gateway (in-process, each journal) to the webhook sink: a
peer that throttles is back-pressure, not failure; urgent messages overtake a draining
broadcast; an expired broadcast ends expired; an unsubscribe before the cursor reaches a
member keeps the message from being made."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from harness import KEY, Running, eventually, gateway_config, running_gateway, webhook_channel

from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {KEY}"}


def config(journal: dict[str, Any], sink_url: str, **channel: Any) -> dict[str, Any]:
    return gateway_config(
        journal,
        {"web": webhook_channel(f"{sink_url}/hook", **{"width": 8, **channel})},
        audience={"expansion_chunk": 20, "min_lookahead": 40, "expander_poll_seconds": 0.1},
    )


async def subscribe(gw: Running, n: int, topic: str = "news") -> None:
    body = b"\n".join(
        msgspec.json.encode(
            {"id": f"s{i:04d}", "webhook": f"https://example.com/{i}", "topics": [topic]}
        )
        for i in range(n)
    )
    async with gw.client.post(
        "/v1/subscribers/import",
        data=body,
        headers={**AUTH, "Content-Type": "application/x-ndjson"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def broadcast(gw: Running, **fields: Any) -> str:
    body = {
        "topics": ["news"],
        "channels": ["web"],
        "content": {"webhook": {"body": "hello {{ subscriber.id }}"}},
        **fields,
    }
    async with gw.client.post("/v1/broadcasts", json=body, headers=AUTH) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
        return str(answer["id"])


async def view(gw: Running, bid: str) -> dict[str, Any]:
    async with gw.client.get(f"/v1/broadcasts/{bid}", headers=AUTH) as resp:
        answer: dict[str, Any] = await resp.json()
        return answer


async def phase_is(gw: Running, bid: str, phase: str) -> bool:
    return (await view(gw, bid))["phase"] == phase


async def test_a_throttling_peer_slows_a_broadcast_that_still_completes(
    journal_section: dict[str, Any],
) -> None:
    # A third of the requests answered 429: each is retried without counting as an attempt
    # (two attempts would fail many of them otherwise).
    async with WebhookSink(SinkOptions(throttle_ratio=0.3, seed=3)) as sink:
        raw = config(journal_section, sink.url, retry={"base_seconds": 0.05, "max_attempts": 2})
        async with running_gateway(raw) as gw:
            await subscribe(gw, 60)
            bid = await broadcast(gw)
            await eventually(lambda: phase_is(gw, bid, "completed"), within=60, what="done")
            final = await view(gw, bid)
            async with gw.client.get("/metrics") as resp:
                metrics = await resp.text()
    assert "sluice_broadcast_planned_total 60.0" in metrics
    assert "sluice_broadcasts_expanding 0.0" in metrics
    assert final["counts"]["sent"] == 60 and final["counts"]["failed"] == 0
    assert sink.stats().by_status.get(429, 0) > 10  # it was throttled, and never failed for it
    assert len(set(sink.received("/hook"))) == 60


async def test_urgent_messages_overtake_a_draining_broadcast(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=2)) as sink:
        raw = config(journal_section, sink.url, rate=200, burst=10)
        async with running_gateway(raw) as gw:
            await subscribe(gw, 400)
            bid = await broadcast(gw)
            await sink.wait_for(20, path="/hook")
            (otp,) = await gw.post(
                [{"channel": "web", "to": "+15550001", "body": "code 123", "priority": "urgent"}]
            )
            await eventually(lambda: otp in sink.received("/hook"), within=10, what="the OTP")
            at_otp = await view(gw, bid)
            await eventually(lambda: phase_is(gw, bid, "completed"), within=60, what="done")
        received = sink.received("/hook")
    # Sent while the broadcast still had most of its messages ahead of it.
    assert at_otp["counts"]["sent"] < 300, at_otp["counts"]
    assert received.index(otp) < len(received) - 100


async def test_an_expired_broadcast_ends_expired(journal_section: dict[str, Any]) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        raw = config(journal_section, sink.url, paused=True)  # nothing is sent
        raw["journal"]["sweep_seconds"] = 0.2
        async with running_gateway(raw) as gw:
            await subscribe(gw, 30)
            bid = await broadcast(gw, ttl_seconds=1)
            await eventually(lambda: phase_is(gw, bid, "completed"), within=20, what="expiry")
            final = await view(gw, bid)
    assert final["counts"]["expired"] == 30 and final["planned"] == 30
    assert sink.received("/hook") == []


async def test_expansion_stops_at_the_expiry(journal_section: dict[str, Any]) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        raw = config(journal_section, sink.url, paused=True)  # nothing is sent: lookahead full
        raw["journal"]["sweep_seconds"] = 0.2
        async with running_gateway(raw) as gw:
            await subscribe(gw, 200)
            bid = await broadcast(gw, ttl_seconds=1)
            await eventually(lambda: phase_is(gw, bid, "completed"), within=20, what="expiry")
            final = await view(gw, bid)
    # The members read before the expiry made messages, which expired; the rest made none.
    assert 40 <= final["planned"] < 200 and final["examined"] == final["planned"]
    assert final["counts"]["expired"] == final["planned"] and final["remaining"] == 0


async def test_members_unsubscribed_before_the_cursor_reaches_them_get_nothing(
    journal_section: dict[str, Any],
) -> None:
    async with WebhookSink(SinkOptions()) as sink:
        # 20 messages a second and a lookahead of 40: the cursor needs seconds to reach the
        # last members, the unsubscribe a few milliseconds.
        raw = config(journal_section, sink.url, rate=20, burst=1)
        async with running_gateway(raw) as gw:
            await subscribe(gw, 100)
            bid = await broadcast(gw)
            await eventually(
                lambda: _planned_at_least(gw, bid, 40), within=20, what="the first chunks"
            )
            gone = [f"s{i:04d}" for i in range(90, 100)]
            async with gw.client.post(
                "/v1/topics/news/unsubscribe", json={"ids": gone}, headers=AUTH
            ) as resp:
                assert (await resp.json())["removed"] == 10
            assert (await view(gw, bid))["examined"] < 90, "the cursor was there already"
            await eventually(lambda: phase_is(gw, bid, "completed"), within=60, what="done")
            final = await view(gw, bid)
    assert final["planned"] == 90 and final["examined"] == 90
    assert final["counts"]["sent"] == 90
    assert len(set(sink.received("/hook"))) == 90


async def _planned_at_least(gw: Running, bid: str, n: int) -> bool:
    return int((await view(gw, bid))["planned"]) >= n
