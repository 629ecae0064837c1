"""The HTTP API end to end: a real uvicorn server, a real SQLite journal, an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fixtures_http import (
    KEY_A,
    KEY_B,
    KEY_SMS,
    Api,
    FakeClock,
    make_config,
    open_gateway,
    running_api,
    serve,
)

from journal_backends import BACKENDS
from sluice.ingress.http.app import build_app
from sluice.model import ID_LENGTH, parse_id

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The API over each journal: what a producer sees must not depend on the backend."""
    async with running_api(tmp_path, backend=request.param) as running:
        yield running


def msg(to: str = "+447900000001", **fields: Any) -> dict[str, Any]:
    return {"channel": "web", "to": to, "body": "hello", **fields}


async def submit(api: Api, payload: Any, key: str = KEY_A, **kwargs: Any) -> tuple[int, Any, Any]:
    return await api.call("POST", "/v1/messages", key, json=payload, **kwargs)


async def stored(api: Api) -> int:
    return sum(api.gateway.journal.pending().values())


# ---------------------------------------------------------------------------------- submit


async def test_single_submit_then_get_shows_queued_with_timeline(api: Api) -> None:
    status, body, _ = await submit(
        api,
        msg(priority="urgent", metadata={"order": "42"}, **{"from": "ACME"}),
    )
    assert status == 202
    assert body["replayed"] is False
    [message_id] = body["ids"]
    assert len(message_id) == ID_LENGTH

    status, view, _ = await api.call("GET", f"/v1/messages/{message_id}")
    assert status == 200
    assert view["id"] == message_id
    assert (view["channel"], view["to"], view["from"], view["body"]) == (
        "web",
        "+447900000001",
        "ACME",
        "hello",
    )
    assert view["priority"] == "urgent"
    assert view["state"] == "queued"
    assert view["attempts"] == 0
    assert view["metadata"] == {"order": "42"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", view["created_at"])
    assert [entry["state"] for entry in view["timeline"]] == ["accepted", "queued"]
    assert all("outcome" not in entry for entry in view["timeline"])  # nulls are omitted
    assert "expires_at" not in view and "callback_url" not in view


async def test_batch_submit_returns_ids_in_order(api: Api) -> None:
    status, body, _ = await submit(
        api, {"messages": [msg(f"+4479000000{i:02d}", body=f"n{i}") for i in range(5)]}
    )
    assert status == 202
    assert len(body["ids"]) == 5
    assert [parse_id(i) for i in body["ids"]] == sorted(parse_id(i) for i in body["ids"])
    for i, message_id in enumerate(body["ids"]):
        status, view, _ = await api.call("GET", f"/v1/messages/{message_id}")
        assert (status, view["body"], view["state"]) == (200, f"n{i}", "queued")
    assert await stored(api) == 5


async def test_times_round_trip(api: Api) -> None:
    status, body, _ = await submit(
        api,
        msg(not_before="2999-01-01T10:00:00+02:00", expires_at=32_503_716_000_000),
    )
    assert status == 202
    _, view, _ = await api.call("GET", f"/v1/messages/{body['ids'][0]}")
    assert view["not_before"] == "2999-01-01T08:00:00.000Z"
    assert view["expires_at"] == "3000-01-01T10:00:00.000Z"


async def test_batch_over_max_batch_is_413(tmp_path: Path) -> None:
    async with running_api(tmp_path, make_config(limits={"max_batch": 3})) as api:
        status, body, _ = await submit(api, {"messages": [msg() for _ in range(4)]})
        assert status == 413
        assert body["error"]["code"] == "batch_too_large"
        assert "3" in body["error"]["message"] and "max_batch" in body["error"]["message"]
        assert await stored(api) == 0
        status, _, _ = await submit(api, {"messages": [msg() for _ in range(3)]})
        assert status == 202


async def test_malformed_json_is_400_naming_the_position(api: Api) -> None:
    status, body, _ = await api.call(
        "POST",
        "/v1/messages",
        data=b'{"channel": "web", "to": }',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert body["error"]["code"] == "malformed_json"
    assert "byte" in body["error"]["message"]


async def test_wrong_type_is_422_with_field_path(api: Api) -> None:
    status, body, _ = await submit(api, {"messages": [msg(), msg(), msg(), msg(priority=5)]})
    assert status == 422
    assert body["error"]["code"] == "invalid_message"
    assert body["error"]["field"] == "messages[3].priority"
    assert await stored(api) == 0


async def test_unknown_field_is_422_naming_it(api: Api) -> None:
    status, body, _ = await submit(api, msg(subject="hi"))
    assert status == 422
    assert body["error"]["field"] == "subject"
    status, body, _ = await submit(api, {"messages": [msg(), msg(colour="red")]})
    assert (status, body["error"]["field"]) == (422, "messages[1].colour")


async def test_rejected_batch_stores_nothing(api: Api) -> None:
    status, body, _ = await submit(api, {"messages": [msg(), msg(), msg(to="")]})
    assert status == 422
    assert body == {
        "error": {
            "code": "invalid_message",
            "message": body["error"]["message"],
            "field": "messages[2].to",
        }
    }
    assert await stored(api) == 0
    assert api.gateway.submits == 0


async def test_unknown_channel_is_422(api: Api) -> None:
    status, body, _ = await submit(api, msg(channel="pigeon"))
    assert status == 422
    assert body["error"]["code"] == "unknown_channel"
    assert body["error"]["field"] == "channel"


async def test_channel_not_allowed_for_tenant_is_422(api: Api) -> None:
    # Documented choice: a channel the tenant may not use is a 422 on the field, like an
    # unknown one, so a batch is refused as a whole with the message that names it.
    status, body, _ = await submit(api, {"messages": [msg(channel="sms"), msg()]}, key=KEY_SMS)
    assert status == 422
    assert body["error"]["code"] == "channel_not_allowed"
    assert body["error"]["field"] == "messages[1].channel"
    status, _, _ = await submit(api, msg(channel="sms"), key=KEY_SMS)
    assert status == 202


async def test_expiry_checks(api: Api) -> None:
    status, body, _ = await submit(api, msg(expires_at="2001-01-01T00:00:00Z"))
    assert (status, body["error"]["field"]) == (422, "expires_at")
    status, body, _ = await submit(api, msg(expires_at=32_503_680_000_000, ttl_seconds=60))
    assert (status, body["error"]["field"]) == (422, "ttl_seconds")
    status, body, _ = await submit(
        api, msg(not_before="2999-01-02T00:00:00Z", expires_at="2999-01-01T00:00:00Z")
    )
    assert (status, body["error"]["field"]) == (422, "expires_at")
    status, body, _ = await submit(api, msg(not_before="2999-01-02T00:00:00"))  # no zone
    assert (status, body["error"]["field"]) == (422, "not_before")


async def test_oversize_body_by_content_length_is_413(tmp_path: Path) -> None:
    config = make_config(limits={"max_request_bytes": 10_000})
    async with running_api(tmp_path, config) as api:
        payload = json.dumps(msg(body="x" * 20_000)).encode()
        status, body, _ = await api.call(
            "POST", "/v1/messages", data=payload, headers={"Content-Type": "application/json"}
        )
        assert status == 413
        assert body["error"]["code"] == "request_too_large"
        assert "10000" in body["error"]["message"]
        # The connection stays usable: the next request on the session works.
        status, _, _ = await submit(api, msg())
        assert status == 202
        assert await stored(api) == 1


async def test_oversize_chunked_body_is_413(tmp_path: Path) -> None:
    config = make_config(limits={"max_request_bytes": 10_000})
    async with running_api(tmp_path, config) as api:

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"channel": "web", "to": "x", "body": "'
            for _ in range(30):
                yield b"y" * 1000
            yield b'"}'

        status, body, _ = await api.call(
            "POST", "/v1/messages", data=chunks(), headers={"Content-Type": "application/json"}
        )
        assert status == 413
        assert body["error"]["code"] == "request_too_large"
        assert await stored(api) == 0


async def test_small_chunked_body_is_accepted(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"channel": "web", '
        yield b'"to": "x", "body": "chunked"}'

    status, body, _ = await api.call(
        "POST", "/v1/messages", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert status == 202, body


async def test_wrong_content_type_is_415(api: Api) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/messages", data=json.dumps(msg()), headers={"Content-Type": "text/plain"}
    )
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    status, _, _ = await api.call(
        "POST",
        "/v1/messages",
        data=json.dumps(msg()),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 202


# One server per test costs ~0.2 s (uvicorn's shutdown sleeps), so cases share one.
async def test_missing_or_bad_key_is_401(api: Api) -> None:
    for authorization in [None, "Bearer", "Bearer nope", f"Basic {KEY_A}", KEY_A, "Bearer  "]:
        headers = {} if authorization is None else {"Authorization": authorization}
        for method, path in [
            ("POST", "/v1/messages"),
            ("GET", "/v1/messages?to=x"),
            ("GET", "/v1/messages/0000000000000"),
            ("DELETE", "/v1/messages/0000000000000"),
            ("GET", "/v1/channels"),
        ]:
            status, body, response_headers = await api.call(
                method, path, key=None, headers=headers, json=msg()
            )
            assert status == 401, (authorization, method, path)
            assert body["error"]["code"] == "unauthorized"
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
    assert await stored(api) == 0


async def test_tenant_isolation(api: Api) -> None:
    _, body, _ = await submit(api, msg(to="shared-recipient"))
    [message_id] = body["ids"]
    status, error, _ = await api.call("GET", f"/v1/messages/{message_id}", key=KEY_B)
    assert (status, error["error"]["code"]) == (404, "not_found")
    status, page, _ = await api.call("GET", "/v1/messages?to=shared-recipient", key=KEY_B)
    assert (status, page) == (200, {"messages": [], "next_cursor": None})
    status, _, _ = await api.call("DELETE", f"/v1/messages/{message_id}", key=KEY_B)
    assert status == 404
    status, page, _ = await api.call("GET", "/v1/messages?to=shared-recipient", key=KEY_A)
    assert [m["id"] for m in page["messages"]] == [message_id]
    assert "timeline" not in page["messages"][0]


async def test_idempotent_replay_returns_same_ids_and_stores_nothing(api: Api) -> None:
    payload = {"messages": [msg(), msg(to="other")]}
    headers = {"Idempotency-Key": "order-42"}
    status, first, answer_headers = await submit(api, payload, headers=headers)
    assert status == 202 and first["replayed"] is False
    assert "Idempotent-Replayed" not in answer_headers
    assert await stored(api) == 2
    status, again, answer_headers = await submit(api, payload, headers=headers)
    # Answered as the first time was, and marked as a replay.
    assert status == 202
    assert answer_headers["Idempotent-Replayed"] == "true"
    assert again == {"ids": first["ids"], "replayed": True}
    assert await stored(api) == 2
    # The same key from another tenant is another key.
    status, other, _ = await submit(api, payload, key=KEY_B, headers=headers)
    assert status == 202 and other["ids"] != first["ids"]


async def test_idempotent_replay_compares_the_request_not_its_bytes(api: Api) -> None:
    headers = {"Idempotency-Key": "order-43", "Content-Type": "application/json"}
    first = b'{"channel":"web","to":"+447900000001","body":"hello","metadata":{"a":"1","b":"2"}}'
    # The same request: other whitespace, other key order, an escaped character.
    same = (
        b'{ "metadata" : {"b": "2", "a": "1"},\n  "body": "hell\\u006f",'
        b' "to": "+447900000001", "channel": "web" }'
    )
    status, original, _ = await api.call("POST", "/v1/messages", data=first, headers=headers)
    assert status == 202
    status, again, answer_headers = await api.call(
        "POST", "/v1/messages", data=same, headers=headers
    )
    assert (status, again["ids"]) == (202, original["ids"])
    assert answer_headers["Idempotent-Replayed"] == "true"
    assert await stored(api) == 1


async def test_a_nul_character_is_refused_alike_on_both_journals(api: Api) -> None:
    """PostgreSQL text cannot hold U+0000: neither journal is given one, so a producer sees
    the same 422 naming the field whichever journal is behind the API (never a 503)."""
    for field in ("body", "to", "from"):
        status, body, headers = await submit(api, msg(**{field: "a\u0000b"}))
        assert (status, body["error"]["field"]) == (422, field)
        assert "Retry-After" not in headers
    assert await stored(api) == 0


async def test_deep_json_is_422_naming_the_limit(api: Api) -> None:
    raw = b'{"channel": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    status, body, _ = await api.call(
        "POST", "/v1/messages", data=raw, headers={"Content-Type": "application/json"}
    )
    assert (status, body["error"]["code"]) == (422, "too_deep")
    assert "limits.max_json_depth" in body["error"]["message"]


async def test_idempotency_key_reused_with_other_body_is_422(api: Api) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert (await submit(api, msg(), headers=headers))[0] == 202
    status, body, _ = await submit(api, msg(body="different"), headers=headers)
    assert status == 422
    assert body["error"]["code"] == "idempotency_key_reused"
    assert body["error"]["field"] == "Idempotency-Key"
    assert await stored(api) == 1


async def test_idempotency_key_too_long_is_422(tmp_path: Path) -> None:
    async with running_api(tmp_path, make_config(limits={"max_idempotency_key_length": 8})) as api:
        status, body, _ = await submit(api, msg(), headers={"Idempotency-Key": "x" * 9})
        assert (status, body["error"]["code"]) == (422, "invalid_idempotency_key")
        assert (await submit(api, msg(), headers={"Idempotency-Key": "x" * 8}))[0] == 202


# --------------------------------------------------------------------------------- cancel


async def test_cancel_then_cancel_again_answers_the_cancelled_message(api: Api) -> None:
    _, body, _ = await submit(api, msg())
    [message_id] = body["ids"]
    status, answer, _ = await api.call("DELETE", f"/v1/messages/{message_id}")
    assert (status, answer) == (200, {"id": message_id, "state": "cancelled"})
    assert await stored(api) == 0
    # DELETE is idempotent: a second one answers the same, with nothing changed.
    status, answer, _ = await api.call("DELETE", f"/v1/messages/{message_id}")
    assert (status, answer) == (200, {"id": message_id, "state": "cancelled"})
    _, view, _ = await api.call("GET", f"/v1/messages/{message_id}")
    assert view["state"] == "cancelled"
    assert view["timeline"][-1]["state"] == "cancelled"


async def test_cancel_or_get_unknown_id_is_404(api: Api) -> None:
    for text_id in ["0000000000001", "not-an-id", "ZZZZZZZZZZZZZ", "x/y", ""]:
        for method in ("DELETE", "GET"):
            status, body, _ = await api.call(method, f"/v1/messages/{text_id}")
            assert (status, body["error"]["code"]) == (404, "not_found"), (method, text_id)


# -------------------------------------------------------------------------------- listing


async def test_list_by_recipient_pages_with_cursor(api: Api) -> None:
    _, body, _ = await submit(api, {"messages": [msg(to="r1", body=str(i)) for i in range(7)]})
    await submit(api, msg(to="someone-else"))
    expected = list(reversed(body["ids"]))  # newest first
    seen: list[str] = []
    pages = 0
    url = "/v1/messages?to=r1&limit=3"
    while True:
        status, page, _ = await api.call("GET", url)
        assert status == 200
        pages += 1
        seen += [m["id"] for m in page["messages"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/messages?to=r1&limit=3&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == expected


async def test_list_keeps_plus_in_recipient(api: Api) -> None:
    _, body, _ = await submit(api, msg(to="+447900000009"))
    for query in ("to=+447900000009", "to=%2B447900000009"):
        _, page, _ = await api.call("GET", f"/v1/messages?{query}")
        assert [m["id"] for m in page["messages"]] == body["ids"], query
    _, body, _ = await submit(api, msg(to="a b/é"))
    _, page, _ = await api.call("GET", "/v1/messages?to=a%20b%2F%C3%A9")
    assert [m["id"] for m in page["messages"]] == body["ids"]


async def test_list_exactly_one_page_has_no_cursor(api: Api) -> None:
    await submit(api, {"messages": [msg(to="r2") for _ in range(3)]})
    _, page, _ = await api.call("GET", "/v1/messages?to=r2&limit=3")
    assert len(page["messages"]) == 3 and page["next_cursor"] is None


async def test_list_bad_parameters_are_422(api: Api) -> None:
    for query, field in [
        ("", "to"),
        ("to=", "to"),
        ("to=x&limit=0", "limit"),
        ("to=x&limit=abc", "limit"),
        ("to=x&limit=1001", "limit"),
        ("to=x&limit=%C2%B2", "limit"),
        ("to=x&limit=99999999999999999999", "limit"),
        ("to=x&cursor=nope", "cursor"),
        ("to=x&to=y", "to"),
    ]:
        status, body, _ = await api.call("GET", f"/v1/messages?{query}")
        assert status == 422, query
        assert body["error"]["code"] == "invalid_parameter"
        assert body["error"]["field"] == field, query


# ------------------------------------------------------------------------------ admission


async def test_backlog_full_is_429_with_retry_after(tmp_path: Path) -> None:
    config = make_config(limits={"max_backlog": 3, "backlog_retry_after_seconds": 7})
    async with running_api(tmp_path, config) as api:
        assert (await submit(api, {"messages": [msg(), msg()]}))[0] == 202
        status, body, headers = await submit(api, {"messages": [msg(), msg()]})
        assert (status, body["error"]["code"]) == (429, "backlog_full")
        assert headers["Retry-After"] == "7"
        assert await stored(api) == 2
        assert (await submit(api, msg()))[0] == 202
        # Full now: refused before the body is even parsed.
        status, body, headers = await api.call(
            "POST", "/v1/messages", data=b"not json", headers={"Content-Type": "application/json"}
        )
        assert (status, headers["Retry-After"]) == (429, "7")


async def test_tenant_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    config = make_config(tenants={"a": {"rate": 2, "burst": 4}})
    async with running_api(tmp_path, config, clock) as api:
        assert (await submit(api, {"messages": [msg(), msg(), msg()]}))[0] == 202
        status, body, headers = await submit(api, {"messages": [msg(), msg()]})
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert headers["Retry-After"] == "1"  # one token short at 2/s: 0.5 s, rounded up
        assert await stored(api) == 3
        # Other tenants have their own bucket.
        assert (await submit(api, {"messages": [msg(), msg()]}, key=KEY_B))[0] == 202
        assert (await submit(api, msg()))[0] == 202  # the last token
        status, _, headers = await submit(api, msg())
        assert (status, headers["Retry-After"]) == (429, "1")
        clock.now += 0.5
        assert (await submit(api, msg()))[0] == 202
        # A batch larger than the burst can never pass: 413, not an endless 429.
        clock.now += 100
        status, body, _ = await submit(api, {"messages": [msg() for _ in range(5)]})
        assert (status, body["error"]["code"]) == (413, "batch_too_large")
        assert await stored(api) == 7


async def test_invalid_request_spends_no_tokens(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running_api(tmp_path, make_config(tenants={"a": {"rate": 1}}), clock) as api:
        assert (await submit(api, msg(to="")))[0] == 422
        assert (await submit(api, msg()))[0] == 202


# ------------------------------------------------------------------- operational endpoints


async def test_healthz_readyz_metrics(api: Api) -> None:
    status, body, _ = await api.call("GET", "/healthz", key=None)
    assert (status, body) == (200, {"status": "ok"})
    status, body, _ = await api.call("GET", "/readyz", key=None)
    assert status == 200
    api.gateway.is_ready = False
    status, body, _ = await api.call("GET", "/readyz", key=None)
    assert (status, body["error"]["code"]) == (503, "not_ready")
    status, _, _ = await api.call("GET", "/healthz", key=None)
    assert status == 200
    await submit(api, msg())
    async with api.request("GET", "/metrics", key=None) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "sluice_test_accepted_total 1.0" in await response.text()


async def test_without_the_message_api_only_health_readiness_and_metrics_answer(
    tmp_path: Path,
) -> None:
    """What a process of role "worker" serves on its HTTP port."""
    async with (
        open_gateway(tmp_path, make_config()) as gateway,
        serve(build_app(gateway, message_api=False)) as base,
        aiohttp.ClientSession() as session,
    ):
        worker = Api(base, gateway, session)
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _, _ = await worker.call("GET", path, key=None)
            assert status == 200, path
        status, body, _ = await submit(worker, msg())
        assert (status, body["error"]["code"]) == (404, "not_found")
        assert 'server.role = "worker"' in body["error"]["message"]
        for path in ("/v1/messages/06Y4Z5D6CCG00", "/v1/channels", "/openapi.json"):
            status, _, _ = await worker.call("GET", path)
            assert status == 404, path
        assert gateway.submits == 0


async def test_channels_lists_configured_channels(api: Api) -> None:
    await submit(api, msg(channel="sms"))
    status, body, _ = await api.call("GET", "/v1/channels")
    assert status == 200
    by_name = {c["name"]: c for c in body["channels"]}
    assert set(by_name) == {"web", "sms"}
    assert by_name["sms"]["rate"] == 50 and by_name["sms"]["pending"] == 1


async def test_openapi_document_describes_every_route(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/openapi.json", key=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    operations = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert operations == {
        ("/v1/messages", "post"),
        ("/v1/messages", "get"),
        ("/v1/messages/{id}", "get"),
        ("/v1/messages/{id}", "delete"),
        ("/v1/channels", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/subscribers/{id}", "put"),
        ("/v1/subscribers/{id}", "get"),
        ("/v1/subscribers/{id}", "delete"),
        ("/v1/subscribers/import", "post"),
        ("/v1/topics", "post"),
        ("/v1/topics", "get"),
        ("/v1/topics/{name}", "get"),
        ("/v1/topics/{name}", "delete"),
        ("/v1/topics/{name}/subscribers", "post"),
        ("/v1/topics/{name}/unsubscribe", "post"),
        ("/v1/broadcasts", "post"),
        ("/v1/broadcasts", "get"),
        ("/v1/broadcasts/{id}", "get"),
        ("/v1/broadcasts/{id}/pause", "post"),
        ("/v1/broadcasts/{id}/resume", "post"),
        ("/v1/broadcasts/{id}/cancel", "post"),
    }
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearerAuth": []}]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert doc["paths"][path]["get"]["security"] == []
    # Every operation documents its errors with the common error shape.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["operationId"]
            assert {"408", "414", "431", "500"} <= set(operation["responses"])
            if path.startswith("/v1/"):
                assert "401" in operation["responses"], (path, method)
    post = doc["paths"]["/v1/messages"]["post"]["responses"]
    assert {"202", "400", "401", "413", "415", "422", "429"} <= set(post)
    assert "Idempotent-Replayed" in post["202"]["headers"]
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "message"}
    assert doc["components"]["schemas"]["Batch"]["properties"]["messages"]["maxItems"] == 10_000
    _assert_refs_resolve(doc, doc)


def _assert_refs_resolve(node: Any, doc: dict[str, Any]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target: Any = doc
            assert ref.startswith("#/"), ref
            for part in ref[2:].split("/"):
                assert part in target, f"unresolved {ref}"
                target = target[part]
        for value in node.values():
            _assert_refs_resolve(value, doc)
    elif isinstance(node, list):
        for value in node:
            _assert_refs_resolve(value, doc)


# --------------------------------------------------------------------------- the framing


async def test_unknown_path_is_404_and_wrong_method_is_405(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v2/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, headers = await api.call("PUT", "/v1/messages")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    assert set(headers["Allow"].split(", ")) == {"POST", "GET"}
    status, _, headers = await api.call("POST", "/v1/messages/0000000000001")
    assert status == 405
    assert set(headers["Allow"].split(", ")) == {"GET", "DELETE"}
    status, _, headers = await api.call("POST", "/healthz", key=None)
    assert (status, headers["Allow"]) == (405, "GET")


async def test_unexpected_exception_is_500_json_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    api.gateway.get = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="sluice.http"):
        status, body, _ = await api.call("GET", "/v1/messages/0000000000001")
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "boom" not in body["error"]["message"]
    assert any(r.name == "sluice.http" and r.exc_info for r in caplog.records)


async def test_concurrent_submits_share_the_journal(api: Api) -> None:
    results = await asyncio.gather(*(submit(api, msg(to=f"c{i}")) for i in range(50)))
    assert all(status == 202 for status, _, _ in results)
    ids = {body["ids"][0] for _, body, _ in results}
    assert len(ids) == 50
    assert await stored(api) == 50


async def test_lifespan_and_direct_asgi(tmp_path: Path) -> None:
    """The app answers lifespan itself and never lets an error escape to the server."""
    from fixtures_http import open_gateway

    async with open_gateway(tmp_path, make_config()) as gateway:
        app = build_app(gateway)
        events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return events.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]

        # The client goes away mid-body: nothing is sent, nothing is stored.
        sent.clear()
        bodies = [
            {"type": "http.request", "body": b'{"chan', "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive_body() -> dict[str, Any]:
            return bodies.pop(0)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/messages",
            "query_string": b"",
            "headers": [
                (b"authorization", f"Bearer {KEY_A}".encode()),
                (b"content-type", b"application/json"),
            ],
        }
        await app(scope, receive_body, send)
        assert sent == []
        assert gateway.journal.pending() == {}
