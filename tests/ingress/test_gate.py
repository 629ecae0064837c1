"""The HTTP edge's gate, without a server: what it decides from a request's headers, and the
bytes of its answers, checked by a second HTTP implementation (h11)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import h11
import pytest

from fake_clock import FakeClock
from sluice.config import Config, from_dict, hash_api_key
from sluice.ingress.contract import ChannelStatus
from sluice.ingress.http.admission import Admission
from sluice.ingress.http.auth import ApiKeys
from sluice.ingress.http.gate import (
    MAX_REMEMBERED_KEYS,
    UNAUTHORIZED,
    EdgeGate,
    FastAnswer,
    Ticket,
    error_answer,
    too_many_connections,
)
from sluice.journal.base import CancelResult, MessageRecord, SubmitResult
from sluice.model import Message

KEY_A = "key-for-tenant-a"
KEY_B = "key-for-tenant-b"
DATE = b"date: Tue, 01 Jul 2025 12:00:00 GMT\r\n"


def make_config(
    admission: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    tenant_a: dict[str, Any] | None = None,
) -> Config:
    """Tenants a and b (one API key each); `tenant_a` adds settings (a rate) to a."""
    return from_dict(
        {
            "tenants": {
                "a": {"api_keys": [hash_api_key(KEY_A)], **(tenant_a or {})},
                "b": {"api_keys": [hash_api_key(KEY_B)]},
            },
            "admission": admission or {},
            "limits": limits or {},
        }
    )


class FakeGateway:
    """The Gateway protocol as far as the gate reads it: readiness and the backlog."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.is_ready = True
        self.pending = 0

    def ready(self) -> bool:
        return self.is_ready

    def fault(self) -> str | None:
        return None

    def backlog(self) -> int:
        return self.pending

    def next_id(self) -> int:
        raise NotImplementedError("the gate stores nothing")

    async def submit(
        self,
        tenant: str,
        messages: list[Message],
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> SubmitResult:
        raise NotImplementedError("the gate stores nothing")

    async def get(self, tenant: str, message_id: int) -> MessageRecord | None:
        raise NotImplementedError("the gate reads no messages")

    async def by_recipient(
        self, tenant: str, recipient: str, before_id: int | None, limit: int
    ) -> list[MessageRecord]:
        raise NotImplementedError("the gate reads no messages")

    async def cancel(self, tenant: str, message_id: int) -> CancelResult:
        raise NotImplementedError("the gate cancels nothing")

    def channels(self) -> list[ChannelStatus]:
        return []

    def refused(self, code: str) -> None:
        raise NotImplementedError("the gate counts its refusals itself")

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


class Edge:
    """A gate, its gateway, its admission and the clock that drives both."""

    def __init__(self, config: Config) -> None:
        self.clock = FakeClock(1000.0)
        self.gateway = FakeGateway(config)
        self.admission = Admission(config, self.gateway.backlog, self.clock)
        self.gate = EdgeGate(
            config, self.gateway, self.admission, ApiKeys(config.tenants), self.clock
        )

    def ask(
        self,
        method: bytes,
        path: bytes,
        key: str | None = KEY_A,
        *extra: tuple[bytes, bytes],
    ) -> FastAnswer | Ticket | None:
        headers = [(b"host", b"sluice"), *extra]
        if key is not None:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        return self.gate.at_headers(method, path, headers, self.clock.now)

    def post(self, key: str | None = KEY_A, *extra: tuple[bytes, bytes]) -> FastAnswer | Ticket:
        verdict = self.ask(b"POST", b"/v1/messages", key, *extra)
        assert verdict is not None
        return verdict


URGENT = (b"sluice-priority", b"urgent")


class Parsed(NamedTuple):
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


def parse(raw: bytes) -> Parsed:
    """One complete HTTP/1.1 response, as h11 reads it; fails on anything extra or missing."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("host", "sluice")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(raw)
    response = connection.next_event()
    assert isinstance(response, h11.Response), response
    assert response.http_version == b"1.1"
    body = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.EndOfMessage):
            break
        assert isinstance(event, h11.Data), f"incomplete response: {event!r}"
        body += event.data
    assert connection.trailing_data == (b"", False), "bytes after the response"
    names = [name for name, _ in response.headers]
    assert len(names) == len(set(names)), f"a header repeated: {names}"
    return Parsed(
        response.status_code,
        dict(response.headers),
        body,
        connection.their_state is h11.DONE,
    )


def refusal(verdict: FastAnswer | Ticket | None, status: int, code: str) -> Parsed:
    """The verdict is a refusal with this status and error code, well formed on the wire."""
    assert isinstance(verdict, FastAnswer), verdict
    assert (verdict.status, verdict.code) == (status, code)
    parsed = parse(verdict.render(DATE, keep_alive=True))
    assert parsed.status == status
    error = json.loads(parsed.body)["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return parsed


# ---------------------------------------------------------------------------- health probes


def test_healthz_is_answered_by_the_gate() -> None:
    edge = Edge(make_config())
    edge.gateway.is_ready = False  # up, even when not ready
    answer = edge.ask(b"GET", b"/healthz", None)
    assert isinstance(answer, FastAnswer)
    parsed = parse(answer.render(DATE, keep_alive=True))
    assert (parsed.status, json.loads(parsed.body)) == (200, {"status": "ok"})
    assert edge.gate.stats().probes == 1


def test_readyz_follows_the_gateway() -> None:
    edge = Edge(make_config())
    ready = edge.ask(b"GET", b"/readyz", None)
    assert isinstance(ready, FastAnswer)
    assert json.loads(parse(ready.render(DATE, keep_alive=True)).body) == {"status": "ready"}
    edge.gateway.is_ready = False
    refusal(edge.ask(b"GET", b"/readyz", None), 503, "not_ready")
    assert edge.gate.stats().probes == 2


def shed_one(edge: Edge) -> None:
    """Fill a limit of 1 and have one request refused for it."""
    assert isinstance(edge.post(), Ticket)
    refusal(edge.post(), 503, "overloaded")


def test_readyz_is_503_while_shedding_when_so_configured() -> None:
    edge = Edge(make_config({"unready_while_shedding": True, "initial_limit": 1, "min_limit": 1}))
    assert edge.gate.ready()
    shed_one(edge)
    refusal(edge.ask(b"GET", b"/readyz", None), 503, "not_ready")
    edge.clock.advance(1.5)  # no refusal for over a second
    assert edge.gate.ready()


def test_readyz_ignores_shedding_by_default() -> None:
    edge = Edge(make_config({"initial_limit": 1, "min_limit": 1}))
    shed_one(edge)
    answer = edge.ask(b"GET", b"/readyz", None)
    assert isinstance(answer, FastAnswer) and answer.status == 200


def test_probes_by_other_methods_and_other_paths_are_left_to_the_application() -> None:
    edge = Edge(make_config())
    assert edge.ask(b"POST", b"/healthz", None) is None
    assert edge.ask(b"GET", b"/metrics", None) is None
    assert edge.ask(b"GET", b"/openapi.json", None) is None
    assert edge.ask(b"GET", b"/nowhere", None) is None
    assert edge.gate.stats().probes == 0


# -------------------------------------------------------------------------------- API keys


@pytest.mark.parametrize("key", [None, "not-a-key-we-know"])
def test_missing_or_unknown_key_is_401_with_www_authenticate(key: str | None) -> None:
    edge = Edge(make_config())
    for method, path in ((b"POST", b"/v1/messages"), (b"GET", b"/v1/messages/0abc")):
        parsed = refusal(edge.ask(method, path, key), 401, "unauthorized")
        assert parsed.headers[b"www-authenticate"] == b'Bearer realm="sluice"'
    assert edge.gate.stats().refusals == {"unauthorized": 2}


def test_remembered_keys_answer_as_their_first_lookup_and_the_memory_is_bounded() -> None:
    edge = Edge(make_config())
    for _ in range(2):
        assert isinstance(edge.post(KEY_A), Ticket)
        refusal(edge.post("wrong"), 401, "unauthorized")
    for n in range(MAX_REMEMBERED_KEYS + 10):  # a flood of distinct keys empties the memory
        refusal(edge.post(f"guess-{n}"), 401, "unauthorized")
    assert edge.post(KEY_A) == Ticket("a", 1000.0, False)
    assert edge.post(KEY_B) == Ticket("b", 1000.0, False)
    refusal(edge.post("wrong"), 401, "unauthorized")


def test_the_key_is_checked_before_the_backlog() -> None:
    edge = Edge(make_config(limits={"max_backlog": 10}))
    edge.gateway.pending = 10
    refusal(edge.post("wrong"), 401, "unauthorized")


def test_an_admitted_request_gets_a_ticket_naming_its_tenant_and_lane() -> None:
    edge = Edge(make_config())
    assert edge.post(KEY_B) == Ticket("b", 1000.0, False)
    assert edge.post(KEY_A, URGENT) == Ticket("a", 1000.0, True)


# ------------------------------------------------------------------------- backlog and rates


def test_tenant_over_its_rate_is_429_with_retry_after() -> None:
    edge = Edge(make_config(tenant_a={"rate": 1, "burst": 1}))
    assert edge.admission.admit("a", 1) is None  # the application takes the one token
    edge.admission.release(1)
    parsed = refusal(edge.post(), 429, "rate_limited")
    assert parsed.headers[b"retry-after"] == b"1"
    assert isinstance(edge.post(KEY_B), Ticket)  # another tenant is not held back
    assert isinstance(edge.ask(b"GET", b"/v1/channels"), Ticket)  # reading costs no token
    edge.clock.advance(1.0)
    assert isinstance(edge.post(), Ticket)


def test_backlog_full_is_429_but_the_urgent_lane_uses_the_reserve() -> None:
    edge = Edge(make_config(limits={"max_backlog": 10, "urgent_backlog_reserve": 5}))
    edge.gateway.pending = 10
    parsed = refusal(edge.post(), 429, "backlog_full")
    assert parsed.headers[b"retry-after"] == b"5"  # limits.backlog_retry_after_seconds
    assert isinstance(edge.post(KEY_A, URGENT), Ticket)
    edge.gateway.pending = 14
    assert isinstance(edge.post(KEY_A, URGENT), Ticket)
    edge.gateway.pending = 15  # the reserve is full too
    refusal(edge.post(KEY_A, URGENT), 429, "backlog_full")
    assert isinstance(edge.ask(b"GET", b"/v1/channels"), Ticket)  # reads are not refused


# ---------------------------------------------------------------------------- adaptive limit


def test_over_the_limit_is_503_overloaded_and_a_release_frees_the_slot() -> None:
    edge = Edge(make_config({"initial_limit": 2, "min_limit": 1, "retry_after_seconds": 3}))
    tickets = [edge.post(), edge.post()]
    parsed = refusal(edge.post(), 503, "overloaded")
    assert parsed.headers[b"retry-after"] == b"3"
    first = tickets[0]
    assert isinstance(first, Ticket)
    edge.gate.release(first)
    assert isinstance(edge.post(), Ticket)
    stats = edge.gate.stats()
    assert stats.refusals == {"overloaded": 1}
    assert stats.limit is not None and stats.limit.in_flight == 2


def test_the_urgent_lane_passes_the_limit() -> None:
    edge = Edge(make_config({"initial_limit": 1, "min_limit": 1, "urgent_factor": 2}))
    assert isinstance(edge.post(), Ticket)
    refusal(edge.post(), 503, "overloaded")
    assert edge.post(KEY_A, URGENT) == Ticket("a", 1000.0, True)
    refusal(edge.post(KEY_A, URGENT), 503, "overloaded")  # the hard limit: 1 * 2


def test_without_adaptive_admission_there_is_no_limit() -> None:
    edge = Edge(make_config({"enabled": False, "initial_limit": 1, "min_limit": 1}))
    assert all(isinstance(edge.post(), Ticket) for _ in range(50))
    assert edge.gate.limit is None and edge.gate.stats().limit is None


def test_without_the_message_api_the_gate_governs_only_probes() -> None:
    config = make_config()
    gateway = FakeGateway(config)
    gate = EdgeGate(
        config, gateway, Admission(config, gateway.backlog), ApiKeys({}), message_api=False
    )
    assert gate.at_headers(b"POST", b"/v1/messages", [], 0.0) is None
    assert isinstance(gate.at_headers(b"GET", b"/healthz", [], 0.0), FastAnswer)


# --------------------------------------------------------------------------- rendered bytes


ANSWERS = {
    "unauthorized": UNAUTHORIZED,
    "too_many_connections": too_many_connections(3),
    "with_headers": error_answer(429, "rate_limited", "slow down", ((b"retry-after", b"7"),)),
    "healthy": FastAnswer(200, b'{"status":"ok"}'),
}


@pytest.mark.parametrize("name", ANSWERS)
@pytest.mark.parametrize("keep_alive", [True, False])
def test_rendered_answers_are_valid_http_1_1(name: str, keep_alive: bool) -> None:
    answer = ANSWERS[name]
    parsed = parse(answer.render(DATE, keep_alive=keep_alive))
    assert parsed.status == answer.status
    assert parsed.body == answer.body
    assert parsed.headers[b"content-length"] == str(len(answer.body)).encode()
    assert parsed.headers[b"content-type"] == b"application/json"
    assert parsed.headers[b"date"] == DATE[len(b"date: ") : -2]
    assert (b"connection" in parsed.headers) is not keep_alive
    if not keep_alive:
        assert parsed.headers[b"connection"] == b"close"
    assert parsed.keep_alive is keep_alive


@pytest.mark.parametrize("name", ["unauthorized", "too_many_connections", "with_headers"])
def test_refusals_carry_the_json_error_envelope(name: str) -> None:
    answer = ANSWERS[name]
    body = json.loads(parse(answer.render(b"", keep_alive=True)).body)
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == answer.code


def test_too_many_connections_names_the_setting_and_the_limit() -> None:
    message = json.loads(too_many_connections(3).body)["error"]["message"]
    assert "server.max_connections" in message and "3" in message
