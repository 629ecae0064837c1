"""Subscribers: who a tenant's broadcasts reach, and how.

A subscriber has the tenant's own id for it, an address per channel type (a phone number for
SMS, an email address, a webhook URL, a push key for the live push channel), attributes for
templates (small JSON), a time zone, a locale, quiet hours in its local time, and opt-outs:
from everything, from channel types, from topics, or from a channel type on one topic.

The journal keeps a subscriber as its id, the topics it follows and one compact blob
(`encode`, msgpack of `Subscriber`), so the journal needs to know nothing of its fields and a
broadcast's expansion reads one row per recipient.

Examples:
    >>> rules = SubscriberRules()
    >>> s = rules.check(msgspec.json.decode(
    ...     b'{"id": "u1", "phone": "+447700900123", "timezone": "Europe/London",'
    ...     b' "quiet_hours": {"start": "22:00", "end": "07:30"}, "topics": ["news"]}',
    ...     type=SubscriberIn))
    >>> s.subscriber.address("sms"), s.topics
    ('+447700900123', ('news',))
    >>> stored = decode(encode(s.subscriber))  # what the journal keeps: topics apart
    >>> stored.timezone, stored.quiet_hours, stored.address("sms")
    ('Europe/London', QuietHours(start='22:00', end='07:30'), '+447700900123')
    >>> rules.check(SubscriberIn(id="u2", timezone="Mars/Olympus"))
    Traceback (most recent call last):
    ...
    sluice.audience.subscriber.InvalidSubscriber: timezone: 'Mars/Olympus' is not an IANA time zone
"""

from __future__ import annotations

import re
import zoneinfo
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec

#: The channel types a subscriber can have an address for, by the field holding it.
ADDRESS_FIELDS = {"sms": "phone", "email": "email", "webhook": "webhook", "push": "push"}
CHANNEL_TYPES = tuple(ADDRESS_FIELDS)
#: What a subscriber or topic id may be: what a URL path and a log line hold as they are.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}")
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


class InvalidSubscriber(ValueError):
    """A subscriber refused: `field` names what was wrong (None: the whole record)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class QuietHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Local times ("HH:MM") between which nothing is sent; `end` before `start` spans
    midnight."""

    start: str
    end: str

    def minutes(self) -> tuple[int, int]:
        return _minutes(self.start), _minutes(self.end)


class OptOut(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What the subscriber does not want: everything, channel types, topics, or a channel
    type on a topic."""

    all: bool = False
    channels: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    topic_channels: dict[str, tuple[str, ...]] = {}

    def excludes(self, topic: str, channel_type: str) -> bool:
        """Whether this opt-out keeps `channel_type` messages on `topic` away."""
        return (
            self.all
            or channel_type in self.channels
            or topic in self.topics
            or channel_type in self.topic_channels.get(topic, ())
        )


class Subscriber(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One subscriber of a tenant, as stored (`encode`) and as the API shows it."""

    id: str
    phone: str | None = None
    email: str | None = None
    webhook: str | None = None
    push: str | None = None
    attributes: dict[str, Any] = {}
    timezone: str = "UTC"
    locale: str = ""
    quiet_hours: QuietHours | None = None
    opt_out: OptOut = OptOut()

    def address(self, channel_type: str) -> str | None:
        """The subscriber's address for `channel_type` ("sms", "email", "webhook", "push")."""
        value: str | None = getattr(self, ADDRESS_FIELDS[channel_type])
        return value


class SubscriberIn(Subscriber, frozen=True):
    """A subscriber as a producer sends it: with the topics to subscribe it to (added to
    those it follows; `POST /v1/topics/{name}/unsubscribe` takes it off one)."""

    topics: tuple[str, ...] = ()


class Checked(NamedTuple):
    subscriber: Subscriber
    topics: tuple[str, ...]
    #: The record as the journal keeps it (`encode`).
    data: bytes


class SubscriberRules:
    """The limits a subscriber is checked against (`[audience]` settings)."""

    def __init__(
        self,
        *,
        max_address_length: int = 320,
        max_attributes_bytes: int = 4096,
        max_topics: int = 100,
    ) -> None:
        self.max_address_length = max_address_length
        self.max_attributes_bytes = max_attributes_bytes
        self.max_topics = max_topics

    def check(self, given: SubscriberIn) -> Checked:
        """`given` as a stored subscriber and its topics, or InvalidSubscriber naming the
        field at fault. An import checks every line: the common case (an id, an address or
        two, a zone, a topic) takes a few attribute reads and no allocation but the result."""
        if not ID_PATTERN.fullmatch(given.id):
            check_id(given.id, "id")
        limit = self.max_address_length
        for value in (given.phone, given.email, given.webhook, given.push):
            if value is not None and (not value or len(value) > limit or "\0" in value):
                self._address_error(given)
        if given.attributes:
            self._check_attributes(given.attributes)
        if given.timezone not in _time_zones():
            raise InvalidSubscriber("timezone", f"{given.timezone!r} is not an IANA time zone")
        if given.locale and (len(given.locale) > 35 or "\0" in given.locale):
            raise InvalidSubscriber("locale", "a BCP 47 tag of at most 35 characters")
        if given.quiet_hours is not None:
            for name in ("start", "end"):
                if not _TIME.fullmatch(getattr(given.quiet_hours, name)):
                    raise InvalidSubscriber(f"quiet_hours.{name}", "expected HH:MM, 00:00 to 23:59")
            if given.quiet_hours.start == given.quiet_hours.end:
                raise InvalidSubscriber(
                    "quiet_hours.end", "the same time as start: quiet all day, or never?"
                )
        if given.webhook is not None and not _is_web_url(given.webhook):
            raise InvalidSubscriber("webhook", "expected an absolute http:// or https:// URL")
        opt_out = given.opt_out
        if opt_out is not _NO_OPT_OUT and opt_out != _NO_OPT_OUT:
            _check_opt_out(opt_out, self.max_topics)
        topics = given.topics
        if topics:
            if len(topics) > 1:
                topics = tuple(dict.fromkeys(topics))
            if len(topics) > self.max_topics:
                raise InvalidSubscriber(
                    "topics",
                    f"{len(topics)} topics, more than {self.max_topics} (audience.max_topics)",
                )
            for topic in topics:
                if not ID_PATTERN.fullmatch(topic):
                    check_id(topic, "topics")
            # The record is kept without its topics (the journal keeps those apart).
            given = msgspec.structs.replace(given, topics=())
        try:
            data = _encoder.encode(given)
        except OverflowError:  # JSON holds any integer, msgpack 64 bits
            raise InvalidSubscriber(
                "attributes", "an integer outside -2**63 to 2**64 - 1; send it as a string"
            ) from None
        return Checked(given, topics, data)

    def _address_error(self, given: SubscriberIn) -> None:
        for field in ADDRESS_FIELDS.values():
            value = getattr(given, field)
            if value is None:
                continue
            if "\0" in value:
                raise InvalidSubscriber(field, "holds a NUL character (U+0000)")
            if not value or len(value) > self.max_address_length:
                raise InvalidSubscriber(
                    field,
                    f"1 to {self.max_address_length} characters (audience.max_address_length)",
                )

    def _check_attributes(self, attributes: dict[str, Any]) -> None:
        text = _encode_json(attributes)
        if len(text) > self.max_attributes_bytes:
            raise InvalidSubscriber(
                "attributes",
                f"{len(text)} bytes as JSON, more than {self.max_attributes_bytes} "
                "(audience.max_attributes_bytes)",
            )
        if b"\\u0000" in text:
            raise InvalidSubscriber("attributes", "holds a NUL character (U+0000)")


_NO_OPT_OUT = OptOut()


def _is_web_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _check_opt_out(opt_out: OptOut, max_topics: int) -> None:
    """Known channel types and topic ids, at most `max_topics` topics in each list (so that a
    record stays small: a broadcast reads it once a recipient)."""
    for name, count in (
        ("opt_out.channels", len(opt_out.channels)),
        ("opt_out.topics", len(opt_out.topics)),
        ("opt_out.topic_channels", len(opt_out.topic_channels)),
    ):
        limit = len(CHANNEL_TYPES) if name == "opt_out.channels" else max_topics
        if count > limit:
            which = "the channel types" if limit == len(CHANNEL_TYPES) else "audience.max_topics"
            raise InvalidSubscriber(name, f"{count} entries, more than {limit} ({which})")
    for kind in opt_out.channels:
        _check_channel_type(kind, "opt_out.channels")
    for topic in opt_out.topics:
        check_id(topic, "opt_out.topics")
    for topic, kinds in opt_out.topic_channels.items():
        check_id(topic, "opt_out.topic_channels")
        for kind in kinds:
            _check_channel_type(kind, f"opt_out.topic_channels.{topic}")


def check_id(value: str, field: str) -> None:
    """A subscriber or topic id: 1 to 128 of A-Z a-z 0-9 . _ : @ + = - (first a letter or
    digit)."""
    if not ID_PATTERN.fullmatch(value):
        raise InvalidSubscriber(
            field,
            f"{value[:40]!r} is not an id: 1 to 128 of A-Z a-z 0-9 . _ : @ + = -, "
            "starting with a letter or digit",
        )


def _check_channel_type(kind: str, field: str) -> None:
    if kind not in ADDRESS_FIELDS:
        raise InvalidSubscriber(
            field, f"{kind!r} is not a channel type ({', '.join(CHANNEL_TYPES)})"
        )


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


_encode_json = msgspec.json.Encoder().encode
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Subscriber)


def encode(subscriber: Subscriber) -> bytes:
    """The compact form the journal keeps (msgpack; fields at their default left out)."""
    return _encoder.encode(subscriber)


def decode(data: bytes) -> Subscriber:
    return _decoder.decode(data)


#: The columns of a subscribers CSV (besides `attr.NAME`, one attribute each, as a string).
CSV_COLUMNS = (
    "id",
    "phone",
    "email",
    "webhook",
    "push",
    "timezone",
    "locale",
    "quiet_start",
    "quiet_end",
    "topics",
    "opt_out",
    "opt_out_topics",
    "attributes",
)
CSV_ATTRIBUTE_PREFIX = "attr."
#: A CSV column by the field `SubscriberRules.check` names, for errors a CSV writer can act on.
CSV_FIELD_COLUMNS = {
    "quiet_hours.start": "quiet_start",
    "quiet_hours.end": "quiet_end",
    "opt_out.channels": "opt_out",
    "opt_out.topics": "opt_out_topics",
}
#: Columns whose cell is the field as it is ("" for not given).
_CSV_PLAIN = ("phone", "email", "webhook", "push", "timezone", "locale")
_decode_attributes = msgspec.json.Decoder(dict[str, Any]).decode


def unknown_csv_columns(header: list[str]) -> list[str]:
    """The header's columns that are neither in `CSV_COLUMNS` nor `attr.NAME`."""
    known = set(CSV_COLUMNS)
    return [
        name
        for name in header
        if name not in known
        and not (name.startswith(CSV_ATTRIBUTE_PREFIX) and len(name) > len(CSV_ATTRIBUTE_PREFIX))
    ]


class CsvLayout:
    """Where each field is in the records of a subscribers CSV, read once from its header;
    `subscriber` turns one record (its cells) into a subscriber to check. An empty cell is a
    field not given; lists are ";"-separated; `opt_out` is "all" or channel types.

    Examples:
        >>> layout = CsvLayout(["id", "topics", "opt_out", "attr.name", "quiet_start",
        ...                     "quiet_end"])
        >>> s = layout.subscriber(["u1", "news; deals", "sms", "Ada", "22:00", "07:00"])
        >>> s.topics, s.opt_out.channels, s.attributes, s.quiet_hours.start
        (('news', 'deals'), ('sms',), {'name': 'Ada'}, '22:00')
    """

    def __init__(self, header: list[str]) -> None:
        index = {name: i for i, name in enumerate(header)}
        self._id = index.get("id")
        self._plain = [(name, index[name]) for name in _CSV_PLAIN if name in index]
        self._quiet_start = index.get("quiet_start")
        self._quiet_end = index.get("quiet_end")
        self._topics = index.get("topics")
        self._opt_out = index.get("opt_out")
        self._opt_out_topics = index.get("opt_out_topics")
        self._attributes = index.get("attributes")
        self._attr = [
            (name[len(CSV_ATTRIBUTE_PREFIX) :], i)
            for name, i in index.items()
            if name.startswith(CSV_ATTRIBUTE_PREFIX)
        ]

    def subscriber(self, cells: list[str]) -> SubscriberIn:
        """The subscriber one record describes (cells in the header's order), or
        InvalidSubscriber naming the column at fault."""
        fields: dict[str, Any] = {"id": "" if self._id is None else cells[self._id]}
        for name, i in self._plain:
            if cells[i]:
                fields[name] = cells[i]
        start = _cell(cells, self._quiet_start)
        end = _cell(cells, self._quiet_end)
        if start or end:
            if not (start and end):
                raise InvalidSubscriber(
                    "quiet_end" if start else "quiet_start", "give both quiet_start and quiet_end"
                )
            fields["quiet_hours"] = QuietHours(start, end)
        topics = _csv_list(_cell(cells, self._topics))
        if topics:
            fields["topics"] = topics
        opt_out = _cell(cells, self._opt_out).strip()
        opt_out_topics = _csv_list(_cell(cells, self._opt_out_topics))
        if opt_out or opt_out_topics:
            everything = opt_out.lower() == "all"
            channels = () if everything else _csv_list(opt_out)
            fields["opt_out"] = OptOut(all=everything, channels=channels, topics=opt_out_topics)
        attributes = self._attributes_of(cells)
        if attributes:
            fields["attributes"] = attributes
        return SubscriberIn(**fields)

    def _attributes_of(self, cells: list[str]) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        text = _cell(cells, self._attributes)
        if text and not text.isspace():
            try:
                attributes = _decode_attributes(text)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InvalidSubscriber("attributes", f"expected a JSON object: {exc}") from None
            except RecursionError:
                raise InvalidSubscriber("attributes", "the JSON nests too deep") from None
        for name, i in self._attr:
            if cells[i]:
                attributes[name] = cells[i]
        return attributes


def _cell(cells: list[str], index: int | None) -> str:
    return "" if index is None else cells[index]


def _csv_list(cell: str) -> tuple[str, ...]:
    if not cell:
        return ()
    if ";" not in cell:
        stripped = cell.strip()
        return (stripped,) if stripped else ()
    return tuple(filter(None, map(str.strip, cell.split(";"))))
