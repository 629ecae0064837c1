"""The HTTP API as a bare ASGI application over a `Gateway`.

No framework: routing is a dict lookup on the path, every endpoint is a small coroutine that
returns a `_Response` or raises `ApiError`, and one place (`HttpApi._http`) turns either into
ASGI messages. On this machine a bare ASGI app on uvicorn serves about twice the requests of
the same app on Starlette (DESIGN.md, "What this machine can do").

Order of work for ``POST /v1/messages``, cheapest refusal first. Behind Sluice's own server
(`server.py`) the gate (`gate.py`) has already decided from the headers alone: API key,
backlog, tenant rate, the adaptive limit on requests in flight. Then: route, content type,
Content-Length, read the body while counting (never more than limits.max_request_bytes),
parse and check every message, admit the batch (taking its tokens), commit through the gateway
unless the request has outlived `admission.request_deadline_seconds`, answer. Served by
another ASGI server, the app makes the gate's checks but the adaptive limit itself.

Examples:
    app = build_app(gateway)
    uvicorn.run(app, host="127.0.0.1", port=8080, loop="uvloop", http="httptools")
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import msgspec

from sluice.ingress.contract import Gateway
from sluice.ingress.http.admission import Admission, Rejection
from sluice.ingress.http.auth import ApiKeys
from sluice.ingress.http.gate import (
    ANSWER_KEY,
    PRIORITY_HEADER,
    TICKET_KEY,
    UNAUTHORIZED_HEADERS,
    UNAUTHORIZED_MESSAGE,
    EdgeGate,
    Ticket,
    is_urgent,
)
from sluice.ingress.http.openapi import openapi_document
from sluice.ingress.http.request_id import RESPONSE_HEADER, RequestIds
from sluice.ingress.http.schema import (
    ApiError,
    CancelResponse,
    ErrorBody,
    ErrorDetail,
    MessagePage,
    MessageParser,
    SubmitResponse,
    fingerprint,
    message_view,
    state_name,
)
from sluice.journal.base import (
    CancelResult,
    DeadlinePassed,
    IdempotencyConflict,
    JournalError,
)
from sluice.model import Priority, State, format_id, now_ms, parse_id

if TYPE_CHECKING:
    from sluice.ingress.http.audience_api import AudienceApi
    from sluice.ingress.http.broadcast_api import BroadcastApi

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("sluice.http")

#: Page size of ``GET /v1/messages`` when the request names none.
DEFAULT_PAGE_SIZE = 100
_MESSAGES_PREFIX = "/v1/messages/"

_JSON = b"application/json"
_encode = msgspec.json.Encoder().encode


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


class _Headers(NamedTuple):
    """The request headers the API reads, as raw bytes (None when absent)."""

    authorization: bytes | None
    content_type: bytes | None
    content_length: bytes | None
    idempotency_key: bytes | None
    urgent: bool


def _headers(scope: Scope) -> _Headers:
    authorization = content_type = content_length = idempotency_key = None
    urgent = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"content-type":
            content_type = value
        elif name == b"content-length":
            content_length = value
        elif name == b"idempotency-key":
            idempotency_key = value
        elif name == PRIORITY_HEADER:
            urgent = is_urgent(value)
    return _Headers(authorization, content_type, content_length, idempotency_key, urgent)


def _error_body(code: str, message: str, field: str | None = None) -> bytes:
    return _encode(ErrorBody(error=ErrorDetail(code, message, field)))


def _json(status: int, value: Any) -> _Response:
    return _Response(status, _encode(value))


#: The header that marks an answer replayed for a repeated Idempotency-Key.
_REPLAYED = ((b"idempotent-replayed", b"true"),)
_UNAUTHORIZED = ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE, headers=UNAUTHORIZED_HEADERS)
_NOT_FOUND_MESSAGE = "no message with this id"
_NOT_FOUND = "no endpoint at {path}; see /openapi.json"
_NOT_FOUND_WORKER = (
    'no endpoint at {path}: this process only delivers messages (server.role = "worker") and '
    'serves /healthz, /readyz and /metrics; send messages to a process of role "api" or "all"'
)


class HttpApi:
    """The ASGI application; build it with `build_app`. Without the message API (a process of
    role "worker") it serves only /healthz, /readyz and /metrics."""

    def __init__(
        self,
        gateway: Gateway,
        clock: Callable[[], float] = time.monotonic,
        *,
        message_api: bool = True,
        metrics: bool = True,
    ) -> None:
        config = gateway.config
        self._gateway = gateway
        self._limits = config.limits
        self._keys = ApiKeys(config.tenants)
        self._parser = MessageParser(config)
        self._admission = Admission(config, gateway.backlog, clock)
        self._deadline = config.admission.request_deadline_seconds
        #: What is decided from the headers alone; Sluice's HTTP server asks it first.
        self.gate = EdgeGate(config, gateway, self._admission, self._keys, message_api=message_api)
        self._openapi = _encode(openapi_document(config))
        self._request_ids = RequestIds()
        token = config.server.metrics_token
        self._metrics_token = token.encode() if token is not None else None
        self._routes: dict[str, dict[str, Callable[..., Awaitable[_Response]]]] = {
            "/healthz": {"GET": self._probe},
            "/readyz": {"GET": self._probe},
        }
        self._routes["/metrics"] = {"GET": self._metrics if metrics else self._metrics_elsewhere}
        self._message_routes: dict[str, Callable[..., Awaitable[_Response]]] = {}
        self._audience: AudienceApi | None = None
        self._broadcasts: BroadcastApi | None = None
        self._not_found = _NOT_FOUND_WORKER
        if message_api:
            self._routes |= {
                "/v1/messages": {"POST": self._submit, "GET": self._list},
                "/v1/channels": {"GET": self._channels},
                "/openapi.json": {"GET": self._openapi_json},
            }
            self._message_routes = {"GET": self._get, "DELETE": self._cancel}
            self._not_found = _NOT_FOUND
            # Imported here: the audience endpoints build on this module's request helpers.
            from sluice.ingress.http.audience_api import AudienceApi

            self._audience = AudienceApi(config, gateway.audience, self._tenant, self._read_body)
            self._routes |= self._audience.routes()
            from sluice.ingress.http.broadcast_api import BroadcastApi

            max_key = self._limits.max_idempotency_key_length
            self._broadcasts = BroadcastApi(
                config,
                gateway,
                self._tenant,
                self._read_body,
                _headers,
                lambda headers: _idempotency_key(headers.idempotency_key, max_key),
            )
            self._routes |= self._broadcasts.routes()
            if config.push is not None:
                from sluice.ingress.http.push_api import PushApi

                push = PushApi(
                    config, config.push, gateway.push_presence, self._tenant, self._read_body
                )
                self._routes |= push.routes()

    @property
    def admission(self) -> Admission:
        return self._admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":  # no websocket endpoints: refuse the handshake
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket: Ticket | None = scope.get(TICKET_KEY)
        try:
            await self._answer(scope, receive, send)
        finally:
            if ticket is not None:
                self.gate.release(ticket)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        request_id = self._request_ids.in_scope(scope)
        answer = scope.get(ANSWER_KEY)
        if answer is not None:  # decided by the gate, sent here to keep pipelined answers in order
            response = _Response(answer.status, answer.body, headers=answer.extra_headers)
            await _send(send, response, request_id)
            return
        try:
            routes = self._routes.get(path)
            args: tuple[str, ...] = ()
            if routes is None and self._message_routes and path.startswith(_MESSAGES_PREFIX):
                routes, args = self._message_routes, (path[len(_MESSAGES_PREFIX) :],)
            if routes is None and self._audience is not None:
                routes, args = self._audience.route(path)
            if routes is None and self._broadcasts is not None:
                routes, args = self._broadcasts.route(path)
            if routes is None:
                raise ApiError(404, "not_found", self._not_found.format(path=path))
            handler = routes.get(scope["method"])
            if handler is None:
                allow = ", ".join(routes).encode()
                raise ApiError(
                    405,
                    "method_not_allowed",
                    f"{scope['method']} is not allowed on {path}; use {allow.decode()}",
                    headers=((b"allow", allow),),
                )
            response = await handler(scope, receive, *args)
        except ApiError as error:
            self._gateway.refused(error.code)
            response = _Response(
                error.status,
                _error_body(error.code, error.message, error.field),
                headers=tuple(error.headers),
            )
        except _ClientGone:
            return
        except JournalError as error:
            # One line: during an outage (a full disk, PostgreSQL away) every request meets it.
            log.warning(
                "journal failure on %s %s (request %s): %s",
                scope["method"],
                path,
                request_id.decode(),
                error,
            )
            response = _Response(
                503,
                _error_body("unavailable", "the message store failed; try again shortly"),
                headers=((b"retry-after", b"1"),),
            )
        except Exception:
            log.exception(
                "unexpected error on %s %s (request %s)", scope["method"], path, request_id.decode()
            )
            response = _Response(
                500, _error_body("internal_error", "an unexpected error; it has been logged")
            )
        await _send(send, response, request_id)

    # -------------------------------------------------------------------------- helpers

    def _tenant(self, headers: _Headers) -> str:
        tenant = self._keys.tenant_for(headers.authorization)
        if tenant is None:
            raise _UNAUTHORIZED
        return tenant

    async def _read_body(self, receive: Receive, limit: int) -> bytes:
        """The whole request body, refused with 413 as soon as it passes `limit` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if not event.get("more_body", False):
                if not chunks:
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    # ------------------------------------------------------------------------- endpoints

    async def _submit(self, scope: Scope, receive: Receive) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        if headers.content_type is None or (
            headers.content_type.partition(b";")[0].strip().lower() != _JSON
        ):
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the messages as JSON with `Content-Type: application/json`",
            )
        limit = self._limits.max_request_bytes
        if headers.content_length is not None:
            try:
                length = int(headers.content_length)
            except ValueError:
                raise ApiError(400, "bad_request", "Content-Length is not a number") from None
            if length > limit:
                raise _too_large(limit)
        key = _idempotency_key(headers.idempotency_key, self._limits.max_idempotency_key_length)
        admission = self._admission
        ticket: Ticket | None = scope.get(TICKET_KEY)
        if ticket is None:  # no gate in front (another ASGI server): its checks, here
            started = time.monotonic()
            rejection = admission.precheck(tenant, urgent=headers.urgent)
            if rejection is not None:
                raise _rejected(rejection)
        else:
            started = ticket.started
        raw = await self._read_body(receive, limit)
        request = self._parser.decode(raw)
        messages = self._parser.build(request, tenant, now_ms(), self._gateway.next_id)
        if headers.urgent and any(m.priority != Priority.URGENT for m in messages):
            raise ApiError(
                422,
                "not_urgent",
                "a request sent with `Sluice-Priority: urgent` may hold only urgent messages; "
                "send the others without the header",
                "Sluice-Priority",
            )
        n = len(messages)
        rejection = admission.admit(tenant, n, urgent=headers.urgent)
        if rejection is not None:
            raise _rejected(rejection)
        deadline = started + self._deadline if self._deadline > 0 else None
        try:
            result = await self._gateway.submit(
                tenant,
                messages,
                key,
                fingerprint(request) if key is not None else None,
                deadline=deadline,
            )
        except DeadlinePassed:
            raise ApiError(
                503,
                "deadline_passed",
                f"the request waited more than {self._deadline:g} s "
                "(admission.request_deadline_seconds) and was not stored; send it again",
                headers=((b"retry-after", b"1"),),
            ) from None
        except IdempotencyConflict:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used before with a different request; "
                "use a new key for a new request",
                "Idempotency-Key",
            ) from None
        finally:
            admission.release(n)
        body = _encode(SubmitResponse([format_id(i) for i in result.ids], result.replayed))
        # A replay answers as the first request was answered, marked by a header.
        return _Response(202, body, headers=_REPLAYED if result.replayed else ())

    async def _get(self, scope: Scope, receive: Receive, text_id: str) -> _Response:
        tenant = self._tenant(_headers(scope))
        record = await self._gateway.get(tenant, _message_id(text_id))
        if record is None:
            raise ApiError(404, "not_found", _NOT_FOUND_MESSAGE)
        return _json(200, message_view(record))

    async def _list(self, scope: Scope, receive: Receive) -> _Response:
        tenant = self._tenant(_headers(scope))
        query = _query(scope["query_string"])
        to = _single(query, "to")
        if not to:
            raise ApiError(422, "invalid_parameter", "give the recipient as `to=`", "to")
        limit = DEFAULT_PAGE_SIZE
        max_page = self._limits.max_page_size
        text = _single(query, "limit")
        if text is not None:
            if not (text.isascii() and text.isdigit() and len(text) < 10) or not (
                1 <= int(text) <= max_page
            ):
                raise ApiError(
                    422,
                    "invalid_parameter",
                    f"limit must be a whole number from 1 to {max_page} (limits.max_page_size)",
                    "limit",
                )
            limit = int(text)
        before = None
        cursor = _single(query, "cursor")
        if cursor:
            try:
                before = parse_id(cursor)
            except ValueError:
                raise ApiError(
                    422,
                    "invalid_parameter",
                    "cursor is not one this API gave out; pass next_cursor unchanged",
                    "cursor",
                ) from None
        # One record more than asked says whether another page exists.
        records = await self._gateway.by_recipient(tenant, to, before, limit + 1)
        more = len(records) > limit
        records = records[:limit]
        next_cursor = format_id(records[-1].message.id) if more else None
        return _json(
            200, MessagePage([message_view(r, timeline=False) for r in records], next_cursor)
        )

    async def _cancel(self, scope: Scope, receive: Receive, text_id: str) -> _Response:
        tenant = self._tenant(_headers(scope))
        message_id = _message_id(text_id)
        result = await self._gateway.cancel(tenant, message_id)
        if result is CancelResult.CANCELLED:
            return _json(200, CancelResponse(format_id(message_id), "cancelled"))
        record = await self._gateway.get(tenant, message_id)
        if result is CancelResult.NOT_FOUND or record is None:
            raise ApiError(404, "not_found", _NOT_FOUND_MESSAGE)
        if record.state == State.CANCELLED:  # cancelled before: DELETE is idempotent
            return _json(200, CancelResponse(format_id(message_id), "cancelled"))
        state = state_name(record.state)
        body = ErrorBody(
            error=ErrorDetail(
                "too_late", f"the message is already {state}; it cannot be cancelled"
            ),
            id=format_id(message_id),
            state=state,
        )
        return _json(409, body)

    async def _channels(self, scope: Scope, receive: Receive) -> _Response:
        self._tenant(_headers(scope))
        return _json(200, {"channels": self._gateway.channels()})

    async def _probe(self, scope: Scope, receive: Receive) -> _Response:
        answer = self.gate.probe(scope["path"].encode())
        assert answer is not None, "routed only for the probes' paths"
        return _Response(answer.status, answer.body, headers=answer.extra_headers)

    async def _metrics_elsewhere(self, scope: Scope, receive: Receive) -> _Response:
        raise ApiError(404, "not_found", "/metrics is served on its own port (server.admin_listen)")

    async def _metrics(self, scope: Scope, receive: Receive) -> _Response:
        token = self._metrics_token
        if token is not None:
            authorization = _headers(scope).authorization or b""
            scheme, _, given = authorization.partition(b" ")
            # Bytes, not text: compare_digest takes only ASCII str, and a header may hold any.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
                raise ApiError(
                    401,
                    "unauthorized",
                    "/metrics asks for `Authorization: Bearer <server.metrics_token>`",
                    headers=((b"www-authenticate", b'Bearer realm="sluice-metrics"'),),
                )
        body, content_type = self._gateway.metrics()
        return _Response(200, body, content_type.encode("latin-1"))

    async def _openapi_json(self, scope: Scope, receive: Receive) -> _Response:
        return _Response(200, self._openapi)


def build_app(
    gateway: Gateway, clock: Callable[[], float] = time.monotonic, *, message_api: bool = True
) -> ASGIApp:
    """The HTTP API over `gateway`; `clock` drives the tenants' token buckets. Without the
    message API: health, readiness and metrics only (a process of role "worker")."""
    return HttpApi(gateway, clock, message_api=message_api)


async def _send(send: Send, response: _Response, request_id: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", response.content_type),
                (b"content-length", str(len(response.body)).encode()),
                (RESPONSE_HEADER, request_id),
                *response.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class _ClientGone(Exception):
    """The client disconnected before sending its whole request: nobody to answer."""


async def _lifespan(receive: Receive, send: Send) -> None:
    # The gateway's own life cycle is run by whoever built it; the app has nothing to start.
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "request_too_large",
        f"the request body is larger than {limit} bytes (limits.max_request_bytes); "
        "send fewer messages per request",
    )


def _rejected(rejection: Rejection) -> ApiError:
    return ApiError(
        rejection.status, rejection.code, rejection.message, headers=rejection.headers()
    )


def _idempotency_key(raw: bytes | None, max_length: int) -> str | None:
    if raw is None:
        return None
    try:
        key = raw.decode("ascii")
    except UnicodeDecodeError:
        key = ""
    if not key or len(key) > max_length or not key.isprintable():
        raise ApiError(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {max_length} printable ASCII characters "
            "(limits.max_idempotency_key_length)",
            "Idempotency-Key",
        )
    return key


def _message_id(text: str) -> int:
    try:
        return parse_id(text)
    except ValueError:
        # A malformed id names no message, just like an unknown one.
        raise ApiError(404, "not_found", _NOT_FOUND_MESSAGE) from None


def _query(raw: bytes) -> dict[str, list[str]]:
    """Query parameters, percent-decoded. Unlike HTML forms, "+" stays "+": recipients are
    phone numbers like +447900000001 far more often than anything with a space."""
    query: dict[str, list[str]] = {}
    for pair in raw.decode("latin-1").split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query.setdefault(unquote(name), []).append(unquote(value))
    return query


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(422, "invalid_parameter", f"give `{name}` once", name)
    return values[0]
