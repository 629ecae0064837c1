"""The subscriber and topic endpoints end to end: Sluice's HTTP server, each journal, aiohttp."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from fixtures_http import KEY_A, KEY_B, Api, make_config, open_gateway, running_api, serve

from journal_backends import BACKENDS
from sluice.config import AudienceConfig, Config
from sluice.ingress.http.app import build_app

pytestmark = pytest.mark.integration

_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
NDJSON = {"Content-Type": "application/x-ndjson"}
CSV = {"Content-Type": "text/csv"}


@pytest.fixture(params=BACKENDS)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The API over each journal: what a producer sees must not depend on the backend."""
    async with running_api(tmp_path, backend=request.param) as running:
        yield running


def audience_config(**audience: Any) -> Config:
    """`make_config`'s tenants and channels with these `[audience]` settings."""
    return msgspec.structs.replace(make_config(), audience=AudienceConfig(**audience))


async def put(api: Api, sid: str, body: Any, key: str = KEY_A) -> tuple[int, Any, Any]:
    return await api.call("PUT", f"/v1/subscribers/{sid}", key, json=body)


async def import_(
    api: Api, body: str | bytes, headers: dict[str, str], key: str = KEY_A
) -> tuple[int, Any, Any]:
    data = body.encode() if isinstance(body, str) else body
    return await api.call("POST", "/v1/subscribers/import", key, data=data, headers=headers)


def error(body: Any) -> tuple[str, str | None]:
    return body["error"]["code"], body["error"].get("field")


# ------------------------------------------------------------------------------ subscribers


async def test_put_creates_then_replaces_and_get_shows_it(api: Api) -> None:
    status, view, _ = await put(
        api,
        "u1",
        {
            "phone": "+447700900123",
            "email": "ada@example.com",
            "timezone": "Europe/London",
            "quiet_hours": {"start": "22:00", "end": "07:30"},
            "attributes": {"name": "Ada", "tier": 2},
            "topics": ["news"],
        },
    )
    assert status == 201
    assert view["id"] == "u1"
    assert (view["phone"], view["email"], view["timezone"]) == (
        "+447700900123",
        "ada@example.com",
        "Europe/London",
    )
    assert view["quiet_hours"] == {"start": "22:00", "end": "07:30"}
    assert view["attributes"] == {"name": "Ada", "tier": 2}
    assert view["topics"] == ["news"]
    assert _TIME.fullmatch(view["updated_at"])

    status, got, _ = await api.call("GET", "/v1/subscribers/u1")
    assert (status, got) == (200, view)

    # Replaced: the new record, and the topics it followed are kept (a PUT only adds).
    replacement = {"id": "u1", "email": "ada@example.org", "topics": ["x"]}
    status, view, _ = await put(api, "u1", replacement)
    assert status == 200
    assert view["email"] == "ada@example.org"
    assert "phone" not in view and "quiet_hours" not in view
    assert view["topics"] == ["news", "x"]


async def test_put_refuses_a_different_id_in_the_body(api: Api) -> None:
    status, body, _ = await put(api, "u1", {"id": "u2", "phone": "+1"})
    assert status == 422
    assert error(body) == ("invalid_subscriber", "id")
    status, _, _ = await api.call("GET", "/v1/subscribers/u1")
    assert status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"phone": ""}, "phone"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"opt_out": {"channels": ["fax"]}}, "opt_out.channels"),
        ({"topics": ["bad topic"]}, "topics"),
        ({"phone": 5}, "phone"),
        ({"nickname": "x"}, "nickname"),
    ],
)
async def test_put_refuses_an_invalid_field_naming_it(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, answer, _ = await put(api, "u1", body)
    assert status == 422
    assert error(answer) == ("invalid_subscriber", field)
    assert answer["error"]["message"]


async def test_put_refusals_of_path_body_and_media_type(api: Api) -> None:
    status, body, _ = await put(api, "bad%20id", {})
    assert (status, *error(body)) == (422, "invalid_subscriber", "id")
    status, body, _ = await api.call(
        "PUT", "/v1/subscribers/u1", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert (status, error(body)[0]) == (400, "malformed_json")
    status, body, _ = await api.call(
        "PUT", "/v1/subscribers/u1", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert (status, error(body)[0]) == (415, "unsupported_media_type")
    status, body, _ = await api.call("PATCH", "/v1/subscribers/u1", json={})
    assert (status, error(body)[0]) == (405, "method_not_allowed")
    status, body, _ = await api.call("GET", "/v1/subscribers/u1/more")
    assert (status, error(body)[0]) == (404, "not_found")


async def test_delete_subscriber(api: Api) -> None:
    await put(api, "u1", {"phone": "+1"})
    status, body, _ = await api.call("DELETE", "/v1/subscribers/u1")
    assert (status, body) == (200, {"id": "u1", "deleted": True})
    status, body, _ = await api.call("DELETE", "/v1/subscribers/u1")
    assert (status, error(body)[0]) == (404, "not_found")
    status, body, _ = await api.call("GET", "/v1/subscribers/u1")
    assert (status, error(body)[0]) == (404, "not_found")


async def test_a_tenant_sees_only_its_own(api: Api) -> None:
    await put(api, "u1", {"phone": "+1", "topics": ["news"]})
    status, body, _ = await api.call("GET", "/v1/subscribers/u1", KEY_B)
    assert (status, error(body)[0]) == (404, "not_found")
    status, body, _ = await api.call("DELETE", "/v1/subscribers/u1", KEY_B)
    assert status == 404
    status, body, _ = await api.call("GET", "/v1/topics/news", KEY_B)
    assert status == 404
    status, body, _ = await api.call("GET", "/v1/topics", KEY_B)
    assert (status, body) == (200, {"topics": [], "next": None})
    status, body, _ = await api.call(
        "POST", "/v1/topics/news/subscribers", KEY_B, json={"ids": ["u1"]}
    )
    assert status == 404
    # Tenant b's own u1 is another subscriber.
    status, _, _ = await put(api, "u1", {"email": "b@example.com"}, KEY_B)
    assert status == 201
    _, mine, _ = await api.call("GET", "/v1/subscribers/u1")
    assert mine["phone"] == "+1" and "email" not in mine


async def test_every_endpoint_asks_for_an_api_key(api: Api) -> None:
    for method, path in [
        ("GET", "/v1/subscribers/u1"),
        ("PUT", "/v1/subscribers/u1"),
        ("DELETE", "/v1/subscribers/u1"),
        ("POST", "/v1/subscribers/import"),
        ("POST", "/v1/topics"),
        ("GET", "/v1/topics"),
        ("GET", "/v1/topics/news"),
        ("DELETE", "/v1/topics/news"),
        ("POST", "/v1/topics/news/subscribers"),
        ("POST", "/v1/topics/news/unsubscribe"),
    ]:
        for key in (None, "not-a-key"):
            status, body, _ = await api.call(method, path, key, json={})
            assert (status, error(body)[0]) == (401, "unauthorized"), (method, path, key)


# ----------------------------------------------------------------------------------- import


async def test_ndjson_import_stores_good_lines_and_reports_bad_ones(api: Api) -> None:
    lines = [
        {"id": "u1", "phone": "+447700900001", "topics": ["news"]},
        {"id": "u2", "timezone": "Mars/Olympus"},
        {"id": "u3", "email": "c@example.com", "topics": ["news", "deals"]},
        {"id": "u4", "phone": 7},
        "not json",
        {"id": "u6", "colour": "red"},
        {"id": "u7", "quiet_hours": {"start": "22:00", "end": "7"}},
    ]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    status, result, _ = await import_(api, body, NDJSON)
    assert status == 200, result
    assert (result["lines"], result["created"], result["updated"], result["subscribed"]) == (
        7,
        2,
        0,
        3,
    )
    assert [(e["line"], e.get("field")) for e in result["errors"]] == [
        (2, "timezone"),
        (4, "phone"),
        (5, None),
        (6, "colour"),
        (7, "quiet_hours.end"),
    ]
    assert all(e["message"] for e in result["errors"])
    assert result["errors_not_listed"] == 0
    _, u3, _ = await api.call("GET", "/v1/subscribers/u3")
    assert (u3["email"], u3["topics"]) == ("c@example.com", ["deals", "news"])
    for missing in ("u2", "u4", "u6", "u7"):
        status, _, _ = await api.call("GET", f"/v1/subscribers/{missing}")
        assert status == 404
    _, news, _ = await api.call("GET", "/v1/topics/news")
    assert news["subscribers"] == 2


async def test_reimport_updates_and_blank_lines_are_skipped(api: Api) -> None:
    body = '{"id": "u1", "phone": "+1"}\n\n   \n{"id": "u2", "phone": "+2"}\r\n'
    status, result, _ = await import_(api, body, NDJSON)
    assert (status, result["lines"], result["created"], result["errors"]) == (200, 2, 0 + 2, [])
    body = '\n{"id": "u1", "phone": "+10", "topics": ["t"]}\n{"id": "u3", "bad": 1}\n'
    status, result, _ = await import_(api, body, NDJSON)
    assert (result["lines"], result["created"], result["updated"], result["subscribed"]) == (
        2,
        0,
        1,
        1,
    )
    assert [(e["line"], e["field"]) for e in result["errors"]] == [(3, "bad")]
    _, u1, _ = await api.call("GET", "/v1/subscribers/u1")
    assert (u1["phone"], u1["topics"]) == ("+10", ["t"])


async def test_csv_import_with_bad_lines_bom_and_quoted_fields(api: Api) -> None:
    rows = [
        "id,phone,email,timezone,quiet_start,quiet_end,topics,opt_out,opt_out_topics,"
        "attributes,attr.name",
        'u1,+447700900001,,Europe/Paris,22:00,07:00,news;deals,sms,promo,"{""tier"": 2}",Ada',
        "u2,,,Mars/Olympus,,,,,,,",
        "",
        "u3,,c@example.com,,22:00,,,,,,",
        'u4,,,,,,,fax,,,"Multi',
        'line"',
        "u5,,,,,,,,,{not json,",
        "u6,+2,,,,,news,all,,,Bo",
        "u7,+3",
        "bad id,,,,,,,,,,",
    ]
    body = "\ufeff" + "\r\n".join(rows) + "\r\n"
    status, result, _ = await import_(api, body, CSV)
    assert status == 200, result
    assert [(e["line"], e.get("field")) for e in result["errors"]] == [
        (3, "timezone"),
        (5, "quiet_end"),
        (6, "opt_out"),
        (8, "attributes"),
        (10, None),
        (11, "id"),
    ]
    assert (result["lines"], result["created"], result["subscribed"]) == (8, 2, 3)
    _, u1, _ = await api.call("GET", "/v1/subscribers/u1")
    assert u1["phone"] == "+447700900001" and "email" not in u1
    assert u1["timezone"] == "Europe/Paris"
    assert u1["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    assert u1["opt_out"] == {"channels": ["sms"], "topics": ["promo"]}
    assert u1["attributes"] == {"tier": 2, "name": "Ada"}
    assert u1["topics"] == ["deals", "news"]
    _, u6, _ = await api.call("GET", "/v1/subscribers/u6")
    assert u6["opt_out"] == {"all": True}
    assert u6["attributes"] == {"name": "Bo"}


async def test_csv_unknown_columns_are_named_once_and_nothing_is_stored(api: Api) -> None:
    body = "id,phone,colour,attr.name,size\nu1,+1,red,Ada,L\nu2,+2,blue,Bo,M\n"
    status, result, _ = await import_(api, body, CSV)
    assert status == 422
    assert error(result) == ("invalid_csv", "colour")
    message = result["error"]["message"]
    assert "'colour'" in message and "'size'" in message
    assert "'attr.name'" not in message
    status, _, _ = await api.call("GET", "/v1/subscribers/u1")
    assert status == 404


async def test_csv_header_refusals(api: Api) -> None:
    for body, field in [
        ("phone,email\n+1,a@b.c\n", "id"),
        ("id,phone,phone\nu1,+1,+2\n", "phone"),
    ]:
        status, result, _ = await import_(api, body, CSV)
        assert (status, *error(result)) == (422, "invalid_csv", field)
    status, result, _ = await import_(api, "\n\n", CSV)
    assert (status, error(result)[0]) == (422, "invalid_csv")
    status, result, _ = await import_(api, b"id\nu\xff1\n", CSV)
    assert (status, error(result)[0]) == (400, "bad_request")
    assert "line 2" in result["error"]["message"]


async def test_import_refuses_other_media_types(api: Api) -> None:
    status, result, _ = await import_(api, '{"id": "u1"}', {"Content-Type": "application/json"})
    assert (status, error(result)[0]) == (415, "unsupported_media_type")
    assert "text/csv" in result["error"]["message"]


async def test_an_import_over_max_import_lines_is_413_and_stores_nothing(tmp_path: Path) -> None:
    config = audience_config(max_import_lines=3)
    for backend in BACKENDS:
        async with running_api(tmp_path / backend, config, backend=backend) as api:
            body = "".join(f'{{"id": "u{i}"}}\n\n' for i in range(4))
            status, result, _ = await import_(api, body, NDJSON)
            assert (status, error(result)[0]) == (413, "import_too_large")
            assert "3" in result["error"]["message"]
            assert "audience.max_import_lines" in result["error"]["message"]
            status, result, _ = await import_(
                api, "id\n" + "".join(f"u{i}\n" for i in range(4)), CSV
            )
            assert (status, error(result)[0]) == (413, "import_too_large")
            status, _, _ = await api.call("GET", "/v1/subscribers/u0")
            assert status == 404
            # At the limit (blank lines and the header not counted) it is taken.
            status, result, _ = await import_(api, "id\n\nu0\nu1\nu2\n", CSV)
            assert (status, result["created"]) == (200, 3)
            status, result, _ = await api.call(
                "POST", "/v1/topics/news/subscribers", json={"ids": ["a", "b", "c", "d"]}
            )
            assert (status, *error(result)) == (413, "import_too_large", "ids")


async def test_an_import_over_max_request_bytes_is_413(tmp_path: Path) -> None:
    config = make_config(limits={"max_request_bytes": 1024})
    async with running_api(tmp_path, config) as api:
        body = "".join(f'{{"id": "u{i}", "phone": "+4477009{i:05d}"}}\n' for i in range(100))
        status, result, _ = await import_(api, body, NDJSON)
        assert (status, error(result)[0]) == (413, "request_too_large")
        assert "limits.max_request_bytes" in result["error"]["message"]


async def test_import_errors_past_max_import_errors_are_counted(tmp_path: Path) -> None:
    async with running_api(tmp_path, audience_config(max_import_errors=2)) as api:
        body = "".join('{"id": "bad id"}\n' for _ in range(5)) + '{"id": "ok"}\n'
        status, result, _ = await import_(api, body, NDJSON)
        assert status == 200
        assert [e["line"] for e in result["errors"]] == [1, 2]
        assert (result["errors_not_listed"], result["created"]) == (3, 1)


# ------------------------------------------------------------------------------------ topics


async def test_topics_create_get_list_delete(api: Api) -> None:
    status, body, _ = await api.call("POST", "/v1/topics", json={"name": "news"})
    assert status == 201
    assert (body["name"], body["subscribers"]) == ("news", 0)
    assert _TIME.fullmatch(body["created_at"])
    status, again, _ = await api.call("POST", "/v1/topics", json={"name": "news"})
    assert (status, again) == (200, body)
    status, got, _ = await api.call("GET", "/v1/topics/news")
    assert (status, got) == (200, body)
    for name in ("alpha", "zeta", "mid"):
        await api.call("POST", "/v1/topics", json={"name": name})

    status, page, _ = await api.call("GET", "/v1/topics?limit=2")
    assert status == 200
    assert ([t["name"] for t in page["topics"]], page["next"]) == (["alpha", "mid"], "mid")
    _, page, _ = await api.call("GET", f"/v1/topics?limit=2&after={page['next']}")
    assert ([t["name"] for t in page["topics"]], page["next"]) == (["news", "zeta"], None)
    _, page, _ = await api.call("GET", "/v1/topics")
    assert [t["name"] for t in page["topics"]] == ["alpha", "mid", "news", "zeta"]

    await put(api, "u1", {"phone": "+1", "topics": ["news"]})
    status, body, _ = await api.call("DELETE", "/v1/topics/news")
    assert (status, body) == (200, {"name": "news", "deleted": True})
    for method in ("GET", "DELETE"):
        status, body, _ = await api.call(method, "/v1/topics/news")
        assert (status, error(body)[0]) == (404, "not_found")
    _, u1, _ = await api.call("GET", "/v1/subscribers/u1")
    assert u1["topics"] == []  # the subscriber stays, its subscription goes


async def test_topic_refusals(api: Api) -> None:
    status, body, _ = await api.call("POST", "/v1/topics", json={"name": "no spaces"})
    assert (status, *error(body)) == (422, "invalid_topic", "name")
    status, body, _ = await api.call("POST", "/v1/topics", json={"title": "x"})
    assert (status, error(body)[0]) == (422, "invalid_topic")
    status, body, _ = await api.call(
        "POST", "/v1/topics", data=b"name=x", headers={"Content-Type": "text/plain"}
    )
    assert (status, error(body)[0]) == (415, "unsupported_media_type")
    for query in ("limit=0", "limit=1001", "limit=x", "limit=1&limit=2"):
        status, body, _ = await api.call("GET", f"/v1/topics?{query}")
        assert (status, *error(body)) == (422, "invalid_parameter", "limit"), query
    status, body, _ = await api.call("PUT", "/v1/topics", json={"name": "x"})
    assert (status, error(body)[0]) == (405, "method_not_allowed")
    status, body, _ = await api.call("GET", "/v1/topics/news/other")
    assert (status, error(body)[0]) == (404, "not_found")


async def test_subscribe_and_unsubscribe_by_id(api: Api) -> None:
    await put(api, "u1", {"phone": "+1"})
    await put(api, "u2", {"phone": "+2", "topics": ["news"]})
    status, body, _ = await api.call(
        "POST", "/v1/topics/news/subscribers", json={"ids": ["u1", "u2", "ghost"]}
    )
    assert (status, body) == (200, {"added": 1, "already": 1, "unknown": ["ghost"]})
    _, topic, _ = await api.call("GET", "/v1/topics/news")
    assert topic["subscribers"] == 2
    status, body, _ = await api.call(
        "POST", "/v1/topics/news/unsubscribe", json={"ids": ["u1", "ghost"]}
    )
    assert (status, body) == (200, {"removed": 1})
    _, u1, _ = await api.call("GET", "/v1/subscribers/u1")
    assert u1["topics"] == []
    for action in ("subscribers", "unsubscribe"):
        path = f"/v1/topics/nothing/{action}"
        status, body, _ = await api.call("POST", path, json={"ids": ["u1"]})
        assert (status, error(body)[0]) == (404, "not_found"), action
        status, body, _ = await api.call("POST", "/v1/topics/news/" + action, json={"ids": "u1"})
        assert (status, *error(body)) == (422, "invalid_request", "ids"), action
        status, body, _ = await api.call(
            "POST", "/v1/topics/news/" + action, json={"ids": ["u1", "bad id"]}
        )
        assert (status, *error(body)) == (422, "invalid_request", "ids[1]"), action


async def test_import_is_a_subscriber_id_too(api: Api) -> None:
    status, view, _ = await put(api, "import", {"phone": "+1"})
    assert (status, view["id"]) == (201, "import")
    status, view, _ = await api.call("GET", "/v1/subscribers/import")
    assert (status, view["phone"]) == (200, "+1")
    status, body, _ = await api.call("DELETE", "/v1/subscribers/import")
    assert (status, body) == (200, {"id": "import", "deleted": True})
    status, body, headers = await api.call("POST", "/v1/subscribers/u1", json={})
    assert (status, error(body)[0]) == (405, "method_not_allowed")
    assert set(headers["Allow"].split(", ")) == {"GET", "PUT", "DELETE"}


async def test_an_import_of_max_import_lines_is_one_transaction(api: Api) -> None:
    body = "".join(
        f'{{"id": "u{i}", "phone": "+4477009{i:05d}", "topics": ["news"]}}\n' for i in range(10_000)
    )
    status, result, _ = await import_(api, body, NDJSON)
    assert status == 200
    assert (result["lines"], result["created"], result["subscribed"], result["errors"]) == (
        10_000,
        10_000,
        10_000,
        [],
    )
    _, news, _ = await api.call("GET", "/v1/topics/news")
    assert news["subscribers"] == 10_000


async def test_a_later_record_with_the_same_id_wins(api: Api) -> None:
    body = "id,phone,topics\nu1,+1,a\nu1,+2,b\n"
    status, result, _ = await import_(api, body, CSV)
    assert (status, result["lines"], result["created"], result["errors"]) == (200, 2, 1, [])
    _, u1, _ = await api.call("GET", "/v1/subscribers/u1")
    assert u1["phone"] == "+2"
    # The later record, and the topics of both: whatever the requests' boundaries.
    assert u1["topics"] == ["a", "b"]


async def test_values_msgpack_cannot_hold_refuse_the_line_not_the_import(api: Api) -> None:
    huge = 123456789012345678901234567890
    lines = [
        json.dumps({"id": "big", "attributes": {"n": huge}}),
        json.dumps({"id": "fine"}),
    ]
    status, result, _ = await import_(api, "\n".join(lines), NDJSON)
    assert status == 200
    assert [(e["line"], e["field"]) for e in result["errors"]] == [(1, "attributes")]
    assert result["created"] == 1
    status, body, _ = await put(api, "big", {"attributes": {"n": huge}})
    assert (status, *error(body)) == (422, "invalid_subscriber", "attributes")
    deep = '"' + "[" * 5000 + "]" * 5000 + '"'
    status, result, _ = await import_(api, f"id,attributes\ndeep,{deep}\nok,\n", CSV)
    assert status == 200
    assert [(e["line"], e["field"]) for e in result["errors"]] == [(2, "attributes")]
    assert result["created"] == 1


async def test_names_that_are_no_ids_name_nothing_on_either_journal(api: Api) -> None:
    """PostgreSQL text cannot hold U+0000: such a name never reaches a journal."""
    for method, path in (
        ("GET", "/v1/subscribers/a%00b"),
        ("DELETE", "/v1/subscribers/a%00b"),
        ("GET", "/v1/topics/x%00"),
        ("DELETE", "/v1/topics/x%00"),
    ):
        status, body, _ = await api.call(method, path)
        assert (status, error(body)[0]) == (404, "not_found"), (method, path)
    status, body, _ = await api.call("POST", "/v1/topics/x%00/subscribers", json={"ids": ["u1"]})
    assert status == 404
    status, body, _ = await api.call("GET", "/v1/topics?after=%00")
    assert (status, *error(body)) == (422, "invalid_parameter", "after")


async def test_opt_out_lists_are_bounded(tmp_path: Path) -> None:
    async with running_api(tmp_path, audience_config(max_topics=3)) as api:
        status, body, _ = await put(api, "u1", {"opt_out": {"topics": ["a", "b", "c", "d"]}})
        assert (status, *error(body)) == (422, "invalid_subscriber", "opt_out.topics")
        status, body, _ = await put(api, "u1", {"opt_out": {"topics": ["a", "b", "c"]}})
        assert status == 201


async def test_an_import_of_far_too_many_lines_is_refused_before_it_is_parsed(
    tmp_path: Path,
) -> None:
    async with running_api(tmp_path, audience_config(max_import_lines=10)) as api:
        status, body, _ = await import_(api, "\n" * 100 + '{"id": "u1"}', NDJSON)
        assert (status, error(body)[0]) == (413, "import_too_large")
        assert "audience.max_import_lines" in body["error"]["message"]
        status, _, _ = await api.call("GET", "/v1/subscribers/u1")
        assert status == 404


async def test_a_csv_with_an_open_quote_is_400_naming_the_line(api: Api) -> None:
    status, result, _ = await import_(api, 'id,phone\nu1,+1\nu2,"+2\n', CSV)
    assert (status, error(result)[0]) == (400, "bad_request")
    assert "line" in result["error"]["message"]
    status, _, _ = await api.call("GET", "/v1/subscribers/u1")
    assert status == 404


async def test_openapi_document_states_the_audience_limits(tmp_path: Path) -> None:
    config = audience_config(max_import_lines=500, max_import_errors=7, max_page_size=50)
    async with running_api(tmp_path, config) as api:
        _, doc, _ = await api.call("GET", "/openapi.json", key=None)
    schemas = doc["components"]["schemas"]
    assert schemas["SubscriberIds"]["properties"]["ids"]["maxItems"] == 500
    assert schemas["ImportResult"]["properties"]["errors"]["maxItems"] == 7
    [_, limit] = doc["paths"]["/v1/topics"]["get"]["parameters"]
    assert limit["schema"]["maximum"] == 50
    assert "500" in doc["paths"]["/v1/subscribers/import"]["post"]["description"]
    assert {"200", "400", "401", "413", "415", "422"} <= set(
        doc["paths"]["/v1/subscribers/import"]["post"]["responses"]
    )


async def test_a_worker_process_serves_no_audience_endpoints(tmp_path: Path) -> None:
    config = make_config()
    async with (
        open_gateway(tmp_path, config) as gateway,
        serve(build_app(gateway, message_api=False), config) as base,
        aiohttp.ClientSession() as session,
    ):
        api = Api(base, gateway, session)
        for method, path in [("GET", "/v1/subscribers/u1"), ("GET", "/v1/topics")]:
            status, body, _ = await api.call(method, path)
            assert (status, error(body)[0]) == (404, "not_found")


async def test_an_import_naming_too_many_topics_is_refused_whole(tmp_path: Path) -> None:
    async with running_api(tmp_path, audience_config(max_import_topics=3)) as api:
        body = "id,topics\nu1,a;b\nu2,c;d\n"
        status, result, _ = await import_(api, body, CSV)
        assert (status, error(result)[0]) == (422, "too_many_topics")
        assert "audience.max_import_topics" in result["error"]["message"]
        status, _, _ = await api.call("GET", "/v1/subscribers/u1")
        assert status == 404
        status, result, _ = await import_(api, "id,topics\nu1,a;b\nu2,b;c\n", CSV)
        assert (status, result["created"], result["subscribed"]) == (200, 2, 4)


async def test_webhook_addresses_and_quiet_hours_are_checked(api: Api) -> None:
    status, body, _ = await put(api, "u1", {"webhook": "ftp://files.example.com/x"})
    assert (status, *error(body)) == (422, "invalid_subscriber", "webhook")
    status, body, _ = await put(api, "u1", {"quiet_hours": {"start": "22:00", "end": "22:00"}})
    assert (status, *error(body)) == (422, "invalid_subscriber", "quiet_hours.end")
    status, _, _ = await put(api, "u1", {"webhook": "https://hooks.example.com/in"})
    assert status == 201
