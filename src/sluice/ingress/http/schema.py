"""The HTTP API's wire format: request and response structs, and turning requests into Messages.

Requests are decoded by msgspec straight from bytes into Structs, which checks types, literal
values and static bounds in C; what depends on the configuration (lengths, channels, sizes) is
checked here in a tight loop with no exception on the happy path. Anything wrong with a body
is one exception type, `ApiError`, naming the field by its path (``messages[3].to``).

Examples:
    >>> from sluice.config import Config, ChannelConfig, TenantConfig, WebhookConfig
    >>> hook = ChannelConfig(type="webhook", webhook=WebhookConfig(url="http://x"))
    >>> config = Config(channels={"web": hook}, tenants={"acme": TenantConfig(api_keys=[])})
    >>> parser = MessageParser(config)
    >>> [m] = parser.parse(b'{"channel": "web", "to": "u1", "body": "hi"}', "acme", 0, lambda: 1)
    >>> (m.id, m.tenant, m.channel, m.recipient, m.body, m.priority)
    (1, 'acme', 'web', 'u1', 'hi', 2)
    >>> try:
    ...     parser.parse(b'{"messages": [{"channel": "web", "to": ""}]}', "acme", 0, lambda: 1)
    ... except ApiError as error:
    ...     print(error)
    422 invalid_message: Expected `str` of length >= 1 (field messages[0].to)
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, UnsetType

from sluice.config import Config
from sluice.ingress.sms_length import ALWAYS_ONE_PART, SmsLength
from sluice.journal.base import MessageRecord, TimelineEntry
from sluice.model import (
    PRIORITY_NAMES,
    STATE_NAMES,
    Message,
    Outcome,
    Priority,
    format_id,
    format_time,
)

#: Latest time accepted, in ms since the Unix epoch: 9999-12-31T23:59:59.999Z, the last instant
#: RFC 3339 can write. Keeps every time an int64 for the journal.
MAX_TIME_MS = 253_402_300_799_999
#: Longest ttl_seconds: ten years. Nothing waits that long for delivery; it only bounds the sum.
MAX_TTL_SECONDS = 10 * 365 * 86_400

_UNIX_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

PriorityName = Literal["urgent", "high", "normal", "bulk"]
Timestamp = (
    Annotated[datetime.datetime, msgspec.Meta(tz=True)]
    | Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
    | None
)
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

_PRIORITY_VALUES = {name: int(p) for name, p in PRIORITY_NAMES.items()}
_PRIORITY_BY_VALUE = {int(p): p.name.lower() for p in Priority}
_OUTCOME_NAMES = {int(o): o.name.lower() for o in Outcome}
_STATE_NAMES = {int(s): name for s, name in STATE_NAMES.items()}


class ApiError(Exception):
    """A request the API refuses: HTTP status, a stable code, a sentence, and the field at fault.

    ``headers`` are extra response headers (``Retry-After``, ``WWW-Authenticate``, ``Allow``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field is not None else ""
        return f"{self.status} {self.code}: {self.message}{where}"


# ------------------------------------------------------------------------------------ requests


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    """One message as a producer writes it. Required fields are checked after decoding, so one
    struct serves both a lone message and the top level of a batch request."""

    channel: str | UnsetType = UNSET
    to: NonEmpty | UnsetType = UNSET
    body: str | UnsetType = UNSET
    sender: str | None = None
    priority: PriorityName = "normal"
    not_before: Timestamp = None
    expires_at: Timestamp = None
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_SECONDS)] | None = None
    callback_url: str | None = None
    metadata: dict[str, str] | None = None


class SubmitRequest(MessageIn):
    """The body of ``POST /v1/messages``: either one message's fields, or ``messages`` alone."""

    messages: list[MessageIn] | UnsetType = UNSET


# (attribute, JSON name, default) of each message field: a batch's top level must hold none.
_MESSAGE_FIELDS = tuple(
    (f.name, f.encode_name, f.default) for f in msgspec.structs.fields(MessageIn)
)
_submit_decoder = msgspec.json.Decoder(SubmitRequest)
_any_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()
_sorted_encoder = msgspec.json.Encoder(order="sorted")

# msgspec ends its errors with " - at `$.messages[3].to`"; the API names fields without "$.".
_PATH_RE = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED_FIELD_RE = re.compile(
    r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`"
)


def field_of(error: msgspec.ValidationError) -> tuple[str, str | None]:
    """Split a msgspec error into (reason, field path): ``messages[3].priority``; None = top."""
    text = str(error)
    match = _PATH_RE.search(text)
    path = ""
    if match is not None:
        path = match.group("path")
        text = text[: match.start()]
    named = _NAMED_FIELD_RE.match(text)
    if named is not None:  # the field is the one named in the reason, inside the path
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return text, path or None


class MessageParser:
    """Parses ``POST /v1/messages`` bodies into Messages for one configuration.

    Warning: ids are drawn while messages are built, so a batch refused at message k has used
    k ids. Ids only need to be unique and ordered, so the gap costs nothing.
    """

    __slots__ = (
        "_all_channels",
        "_allowed",
        "_max_batch",
        "_max_body",
        "_max_body_chars",
        "_max_callback",
        "_max_depth",
        "_max_meta_bytes",
        "_max_meta_entries",
        "_max_recipient",
        "_max_sender",
        "_sms_lengths",
    )

    def __init__(self, config: Config) -> None:
        limits = config.limits
        self._max_batch = limits.max_batch
        self._max_body = limits.max_body_bytes
        # A str of n code points is at most 4n bytes of UTF-8: shorter bodies need no encoding.
        self._max_body_chars = limits.max_body_bytes // 4
        self._max_recipient = limits.max_recipient_length
        self._max_sender = limits.max_sender_length
        self._max_callback = limits.max_callback_url_length
        self._max_depth = limits.max_json_depth
        self._max_meta_entries = limits.max_metadata_entries
        self._max_meta_bytes = limits.max_metadata_bytes
        self._all_channels = frozenset(config.channels)
        #: The segment limits of the SMPP channels: a text they can never send is refused.
        self._sms_lengths = {
            name: SmsLength(name, channel.smpp)
            for name, channel in config.channels.items()
            if channel.type == "smpp" and channel.smpp is not None
        }
        self._allowed = {
            name: frozenset(tenant.channels) if tenant.channels else self._all_channels
            for name, tenant in config.tenants.items()
        }

    def parse(
        self, raw: bytes, tenant: str, now_ms: int, next_id: Callable[[], int]
    ) -> list[Message]:
        """Decode and check a request body; all its messages or an ApiError (400/413/422)."""
        return self.build(self.decode(raw), tenant, now_ms, next_id)

    def decode(self, raw: bytes) -> SubmitRequest:
        """The request a body holds, or an ApiError (400 malformed, 422 mistyped or nested
        deeper than limits.max_json_depth)."""
        return _decode(raw, self._max_depth)

    def build(
        self, request: SubmitRequest, tenant: str, now_ms: int, next_id: Callable[[], int]
    ) -> list[Message]:
        """Check a decoded request; all its messages or an ApiError (413/422)."""
        allowed = self._allowed.get(tenant, self._all_channels)
        batch = request.messages
        if batch is UNSET:
            return [self._build(request, -1, tenant, allowed, now_ms, next_id)]
        for attr, name, default in _MESSAGE_FIELDS:
            if getattr(request, attr) != default:
                raise ApiError(
                    422,
                    "invalid_message",
                    f"a batch request has only `messages`; put `{name}` in each message",
                    name,
                )
        n = len(batch)
        if n == 0:
            raise ApiError(422, "invalid_message", "`messages` is empty", "messages")
        if n > self._max_batch:
            raise ApiError(
                413,
                "batch_too_large",
                f"a batch holds at most {self._max_batch} messages (limits.max_batch), "
                f"got {n}; split it",
                "messages",
            )
        build = self._build
        return [build(m, i, tenant, allowed, now_ms, next_id) for i, m in enumerate(batch)]

    def _build(
        self,
        m: MessageIn,
        index: int,
        tenant: str,
        allowed: frozenset[str],
        now: int,
        next_id: Callable[[], int],
    ) -> Message:
        # Only the happy path is inlined; each failure names its field via _where(index).
        channel, to, body = m.channel, m.to, m.body
        if channel is UNSET or to is UNSET or body is UNSET:
            missing = "channel" if channel is UNSET else "to" if to is UNSET else "body"
            raise ApiError(
                422, "invalid_message", "required field is missing", _where(index) + missing
            )
        if channel not in allowed:
            raise self._channel_error(channel, _where(index))
        if len(to) > self._max_recipient:
            raise _too_long(
                _where(index) + "to", len(to), self._max_recipient, "max_recipient_length"
            )
        sender = m.sender
        if sender is not None and len(sender) > self._max_sender:
            raise _too_long(
                _where(index) + "from", len(sender), self._max_sender, "max_sender_length"
            )
        if len(body) > self._max_body_chars and not (
            len(body) <= self._max_body and body.isascii()
        ):
            size = len(body.encode())
            if size > self._max_body:
                raise ApiError(
                    422,
                    "invalid_message",
                    f"body is {size} bytes of UTF-8, more than {self._max_body} "
                    "(limits.max_body_bytes)",
                    _where(index) + "body",
                )
        not_before = m.not_before
        if not_before is not None and not isinstance(not_before, int):
            not_before = _to_ms(not_before, _where(index) + "not_before")
        expires_at = m.expires_at
        if expires_at is not None or m.ttl_seconds is not None:
            expires_at = self._expiry(m, _where(index), now, not_before)
        callback_url = m.callback_url
        if callback_url is not None:
            self._check_callback(callback_url, _where(index))
        metadata = m.metadata
        if metadata:
            self._check_metadata(metadata, _where(index))
        if (
            "\0" in body
            or "\0" in to
            or (sender and "\0" in sender)
            or (callback_url and "\0" in callback_url)
        ):  # the channel is one of the configured names
            raise _nul(_where(index), m)
        if len(body) > ALWAYS_ONE_PART and channel in self._sms_lengths:
            problem = self._sms_lengths[channel].problem(body)
            if problem is not None:
                raise ApiError(
                    422, "invalid_message", f"body can never be sent as an SMS: {problem}",
                    _where(index) + "body",
                )  # fmt: skip
        return Message(
            next_id(),
            tenant,
            channel,
            to,
            body,
            sender,
            _PRIORITY_VALUES[m.priority],
            not_before,
            expires_at,
            callback_url,
            metadata,
        )

    def _channel_error(self, channel: str, where: str) -> ApiError:
        if channel in self._all_channels:
            return ApiError(
                422,
                "channel_not_allowed",
                f"channel {channel!r} is not enabled for this API key's tenant",
                where + "channel",
            )
        return ApiError(
            422,
            "unknown_channel",
            f"no channel named {channel!r}; GET /v1/channels lists them",
            where + "channel",
        )

    @staticmethod
    def _expiry(m: MessageIn, where: str, now: int, not_before: int | None) -> int:
        if m.ttl_seconds is not None:
            if m.expires_at is not None:
                raise ApiError(
                    422,
                    "invalid_message",
                    "give either expires_at or ttl_seconds, not both",
                    where + "ttl_seconds",
                )
            expires_at = now + m.ttl_seconds * 1000
        else:
            raw = m.expires_at
            assert raw is not None
            expires_at = raw if isinstance(raw, int) else _to_ms(raw, where + "expires_at")
        if expires_at <= now:
            raise ApiError(
                422, "invalid_message", "expires_at is in the past", where + "expires_at"
            )
        if not_before is not None and expires_at <= not_before:
            raise ApiError(
                422,
                "invalid_message",
                "expires_at must be later than not_before",
                where + "expires_at",
            )
        return expires_at

    def _check_callback(self, url: str, where: str) -> None:
        field = where + "callback_url"
        if len(url) > self._max_callback:
            raise _too_long(field, len(url), self._max_callback, "max_callback_url_length")
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ApiError(
                422, "invalid_message", "expected an absolute http:// or https:// URL", field
            )

    def _check_metadata(self, metadata: dict[str, str], where: str) -> None:
        if len(metadata) > self._max_meta_entries:
            raise ApiError(
                422,
                "invalid_message",
                f"metadata has {len(metadata)} entries, more than {self._max_meta_entries} "
                "(limits.max_metadata_entries)",
                where + "metadata",
            )
        if any("\0" in k or "\0" in v for k, v in metadata.items()):
            raise ApiError(
                422,
                "invalid_message",
                "metadata holds a NUL character (U+0000)",
                where + "metadata",
            )
        size = len(_json_encoder.encode(metadata))
        if size > self._max_meta_bytes:
            raise ApiError(
                422,
                "invalid_message",
                f"metadata is {size} bytes as JSON, more than {self._max_meta_bytes} "
                "(limits.max_metadata_bytes)",
                where + "metadata",
            )


def _where(index: int) -> str:
    """The path prefix of message `index` (-1: the lone message of a single request)."""
    return "" if index < 0 else f"messages[{index}]."


def fingerprint(request: SubmitRequest) -> bytes:
    """A digest of what a request asks, not of its bytes: the same messages sent again with
    other whitespace, key order or escapes have the same fingerprint (Idempotency-Key)."""
    return hashlib.sha256(_sorted_encoder.encode(request)).digest()


def _nul(where: str, m: MessageIn) -> ApiError:
    fields = (("body", m.body), ("to", m.to), ("from", m.sender), ("callback_url", m.callback_url))
    for name, value in fields:
        if isinstance(value, str) and "\0" in value:
            return ApiError(
                422, "invalid_message", f"{name} holds a NUL character (U+0000)", where + name
            )
    raise AssertionError("no field holds a NUL")


#: Brackets kept by `json_depth`, with strings (which may hold brackets) taken out first. The
#: quantifiers are possessive and the closing quote optional, so that a string that never
#: ends is one linear match, not a backtracking search from every quote.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?')
#: Bytes of a body `json_depth` looks at, at most (~15 ms of the event loop for the worst
#: kind of body): nesting past them is caught by the recursion guard behind it.
MAX_DEPTH_SCAN = 256 * 1024
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes, scan: int = MAX_DEPTH_SCAN) -> int:
    """How deep arrays and objects nest in `raw` (0 for a scalar) within its first `scan`
    bytes: C speed but for one step per bracket, so the worst body costs milliseconds, not
    seconds. Meant for bodies that failed to decode."""
    brackets = _JSON_STRING.sub(b"", raw[:scan]).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _decode(raw: bytes, max_depth: int) -> SubmitRequest:
    try:
        return _submit_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        # msgspec validates while it parses, so a body that is both broken and mistyped can
        # fail on the type first; report the syntax, which the producer must fix first. A
        # body that decodes at all is at most four levels deep (messages, one, metadata), so
        # only a refused one can nest deeper: it is measured before it is parsed untyped.
        _check_depth(raw, max_depth)
        try:
            _any_decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as syntax:
            raise _malformed(syntax) from None
        except RecursionError:
            raise _too_deep(json_depth(raw), max_depth) from None
        reason, field = field_of(exc)
        raise ApiError(422, "invalid_message", reason, field) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _malformed(exc) from None
    except RecursionError:  # an unknown field's value, skipped by recursion
        raise _too_deep(json_depth(raw), max_depth) from None


def _check_depth(raw: bytes, max_depth: int) -> None:
    depth = json_depth(raw)
    if depth > max_depth:
        raise _too_deep(depth, max_depth)


def _too_deep(depth: int, max_depth: int) -> ApiError:
    return ApiError(
        422,
        "too_deep",
        f"the JSON nests {depth} levels deep, more than {max_depth} (limits.max_json_depth)",
    )


def _malformed(exc: Exception) -> ApiError:
    if isinstance(exc, UnicodeDecodeError):
        reason = f"the body is not UTF-8: invalid byte at position {exc.start}"
    else:
        reason = f"the body is not JSON: {exc}"
    return ApiError(400, "malformed_json", reason)


def _to_ms(value: datetime.datetime, field: str) -> int:
    delta = value - _UNIX_EPOCH
    ms = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    if ms < 0:
        raise ApiError(422, "invalid_message", "times before 1970 are not accepted", field)
    return ms


def _too_long(field: str, got: int, limit: int, key: str) -> ApiError:
    return ApiError(
        422,
        "invalid_message",
        f"{got} characters, more than {limit} (limits.{key})",
        field,
    )


# ----------------------------------------------------------------------------------- responses


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, omit_defaults=True, kw_only=True):
    error: ErrorDetail
    #: Only on 409 from DELETE: the message and the state that made it too late.
    id: str | None = None
    state: str | None = None


class SubmitResponse(msgspec.Struct):
    ids: list[str]
    replayed: bool


class TimelineView(msgspec.Struct, omit_defaults=True, kw_only=True):
    at: str
    state: str
    channel: str | None = None
    attempt: int | None = None
    outcome: str | None = None
    provider_id: str | None = None
    latency_ms: float | None = None
    detail: str | None = None


class MessageView(msgspec.Struct, omit_defaults=True, kw_only=True, rename={"sender": "from"}):
    id: str
    channel: str
    to: str
    sender: str | None = None
    body: str
    priority: str
    state: str
    attempts: int
    created_at: str
    updated_at: str
    not_before: str | None = None
    expires_at: str | None = None
    provider_id: str | None = None
    metadata: dict[str, str] | None = None
    callback_url: str | None = None
    timeline: list[TimelineView] | UnsetType = UNSET


class MessagePage(msgspec.Struct):
    messages: list[MessageView]
    next_cursor: str | None


class CancelResponse(msgspec.Struct):
    id: str
    state: str


def _timeline_view(entry: TimelineEntry) -> TimelineView:
    return TimelineView(
        at=format_time(entry.at),
        state=_STATE_NAMES[entry.state],
        channel=entry.channel,
        attempt=entry.attempt,
        outcome=None if entry.outcome is None else _OUTCOME_NAMES[entry.outcome],
        provider_id=entry.provider_id,
        latency_ms=entry.latency_ms,
        detail=entry.detail,
    )


def message_view(record: MessageRecord, timeline: bool = True) -> MessageView:
    """A journal record as the API shows it; the listing leaves the timeline out."""
    m = record.message
    return MessageView(
        id=format_id(m.id),
        channel=m.channel,
        to=m.recipient,
        sender=m.sender,
        body=m.body,
        priority=_PRIORITY_BY_VALUE.get(m.priority, str(m.priority)),
        state=_STATE_NAMES[record.state],
        attempts=m.attempts,
        created_at=format_time(record.created_at),
        updated_at=format_time(record.updated_at),
        not_before=None if m.not_before is None else format_time(m.not_before),
        expires_at=None if m.expires_at is None else format_time(m.expires_at),
        provider_id=record.provider_id,
        metadata=m.metadata or None,
        callback_url=m.callback_url,
        timeline=[_timeline_view(e) for e in record.timeline] if timeline else UNSET,
    )


def state_name(state: int) -> str:
    return _STATE_NAMES[state]
