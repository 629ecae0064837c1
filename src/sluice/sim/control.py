"""The simulators' control endpoints: JSON over HTTP under one prefix (``/_smsc/``, ``/_sink/``).

Every simulator answers the same four: ``GET stats`` (its `stats()` as JSON), ``GET config``
(its options, secrets shown as "***"), ``POST config`` (a JSON object of changes; an unknown
key or a bad value is a 400 naming it) and ``POST reset``; each adds its own (``received``,
``mo``). An unknown endpoint is a 404 listing the known ones; a known one asked with another
method is a 405 with ``Allow``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec
from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.Response]]
#: What a whole server answers with: a simulator's own paths may stream.
ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_JSON = "application/json"


class Redactable(Protocol):
    def redacted(self) -> dict[str, Any]: ...


class Controlled(Protocol):
    """What the common endpoints need of a simulator."""

    @property
    def options(self) -> Redactable: ...

    def stats(self) -> object: ...

    def reset(self) -> None: ...

    def configure(self, **changes: object) -> Redactable: ...


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type=_JSON)


def http_host(host: str) -> str:
    """``host`` as it goes before ``:port`` (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


async def json_object(request: web.BaseRequest, what: str) -> dict[str, Any] | web.Response:
    """The request body as a JSON object, or the 400 to answer instead (naming ``what``)."""
    try:
        value = msgspec.json.decode(await request.read())
    except msgspec.DecodeError as exc:
        return json_response(400, error_body(f"{what}: body is not JSON: {exc}"))
    if not isinstance(value, dict):
        return json_response(400, error_body(f"{what}: expected a JSON object, got {value!r}"))
    return value


class ControlRoutes:
    """The control endpoints of one simulator: the common four and ``own`` ones, keyed by
    (method, name under ``prefix``)."""

    def __init__(
        self, prefix: str, target: Controlled, own: Mapping[tuple[str, str], Handler]
    ) -> None:
        self._prefix = prefix
        self._target = target
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "stats"): self._get_stats,
            ("GET", "config"): self._get_config,
            ("POST", "config"): self._post_config,
            ("POST", "reset"): self._post_reset,
            **own,
        }
        self._known = ", ".join(sorted({prefix + name for _, name in self._routes}))

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """Answer a request to the control endpoints (any path: those outside get a 404)."""
        path = request.path
        name = path[len(self._prefix) :] if path.startswith(self._prefix) else None
        handler = self._routes.get((request.method, name or ""))
        if handler is not None:
            return await handler(request)
        allowed = [method for method, known in self._routes if known == name]
        if allowed:
            return json_response(
                405,
                error_body(f"{path}: use {' or '.join(allowed)}"),
                {"Allow": ", ".join(allowed)},
            )
        return json_response(
            404, error_body(f"unknown control endpoint {path}; known: {self._known}")
        )

    async def _get_stats(self, request: web.BaseRequest) -> web.Response:
        return json_response(200, msgspec.json.encode(self._target.stats()))

    async def _get_config(self, request: web.BaseRequest) -> web.Response:
        return json_response(200, msgspec.json.encode(self._target.options.redacted()))

    async def _post_config(self, request: web.BaseRequest) -> web.Response:
        changes = await json_object(request, "config")
        if isinstance(changes, web.Response):
            return changes
        try:
            options = self._target.configure(**changes)
        except ValueError as exc:
            return json_response(400, error_body(str(exc)))
        return json_response(200, msgspec.json.encode(options.redacted()))

    async def _post_reset(self, request: web.BaseRequest) -> web.Response:
        self._target.reset()
        return json_response(200, b'{"reset":true}')


async def start_http(
    handler: ServerHandler,
    host: str,
    port: int,
    *,
    backlog: int | None = None,
    shutdown_timeout: float | None = None,
) -> tuple[web.ServerRunner, int]:
    """Serve ``handler`` on ``host:port`` (0: a free port); the runner and the bound port.

    ``backlog`` and ``shutdown_timeout`` unset keep aiohttp's defaults.
    """
    runner_options: dict[str, Any] = {}
    if shutdown_timeout is not None:
        runner_options["shutdown_timeout"] = shutdown_timeout
    runner = web.ServerRunner(web.Server(handler, access_log=None), **runner_options)
    await runner.setup()
    try:
        site = (
            web.TCPSite(runner, host, port, backlog=backlog)
            if backlog is not None
            else web.TCPSite(runner, host, port)
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
