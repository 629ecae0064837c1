"""Split roles on one PostgreSQL journal: an "api" gateway takes messages, a "worker" gateway
delivers them, each running only its own parts and serving only its own endpoints."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from harness import KEY, eventually, gateway_config, running_gateway, webhook_channel

from services import PgTarget
from sluice.model import id_node, parse_id
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

pytestmark = pytest.mark.integration


def _config(pg: PgTarget, sink_url: str, role: str, node: int) -> dict[str, Any]:
    journal = {"backend": "postgres", "url": pg.url, "schema": pg.schema}
    return gateway_config(
        journal,
        {"web": webhook_channel(f"{sink_url}/hook", width=8)},
        server={"role": role, "node": node},
        smtp={"tenant": "acme", "listen": "127.0.0.1:0"},
    )


async def test_an_api_gateway_takes_messages_and_a_worker_gateway_delivers_them(
    pg_schema: PgTarget,
) -> None:
    async with (
        WebhookSink(SinkOptions()) as sink,
        running_gateway(_config(pg_schema, sink.url, "worker", node=2)) as worker,
        running_gateway(_config(pg_schema, sink.url, "api", node=1)) as api,
    ):
        # Each runs its own parts only.
        assert (api.gateway.delivery, api.gateway.runners) == (None, {})
        assert api.gateway.smtp is not None
        assert worker.gateway.delivery is not None and set(worker.gateway.runners) == {"web"}
        assert worker.gateway.smtp is None

        ids = await api.post(
            [{"channel": "web", "to": f"+1555{i}", "body": "hi"} for i in range(20)]
        )
        assert {id_node(parse_id(i)) for i in ids} == {1}
        await sink.wait_for(20, path="/hook")  # the worker heard of them from the journal
        assert sorted(sink.received("/hook")) == sorted(ids)

        # The sink has answered; the worker commits the outcome just after.
        async def sent() -> bool:
            return (await api.message(ids[0]))["state"] == "sent"

        await eventually(sent, what="the first message recorded as sent")

        # The api gateway shows the channels without delivering on them.
        web = (await api.channels())["web"]
        assert (web["breaker"], web["in_flight"], web["sent"]) == ("none", 0, 0)

        # The worker serves health, readiness and metrics, and none of the message API.
        async with worker.client.post(
            "/v1/messages",
            data=msgspec.json.encode({"channel": "web", "to": "+1", "body": "x"}),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 404
            assert 'server.role = "worker"' in body["error"]["message"]
        for path in ("/v1/channels", f"/v1/messages/{ids[0]}", "/openapi.json"):
            async with worker.client.get(path) as resp:
                assert resp.status == 404, path
        async with worker.client.get("/readyz") as resp:
            assert resp.status == 200
        async with worker.client.get("/metrics") as resp:
            text = await resp.text()
            assert 'sluice_channel_messages_total{channel="web",result="sent"} 20.0' in text
            assert "sluice_journal_commits_total" in text
        async with api.client.get("/metrics") as resp:
            text = await resp.text()
            assert 'sluice_messages_accepted_total{tenant="acme"} 20.0' in text
            assert "sluice_channel_in_flight" not in text  # nothing is delivered here
            assert 'sluice_channel_pending{channel="web"}' in text
