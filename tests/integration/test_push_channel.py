"""Live push end to end: a token minted over the API, a real WebSocket client (the
`websockets` library's asyncio client) on the push listener, messages posted to the push
channel, acknowledgements making them delivered; and every refusal with its close code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from harness import KEY, OTHER_KEY, Running, eventually, gateway_config, running_gateway
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.integration

SECRET = "push-secret"


def push_config(journal_section: dict[str, Any], **push: Any) -> dict[str, Any]:
    channels = {"live": {"type": "push", "width": 64}}
    return gateway_config(
        journal_section,
        channels,
        push={"listen": "127.0.0.1:0", "token_secret": SECRET, **push},
    )


async def mint(run: Running, subscriber: str, key: str = KEY, **extra: Any) -> dict[str, Any]:
    async with run.client.post(
        "/v1/push/tokens",
        data=msgspec.json.encode({"subscriber": subscriber, **extra}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return dict(body)


def ws_url(run: Running, path: str) -> str:
    return f"ws://127.0.0.1:{run.gateway.push_port}{path}"


async def connected(run: Running, subscriber: str, key: str = KEY) -> ClientConnection:
    token = await mint(run, subscriber, key)
    client = await connect(ws_url(run, token["url"]))
    tenant = "acme" if key == KEY else "other"
    await eventually(
        lambda: run.gateway.push_presence(tenant, subscriber, None) > 0, what="attached"
    )
    return client


async def closed_with(client: ClientConnection) -> tuple[int | None, str | None]:
    try:
        async with asyncio.timeout(10):
            async for _ in client:
                pass
    except ConnectionClosed:
        pass
    return client.close_code, client.close_reason


@pytest.fixture
async def run(journal_section: dict[str, Any]) -> AsyncIterator[Running]:
    async with running_gateway(push_config(journal_section)) as running:
        yield running


async def test_a_pushed_message_is_sent_then_delivered_once_acknowledged(run: Running) -> None:
    client = await connected(run, "u1")
    async with client:
        [message_id] = await run.post([{"channel": "live", "to": "u1", "body": "hello"}])
        async with asyncio.timeout(10):
            frame = json.loads(await client.recv())
        assert frame == {"type": "message", "id": message_id, "body": "hello"}
        await eventually(
            lambda: _state(run, message_id, "sent"), what="sent before the acknowledgement"
        )
        await client.send(json.dumps({"type": "ack", "ids": [message_id]}))
        await eventually(lambda: _state(run, message_id, "delivered"), what="delivered")
        record = await run.message(message_id)
        states = [e["state"] for e in record["timeline"]]
        assert states[-2:] == ["sent", "delivered"]
        assert record["timeline"][-2]["detail"] == "pushed to 1 connection"


async def _state(run: Running, message_id: str, state: str) -> bool:
    return (await run.message(message_id))["state"] == state


async def test_no_live_connection_keeps_the_push_for_a_replay_and_presence_counts(
    run: Running,
) -> None:
    [message_id] = await run.post([{"channel": "live", "to": "nobody", "body": "x"}])
    await eventually(lambda: _state(run, message_id, "sent"), what="sent")
    record = await run.message(message_id)
    assert record["timeline"][-1]["detail"].startswith("no live connection")
    first = await connected(run, "u2")
    second = await connected(run, "u2")
    async with run.client.get(
        "/v1/push/presence?subscriber=u2", headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        assert await resp.json() == {"connections": 2, "subscriber": "u2"}
    await first.close()
    await eventually(lambda: run.gateway.push_presence("acme", "u2", None) == 1, what="1 left")
    [message_id] = await run.post([{"channel": "live", "to": "u2", "body": "y"}])
    async with asyncio.timeout(10):
        assert json.loads(await second.recv())["id"] == message_id
    await second.close()


async def test_bad_and_expired_tokens_and_another_tenants_subscriber(run: Running) -> None:
    bad = await connect(ws_url(run, "/v1/push/ws?token=abc.def"))
    assert (await closed_with(bad))[0] == 4001
    token = (await mint(run, "u3"))["url"]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    client = await connect(ws_url(run, forged))
    code, reason = await closed_with(client)
    assert (code, reason) == (4001, "the token's signature does not match")
    # A token of tenant "other" for a subscriber named like one of acme's reads nothing of acme.
    intruder = await connected(run, "u3", key=OTHER_KEY)
    owner = await connected(run, "u3")
    [message_id] = await run.post([{"channel": "live", "to": "u3", "body": "secret"}])
    async with asyncio.timeout(10):
        assert json.loads(await owner.recv())["id"] == message_id
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await intruder.recv()
    await intruder.close()
    await owner.close()


async def test_expired_token_is_refused_with_4002(journal_section: dict[str, Any]) -> None:
    async with running_gateway(push_config(journal_section)) as run:
        token = await mint(run, "u4", ttl_seconds=0.05)
        await asyncio.sleep(0.1)  # the token's own clock: it must have passed its expiry
        client = await connect(ws_url(run, token["url"]))
        assert await closed_with(client) == (4002, "the token has expired")


async def test_malformed_oversized_and_binary_frames_close_only_their_connection(
    journal_section: dict[str, Any],
) -> None:
    async with running_gateway(push_config(journal_section, max_frame_bytes=256)) as run:
        bystander = await connected(run, "calm")
        cases = [
            ("not json", 1003),
            (json.dumps({"type": "subscribe"}), 1003),
            (b"\x00\x01", 1003),
            ("x" * 1000, 1009),
        ]
        for payload, code in cases:
            client = await connected(run, "rude")
            await client.send(payload)
            assert (await closed_with(client))[0] == code, payload
        [message_id] = await run.post([{"channel": "live", "to": "calm", "body": "fine"}])
        async with asyncio.timeout(10):
            assert json.loads(await bystander.recv())["id"] == message_id
        await bystander.close()


async def test_a_client_over_its_frame_rate_or_connection_limit_is_closed(
    journal_section: dict[str, Any],
) -> None:
    config = push_config(
        journal_section, max_client_frames_per_second=5, max_connections_per_subscriber=2
    )
    async with running_gateway(config) as run:
        chatty = await connected(run, "chatty")
        for _ in range(10):
            await chatty.send(json.dumps({"type": "ack", "ids": []}))
        assert (await closed_with(chatty))[0] == 1008
        one, two = await connected(run, "many"), await connected(run, "many")
        token = await mint(run, "many")
        three = await connect(ws_url(run, token["url"]))
        code, reason = await closed_with(three)
        assert code == 4029 and reason is not None and "max_connections_per_subscriber" in reason
        await one.close()
        await two.close()


async def test_a_slow_consumer_is_cut_off_at_its_buffer_bound(
    journal_section: dict[str, Any],
) -> None:
    config = push_config(journal_section, max_buffer_bytes=1024)
    async with running_gateway(config) as run:
        token = await mint(run, "slow")
        # A client that never reads: its socket's receive buffer fills, then the server's.
        reader, writer = await asyncio.open_connection("127.0.0.1", run.gateway.push_port)
        writer.write(
            (
                f"GET {token['url']} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        await eventually(
            lambda: run.gateway.push_presence("acme", "slow", None) == 1, what="attached"
        )
        body = "z" * 60_000
        for _ in range(20):
            await run.post([{"channel": "live", "to": "slow", "body": body}] * 10)
            hub = run.gateway.push_hub
            assert hub is not None
            if hub.stats().slow_consumers:
                break
        await eventually(lambda: hub.stats().slow_consumers == 1, what="cut off")
        assert run.gateway.push_presence("acme", "slow", None) == 0
        writer.close()


async def test_a_reconnecting_client_gets_exactly_what_it_missed_from_the_journal(
    run: Running,
) -> None:
    token = await mint(run, "r1")
    client = await connected_with(run, token["url"], "r1")
    [first] = await run.post([{"channel": "live", "to": "r1", "body": "one"}])
    async with asyncio.timeout(10):
        assert json.loads(await client.recv())["id"] == first
    await client.close()
    await eventually(lambda: run.gateway.push_presence("acme", "r1", None) == 0, what="gone")
    missed = await run.post(
        [{"channel": "live", "to": "r1", "body": f"missed {i}"} for i in range(3)]
    )
    for message_id in missed:
        await eventually(lambda m=message_id: _state(run, m, "sent"), what="no connection")
    again = await connected_with(run, f"{token['url']}&last_id={first}", "r1")
    async with asyncio.timeout(10):
        got = [json.loads(await again.recv()) for _ in missed]
    assert [f["id"] for f in got] == missed
    assert [f["body"] for f in got] == ["missed 0", "missed 1", "missed 2"]
    [live] = await run.post([{"channel": "live", "to": "r1", "body": "live"}])
    async with asyncio.timeout(10):
        assert json.loads(await again.recv())["id"] == live
    await again.send(json.dumps({"type": "ack", "ids": [*missed, live]}))
    for message_id in [*missed, live]:
        await eventually(lambda m=message_id: _state(run, m, "delivered"), what="delivered")
    await again.close()


async def test_a_last_id_beyond_the_window_is_told_it_missed_and_a_bad_one_is_refused(
    run: Running,
) -> None:
    from sluice.model import first_id_at, format_id, now_ms

    token = await mint(run, "r2")
    [recent] = await run.post([{"channel": "live", "to": "r2", "body": "recent"}])
    await eventually(lambda: _state(run, recent, "sent"), what="no connection")
    old = format_id(first_id_at(now_ms() - 2 * 3600 * 1000))
    client = await connected_with(run, f"{token['url']}&last_id={old}", "r2")
    async with asyncio.timeout(10):
        assert json.loads(await client.recv()) == {"type": "missed"}
        assert json.loads(await client.recv())["id"] == recent
    await client.close()
    bad = await connect(ws_url(run, f"{token['url']}&last_id=nonsense"))
    code, reason = await closed_with(bad)
    assert code == 4000 and reason is not None and reason.startswith("last_id:")


async def connected_with(run: Running, path: str, subscriber: str) -> ClientConnection:
    before = run.gateway.push_presence("acme", subscriber, None)
    client = await connect(ws_url(run, path))
    await eventually(
        lambda: run.gateway.push_presence("acme", subscriber, None) > before, what="attached"
    )
    return client


async def test_token_requests_are_checked_and_documented(run: Running) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, field in [
        ({"subscriber": "u1", "ttl_seconds": 10**9}, "ttl_seconds"),
        ({"subscriber": "no spaces"}, "subscriber"),
        ({"subscriber": "u1", "topics": ["x"] * 65}, "topics"),
        ({}, "subscriber"),
    ]:
        async with run.client.post(
            "/v1/push/tokens", data=msgspec.json.encode(body), headers=headers
        ) as resp:
            answer = await resp.json()
            assert resp.status == 422, answer
            assert answer["error"]["field"] == field, answer
    async with run.client.post("/v1/push/tokens", data=b"{}") as resp:
        assert resp.status == 401
    async with run.client.get("/v1/push/presence", headers=headers) as resp:
        assert resp.status == 400
    async with run.client.get("/openapi.json") as resp:
        doc = await resp.json()
    assert {"/v1/push/tokens", "/v1/push/presence"} <= set(doc["paths"])
    assert (
        "push.max_token_ttl_seconds" in doc["components"]["schemas"]["TokenRequest"]["description"]
    )
