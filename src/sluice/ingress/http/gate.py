"""The HTTP edge's gate: what is decided from a request's headers alone, before its body is read.

The HTTP server (`ingress/http/server.py`) asks the gate about every request as soon as its
headers are parsed. The gate answers health probes itself, and for the message API checks, in
this order (cheapest first): the API key, the backlog and the tenant's rate (`Admission`), and
the adaptive limit on requests in flight (`flow/adaptive_limit.py`). A refusal is a
`FastAnswer`: bytes composed once, written by the server straight to the connection, with no
ASGI task, no body read and no JSON parsed — a few microseconds of the event loop, where a
refusal through the application cost ~68 µs and refusals alone could saturate the loop.

An admitted request gets a `Ticket`, which travels in the ASGI scope (`TICKET_KEY`) to the
application; the application releases it once the request is answered, and the time between
is the response time the adaptive limit holds to its target.

Urgent traffic: a request with ``Sluice-Priority: urgent`` (whose messages must then all be
urgent) is admitted over the limit up to the hard limit, and into the backlog's reserve.

Examples:
    gate = EdgeGate(config, gateway, admission, keys)
    verdict = gate.at_headers(b"POST", b"/v1/messages", headers, started)
    if isinstance(verdict, FastAnswer):
        transport.write(verdict.render(date_header, keep_alive=True))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus
from typing import NamedTuple

import msgspec

from sluice.config import Config
from sluice.flow.adaptive_limit import AdaptiveLimit, LimitStats
from sluice.ingress.contract import Gateway
from sluice.ingress.http.admission import Admission, Rejection
from sluice.ingress.http.auth import ApiKeys
from sluice.ingress.http.schema import ErrorBody, ErrorDetail

#: Where an admitted request's `Ticket` travels in the ASGI scope.
TICKET_KEY = "sluice.ticket"
#: Where the server leaves a refusal it could not write at once (a pipelined request: answers
#: go out in order), for the application to send instead.
ANSWER_KEY = "sluice.answer"
#: The request header that asks for the urgent lane.
PRIORITY_HEADER = b"sluice-priority"
#: Authorization headers remembered with their tenant (or None), so a refusal flood does not
#: hash every key again; the memory is emptied when it reaches this size.
MAX_REMEMBERED_KEYS = 4096
#: Journal faults whose /readyz answer is kept (a fault's text may name a changing figure).
MAX_REMEMBERED_FAULTS = 16

#: A refused API key: the sentence and the challenge, in the gate's and the application's 401.
UNAUTHORIZED_MESSAGE = (
    "send an API key as `Authorization: Bearer <key>`; this one is missing or not known"
)
UNAUTHORIZED_HEADERS = ((b"www-authenticate", b'Bearer realm="sluice"'),)

_encode = msgspec.json.Encoder().encode


def is_urgent(priority: bytes) -> bool:
    """Whether a `PRIORITY_HEADER` value asks for the urgent lane."""
    return priority.strip().lower() == b"urgent"


class Ticket(NamedTuple):
    """An admitted request: whose (the tenant, or "" before authentication), since when (a
    monotonic time: its first byte), and whether it came in through the urgent lane."""

    key: str
    started: float
    urgent: bool


class FastAnswer:
    """A complete response, composed once, written without the application."""

    __slots__ = ("_head", "_tail", "body", "code", "extra_headers", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        code: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.code = code
        #: The headers beyond content-type and content-length.
        self.extra_headers = headers
        self.headers = (
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        )
        self._head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        self._tail = b"".join(name + b": " + value + b"\r\n" for name, value in self.headers)

    def render(self, date_header: bytes, *, keep_alive: bool, request_id: bytes = b"") -> bytes:
        """The bytes to write; `date_header` is ``b"date: ...\\r\\n"`` (or empty), and a
        `request_id` becomes the Request-Id header."""
        close = b"" if keep_alive else b"connection: close\r\n"
        if not request_id:
            return b"".join((self._head, date_header, self._tail, close, b"\r\n", self.body))
        return b"".join(
            (self._head, date_header, b"request-id: ", request_id, b"\r\n", self._tail, close,
             b"\r\n", self.body)
        )  # fmt: skip


def error_answer(
    status: int,
    code: str,
    message: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> FastAnswer:
    """A refusal in the API's error envelope."""
    body = _encode(ErrorBody(error=ErrorDetail(code, message, None)))
    return FastAnswer(status, body, headers, code)


UNAUTHORIZED = error_answer(401, "unauthorized", UNAUTHORIZED_MESSAGE, UNAUTHORIZED_HEADERS)
_HEALTHY = FastAnswer(200, b'{"status":"ok"}')
_READY = FastAnswer(200, b'{"status":"ready"}')
_NOT_READY = error_answer(503, "not_ready", "the gateway is starting or shutting down")


def too_many_connections(limit: int) -> FastAnswer:
    return error_answer(
        503,
        "too_many_connections",
        f"this process holds {limit} open connections (server.max_connections); "
        "try again shortly or another node",
        ((b"retry-after", b"1"),),
    )


class GateStats(msgspec.Struct, frozen=True):
    """Refusals the gate answered by code (written without the application), health probes
    answered, and the adaptive limit (None when `admission.enabled` is off)."""

    refusals: dict[str, int]
    probes: int
    limit: LimitStats | None


class EdgeGate:
    """Decides from the headers; one per HTTP application."""

    def __init__(
        self,
        config: Config,
        gateway: Gateway,
        admission: Admission,
        keys: ApiKeys,
        clock: Callable[[], float] = time.monotonic,
        *,
        message_api: bool = True,
    ) -> None:
        settings = config.admission
        self._gateway = gateway
        self._admission = admission
        self._keys = keys
        self._unready_while_shedding = settings.unready_while_shedding
        #: None: admission by backlog and rates only.
        self.limit: AdaptiveLimit | None = None
        if settings.enabled:
            self.limit = AdaptiveLimit(
                latency_target=settings.latency_target_ms / 1000,
                quantile=settings.latency_quantile,
                lag_target=settings.loop_lag_target_ms / 1000,
                interval=settings.interval_ms / 1000,
                initial=settings.initial_limit,
                minimum=settings.min_limit,
                maximum=settings.max_limit,
                increase=settings.increase,
                decrease=settings.decrease,
                urgent_factor=settings.urgent_factor,
                fair_share_from=settings.fair_share_from,
                refusal_ratio=settings.refusal_ratio,
                clock=clock,
            )
        self._shed = error_answer(
            503,
            "overloaded",
            "the gateway is taking all the requests it can serve in time; "
            "try again after Retry-After seconds",
            ((b"retry-after", str(settings.retry_after_seconds).encode()),),
        )
        self._rejections: dict[Rejection, FastAnswer] = {}
        self._counts: dict[str, int] = {}
        self._probes = 0
        #: The /readyz answers naming a journal fault, by fault.
        self._faults: dict[str, FastAnswer] = {}
        self._tenants: dict[bytes | None, str | None] = {}
        #: Paths under admission: exact ones, and the prefix of those with an id.
        self._paths = frozenset((b"/v1/messages", b"/v1/channels") if message_api else ())
        self._prefix = b"/v1/messages/" if message_api else b"\0"

    def at_headers(
        self,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        started: float,
    ) -> FastAnswer | Ticket | None:
        """A refusal or health answer to write; a `Ticket` for an admitted request; None for a
        request the gate does not govern (metrics, the OpenAPI document, unknown paths)."""
        if path in self._paths or path.startswith(self._prefix):
            return self._admit(method, path, headers, started)
        if method == b"GET":
            return self.probe(path)
        return None

    def probe(self, path: bytes) -> FastAnswer | None:
        """The answer to a health probe (``GET /healthz`` or ``/readyz``); None for any other
        path."""
        if path == b"/healthz":
            self._probes += 1
            return _HEALTHY
        if path == b"/readyz":
            self._probes += 1
            return _READY if self.ready() else self._not_ready()
        return None

    def ready(self) -> bool:
        """What /readyz says: the gateway is serving, and (if so configured) not shedding."""
        if not self._gateway.ready():
            return False
        limit = self.limit
        return not (self._unready_while_shedding and limit is not None and limit.shedding())

    def _not_ready(self) -> FastAnswer:
        """503 saying why: the journal's fault when it has one."""
        fault = self._gateway.fault()
        if fault is None:
            return _NOT_READY
        answer = self._faults.get(fault)
        if answer is None:
            if len(self._faults) >= MAX_REMEMBERED_FAULTS:
                self._faults.clear()
            answer = self._faults[fault] = error_answer(
                503, "not_ready", f"the journal cannot serve: {fault}"
            )
        return answer

    def release(self, ticket: Ticket) -> None:
        if self.limit is not None:
            self.limit.release(ticket.key, ticket.started)

    def stats(self) -> GateStats:
        limit = self.limit
        return GateStats(dict(self._counts), self._probes, limit.stats() if limit else None)

    def _admit(
        self, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], started: float
    ) -> FastAnswer | Ticket:
        authorization = None
        urgent = False
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == PRIORITY_HEADER:
                urgent = is_urgent(value)
        tenants = self._tenants
        if authorization in tenants:
            tenant = tenants[authorization]
        else:
            tenant = self._keys.tenant_for(authorization)
            if len(tenants) >= MAX_REMEMBERED_KEYS:
                tenants.clear()
            tenants[authorization] = tenant
        if tenant is None:
            return self._refuse(UNAUTHORIZED)
        if method == b"POST":
            rejection = self._admission.precheck(tenant, urgent=urgent)
            if rejection is not None:
                return self._refuse(self._rejection(rejection))
        limit = self.limit
        if limit is not None and not limit.try_acquire(tenant, urgent):
            return self._refuse(self._shed)
        return Ticket(tenant, started, urgent)

    def _refuse(self, answer: FastAnswer) -> FastAnswer:
        self._counts[answer.code] = self._counts.get(answer.code, 0) + 1
        return answer

    def _rejection(self, rejection: Rejection) -> FastAnswer:
        answer = self._rejections.get(rejection)
        if answer is None:
            answer = error_answer(
                rejection.status, rejection.code, rejection.message, rejection.headers()
            )
            self._rejections[rejection] = answer
        return answer
