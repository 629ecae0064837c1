"""Parsing and checking of POST /v1/messages bodies, without a server."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.config import Config, from_dict, hash_api_key
from sluice.ingress.http.schema import (
    MAX_TIME_MS,
    ApiError,
    MessageParser,
    field_of,
    fingerprint,
    format_time,
    json_depth,
    message_view,
)
from sluice.journal.base import MessageRecord, TimelineEntry
from sluice.model import Message, Outcome, Priority, State, format_id

NOW = 1_750_000_000_000  # 2025-06-15, the parser's "now" in these tests
UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)

LIMITS = {
    "max_batch": 20,
    "max_body_bytes": 200,
    "max_recipient_length": 30,
    "max_sender_length": 11,
    "max_metadata_entries": 3,
    "max_metadata_bytes": 120,
    "max_callback_url_length": 80,
}


def make_config() -> Config:
    hook = {"type": "webhook", "webhook": {"url": "http://127.0.0.1:9/"}}
    return from_dict(
        {
            "channels": {"web": hook, "sms": hook, "mail": hook},
            "tenants": {
                "acme": {"api_keys": [hash_api_key("acme-key")]},
                "narrow": {"api_keys": [hash_api_key("narrow-key")], "channels": ["sms"]},
            },
            "limits": LIMITS,
        }
    )


PARSER = MessageParser(make_config())


class Ids:
    def __init__(self) -> None:
        self.next_value = 100

    def __call__(self) -> int:
        self.next_value += 1
        return self.next_value


def parse(payload: Any, tenant: str = "acme") -> list[Message]:
    raw = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    return PARSER.parse(raw, tenant, NOW, Ids())


def refused(payload: Any, tenant: str = "acme") -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(payload, tenant)
    return info.value


def msg(**fields: Any) -> dict[str, Any]:
    return {"channel": "web", "to": "+447900000001", "body": "hi", **fields}


# ------------------------------------------------------------------------- examples


def test_single_message_with_every_field() -> None:
    [m] = parse(
        msg(
            **{"from": "ACME"},
            priority="urgent",
            not_before="2030-01-01T00:00:00.250Z",
            expires_at=1_900_000_000_000,
            callback_url="https://example.com/cb?x=1",
            metadata={"order": "42"},
        )
    )
    assert m == Message(
        101,
        "acme",
        "web",
        "+447900000001",
        "hi",
        "ACME",
        Priority.URGENT,
        1_893_456_000_250,
        1_900_000_000_000,
        "https://example.com/cb?x=1",
        {"order": "42"},
    )


def test_defaults() -> None:
    [m] = parse(msg())
    assert (m.sender, m.priority, m.not_before, m.expires_at, m.callback_url, m.metadata) == (
        None,
        Priority.NORMAL,
        None,
        None,
        None,
        None,
    )
    [m] = parse(msg(**{"from": None}, metadata=None, not_before=None))
    assert m.sender is None


def test_batch_keeps_order_and_draws_one_id_each() -> None:
    messages = parse({"messages": [msg(body=str(i)) for i in range(5)]})
    assert [m.body for m in messages] == ["0", "1", "2", "3", "4"]
    assert [m.id for m in messages] == [101, 102, 103, 104, 105]


def test_ttl_counts_from_now() -> None:
    [m] = parse(msg(ttl_seconds=60))
    assert m.expires_at == NOW + 60_000


@pytest.mark.parametrize(
    ("payload", "status", "code", "field"),
    [
        (b"", 400, "malformed_json", None),
        (b"{", 400, "malformed_json", None),
        (b'{"a": 1', 400, "malformed_json", None),  # broken even though `a` is unknown too
        (b'{"to": \xff}', 400, "malformed_json", None),
        (b'"\xff"', 400, "malformed_json", None),
        (b"[]", 422, "invalid_message", None),
        (b"null", 422, "invalid_message", None),
        ({"messages": []}, 422, "invalid_message", "messages"),
        ({"messages": None}, 422, "invalid_message", "messages"),
        ({"messages": [msg()], "channel": "web"}, 422, "invalid_message", "channel"),
        ({"messages": [msg()], "priority": "high"}, 422, "invalid_message", "priority"),
        ({"messages": [msg()] * 21}, 413, "batch_too_large", "messages"),
        (
            {"messages": [msg(), {"to": "x", "body": "y"}]},
            422,
            "invalid_message",
            "messages[1].channel",
        ),
        ({"messages": [msg(), msg(messages=[])]}, 422, "invalid_message", "messages[1].messages"),
        (msg(to=""), 422, "invalid_message", "to"),
        (msg(to=None), 422, "invalid_message", "to"),
        (msg(to="x" * 31), 422, "invalid_message", "to"),
        (msg(body=None), 422, "invalid_message", "body"),
        ({"channel": "web", "to": "x"}, 422, "invalid_message", "body"),
        (msg(body="x" * 201), 422, "invalid_message", "body"),
        (msg(body="é" * 101), 422, "invalid_message", "body"),  # 202 bytes of UTF-8
        (msg(**{"from": "x" * 12}), 422, "invalid_message", "from"),
        (msg(priority="low"), 422, "invalid_message", "priority"),
        (msg(priority=1), 422, "invalid_message", "priority"),
        (msg(channel="pigeon"), 422, "unknown_channel", "channel"),
        (msg(channel=7), 422, "invalid_message", "channel"),
        (msg(not_before="tomorrow"), 422, "invalid_message", "not_before"),
        (msg(not_before="2030-01-01T00:00:00"), 422, "invalid_message", "not_before"),
        (msg(not_before=-1), 422, "invalid_message", "not_before"),
        (msg(not_before=1.5), 422, "invalid_message", "not_before"),
        (msg(not_before=MAX_TIME_MS + 1), 422, "invalid_message", "not_before"),
        (msg(not_before=10**30), 422, "invalid_message", "not_before"),
        (msg(not_before="1969-12-31T23:59:59Z"), 422, "invalid_message", "not_before"),
        (msg(expires_at=NOW), 422, "invalid_message", "expires_at"),
        (msg(expires_at="2020-01-01T00:00:00Z"), 422, "invalid_message", "expires_at"),
        (msg(not_before=NOW + 10, expires_at=NOW + 10), 422, "invalid_message", "expires_at"),
        (msg(expires_at=NOW + 10_000, ttl_seconds=5), 422, "invalid_message", "ttl_seconds"),
        (msg(ttl_seconds=0), 422, "invalid_message", "ttl_seconds"),
        (msg(ttl_seconds="60"), 422, "invalid_message", "ttl_seconds"),
        (msg(callback_url="ftp://example.com/x"), 422, "invalid_message", "callback_url"),
        (msg(callback_url="/relative"), 422, "invalid_message", "callback_url"),
        (msg(callback_url="http://[::1"), 422, "invalid_message", "callback_url"),
        (msg(callback_url="https://e.com/" + "x" * 80), 422, "invalid_message", "callback_url"),
        (msg(metadata={"a": 1}), 422, "invalid_message", "metadata[...]"),
        (msg(metadata=["a"]), 422, "invalid_message", "metadata"),
        (msg(metadata={str(i): "v" for i in range(4)}), 422, "invalid_message", "metadata"),
        (msg(metadata={"k": "v" * 120}), 422, "invalid_message", "metadata"),
        (msg(subject="x"), 422, "invalid_message", "subject"),
        (msg(From="x"), 422, "invalid_message", "From"),
    ],
)
def test_refusals_name_the_field(payload: Any, status: int, code: str, field: str | None) -> None:
    error = refused(payload)
    assert (error.status, error.code, error.field) == (status, code, field), error.message


def test_batch_errors_name_the_message() -> None:
    error = refused({"messages": [msg(), msg(), msg(), msg(priority=3)]})
    assert error.field == "messages[3].priority"
    error = refused({"messages": [msg(), msg(to="x" * 31)]})
    assert error.field == "messages[1].to"
    assert "limits.max_recipient_length" in error.message
    error = refused({"messages": [msg(), msg(colour="red")]})
    assert error.field == "messages[1].colour"


def test_channel_not_allowed_for_tenant() -> None:
    error = refused(msg(channel="web"), tenant="narrow")
    assert (error.status, error.code, error.field) == (422, "channel_not_allowed", "channel")
    [m] = parse(msg(channel="sms"), tenant="narrow")
    assert m.tenant == "narrow"


def test_limits_are_inclusive() -> None:
    [m] = parse(
        msg(
            to="x" * 30,
            body="é" * 100,
            **{"from": "x" * 11},
            metadata={"a": "1", "b": "2", "c": "3"},
            callback_url="https://e.com/" + "x" * 66,
        )
    )
    assert len(m.body.encode()) == 200
    [m] = parse(msg(body="x" * 200))
    assert len(m.body) == 200
    assert len(parse({"messages": [msg()] * 20})) == 20


def test_malformed_json_names_the_position() -> None:
    error = refused(b'{"channel": "web", "to": }')
    assert "byte 25" in error.message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"channel": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # a mistyped field
        b'{"channel": "web", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # an unknown one
        b"[" * 100_000,  # broken as well as deep
        b'{"to": "+1", "body": "[[[[", "channel": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}",
    ],
)
def test_deep_nesting_is_refused_naming_the_limit(raw: bytes) -> None:
    """Python's recursion limit is about 1,000: far below it, the limit answers 422."""
    error = refused(raw)
    assert (error.status, error.code) == (422, "too_deep")
    assert "limits.max_json_depth" in error.message


@pytest.mark.timeout(20)  # a hang guard: the backtracking scan took 29 s on this body
def test_a_string_that_never_ends_is_scanned_in_linear_time() -> None:
    """The depth scan takes strings out first; one that never closes, made of escaped
    quotes, once sent the scan backtracking from every quote (80 KB: 29 s of the loop)."""
    raw = b'{"messages": 1, "x": "' + b'\\"' * 40_000
    assert json_depth(raw) == 1
    error = refused(raw)
    assert error.status in (400, 422)


def test_nesting_within_the_limit_is_judged_on_its_fields() -> None:
    error = refused(b'{"channel": ' + b"[" * 30 + b"]" * 30 + b', "to": "+1", "body": "x"}')
    assert (error.code, error.field) == ("invalid_message", "channel")


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": ["[[{\\"]", {"b": "}}"}]}') == 3
    assert json_depth(b'"[[["') == 0


@pytest.mark.parametrize("field", ["body", "to", "from", "callback_url"])
def test_a_nul_character_is_refused_naming_its_field(field: str) -> None:
    """Both journals must treat it alike: PostgreSQL text cannot hold U+0000, so neither
    journal is given one."""
    message = msg(**{field: "https://h.example/ab\0c" if field == "callback_url" else "ab\0c"})
    error = refused(message)
    assert (error.status, error.field) == (422, field)
    assert "NUL" in error.message
    error = refused({"messages": [msg(), message]})
    assert error.field == f"messages[1].{field}"


def test_a_nul_character_in_metadata_is_refused() -> None:
    error = refused(msg(metadata={"order": "4\x002"}))
    assert (error.status, error.field) == (422, "metadata")


def test_the_fingerprint_is_of_the_request_not_its_bytes() -> None:
    one = PARSER.decode(b'{"channel":"web","to":"+1","body":"hi","metadata":{"a":"1","b":"2"}}')
    same = PARSER.decode(
        b'{ "metadata": {"b": "2", "a": "1"}, "body": "h\\u0069",\n "to": "+1", "channel": "web" }'
    )
    other = PARSER.decode(b'{"channel":"web","to":"+1","body":"hi!"}')
    assert fingerprint(one) == fingerprint(same) != fingerprint(other)


def test_a_body_an_smpp_channel_can_never_send_is_refused() -> None:
    """Over the channel's smpp.max_segments: refused now, not failed after the 202."""
    smpp = {"type": "smpp", "smpp": {"host": "smsc", "system_id": "acme", "max_segments": 3}}
    config = from_dict(
        {"channels": {"sms": smpp}, "tenants": {"acme": {"api_keys": [hash_api_key("k")]}}}
    )
    parser = MessageParser(config)

    def parse_body(body: str) -> list[Message]:
        raw = msgspec.json.encode({"channel": "sms", "to": "+447900000001", "body": body})
        return parser.parse(raw, "acme", NOW, Ids())

    assert len(parse_body("a" * 456)) == 1  # three parts of 152 septets
    with pytest.raises(ApiError) as info:
        parse_body("a" * 457)
    assert (info.value.status, info.value.field) == (422, "body")
    assert "4 segments" in info.value.message
    assert "channels.sms.smpp.max_segments is 3" in info.value.message
    assert len(parse_body("é" * 201)) == 1  # GSM 7-bit has é: two parts
    with pytest.raises(ApiError):
        parse_body("ж" * 202)  # UCS-2: 67 a part, four parts


class _Inner(msgspec.Struct, forbid_unknown_fields=True):
    x: int


class _Outer(msgspec.Struct):
    items: list[_Inner]


def test_field_of_msgspec_paths() -> None:
    def error_of(raw: bytes) -> msgspec.ValidationError:
        with pytest.raises(msgspec.ValidationError) as info:
            msgspec.json.decode(raw, type=_Outer)
        return info.value

    assert field_of(error_of(b'{"items": [{"x": 1}, {"x": "a"}]}'))[1] == "items[1].x"
    assert field_of(error_of(b'{"items": [{"x": 1, "y": 2}]}'))[1] == "items[0].y"
    assert field_of(error_of(b'{"items": [{}]}'))[1] == "items[0].x"
    assert field_of(error_of(b"{}"))[1] == "items"
    assert field_of(error_of(b"[]")) == ("Expected `object`, got `array`", None)


def test_a_thousand_messages_parse_well_under_two_ms() -> None:
    batch = msgspec.json.encode(
        {
            "messages": [
                {"channel": "web", "to": f"+4479{i:08d}", "body": "Your code is 123456."}
                for i in range(1000)
            ]
        }
    )
    parser = MessageParser(  # default limits: max_batch is 10,000
        from_dict({"channels": {"web": {"type": "webhook", "webhook": {"url": "http://x/"}}}})
    )
    ids = Ids()
    best = float("inf")
    for _ in range(30):
        start = time.perf_counter()
        messages = parser.parse(batch, "acme", NOW, ids)
        best = min(best, time.perf_counter() - start)
    assert len(messages) == 1000
    assert best < 0.002, f"best of 30: {best * 1e3:.2f} ms"


# ------------------------------------------------------------------------ responses


def test_format_time() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1_735_689_600_123) == "2025-01-01T00:00:00.123Z"
    assert format_time(MAX_TIME_MS) == "9999-12-31T23:59:59.999Z"


def test_message_view_omits_nulls_and_names_enums() -> None:
    message = Message(5, "acme", "web", "to", "body", priority=Priority.BULK, attempts=1)
    record = MessageRecord(
        message,
        State.SENT,
        1_000,
        2_000,
        1_000,
        "prov-1",
        [
            TimelineEntry(1_000, State.QUEUED, "web"),
            TimelineEntry(1_500, State.SENT, "web", 1, Outcome.SENT, "prov-1", 12.5),
        ],
    )
    view = msgspec.json.decode(msgspec.json.encode(message_view(record)))
    assert view == {
        "id": format_id(5),
        "channel": "web",
        "to": "to",
        "body": "body",
        "priority": "bulk",
        "state": "sent",
        "attempts": 1,
        "created_at": "1970-01-01T00:00:01.000Z",
        "updated_at": "1970-01-01T00:00:02.000Z",
        "provider_id": "prov-1",
        "timeline": [
            {"at": "1970-01-01T00:00:01.000Z", "state": "queued", "channel": "web"},
            {
                "at": "1970-01-01T00:00:01.500Z",
                "state": "sent",
                "channel": "web",
                "attempt": 1,
                "outcome": "sent",
                "provider_id": "prov-1",
                "latency_ms": 12.5,
            },
        ],
    }
    listed = msgspec.json.decode(msgspec.json.encode(message_view(record, timeline=False)))
    assert "timeline" not in listed


# ------------------------------------------------------------------------ properties

#: Any text a producer may send: every character but surrogates and NUL (refused, below).
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
_text = st.text(_chars, max_size=12)
_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)
_datetimes = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(datetime.datetime(1970, 1, 2), datetime.datetime(9999, 12, 30)),
    _offsets,
)


def _ms(dt: datetime.datetime) -> int:
    return (dt - EPOCH) // datetime.timedelta(milliseconds=1)


@st.composite
def _time(draw: st.DrawFn, low: int = 0) -> tuple[Any, int]:
    """A timestamp as JSON (int ms or RFC 3339 text) and the ms it stands for, >= low."""
    if draw(st.booleans()):
        ms = draw(st.integers(low, MAX_TIME_MS - 1))
        return ms, ms
    dt = draw(_datetimes.filter(lambda d: _ms(d) >= low))
    return dt.isoformat(), _ms(dt)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A message as a producer writes it, and the Message fields it must become."""
    channel = draw(st.sampled_from(["web", "sms", "mail"]))
    to = draw(st.text(_chars, min_size=1, max_size=30))
    body = draw(st.text(_chars, max_size=50))
    doc: dict[str, Any] = {"channel": channel, "to": to, "body": body}
    want: dict[str, Any] = {
        "channel": channel,
        "recipient": to,
        "body": body,
        "sender": None,
        "priority": Priority.NORMAL,
        "not_before": None,
        "expires_at": None,
        "callback_url": None,
        "metadata": None,
    }
    if draw(st.booleans()):
        doc["from"] = want["sender"] = draw(st.none() | _text.filter(lambda s: len(s) <= 11))
    if draw(st.booleans()):
        name = draw(st.sampled_from(["urgent", "high", "normal", "bulk"]))
        doc["priority"], want["priority"] = name, Priority[name.upper()]
    if draw(st.booleans()):
        doc["not_before"], want["not_before"] = draw(_time())
    expiry = draw(st.sampled_from(["none", "absolute", "ttl"]))
    if expiry == "absolute":
        low = max(NOW, want["not_before"] or 0) + 1
        if low < MAX_TIME_MS:
            doc["expires_at"], want["expires_at"] = draw(_time(low))
    elif expiry == "ttl" and (want["not_before"] or 0) < NOW:
        ttl = draw(st.integers(1, 10 * 365 * 86_400))
        doc["ttl_seconds"], want["expires_at"] = ttl, NOW + ttl * 1000
    if draw(st.booleans()):
        url = (
            "http"
            + draw(st.sampled_from(["", "s"]))
            + "://h.example/"
            + draw(st.text("abc/?=&%", max_size=20))
        )
        doc["callback_url"] = want["callback_url"] = url
    if draw(st.booleans()):
        metadata = draw(st.dictionaries(_text, _text, max_size=3))
        if len(json.dumps(metadata, ensure_ascii=False).encode()) <= 120:
            doc["metadata"] = metadata
            want["metadata"] = metadata
    return doc, want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_messages(), min_size=1, max_size=5), st.booleans())
def test_valid_messages_parse_to_the_same_fields(
    drawn: list[tuple[dict[str, Any], dict[str, Any]]], as_batch: bool
) -> None:
    if as_batch or len(drawn) > 1:
        payload: Any = {"messages": [doc for doc, _ in drawn]}
    else:
        payload = drawn[0][0]
    messages = parse(payload)
    assert len(messages) == len(drawn)
    for message, (_, want) in zip(messages, drawn, strict=True):
        got = {name: getattr(message, name) for name in want}
        assert got == want
        assert message.tenant == "acme"
        assert message.attempts == 0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "channel",
        "to",
        "from",
        "body",
        "priority",
        "not_before",
        "expires_at",
        "ttl_seconds",
        "callback_url",
        "metadata",
        "messages",
        "extra",
    ]
)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Any:
    """A valid message or batch with one field set to an arbitrary JSON value."""
    doc = dict(draw(valid_messages())[0])
    doc[draw(_field_names)] = draw(_json_values)
    if draw(st.booleans()):
        return {"messages": [draw(valid_messages())[0], doc]}
    return doc


def _parse_or_refuse(payload: Any) -> None:
    try:
        messages = parse(payload)
    except ApiError as error:
        assert error.status in (400, 413, 422)
        assert error.code and error.message
    else:
        assert messages and all(isinstance(m, Message) for m in messages)


@settings(max_examples=400, deadline=None)
@given(_json_values | mutated_bodies())
def test_any_json_value_is_parsed_or_refused_with_an_api_error(value: Any) -> None:
    _parse_or_refuse(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | _text.map(str.encode))
def test_any_bytes_are_parsed_or_refused_with_an_api_error(raw: bytes) -> None:
    _parse_or_refuse(raw)
