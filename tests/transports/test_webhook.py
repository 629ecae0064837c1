"""How the webhook transport reads a receiver's answers, and what it sends."""

from __future__ import annotations

import json

import msgspec
import pytest

from sluice.config import WebhookConfig
from sluice.model import Message, Outcome, Priority, format_id
from sluice.sim.webhook_sink import SinkOptions, WebhookSink
from sluice.transports.signing import signature, verify
from sluice.transports.webhook import (
    WebhookPayload,
    WebhookTransport,
    classify,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (202, Outcome.SENT),
        (204, Outcome.SENT),
        (429, Outcome.THROTTLED),
        (408, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (502, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (410, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
    ],
)
def test_status_codes_map_to_outcomes(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("1", 1.0), ("2.5", 2.5), ("0", 0.0), (None, None), ("", None), ("-1", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_signatures_verify_and_detect_tampering() -> None:
    sig = signature(b"k", "1700000000", b'{"a":1}')
    assert verify(b"k", "1700000000", b'{"a":1}', sig)
    assert not verify(b"k", "1700000001", b'{"a":1}', sig)
    assert not verify(b"k", "1700000000", b'{"a":2}', sig)
    assert not verify(b"other", "1700000000", b'{"a":1}', sig)


@pytest.mark.integration
async def test_payload_headers_and_answers_over_real_http() -> None:
    async with WebhookSink(SinkOptions(secret="s")) as sink:
        transport = WebhookTransport(
            "web", WebhookConfig(url=f"{sink.url}/hook", secret="s", timeout_seconds=2), 4
        )
        await transport.start()
        try:
            message = Message(
                123456789, "acme", "web", "+1555", "héllo €", sender="Shop",
                priority=Priority.URGENT, metadata={"k": "v"}, attempts=2,
            )  # fmt: skip
            result = await transport.send(message)
            assert result.outcome is Outcome.SENT
            assert result.provider_id is not None and result.provider_id.startswith("sink-")
            assert sink.received("/hook") == [format_id(123456789)]
            assert sink.stats().bad_signatures == 0
            sink.configure(fail_status=503)
            result = await transport.send(message)
            assert (result.outcome, result.detail) == (Outcome.TRANSIENT, "HTTP 503")
            sink.configure(fail_status=None, throttle_ratio=1.0)
            result = await transport.send(message)
            assert result.outcome is Outcome.THROTTLED
            assert result.retry_after == 1.0
        finally:
            await transport.close()


@pytest.mark.integration
async def test_unreachable_and_slow_receivers_are_transient() -> None:
    transport = WebhookTransport(
        "web", WebhookConfig(url="http://127.0.0.1:9/hook", connect_timeout_seconds=1), 1
    )
    await transport.start()
    try:
        result = await transport.send(Message(1, "acme", "web", "+1", "x", attempts=1))
        assert result.outcome is Outcome.TRANSIENT
        assert result.detail is not None and "connection error" in result.detail
    finally:
        await transport.close()
    async with WebhookSink(SinkOptions(latency_ms=2000)) as sink:
        slow = WebhookTransport(
            "web", WebhookConfig(url=f"{sink.url}/hook", timeout_seconds=0.2), 1
        )
        await slow.start()
        try:
            result = await slow.send(Message(2, "acme", "web", "+1", "x", attempts=1))
            assert result.outcome is Outcome.TRANSIENT
            assert result.detail == "timed out after 0.2 s"
        finally:
            await slow.close()


def test_payload_is_the_documented_json() -> None:
    payload = WebhookPayload(
        id="X", tenant="t", channel="c", to="+1", body="b", priority="bulk", attempt=1,
        sender="S", metadata=None,
    )  # fmt: skip
    assert json.loads(msgspec.json.encode(payload)) == {
        "id": "X", "tenant": "t", "channel": "c", "to": "+1", "body": "b",
        "priority": "bulk", "attempt": 1, "from": "S",
    }  # fmt: skip
