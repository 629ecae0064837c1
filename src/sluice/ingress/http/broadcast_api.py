"""The broadcast endpoints of the HTTP API: one call to reach everyone on some topics, and
its live accounting.

- ``POST /v1/broadcasts`` checks the request whole (topics, channels, every template
  compiled: an error names the field and the line), stores the broadcast and answers 202 once
  it is committed; its recipients are expanded afterwards (`audience/expander.py`).
  Idempotency-Key as for messages.
- ``GET /v1/broadcasts`` (newest first, ``?before=ID``) and ``GET /v1/broadcasts/{id}``:
  counts per state and channel, suppressions by reason, the rate its messages are finished at
  and the ETA (`audience/progress.py`), all from counters.
- ``POST /v1/broadcasts/{id}/pause``, ``/resume``, ``/cancel``: the answer tells how many
  queued messages were held, released or cancelled, and the counts after.

Examples:
    $ curl $URL/v1/broadcasts -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \\
        -d '{"topics": ["news"], "channels": ["sms", "email"],
             "content": {"sms": {"body": "Hi {{ name }}: storm warning"},
                         "email": {"subject": "Storm", "body": "Hi {{ name }} ..."}}}'
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from sluice.audience.broadcast import (
    BroadcastIn,
    BroadcastSpec,
    compile_content,
    encode_spec,
)
from sluice.audience.progress import ProgressTracker
from sluice.audience.subscriber import CHANNEL_TYPES, ID_PATTERN
from sluice.audience.templates import TemplateError
from sluice.config import Config
from sluice.ingress.http.schema import MAX_TIME_MS, MAX_TTL_SECONDS, ApiError, field_of
from sluice.journal.base import IdempotencyConflict
from sluice.journal.broadcasts import BroadcastStatus, NewBroadcast, UnknownTopics
from sluice.model import PRIORITY_NAMES, now_ms, parse_id

if TYPE_CHECKING:
    from sluice.ingress.contract import Gateway
    from sluice.ingress.http.app import Receive, Scope, _Headers, _Response

#: The subscriber address a channel of each configured type reaches.
CHANNEL_TYPE_OF = {"smpp": "sms", "email": "email", "webhook": "webhook", "push": "push"}
_PREFIX = "/v1/broadcasts/"
_NO_BROADCAST = "no broadcast with this id"
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_UNIX_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_decoder = msgspec.json.Decoder(BroadcastIn)
_encode = msgspec.json.Encoder().encode
_sorted_encode = msgspec.json.Encoder(order="sorted").encode
_ACTIONS = {
    "pause": BroadcastStatus.PAUSED,
    "resume": BroadcastStatus.RUNNING,
    "cancel": BroadcastStatus.CANCELLED,
}


class BroadcastApi:
    """The broadcast endpoints, for `HttpApi` to route to."""

    def __init__(
        self,
        config: Config,
        gateway: Gateway,
        tenant: Callable[[_Headers], str],
        read_body: Callable[[Receive, int], Awaitable[bytes]],
        headers: Callable[[Scope], _Headers],
        idempotency_key: Callable[[_Headers], str | None],
    ) -> None:
        self._config = config
        self._gateway = gateway
        self._tenant = tenant
        self._read_body = read_body
        self._headers = headers
        self._key = idempotency_key
        self._progress = ProgressTracker()
        self._all_channels = frozenset(config.channels)
        self._tenant_channels = {
            name: frozenset(t.channels) if t.channels else self._all_channels
            for name, t in config.tenants.items()
        }
        self._item_routes: dict[str, Callable[..., Awaitable[_Response]]] = {"GET": self._get}
        self._action_routes: dict[str, Callable[..., Awaitable[_Response]]] = {"POST": self._change}

    def routes(self) -> dict[str, dict[str, Callable[..., Awaitable[_Response]]]]:
        return {"/v1/broadcasts": {"POST": self._create, "GET": self._list}}

    def route(
        self, path: str
    ) -> tuple[dict[str, Callable[..., Awaitable[_Response]]] | None, tuple[str, ...]]:
        if not path.startswith(_PREFIX):
            return None, ()
        ident, _, action = path[len(_PREFIX) :].partition("/")
        if ident and not action:
            return self._item_routes, (ident,)
        if ident and action in _ACTIONS:
            return self._action_routes, (ident, action)
        return None, ()

    # ------------------------------------------------------------------------- endpoints

    async def _create(self, scope: Scope, receive: Receive) -> _Response:
        from sluice.ingress.http.app import _Response

        headers = self._headers(scope)
        tenant = self._tenant(headers)
        if (headers.content_type or b"").partition(b";")[0].strip().lower() != b"application/json":
            raise ApiError(
                415, "unsupported_media_type", "send JSON with `Content-Type: application/json`"
            )
        key = self._key(headers)
        raw = await self._read_body(receive, self._config.limits.max_request_bytes)
        try:
            given = _decoder.decode(raw)
        except msgspec.ValidationError as exc:
            reason, field = field_of(exc)
            raise ApiError(422, "invalid_broadcast", reason, field) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "malformed_json", f"the body is not JSON: {exc}") from None
        now = now_ms()
        spec = self._spec(tenant, given, now)
        broadcast_id = self._gateway.next_id()
        new = NewBroadcast(broadcast_id, tenant, encode_spec(spec), spec.topics, spec.start_at)
        # The request as decoded (keys sorted), not its bytes: a retry that spaces or orders
        # its JSON otherwise is the same broadcast, as for messages.
        digest = hashlib.sha256(_sorted_encode(given)).digest() if key is not None else None
        try:
            created, replayed = await self._gateway.broadcasts.create_broadcast(
                new, key, digest, now
            )
        except UnknownTopics as exc:
            raise ApiError(
                422,
                "unknown_topic",
                f"no topic named {', '.join(repr(n) for n in exc.names)}; "
                "POST /v1/topics creates one",
                "topics",
            ) from None
        except IdempotencyConflict:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used before with a different broadcast; "
                "use a new key for a new broadcast",
                "Idempotency-Key",
            ) from None
        if not replayed:
            self._gateway.broadcast_changed()
        view = await self._view(tenant, created)
        extra = ((b"idempotent-replayed", b"true"),) if replayed else ()
        return _Response(202, _encode(view), headers=extra)

    async def _list(self, scope: Scope, receive: Receive) -> _Response:
        from sluice.ingress.http.app import _Response

        tenant = self._tenant(self._headers(scope))
        query = dict(
            pair.split("=", 1) if "=" in pair else (pair, "")
            for pair in scope["query_string"].decode("latin-1").split("&")
            if pair
        )
        before = None
        if query.get("before"):
            before = _parse(query["before"], "before")
        limit = self._config.audience.page_size
        records = await self._gateway.broadcasts.broadcasts(tenant, before, limit + 1)
        views = [self._progress.view(r, now_ms()) for r in records[:limit]]
        following = views[-1]["id"] if len(records) > limit else None
        return _Response(200, _encode({"broadcasts": views, "next": following}))

    async def _get(self, scope: Scope, receive: Receive, ident: str) -> _Response:
        from sluice.ingress.http.app import _Response

        tenant = self._tenant(self._headers(scope))
        return _Response(200, _encode(await self._view(tenant, _parse(ident, None, 404))))

    async def _change(self, scope: Scope, receive: Receive, ident: str, action: str) -> _Response:
        from sluice.ingress.http.app import _Response

        tenant = self._tenant(self._headers(scope))
        broadcast_id = _parse(ident, None, 404)
        change = await self._gateway.broadcasts.change_broadcast(
            tenant, broadcast_id, _ACTIONS[action], now_ms()
        )
        if change is None:
            raise ApiError(404, "not_found", _NO_BROADCAST)
        if action == "resume":
            self._gateway.broadcast_changed()
        key = {"pause": "held", "resume": "released", "cancel": "cancelled"}[action]
        view = self._progress.view(change.record, now_ms())
        return _Response(200, _encode({**view, key: change.messages}))

    async def _view(self, tenant: str, broadcast_id: int) -> dict[str, Any]:
        record = await self._gateway.broadcasts.broadcast(tenant, broadcast_id)
        if record is None:
            raise ApiError(404, "not_found", _NO_BROADCAST)
        return self._progress.view(record, now_ms())

    # -------------------------------------------------------------------------- checks

    def _spec(self, tenant: str, given: BroadcastIn, now: int) -> BroadcastSpec:
        audience, limits = self._config.audience, self._config.limits
        topics = tuple(dict.fromkeys(given.topics))
        if not topics:
            raise ApiError(422, "invalid_broadcast", "name at least one topic", "topics")
        if len(topics) > audience.max_broadcast_topics:
            raise ApiError(
                422,
                "invalid_broadcast",
                f"{len(topics)} topics, more than {audience.max_broadcast_topics} "
                "(audience.max_broadcast_topics)",
                "topics",
            )
        for index, topic in enumerate(topics):
            if not ID_PATTERN.fullmatch(topic):
                raise ApiError(422, "invalid_broadcast", "not a topic name", f"topics[{index}]")
        channels = self._channels(tenant, given)
        for kind in given.content:
            if kind not in CHANNEL_TYPES:
                raise ApiError(
                    422,
                    "invalid_broadcast",
                    f"no channel type {kind!r}; content is keyed by " + ", ".join(CHANNEL_TYPES),
                    f"content.{kind}",
                )
        for index, (name, kind) in enumerate(channels):
            if kind not in given.content:
                raise ApiError(
                    422,
                    "invalid_broadcast",
                    f"channel {name!r} sends {kind}: give content.{kind}",
                    f"channels[{index}]",
                )
        for kind, content in given.content.items():
            for field, text in (("body", content.body), ("subject", content.subject)):
                if text is not None and len(text.encode()) > audience.max_template_bytes:
                    raise ApiError(
                        422,
                        "invalid_template",
                        f"{len(text.encode())} bytes, more than {audience.max_template_bytes} "
                        "(audience.max_template_bytes)",
                        f"content.{kind}.{field}",
                    )
        if given.local_time is not None and not _TIME.fullmatch(given.local_time):
            raise ApiError(422, "invalid_broadcast", "expected HH:MM, 00:00 to 23:59", "local_time")
        if given.sender is not None and len(given.sender) > limits.max_sender_length:
            raise ApiError(
                422,
                "invalid_broadcast",
                f"more than {limits.max_sender_length} characters (limits.max_sender_length)",
                "from",
            )
        self._check_values(given)
        start_at = max(now, _ms(given.send_at, "send_at")) if given.send_at is not None else now
        expires_at = None
        if given.ttl_seconds is not None and given.expires_at is not None:
            raise ApiError(
                422,
                "invalid_broadcast",
                "give either expires_at or ttl_seconds, not both",
                "ttl_seconds",
            )
        if given.ttl_seconds is not None:
            if given.ttl_seconds > MAX_TTL_SECONDS:
                raise ApiError(
                    422,
                    "invalid_broadcast",
                    f"at most {MAX_TTL_SECONDS} seconds (ten years)",
                    "ttl_seconds",
                )
            expires_at = min(MAX_TIME_MS, start_at + given.ttl_seconds * 1000)
        elif given.expires_at is not None:
            expires_at = _ms(given.expires_at, "expires_at")
            if expires_at <= start_at:
                raise ApiError(
                    422, "invalid_broadcast", "expires before it would begin", "expires_at"
                )
        spec = BroadcastSpec(
            tenant=tenant,
            topics=topics,
            channels=channels,
            content=given.content,
            start_at=start_at,
            missing_variable=given.missing_variable,
            defaults=given.defaults,
            data=given.data,
            sender=given.sender,
            priority=int(PRIORITY_NAMES[given.priority]),
            local_time=given.local_time,
            respect_quiet_hours=given.respect_quiet_hours,
            expires_at=expires_at,
            rate=given.rate,
            metadata=given.metadata,
        )
        try:
            compile_content(spec)
        except TemplateError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ApiError(422, "invalid_template", reason, field) from None
        return spec

    def _check_values(self, given: BroadcastIn) -> None:
        """What types cannot say: no NUL (PostgreSQL's text holds none, and a NUL in an SMS
        or a header is a hazard), metadata within the message limits."""
        limits = self._config.limits
        for field, value in (
            ("from", given.sender),
            ("data", given.data),
            ("defaults", given.defaults),
            ("metadata", given.metadata),
            ("content", given.content),
        ):
            if value is not None and _has_nul(value):
                raise ApiError(422, "invalid_broadcast", "holds a NUL character (U+0000)", field)
        for field in ("data", "defaults"):
            size = len(_encode(getattr(given, field)))
            if size > self._config.audience.max_attributes_bytes:
                raise ApiError(
                    422,
                    "invalid_broadcast",
                    f"{size} bytes of JSON, more than {self._config.audience.max_attributes_bytes}"
                    " (audience.max_attributes_bytes)",
                    field,
                )
        metadata = given.metadata or {}
        if len(metadata) > limits.max_metadata_entries or (
            metadata and len(_encode(metadata)) > limits.max_metadata_bytes
        ):
            raise ApiError(
                422,
                "invalid_broadcast",
                f"at most {limits.max_metadata_entries} entries and {limits.max_metadata_bytes}"
                " bytes (limits.max_metadata_entries, limits.max_metadata_bytes)",
                "metadata",
            )

    def _channels(self, tenant: str, given: BroadcastIn) -> tuple[tuple[str, str], ...]:
        names = tuple(dict.fromkeys(given.channels))
        if not names:
            raise ApiError(
                422, "invalid_broadcast", "name at least one channel, in order", "channels"
            )
        allowed = self._tenant_channels.get(tenant, self._all_channels)
        resolved = []
        for index, name in enumerate(names):
            where = f"channels[{index}]"
            if name not in self._all_channels:
                raise ApiError(
                    422,
                    "unknown_channel",
                    f"no channel named {name!r}; GET /v1/channels lists them",
                    where,
                )
            if name not in allowed:
                raise ApiError(
                    422,
                    "channel_not_allowed",
                    f"channel {name!r} is not enabled for this API key's tenant",
                    where,
                )
            resolved.append((name, CHANNEL_TYPE_OF[self._config.channels[name].type]))
        return tuple(resolved)


def _has_nul(value: Any) -> bool:
    """Whether a NUL is in any string of a JSON-like value (keys included)."""
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, msgspec.Struct):
        return any(_has_nul(getattr(value, f)) for f in value.__struct_fields__)
    return False


def _parse(text: str, field: str | None, status: int = 422) -> int:
    try:
        return parse_id(text)
    except ValueError as exc:
        if status == 404:
            raise ApiError(404, "not_found", _NO_BROADCAST) from None
        raise ApiError(422, "invalid_parameter", f"not a broadcast id: {exc}", field) from None


def _ms(value: datetime.datetime | int, field: str) -> int:
    if isinstance(value, int):
        if not 0 <= value <= MAX_TIME_MS:
            raise ApiError(
                422, "invalid_broadcast", f"ms since the epoch, 0 to {MAX_TIME_MS}", field
            )
        return value
    delta = value - _UNIX_EPOCH
    ms = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    if not 0 <= ms <= MAX_TIME_MS:
        raise ApiError(422, "invalid_broadcast", "a time from 1970 to 9999", field)
    return ms
