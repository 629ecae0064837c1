"""The audience endpoints of the HTTP API: subscribers (one at a time, or imported by the
thousand) and topics (created, listed, deleted, and subscribed to by id).

Same conventions as the message endpoints (`app.py`): the same API keys and tenancy (a tenant
sees only its own subscribers and topics), JSON answers, every refusal in the error envelope
with a stable code and the field at fault. The journal keeps a subscriber as one compact blob
(`audience/subscriber.py`); these handlers check a record against the `[audience]` limits,
encode it, and leave the rest to `AudienceStore` (`journal/audience.py`).

``POST /v1/subscribers/import`` takes NDJSON (one subscriber a line, decoded by msgspec into
its struct) or CSV (a header row, then one subscriber a record; `CSV_COLUMNS`) of at most
`audience.max_import_lines` records, and stores the good ones in one `upsert_subscribers`
call (one transaction): a bad line is reported with its line number and field, never a
reason to refuse the others. Parsing and checking is ~165,000 records/s for NDJSON and
~95,000/s for CSV on one core of the development machine (10,000 records with phone, email,
time zone, attributes and two topics), most of it `SubscriberRules.check`; storing them is
the larger part of an import (SQLite ~50-90,000/s, PostgreSQL ~40,000/s, one request at a
time). The CSV record is read into fields by `CsvLayout` once per header, not per row.

Examples:
    $ curl -X PUT $URL/v1/subscribers/u1 -H "Authorization: Bearer $KEY" \\
        -H "Content-Type: application/json" -d '{"phone": "+447700900123", "topics": ["news"]}'
    $ curl $URL/v1/subscribers/import -H "Authorization: Bearer $KEY" \\
        -H "Content-Type: text/csv" --data-binary @subscribers.csv
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple, TypeVar

import msgspec

from sluice.audience.subscriber import (
    CSV_FIELD_COLUMNS,
    ID_PATTERN,
    CsvLayout,
    InvalidSubscriber,
    Subscriber,
    SubscriberIn,
    SubscriberRules,
    check_id,
    decode,
    unknown_csv_columns,
)
from sluice.config import Config
from sluice.ingress.http.app import (
    Receive,
    Scope,
    _Headers,
    _headers,
    _query,
    _Response,
    _single,
    _too_large,
)
from sluice.ingress.http.schema import ApiError, field_of
from sluice.journal.audience import AudienceStore, SubscriberRow, TopicInfo
from sluice.model import format_time, now_ms

Handler = Callable[..., Awaitable[_Response]]

_JSON = b"application/json"
_NDJSON = (b"application/x-ndjson", b"application/ndjson")
_CSV = b"text/csv"
_BOM = b"\xef\xbb\xbf"
_SUBSCRIBERS_PREFIX = "/v1/subscribers/"
_TOPICS_PREFIX = "/v1/topics/"
_NO_SUBSCRIBER = "no subscriber with this id"
_NO_TOPIC = "no topic with this name"

_encode = msgspec.json.Encoder().encode
_T = TypeVar("_T")


#: Lines a record may take on average before an import is refused unparsed: blank lines and
#: quoted newlines aside, a request this many times longer than its limit is not an import.
LINES_PER_RECORD = 4


class _SubscriberBody(SubscriberIn, frozen=True):
    """The body of ``PUT /v1/subscribers/{id}``: the id may be left to the path."""

    id: str = ""


class SubscriberView(Subscriber, frozen=True, kw_only=True):
    """A subscriber as ``GET /v1/subscribers/{id}`` shows it: fields at their default left
    out, then the topics it follows and when it was last written."""

    topics: list[str]
    updated_at: str


class TopicView(msgspec.Struct):
    name: str
    subscribers: int
    created_at: str


class TopicPage(msgspec.Struct):
    topics: list[TopicView]
    next: str | None


class LineError(msgspec.Struct, omit_defaults=True):
    """One refused line of an import (1-based within the request; a CSV's header is 1)."""

    line: int
    message: str
    field: str | None = None


class ImportResult(msgspec.Struct):
    lines: int
    created: int
    updated: int
    subscribed: int
    errors: list[LineError]
    errors_not_listed: int


class _IdsBody(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]


class _TopicBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str


_subscriber_decoder = msgspec.json.Decoder(_SubscriberBody)
_line_decoder = msgspec.json.Decoder(SubscriberIn)
_ids_decoder = msgspec.json.Decoder(_IdsBody)
_topic_decoder = msgspec.json.Decoder(_TopicBody)


class _Parsed(NamedTuple):
    """An import's records checked: the rows to store, the lines refused, the record count."""

    rows: list[SubscriberRow]
    errors: list[LineError]
    records: int


class AudienceApi:
    """The subscriber and topic endpoints over `store`, for `HttpApi` to route to."""

    def __init__(
        self,
        config: Config,
        store: AudienceStore,
        tenant: Callable[[_Headers], str],
        read_body: Callable[[Receive, int], Awaitable[bytes]],
    ) -> None:
        audience = config.audience
        self._store = store
        self._tenant = tenant
        self._read_body = read_body
        self._max_body = config.limits.max_request_bytes
        self._max_lines = audience.max_import_lines
        self._max_topics = audience.max_import_topics
        self._max_errors = audience.max_import_errors
        self._page_size = audience.page_size
        self._max_page = audience.max_page_size
        self._rules = SubscriberRules(
            max_address_length=audience.max_address_length,
            max_attributes_bytes=audience.max_attributes_bytes,
            max_topics=audience.max_topics,
        )
        self._subscriber_routes: dict[str, Handler] = {
            "GET": self._get_subscriber,
            "PUT": self._put_subscriber,
            "DELETE": self._delete_subscriber,
        }
        self._topic_routes: dict[str, Handler] = {
            "GET": self._get_topic,
            "DELETE": self._delete_topic,
        }
        # `import` is a sound subscriber id too: GET, PUT and DELETE there are its.
        self._import_routes: dict[str, Handler] = {
            "POST": self._import,
            **self._subscriber_routes,
        }
        self._subscribe_routes: dict[str, Handler] = {"POST": self._subscribe}
        self._unsubscribe_routes: dict[str, Handler] = {"POST": self._unsubscribe}

    def routes(self) -> dict[str, dict[str, Handler]]:
        """The endpoints at fixed paths."""
        return {"/v1/topics": {"POST": self._create_topic, "GET": self._list_topics}}

    def route(self, path: str) -> tuple[dict[str, Handler] | None, tuple[str, ...]]:
        """The endpoints at a path that names a subscriber or a topic, and the name; (None, ())
        for any other path."""
        if path.startswith(_SUBSCRIBERS_PREFIX):
            rest = path[len(_SUBSCRIBERS_PREFIX) :]
            if rest == "import":
                return self._import_routes, (rest,)
            if rest and "/" not in rest:
                return self._subscriber_routes, (rest,)
        elif path.startswith(_TOPICS_PREFIX):
            name, _, action = path[len(_TOPICS_PREFIX) :].partition("/")
            if name and not action:
                return self._topic_routes, (name,)
            if name and action == "subscribers":
                return self._subscribe_routes, (name,)
            if name and action == "unsubscribe":
                return self._unsubscribe_routes, (name,)
        return None, ()

    # ------------------------------------------------------------------------- subscribers

    async def _put_subscriber(self, scope: Scope, receive: Receive, external_id: str) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        raw = await self._json_body(headers, receive)
        try:
            check_id(external_id, "id")
        except InvalidSubscriber as exc:
            raise _invalid(exc) from None
        body = _decode_json(_subscriber_decoder, raw, "invalid_subscriber")
        if body.id and body.id != external_id:
            raise ApiError(
                422,
                "invalid_subscriber",
                f"the body's id {body.id[:40]!r} is not the path's {external_id!r}; "
                "leave `id` out or make them the same",
                "id",
            )
        fields = {f: getattr(body, f) for f in SubscriberIn.__struct_fields__}
        fields["id"] = external_id
        try:
            checked = self._rules.check(SubscriberIn(**fields))
        except InvalidSubscriber as exc:
            raise _invalid(exc) from None
        row = SubscriberRow(external_id, checked.data, checked.topics)
        counts = await self._store.upsert_subscribers(tenant, [row], now_ms())
        view = await self._subscriber_view(tenant, external_id)
        return _Response(201 if counts.created else 200, _encode(view))

    async def _get_subscriber(self, scope: Scope, receive: Receive, external_id: str) -> _Response:
        tenant = self._tenant(_headers(scope))
        return _Response(200, _encode(await self._subscriber_view(tenant, external_id)))

    async def _delete_subscriber(
        self, scope: Scope, receive: Receive, external_id: str
    ) -> _Response:
        tenant = self._tenant(_headers(scope))
        if not ID_PATTERN.fullmatch(external_id) or not await self._store.delete_subscriber(
            tenant, external_id
        ):
            raise ApiError(404, "not_found", _NO_SUBSCRIBER)
        return _Response(200, _encode({"id": external_id, "deleted": True}))

    async def _subscriber_view(self, tenant: str, external_id: str) -> SubscriberView:
        if not ID_PATTERN.fullmatch(external_id):  # names nobody (and no journal is asked)
            raise ApiError(404, "not_found", _NO_SUBSCRIBER)
        stored = await self._store.subscriber(tenant, external_id)
        if stored is None:
            raise ApiError(404, "not_found", _NO_SUBSCRIBER)
        subscriber = decode(stored.data)
        fields = {f: getattr(subscriber, f) for f in Subscriber.__struct_fields__}
        return SubscriberView(
            **fields, topics=stored.topics, updated_at=format_time(stored.updated_at)
        )

    async def _import(self, scope: Scope, receive: Receive, _path_id: str) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        kind = _media_type(headers.content_type)
        if kind not in _NDJSON and kind != _CSV:
            raise ApiError(
                415,
                "unsupported_media_type",
                "send subscribers as NDJSON (`Content-Type: application/x-ndjson`, one JSON "
                "object a line) or CSV (`Content-Type: text/csv`, a header row first)",
            )
        self._check_length(headers)
        raw = await self._read_body(receive, self._max_body)
        if raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        lines = raw.count(b"\n") + 1
        if lines > self._max_lines * LINES_PER_RECORD:  # judged before anything is parsed
            raise ApiError(
                413,
                "import_too_large",
                f"{lines} lines in one request, more than {self._max_lines} subscribers "
                "(audience.max_import_lines) could take; nothing was stored: send them in "
                "smaller requests",
            )
        # Parsed on a thread: the event loop (urgent messages, probes) takes its turns between.
        parse = self._parse_csv if kind == _CSV else self._parse_ndjson
        parsed = await asyncio.to_thread(parse, raw)
        topics = {topic for row in parsed.rows for topic in row.topics}
        if len(topics) > self._max_topics:
            raise ApiError(
                422,
                "too_many_topics",
                f"the import names {len(topics)} topics, more than {self._max_topics} "
                "(audience.max_import_topics); nothing was stored",
            )
        if parsed.rows:
            counts = await self._store.upsert_subscribers(tenant, parsed.rows, now_ms())
            created, updated, subscribed = counts
        else:
            created = updated = subscribed = 0
        errors = parsed.errors
        result = ImportResult(
            lines=parsed.records,
            created=created,
            updated=updated,
            subscribed=subscribed,
            errors=errors[: self._max_errors],
            errors_not_listed=max(0, len(errors) - self._max_errors),
        )
        return _Response(200, _encode(result))

    def _parse_ndjson(self, raw: bytes) -> _Parsed:
        lines = [(n, line) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()]
        self._check_records(len(lines))
        rows: list[SubscriberRow] = []
        errors: list[LineError] = []
        check, decode_line = self._rules.check, _line_decoder.decode
        for number, line in lines:
            try:
                checked = check(decode_line(line))
            except msgspec.ValidationError as exc:
                reason, field = field_of(exc)
                errors.append(LineError(number, reason, field))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                errors.append(LineError(number, f"not a JSON object: {exc}"))
            except RecursionError:
                errors.append(LineError(number, "the JSON nests too deep"))
            except InvalidSubscriber as exc:
                errors.append(LineError(number, exc.reason, exc.field))
            else:
                subscriber = checked.subscriber
                rows.append(SubscriberRow(subscriber.id, checked.data, checked.topics))
        return _Parsed(rows, errors, len(lines))

    def _parse_csv(self, raw: bytes) -> _Parsed:
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ApiError(
                400,
                "bad_request",
                f"the CSV is not UTF-8: invalid byte at position {exc.start} (line {line})",
            ) from None
        records = list(_csv_records(text))
        if not records:
            raise ApiError(422, "invalid_csv", "the CSV is empty: give a header row first")
        header = [name.strip() for name in records[0][1]]
        _check_header(header)
        self._check_records(len(records) - 1)
        rows: list[SubscriberRow] = []
        errors: list[LineError] = []
        width, check, subscriber_of = len(header), self._rules.check, CsvLayout(header).subscriber
        for number, cells in records[1:]:
            if len(cells) != width:
                errors.append(
                    LineError(number, f"the record has {len(cells)} fields, the header {width}")
                )
                continue
            try:
                checked = check(subscriber_of(cells))
            except InvalidSubscriber as exc:
                field = CSV_FIELD_COLUMNS.get(exc.field or "", exc.field)
                errors.append(LineError(number, exc.reason, field))
            else:
                subscriber = checked.subscriber
                rows.append(SubscriberRow(subscriber.id, checked.data, checked.topics))
        return _Parsed(rows, errors, len(records) - 1)

    # ------------------------------------------------------------------------------ topics

    async def _create_topic(self, scope: Scope, receive: Receive) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        raw = await self._json_body(headers, receive)
        name = _decode_json(_topic_decoder, raw, "invalid_topic").name
        try:
            check_id(name, "name")
        except InvalidSubscriber as exc:
            raise ApiError(422, "invalid_topic", exc.reason, "name") from None
        created = await self._store.create_topic(tenant, name, now_ms())
        return _Response(201 if created else 200, _encode(await self._topic_view(tenant, name)))

    async def _list_topics(self, scope: Scope, receive: Receive) -> _Response:
        tenant = self._tenant(_headers(scope))
        query = _query(scope["query_string"])
        after = _single(query, "after") or None
        if after is not None and not ID_PATTERN.fullmatch(after):
            raise ApiError(422, "invalid_parameter", "after must be a topic's name", "after")
        limit = self._page_size
        text = _single(query, "limit")
        if text is not None:
            if not (text.isascii() and text.isdigit() and len(text) < 10) or not (
                1 <= int(text) <= self._max_page
            ):
                raise ApiError(
                    422,
                    "invalid_parameter",
                    f"limit must be a whole number from 1 to {self._max_page} "
                    "(audience.max_page_size)",
                    "limit",
                )
            limit = int(text)
        # One topic more than asked says whether another page exists.
        found = await self._store.topics(tenant, after, limit + 1)
        page = [_topic(t) for t in found[:limit]]
        return _Response(
            200, _encode(TopicPage(page, page[-1].name if len(found) > limit else None))
        )

    async def _get_topic(self, scope: Scope, receive: Receive, name: str) -> _Response:
        tenant = self._tenant(_headers(scope))
        return _Response(200, _encode(await self._topic_view(tenant, name)))

    async def _delete_topic(self, scope: Scope, receive: Receive, name: str) -> _Response:
        tenant = self._tenant(_headers(scope))
        if not ID_PATTERN.fullmatch(name) or not await self._store.delete_topic(tenant, name):
            raise ApiError(404, "not_found", _NO_TOPIC)
        return _Response(200, _encode({"name": name, "deleted": True}))

    async def _subscribe(self, scope: Scope, receive: Receive, name: str) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        ids = await self._ids(headers, receive)
        counts = None
        if ID_PATTERN.fullmatch(name):
            counts = await self._store.subscribe(tenant, name, ids, now_ms())
        if counts is None:
            raise ApiError(404, "not_found", _NO_TOPIC)
        body = {"added": counts.added, "already": counts.already, "unknown": counts.unknown}
        return _Response(200, _encode(body))

    async def _unsubscribe(self, scope: Scope, receive: Receive, name: str) -> _Response:
        headers = _headers(scope)
        tenant = self._tenant(headers)
        ids = await self._ids(headers, receive)
        removed = None
        if ID_PATTERN.fullmatch(name):
            removed = await self._store.unsubscribe(tenant, name, ids)
        if removed is None:
            raise ApiError(404, "not_found", _NO_TOPIC)
        return _Response(200, _encode({"removed": removed}))

    async def _topic_view(self, tenant: str, name: str) -> TopicView:
        info = await self._store.topic(tenant, name) if ID_PATTERN.fullmatch(name) else None
        if info is None:
            raise ApiError(404, "not_found", _NO_TOPIC)
        return _topic(info)

    # ----------------------------------------------------------------------------- helpers

    async def _json_body(self, headers: _Headers, receive: Receive) -> bytes:
        if _media_type(headers.content_type) != _JSON:
            raise ApiError(
                415, "unsupported_media_type", "send JSON with `Content-Type: application/json`"
            )
        self._check_length(headers)
        return await self._read_body(receive, self._max_body)

    def _check_length(self, headers: _Headers) -> None:
        if headers.content_length is None:
            return
        try:
            length = int(headers.content_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if length > self._max_body:
            raise _too_large(self._max_body)

    def _check_records(self, n: int) -> None:
        if n > self._max_lines:
            raise ApiError(
                413,
                "import_too_large",
                f"{n} subscribers in one request, more than {self._max_lines} "
                "(audience.max_import_lines); nothing was stored: send them in smaller requests",
            )

    async def _ids(self, headers: _Headers, receive: Receive) -> list[str]:
        raw = await self._json_body(headers, receive)
        ids = _decode_json(_ids_decoder, raw, "invalid_request").ids
        if len(ids) > self._max_lines:
            raise ApiError(
                413,
                "import_too_large",
                f"{len(ids)} ids in one request, more than {self._max_lines} "
                "(audience.max_import_lines); send them in smaller requests",
                "ids",
            )
        for index, external_id in enumerate(ids):
            try:
                check_id(external_id, f"ids[{index}]")
            except InvalidSubscriber as exc:
                raise ApiError(422, "invalid_request", exc.reason, exc.field) from None
        return ids


def _media_type(content_type: bytes | None) -> bytes | None:
    if content_type is None:
        return None
    return content_type.partition(b";")[0].strip().lower()


def _decode_json(decoder: msgspec.json.Decoder[_T], raw: bytes, code: str) -> _T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        reason, field = field_of(exc)
        raise ApiError(422, code, reason, field) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "too_deep", "the JSON nests too deep") from None


def _invalid(exc: InvalidSubscriber) -> ApiError:
    return ApiError(422, "invalid_subscriber", exc.reason, exc.field)


def _topic(info: TopicInfo) -> TopicView:
    return TopicView(info.name, info.subscribers, format_time(info.created_at))


def _csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line of its start, cells) of each record that is not blank; a quoted field may hold
    newlines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ApiError(
                400, "bad_request", f"the CSV is malformed at line {reader.line_num}: {exc}"
            ) from None
        if any(cell.strip() for cell in cells):
            yield line, cells
        line = reader.line_num + 1


def _check_header(header: list[str]) -> None:
    unknown = unknown_csv_columns(header)
    if unknown:
        raise ApiError(
            422,
            "invalid_csv",
            f"unknown column{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(c) for c in unknown)}: the columns are id, phone, email, webhook, "
            "push, timezone, locale, quiet_start, quiet_end, topics, opt_out, opt_out_topics, "
            "attributes and attr.NAME",
            unknown[0],
        )
    if len(set(header)) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise ApiError(422, "invalid_csv", f"column {twice[0]!r} is given twice", twice[0])
    if "id" not in header:
        raise ApiError(422, "invalid_csv", "the header has no `id` column", "id")
