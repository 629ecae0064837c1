"""A broadcast through a real `sluice serve`, killed with SIGKILL while it expands and delivers:
after the restart every eligible subscriber gets it, none gets two messages from expansion,
and the sink's duplicates stay within what was in flight at the kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from harness import KEY, ServeProcess, eventually, gateway_config, webhook_channel

from services import free_port
from sluice.config import dump_toml
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration

SUBSCRIBERS = 2000
AUTH = {"Authorization": f"Bearer {KEY}"}


def _config(tmp_path: Path, journal: dict[str, Any], sink_url: str, port: int) -> Path:
    # Short leases: on PostgreSQL the restarted process is a new owner, and waits for the
    # dead one's leases (of messages and of the broadcast) to lapse.
    raw = gateway_config(
        {**journal, "lease_seconds": 1.5, "heartbeat_seconds": 0.3, "sweep_seconds": 0.3},
        {"web": webhook_channel(f"{sink_url}/hook", width=16, rate=1500, burst=50)},
        server={"listen": f"127.0.0.1:{port}"},
        # Small steps and a short lookahead: expansion follows delivery, so the kill lands
        # while members are still being read.
        audience={
            "expansion_chunk": 50,
            "min_lookahead": 100,
            "lookahead_seconds": 0.1,
            "expander_poll_seconds": 0.2,
            "expander_lease_seconds": 1.5,
        },
    )
    path = tmp_path / "sluice.toml"
    path.write_text(dump_toml(raw))
    return path


async def _import(session: aiohttp.ClientSession, base: str) -> None:
    lines = [
        {"id": f"s{i:05d}", "webhook": f"https://example.com/u/{i}", "topics": ["news"]}
        for i in range(SUBSCRIBERS)
    ]
    lines += [{"id": f"nobody{i}", "topics": ["news"]} for i in range(25)]  # no address
    body = b"\n".join(msgspec.json.encode(line) for line in lines)
    async with session.post(
        f"{base}/v1/subscribers/import",
        data=body,
        headers={**AUTH, "Content-Type": "application/x-ndjson"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def _view(session: aiohttp.ClientSession, base: str, bid: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/broadcasts/{bid}", headers=AUTH) as resp:
        assert resp.status == 200
        view: dict[str, Any] = await resp.json()
        return view


async def test_sigkill_during_a_broadcast_misses_nobody_and_plans_nobody_twice(
    tmp_path: Path, journal_section: dict[str, Any]
) -> None:
    async with WebhookSink(SinkOptions(latency_ms=2)) as sink:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ServeProcess(
            _config(tmp_path, journal_section, sink.url, port), port, tmp_path / "serve.log"
        )
        try:
            await serve.start()
            async with aiohttp.ClientSession() as session:
                await _import(session, base)
                async with session.post(
                    f"{base}/v1/broadcasts",
                    json={
                        "topics": ["news"],
                        "channels": ["web"],
                        "content": {"webhook": {"body": "alert for {{ subscriber.id }}"}},
                    },
                    headers=AUTH,
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    bid = (await resp.json())["id"]
                await sink.wait_for(SUBSCRIBERS // 5, path="/hook")
                await serve.kill()
                await serve.start()
                before = await _view(session, base, bid)
                assert before["examined"] < SUBSCRIBERS, "the kill came after expansion"

                async def completed() -> bool:
                    return (await _view(session, base, bid))["phase"] == "completed"

                await eventually(completed, within=90, what="the broadcast completed")
                view = await _view(session, base, bid)
                assert view["planned"] == SUBSCRIBERS
                assert view["suppressed"] == {"no_address": 25}
                assert view["counts"]["sent"] == SUBSCRIBERS
                assert view["remaining"] == 0 and view["eta_seconds"] == 0
                # One message per subscriber, each delivered.
                ids = []
                for i in range(0, SUBSCRIBERS, 97):
                    async with session.get(
                        f"{base}/v1/messages",
                        params={"to": f"https://example.com/u/{i}"},
                        headers=AUTH,
                    ) as resp:
                        page = (await resp.json())["messages"]
                    assert len(page) == 1, page
                    assert page[0]["body"] == f"alert for s{i:05d}"
                    ids.append(page[0]["id"])
                received = sink.received("/hook")
                assert set(ids) <= set(received)
                assert len(set(received)) == SUBSCRIBERS
                # A message the sink got twice was in flight at the kill: its timeline shows
                # it taken for sending before the crash and again after it.
                twice = {i for i in received if received.count(i) > 1}
                for message_id in twice:
                    async with session.get(
                        f"{base}/v1/messages/{message_id}", headers=AUTH
                    ) as resp:
                        timeline = (await resp.json())["timeline"]
                    assert [e["state"] for e in timeline].count("sending") >= 2, timeline
            assert await serve.terminate() == 0
        finally:
            await serve.stop_quietly()
