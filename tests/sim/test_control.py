"""The simulators' common control endpoints, against a stand-in simulator."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import msgspec
from aiohttp import StreamReader, web
from aiohttp.test_utils import make_mocked_request

from sluice.sim.control import ControlRoutes, http_host, json_response


class _Options:
    def __init__(self, level: int) -> None:
        self.level = level

    def redacted(self) -> dict[str, Any]:
        return {"level": self.level, "secret": "***"}


class _Target:
    def __init__(self) -> None:
        self.options = _Options(1)
        self.resets = 0

    def stats(self) -> dict[str, int]:
        return {"resets": self.resets}

    def reset(self) -> None:
        self.resets += 1

    def configure(self, **changes: object) -> _Options:
        unknown = set(changes) - {"level"}
        if unknown:
            raise ValueError(f"{unknown.pop()}: unknown option")
        level = changes["level"]
        assert isinstance(level, int)
        self.options = _Options(level)
        return self.options


async def _echo(request: web.BaseRequest) -> web.Response:
    return json_response(200, b'{"own":true}')


async def _ask(routes: ControlRoutes, method: str, path: str, body: bytes = b"") -> web.Response:
    payload = StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    return await routes.handle(make_mocked_request(method, path, payload=payload))


def _json(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return msgspec.json.decode(response.body)


async def test_common_endpoints_and_own_ones() -> None:
    target = _Target()
    routes = ControlRoutes("/_x/", target, {("GET", "mine"): _echo})
    assert _json(await _ask(routes, "GET", "/_x/stats")) == {"resets": 0}
    assert _json(await _ask(routes, "POST", "/_x/reset")) == {"reset": True}
    assert target.resets == 1
    assert _json(await _ask(routes, "GET", "/_x/config")) == {"level": 1, "secret": "***"}
    changed = await _ask(routes, "POST", "/_x/config", b'{"level": 5}')
    assert changed.status == 200 and _json(changed)["level"] == 5
    assert _json(await _ask(routes, "GET", "/_x/mine")) == {"own": True}


async def test_bad_requests_name_what_was_wrong() -> None:
    routes = ControlRoutes("/_x/", _Target(), {("GET", "mine"): _echo})
    unknown = await _ask(routes, "GET", "/_x/nope")
    assert unknown.status == 404
    assert _json(unknown)["error"] == (
        "unknown control endpoint /_x/nope; known: /_x/config, /_x/mine, /_x/reset, /_x/stats"
    )
    outside = await _ask(routes, "GET", "/elsewhere")
    assert outside.status == 404
    wrong_method = await _ask(routes, "DELETE", "/_x/config")
    assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "GET, POST"
    assert _json(wrong_method)["error"] == "/_x/config: use GET or POST"
    not_json = await _ask(routes, "POST", "/_x/config", b"{level")
    assert not_json.status == 400 and _json(not_json)["error"].startswith(
        "config: body is not JSON"
    )
    not_object = await _ask(routes, "POST", "/_x/config", b"[1]")
    assert _json(not_object)["error"] == "config: expected a JSON object, got [1]"
    refused = await _ask(routes, "POST", "/_x/config", b'{"colour": 1}')
    assert refused.status == 400 and _json(refused)["error"] == "colour: unknown option"


def test_http_host_brackets_ipv6() -> None:
    assert http_host("127.0.0.1") == "127.0.0.1"
    assert http_host("::1") == "[::1]"
