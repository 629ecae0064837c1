"""Broadcasts end to end over each journal: POST /v1/broadcasts through Sluice's HTTP server,
expansion by a real Expander, and the accounting GET shows; pause, resume and cancel with
exact counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fixtures_http import KEY_A, KEY_B, KEY_SMS, Api, FakeClock, expanding, make_config, running_api

from journal_backends import BACKENDS
from sluice.audience.expander import Expander
from sluice.config import AudienceConfig, Config
from sluice.model import State, now_ms, parse_id

pytestmark = pytest.mark.integration


def config(**audience: Any) -> Config:
    """Channels "web" and "sms" are webhook channels here: content is keyed "webhook"."""
    base = make_config()
    return msgspec.structs.replace(
        base,
        audience=AudienceConfig(
            # Expansion goes on only when a test pokes the expander (`until`).
            **{"expansion_chunk": 3, "min_lookahead": 4, "expander_poll_seconds": 60, **audience}
        ),
    )


@pytest.fixture(params=BACKENDS)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path, config(), backend=request.param) as running:
        yield running


async def until(api: Api, expander: Expander, bid: str, done: Any) -> dict[str, Any]:
    """The broadcast's view once `done(view)` holds (after each committed chunk)."""
    async with asyncio.timeout(30):
        while True:
            expander.progressed.clear()
            _, view, _ = await api.call("GET", f"/v1/broadcasts/{bid}")
            if done(view):
                return view
            expander.poke()
            await expander.progressed.wait()


async def subscribers(api: Api, lines: list[dict[str, Any]], key: str = KEY_A) -> None:
    body = "\n".join(msgspec.json.encode(line).decode() for line in lines)
    status, result, _ = await api.call(
        "POST",
        "/v1/subscribers/import",
        key,
        data=body.encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert status == 200 and not result["errors"], result


def hook(i: int) -> str:
    return f"https://example.com/hook/{i}"


BROADCAST = {
    "topics": ["news"],
    "channels": ["sms"],
    "content": {"webhook": {"body": "Hi {{ name }}: {{ headline }}"}},
    "data": {"headline": "storm"},
}


async def post(api: Api, body: Any, key: str = KEY_A, **headers: str) -> tuple[int, Any, Any]:
    return await api.call("POST", "/v1/broadcasts", key, json=body, headers=headers)


def error(body: Any) -> tuple[str, str | None]:
    return body["error"]["code"], body["error"].get("field")


async def test_a_broadcast_is_committed_then_expanded_with_its_choices(api: Api) -> None:
    await subscribers(
        api,
        [
            {"id": "plain", "webhook": hook(1), "attributes": {"name": "Ann"}, "topics": ["news"]},
            {"id": "no-address", "topics": ["news"]},
            {
                "id": "opted",
                "webhook": hook(2),
                "opt_out": {"topics": ["news"]},
                "topics": ["news"],
            },
            {"id": "nameless", "webhook": hook(3), "topics": ["news"]},
            {
                "id": "both",
                "webhook": hook(4),
                "attributes": {"name": "Bo"},
                "topics": ["news", "sport"],
            },
            {"id": "sport", "webhook": hook(5), "attributes": {"name": "Cy"}, "topics": ["sport"]},
            {
                # Opted out of news alone: reached through sport, not lost as a "duplicate".
                "id": "sport-only",
                "webhook": hook(6),
                "attributes": {"name": "Di"},
                "opt_out": {"topics": ["news"]},
                "topics": ["news", "sport"],
            },
        ],
    )
    status, view, _ = await post(api, {**BROADCAST, "topics": ["news", "sport", "news"]})
    assert status == 202, view
    assert view["phase"] == "scheduled" and view["topics"] == ["news", "sport"]
    assert view["audience"] == 9  # 6 on news, 3 on sport: two counted on each
    assert api.gateway.broadcast_pokes == 1
    async with expanding(api) as expander:
        view = await until(api, expander, view["id"], lambda v: v["expanded_at"])
    assert view["examined"] == 9 and view["planned"] == 4
    assert view["suppressed"] == {
        "duplicate": 1,
        "missing_variable": 1,
        "no_address": 1,
        "opted_out": 2,
    }
    assert view["counts"]["queued"] == 4 and view["phase"] == "sending"
    assert view["remaining"] == 4
    bodies = {}
    for i, name in ((1, "Ann"), (4, "Bo"), (5, "Cy"), (6, "Di")):
        _, page, _ = await api.call("GET", f"/v1/messages?to={hook(i)}")
        (message,) = page["messages"]
        bodies[name] = message["body"]
        assert message["priority"] == "bulk" and message["channel"] == "sms"
    assert bodies == {
        "Ann": "Hi Ann: storm",
        "Bo": "Hi Bo: storm",
        "Cy": "Hi Cy: storm",
        "Di": "Hi Di: storm",
    }
    # Another tenant sees nothing of it.
    status, _, _ = await api.call("GET", f"/v1/broadcasts/{view['id']}", KEY_B)
    assert status == 404


async def test_missing_variables_can_take_defaults(api: Api) -> None:
    await subscribers(api, [{"id": "u1", "webhook": hook(1), "topics": ["news"]}])
    body = {**BROADCAST, "missing_variable": "default", "defaults": {"name": "friend"}}
    _, view, _ = await post(api, body)
    async with expanding(api) as expander:
        view = await until(api, expander, view["id"], lambda v: v["expanded_at"])
    assert view["planned"] == 1 and view["suppressed"] == {}
    _, page, _ = await api.call("GET", f"/v1/messages?to={hook(1)}")
    assert page["messages"][0]["body"] == "Hi friend: storm"


async def test_bad_broadcasts_are_refused_with_the_field(api: Api) -> None:
    await subscribers(api, [{"id": "u1", "webhook": hook(1), "topics": ["news"]}])
    cases = [
        ({**BROADCAST, "topics": ["news", "nope"]}, ("unknown_topic", "topics")),
        ({**BROADCAST, "topics": []}, ("invalid_broadcast", "topics")),
        ({**BROADCAST, "channels": ["fax"]}, ("unknown_channel", "channels[0]")),
        ({**BROADCAST, "content": {"sms": {"body": "x"}}}, ("invalid_broadcast", "channels[0]")),
        ({**BROADCAST, "content": {"fax": {"body": "x"}}}, ("invalid_broadcast", "content.fax")),
        (
            {**BROADCAST, "content": {"webhook": {"body": "line one\n{{ name }"}}},
            ("invalid_template", "content.webhook.body"),
        ),
        ({**BROADCAST, "local_time": "25:00"}, ("invalid_broadcast", "local_time")),
        ({**BROADCAST, "ttl_seconds": 0}, ("invalid_broadcast", "ttl_seconds")),
        ({**BROADCAST, "priority": "asap"}, ("invalid_broadcast", "priority")),
        ({**BROADCAST, "surprise": 1}, ("invalid_broadcast", "surprise")),
        ({**BROADCAST, "send_at": 2**63}, ("invalid_broadcast", "send_at")),
        ({**BROADCAST, "ttl_seconds": 10**16}, ("invalid_broadcast", "ttl_seconds")),
        ({**BROADCAST, "rate": 1e300}, ("invalid_broadcast", "rate")),
        ({**BROADCAST, "from": "a\u0000b"}, ("invalid_broadcast", "from")),
        ({**BROADCAST, "data": {"x": "\u0000"}}, ("invalid_broadcast", "data")),
        (
            {**BROADCAST, "metadata": {str(i): "v" for i in range(40)}},
            ("invalid_broadcast", "metadata"),
        ),
    ]
    for body, expected in cases:
        status, answer, _ = await post(api, body)
        assert (status, error(answer)) == (422, expected), body
    _, answer, _ = await post(
        api, {**BROADCAST, "content": {"webhook": {"body": "line one\n{{ name }"}}}
    )
    assert "line 2" in answer["error"]["message"]
    status, answer, _ = await post(api, {**BROADCAST, "channels": ["web"]}, KEY_SMS)
    assert (status, error(answer)) == (422, ("channel_not_allowed", "channels[0]"))
    status, answer, _ = await api.call("GET", "/v1/broadcasts/not-an-id")
    assert (status, error(answer)) == (404, ("not_found", None))
    assert api.gateway.broadcast_pokes == 0  # nothing was stored


async def test_an_idempotency_key_gives_the_first_broadcast(api: Api) -> None:
    await subscribers(api, [{"id": "u1", "webhook": hook(1), "topics": ["news"]}])
    status, first, _ = await post(api, BROADCAST, **{"Idempotency-Key": "b-1"})
    assert status == 202
    reordered = dict(reversed(list(BROADCAST.items())))  # the same request, written otherwise
    status, again, headers = await post(api, reordered, **{"Idempotency-Key": "b-1"})
    assert status == 202 and again["id"] == first["id"]
    assert headers.get("Idempotent-Replayed") == "true"
    status, answer, _ = await post(
        api, {**BROADCAST, "data": {"headline": "other"}}, **{"Idempotency-Key": "b-1"}
    )
    assert (status, error(answer)) == (422, ("idempotency_key_reused", "Idempotency-Key"))
    _, page, _ = await api.call("GET", "/v1/broadcasts")
    assert [b["id"] for b in page["broadcasts"]] == [first["id"]]


async def test_pause_resume_and_cancel_count_exactly(api: Api) -> None:
    await subscribers(
        api,
        [
            {
                "id": f"u{i:02d}",
                "webhook": hook(i),
                "attributes": {"name": str(i)},
                "topics": ["news"],
            }
            for i in range(10)
        ],
    )
    _, view, _ = await post(api, BROADCAST)
    bid = view["id"]
    async with expanding(api) as expander:
        # min_lookahead 4: expansion stops with a few queued (chunks of 3, one more may be
        # committing), and nothing claims them.
        view = await until(api, expander, bid, lambda v: v["counts"]["queued"] >= 4)
        status, paused, _ = await api.call("POST", f"/v1/broadcasts/{bid}/pause")
        assert status == 200 and paused["phase"] == "paused"
        assert paused["held"] == paused["counts"]["queued"] >= view["counts"]["queued"]
        journal = api.gateway.journal
        assert await journal.claim("sms", 100, 100, 9, now_ms(), 30_000) == []
        status, resumed, _ = await api.call("POST", f"/v1/broadcasts/{bid}/resume")
        assert resumed["released"] == paused["held"]
        claimed = await journal.claim("sms", 2, 2, 9, now_ms(), 30_000)
        assert len(claimed) == 2 and all(m.body.startswith("Hi ") for m in claimed)
        status, cancelled, _ = await api.call("POST", f"/v1/broadcasts/{bid}/cancel")
        assert cancelled["cancelled"] == paused["held"] - 2
        assert cancelled["counts"]["cancelled"] == paused["held"] - 2
        assert cancelled["counts"]["sending"] == 2 and cancelled["phase"] == "cancelling"
    # Expansion stopped where it was: the members not yet read never become messages.
    _, final, _ = await api.call("GET", f"/v1/broadcasts/{bid}")
    assert final["planned"] == paused["held"] and final["examined"] < 10
    assert final["status"] == "cancelled" and final["remaining"] == 2  # the two in flight
    state = await journal.get("a", claimed[0].id)
    assert state is not None and state.state == State.SENDING
    assert parse_id(bid) > 0


async def test_a_rate_caps_what_expansion_plans(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    cfg = config(expansion_chunk=5, min_lookahead=1000)
    async with running_api(tmp_path, cfg) as api:
        await subscribers(
            api,
            [
                {
                    "id": f"u{i:02d}",
                    "webhook": hook(i),
                    "attributes": {"name": "x"},
                    "topics": ["news"],
                }
                for i in range(40)
            ],
        )
        _, view, _ = await post(api, {**BROADCAST, "rate": 10})
        async with expanding(api, clock) as expander:
            # A second's burst at the start: 10 members, then nothing until time passes.
            view = await until(api, expander, view["id"], lambda v: v["examined"] >= 10)
            for _ in range(5):  # the expander looks again every 50 ms: it stays put
                await asyncio.sleep(0.06)
                assert (await api.call("GET", f"/v1/broadcasts/{view['id']}"))[1]["examined"] == 10
            clock.now = 2.0  # two seconds later: 20 more
            view = await until(api, expander, view["id"], lambda v: v["examined"] >= 30)
            await asyncio.sleep(0.2)
            _, view, _ = await api.call("GET", f"/v1/broadcasts/{view['id']}")
            assert view["examined"] == 30
