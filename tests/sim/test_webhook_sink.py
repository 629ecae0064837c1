"""The webhook sink over real sockets: answers, signatures, faults, counts, control endpoints."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest

from sluice.sim.webhook_sink import (
    SinkOptions,
    WebhookSink,
    add_arguments,
    run_from_args,
)

pytestmark = pytest.mark.integration

MakeSink = Callable[..., Awaitable[WebhookSink]]


@pytest.fixture
async def make_sink() -> AsyncIterator[MakeSink]:
    sinks: list[WebhookSink] = []

    async def make(**options: Any) -> WebhookSink:
        sink = WebhookSink(SinkOptions(**options))
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: Any


def message(message_id: str, **extra: Any) -> bytes:
    return msgspec.json.encode(
        {
            "id": message_id,
            "tenant": "acme",
            "channel": "web",
            "to": "+15550001",
            "from": "Sluice",
            "body": "hi",
            "priority": "normal",
            "metadata": {},
            "attempt": 1,
        }
        | extra
    )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


async def deliver(
    http: aiohttp.ClientSession,
    sink: WebhookSink,
    message_id: str,
    *,
    path: str = "/hook",
    secret: str | None = None,
    body: bytes | None = None,
    with_id_header: bool = True,
    signature: str | None = None,
) -> Reply:
    body = message(message_id) if body is None else body
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "Sluice-Timestamp": timestamp}
    if with_id_header:
        headers["Sluice-Message-Id"] = message_id
    if secret is not None:
        headers["Sluice-Signature"] = sign(secret, timestamp, body)
    if signature is not None:
        headers["Sluice-Signature"] = signature
    async with http.post(sink.url + path, data=body, headers=headers) as response:
        return Reply(response.status, dict(response.headers), await response.json())


async def control(
    http: aiohttp.ClientSession, sink: WebhookSink, method: str, name: str, **kwargs: Any
) -> Reply:
    async with http.request(method, f"{sink.url}/_sink/{name}", **kwargs) as response:
        return Reply(response.status, dict(response.headers), await response.json())


async def test_accepts_with_provider_ids(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    first = await deliver(http, sink, "06Y2PNB3DYC00")
    second = await deliver(http, sink, "06Y2PNB3DYC01")
    assert first.status == 200
    assert first.body == {"accepted": True}
    assert first.headers["Content-Type"].startswith("application/json")
    assert first.headers["Sluice-Provider-Id"] == "sink-1"
    assert second.headers["Sluice-Provider-Id"] == "sink-2"
    stats = sink.stats()
    assert (stats.received, stats.accepted, stats.by_status) == (2, 2, {200: 2})
    assert stats.by_path["/hook"].accepted == 2
    assert sum(stats.arrivals_per_second) == 2
    assert sink.received("/hook") == ["06Y2PNB3DYC00", "06Y2PNB3DYC01"]
    assert sink.url.startswith("http://127.0.0.1:")


async def test_signature_good_bad_missing(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(secret="s3cret")
    good = await deliver(http, sink, "A", secret="s3cret")
    wrong_key = await deliver(http, sink, "B", secret="other")
    missing = await deliver(http, sink, "C")
    garbage = await deliver(http, sink, "D", signature="v1=zz\u00e9")
    assert good.status == 200
    assert [r.status for r in (wrong_key, missing, garbage)] == [401, 401, 401]
    assert "Sluice-Signature" in wrong_key.body["error"]
    assert "missing Sluice-Signature" in missing.body["error"]
    stats = sink.stats()
    assert stats.bad_signatures == 3
    assert stats.by_status == {200: 1, 401: 3}
    assert sink.received("/hook") == ["A"]


async def test_signature_covers_timestamp(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(secret="s3cret")
    body = message("A")
    stale = sign("s3cret", "1000", body)  # signed for another timestamp than the header's
    reply = await deliver(http, sink, "A", body=body, signature=stale)
    assert reply.status == 401


async def test_error_ratio_one_answers_503(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(error_ratio=1.0)
    replies = [await deliver(http, sink, f"m{i}") for i in range(5)]
    assert {r.status for r in replies} == {503}
    assert sink.stats().by_status == {503: 5}
    assert sink.received("/hook") == []


async def test_throttle_ratio_one_answers_429(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(throttle_ratio=1.0)
    reply = await deliver(http, sink, "m")
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "1"
    assert "throttle_ratio" in reply.body["error"]


async def test_ratios_split_by_seed(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(error_ratio=0.3, throttle_ratio=0.3, seed=7)
    replies = await asyncio.gather(*(deliver(http, sink, f"m{i}") for i in range(200)))
    statuses = [r.status for r in replies]
    for status in (200, 429, 503):
        assert 30 <= statuses.count(status) <= 110, statuses.count(status)


async def test_rate_limit(make_sink: MakeSink, http: aiohttp.ClientSession):
    rate = 5
    sink = await make_sink(rate_limit=rate)
    started = time.monotonic()
    replies = await asyncio.gather(*(deliver(http, sink, f"m{i}") for i in range(30)))
    elapsed = time.monotonic() - started
    accepted = sum(r.status == 200 for r in replies)
    throttled = [r for r in replies if r.status == 429]
    # A full bucket of one second's worth passes, plus what refills while the burst lasts.
    assert rate <= accepted <= rate + rate * elapsed + 1
    assert len(throttled) == 30 - accepted
    assert all(r.headers["Retry-After"] == "1" for r in throttled)
    assert "rate_limit" in throttled[0].body["error"]


@pytest.mark.parametrize("status", [500, 400])
async def test_fail_status(make_sink: MakeSink, http: aiohttp.ClientSession, status: int):
    sink = await make_sink(fail_status=status)
    reply = await deliver(http, sink, "m")
    assert reply.status == status
    assert "fail_status" in reply.body["error"]
    assert sink.stats().by_status == {status: 1}


async def test_latency_applied(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(latency_ms=150)
    started = time.monotonic()
    reply = await deliver(http, sink, "m")
    assert reply.status == 200
    assert time.monotonic() - started >= 0.15


async def test_latency_jitter_bounded(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(latency_ms=50, latency_jitter_ms=50, seed=1)
    started = time.monotonic()
    await asyncio.gather(*(deliver(http, sink, f"m{i}") for i in range(5)))
    assert 0.05 <= time.monotonic() - started < 1.0


async def test_max_in_flight(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(latency_ms=400)
    sends = asyncio.gather(*(deliver(http, sink, f"m{i}") for i in range(5)))
    # Deliveries are counted on arrival, before the latency: once five are counted, all five
    # are being held back at once.
    await sink.wait_for(5, "/hook")
    during = sink.stats()
    replies = await sends
    assert {r.status for r in replies} == {200}
    assert (during.in_flight, during.max_in_flight) == (5, 5)
    after = sink.stats()
    assert (after.in_flight, after.max_in_flight) == (0, 5)


async def test_duplicates(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    for message_id in ("A", "A", "B"):
        await deliver(http, sink, message_id)
    # Callbacks for one message differ by state; only a repeated state is a duplicate.
    for state in ("queued", "sent", "sent"):
        body = msgspec.json.encode({"id": "A", "state": state})
        await deliver(http, sink, "A", path="/callbacks", body=body)
    stats = sink.stats()
    assert sink.received("/hook") == ["A", "A", "B"]
    assert sink.received("/callbacks") == ["A", "A", "A"]
    assert (stats.by_path["/hook"].unique_ids, stats.by_path["/hook"].duplicates) == (2, 1)
    assert (stats.by_path["/callbacks"].unique_ids, stats.by_path["/callbacks"].duplicates) == (
        2,
        1,
    )
    assert (stats.unique_ids, stats.duplicates) == (4, 2)


async def test_refused_retry_is_not_duplicate(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(fail_status=503)
    await deliver(http, sink, "A")
    sink.configure(fail_status=None)
    await deliver(http, sink, "A")
    assert sink.stats().duplicates == 0
    assert sink.received("/hook") == ["A"]


async def test_id_from_body_or_refused(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    from_body = await deliver(http, sink, "B1", with_id_header=False)
    no_id = await deliver(http, sink, "", body=b'{"to":"x"}', with_id_header=False)
    not_json = await deliver(http, sink, "X", body=b"not json")
    assert from_body.status == 200
    assert no_id.status == 400
    assert "message id" in no_id.body["error"]
    assert not_json.status == 400
    assert sink.received("/hook") == ["B1"]


async def test_get_on_webhook_path_is_405(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    async with http.get(sink.url + "/hook") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    assert sink.stats().received == 0


async def test_config_endpoint(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(secret="s3cret")
    changed = await control(http, sink, "POST", "config", json={"error_ratio": 1})
    assert changed.status == 200
    assert changed.body["error_ratio"] == 1.0
    assert changed.body["secret"] == "***"
    assert (await deliver(http, sink, "m", secret="s3cret")).status == 503
    shown = await control(http, sink, "GET", "config")
    assert shown.body["error_ratio"] == 1.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"error_ratio": "lots"}, "error_ratio"),
        ({"error_ratio": 1.5}, "error_ratio"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"fail_status": 200}, "fail_status"),
        ({"fail_status": 5.5}, "fail_status"),
        ({"seed": True}, "seed"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
async def test_config_endpoint_refuses(
    make_sink: MakeSink, http: aiohttp.ClientSession, changes: dict[str, Any], field: str
):
    sink = await make_sink()
    reply = await control(http, sink, "POST", "config", json=changes)
    assert reply.status == 400
    assert reply.body["error"].startswith(f"{field}: ")
    assert sink.options == SinkOptions()


async def test_config_endpoint_refuses_non_object(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    reply = await control(http, sink, "POST", "config", data=b"[1]")
    assert reply.status == 400
    assert "JSON object" in reply.body["error"]


async def test_received_endpoint(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    await deliver(http, sink, "A")
    await deliver(http, sink, "B", path="/other")
    await deliver(http, sink, "C")
    assert (await control(http, sink, "GET", "received", params={"path": "/hook"})).body == [
        "A",
        "C",
    ]
    assert (await control(http, sink, "GET", "received", params={"path": "/nope"})).body == []
    missing = await control(http, sink, "GET", "received")
    assert missing.status == 400
    assert missing.body["error"].startswith("path: ")


async def test_stats_endpoint_and_unknown_control(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    await deliver(http, sink, "A")
    stats = await control(http, sink, "GET", "stats")
    assert stats.body["received"] == 1
    assert stats.body["by_status"] == {"200": 1}
    assert stats.body["by_path"]["/hook"]["accepted"] == 1
    unknown = await control(http, sink, "GET", "nope")
    assert unknown.status == 404
    assert "/_sink/stats" in unknown.body["error"]
    wrong_method = await control(http, sink, "POST", "stats")
    assert wrong_method.status == 405
    assert sink.stats().received == 1


async def test_reset(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink()
    await deliver(http, sink, "A")
    await deliver(http, sink, "A")
    reply = await control(http, sink, "POST", "reset")
    assert reply.status == 200
    stats = sink.stats()
    assert (stats.received, stats.accepted, stats.duplicates, stats.by_path) == (0, 0, 0, {})
    assert sink.received("/hook") == []
    # Provider ids are never reused, even across a reset.
    assert (await deliver(http, sink, "A")).headers["Sluice-Provider-Id"] == "sink-3"


async def test_wait_for_wakes_without_polling(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(error_ratio=1.0)
    any_reply = asyncio.create_task(sink.wait_for(2, accepted_only=False))
    accepted = asyncio.create_task(sink.wait_for(1, "/hook"))
    await deliver(http, sink, "A")
    await deliver(http, sink, "B")
    await any_reply
    assert not accepted.done()
    sink.configure(error_ratio=0)
    await deliver(http, sink, "C")
    await accepted
    await sink.wait_for(1, "/hook", timeout=0)  # already there: returns at once


async def test_wait_for_timeout_message(make_sink: MakeSink, http: aiohttp.ClientSession):
    sink = await make_sink(fail_status=500)
    await deliver(http, sink, "A")
    with pytest.raises(TimeoutError) as caught:
        await sink.wait_for(3, "/hook", timeout=0.1)
    text = str(caught.value)
    assert "3 accepted messages on path '/hook'" in text
    assert "got 0" in text
    assert "{500: 1}" in text


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_jitter_ms": float("nan")}, "latency_jitter_ms"),
        ({"error_ratio": 2}, "error_ratio"),
        ({"throttle_ratio": -0.1}, "throttle_ratio"),
        ({"error_ratio": 0.6, "throttle_ratio": 0.6}, "throttle_ratio"),
        ({"rate_limit": -5}, "rate_limit"),
        ({"fail_status": 302}, "fail_status"),
        ({"secret": ""}, "secret"),
    ],
)
def test_options_validation(options: dict[str, Any], field: str):
    with pytest.raises(ValueError, match=f"^{field}: "):
        SinkOptions(**options)


def test_configure_refuses_in_process():
    sink = WebhookSink(SinkOptions())
    with pytest.raises(ValueError, match=r"^latency_ms: expected `float`, got `str`"):
        sink.configure(latency_ms="slow")
    with pytest.raises(ValueError, match=r"^colour: unknown sink option"):
        sink.configure(colour="red")
    assert sink.configure(latency_ms=5).latency_ms == 5.0


class _Lines(io.StringIO):
    """A stdout that sets an event when a line containing ``marker`` is written."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.seen = asyncio.Event()

    def write(self, text: str) -> int:
        if self.marker in text:
            self.seen.set()
        return super().write(text)


async def test_run_from_args(monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port, defaults.report_seconds) == ("127.0.0.1", 9090, 0.0)
    args = parser.parse_args(["--port", "0", "--error-ratio", "1", "--seed", "3"])
    out = _Lines("webhook sink listening on ")
    monkeypatch.setattr("sys.stdout", out)
    task = asyncio.create_task(run_from_args(args))
    await asyncio.wait_for(out.seen.wait(), 5)
    url = out.getvalue().split("listening on ", 1)[1].split()[0]
    async with http.post(url + "/hook", json={"id": "A"}) as response:
        assert response.status == 503
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "webhook sink closed: received 1" in out.getvalue()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(url + "/hook", json={"id": "B"}):
            pass


async def test_run_from_args_names_the_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=r"^--error-ratio: "):
        await run_from_args(parser.parse_args(["--error-ratio", "3"]))


def test_summary_line():
    sink = WebhookSink()
    line = sink.stats().summary()
    assert line.startswith("received 0 (0/s) accepted 0")
    assert json.loads(msgspec.json.encode(sink.stats()))["max_in_flight"] == 0
