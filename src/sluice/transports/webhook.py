"""HTTP webhook transport: one signed JSON POST per message over a pooled aiohttp session.

Answers map to outcomes the way a webhook receiver means them: 2xx → sent; 429 → throttled
(the channel slows down and retries, honouring Retry-After); 408, 5xx, timeouts and connection
errors → transient; any other 4xx → permanent (the receiver refuses this message for good).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import msgspec

from sluice.config import WebhookConfig
from sluice.model import PRIORITY_NAMES, Message, Outcome, Priority, format_id
from sluice.transports.base import SendResult
from sluice.transports.signing import (
    MESSAGE_ID_HEADER,
    PROVIDER_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

_PRIORITY_BY_VALUE = {int(p): name for name, p in PRIORITY_NAMES.items()}
USER_AGENT = "sluice-webhook/1"


class WebhookPayload(msgspec.Struct, omit_defaults=True):
    id: str
    tenant: str
    channel: str
    to: str
    body: str
    priority: str
    attempt: int
    sender: str | None = msgspec.field(default=None, name="from")
    metadata: dict[str, str] | None = None


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SENT
    if status == 429:
        return Outcome.THROTTLED
    if status == 408 or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class WebhookTransport:
    paces_itself = False

    def __init__(self, channel: str, config: WebhookConfig, width: int) -> None:
        self._channel = channel
        self._config = config
        self._width = width
        self._secret = config.secret.encode() if config.secret else None
        self._encode = msgspec.json.Encoder().encode
        self._session: aiohttp.ClientSession | None = None

    def send_soon(self, message: Message, done: Callable[[SendResult], None]) -> bool:
        return False  # an HTTP request needs its task (aiohttp) anyway

    def drop_queued(self) -> int:
        return 0  # every send is a task of the runner's: nothing waits in here

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._width, ttl_dns_cache=60, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(
            total=self._config.timeout_seconds, sock_connect=self._config.connect_timeout_seconds
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}
        )

    async def run(self) -> None:
        return  # a pooled HTTP client has no background work of its own

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, message: Message) -> SendResult:
        assert self._session is not None, "transport not started"
        message_id = format_id(message.id)
        body = self._encode(
            WebhookPayload(
                id=message_id,
                tenant=message.tenant,
                channel=self._channel,
                to=message.recipient,
                body=message.body,
                priority=_PRIORITY_BY_VALUE.get(message.priority, Priority.NORMAL.name.lower()),
                attempt=message.attempts,
                sender=message.sender,
                metadata=message.metadata,
            )
        )
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            MESSAGE_ID_HEADER: message_id,
            TIMESTAMP_HEADER: timestamp,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, timestamp, body)
        try:
            async with self._session.post(self._config.url, data=body, headers=headers) as resp:
                await resp.read()
                outcome = classify(resp.status)
                return SendResult(
                    outcome,
                    provider_id=resp.headers.get(PROVIDER_ID_HEADER),
                    detail=f"HTTP {resp.status}",
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
        except TimeoutError:
            return SendResult(
                Outcome.TRANSIENT,
                detail=f"timed out after {self._config.timeout_seconds:g} s",
            )
        except aiohttp.ClientError as exc:
            return SendResult(Outcome.TRANSIENT, detail=f"connection error: {exc}")
