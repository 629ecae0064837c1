"""A broadcast: what to send to everyone on some topics, and the planner that turns members
of those topics into messages.

`BroadcastIn` is the body of `POST /v1/broadcasts`; `BroadcastSpec` is what the journal keeps
(times in ms, names resolved) and `Planner` what expansion runs on each member, in order:

1. a member the broadcast already reached through an earlier topic is skipped (suppressed
   "duplicate"), so a subscriber of several topics gets it once; "reached" is what the
   journal recorded with the earlier chunks, so one who left the earlier topic meanwhile
   still gets nothing more, and one the earlier topic suppressed (opted out of it) or missed
   (subscribed after its cursor passed) gets it from this one;
2. the channel: the first of the preference order for which the subscriber has an address
   and has not opted out (of everything, of the channel type, of the topic, or of the type on
   the topic); none: suppressed "no_address" or "opted_out";
3. the time: the broadcast's start, or with `local_time` the first such time in the
   subscriber's zone at or after the start (waves: anchored to the start, not to when the
   member is planned, so a slow or resumed expansion sends a zone's late members at once,
   never a day after the others of their zone); past the expiry: suppressed "past_expiry";
   then, unless `respect_quiet_hours` is off, the end of the subscriber's quiet hours if it
   falls in them; past the expiry then: suppressed "quiet_hours";
4. the content: the channel type's templates rendered with the broadcast's `data`, then the
   subscriber's attributes, then `subscriber` (id, locale, timezone); a missing variable
   fails the recipient (suppressed "missing_variable") or takes its default, as chosen; a
   template that fails on a recipient's values (a division by zero, a filter given the wrong
   type) fails that recipient alone (suppressed "template_error").

Examples:
    >>> spec = BroadcastSpec(tenant="acme", topics=("news",), channels=(("sms", "sms"),),
    ...     content={"sms": Content(body="Hi {{ name }}")}, start_at=0)
    >>> planner = Planner(spec, IdGenerator(node=1))
    >>> member = BroadcastMember(1, "u1", encode(Subscriber(id="u1", phone="+4477",
    ...     attributes={"name": "Ann"})), False)
    >>> messages, suppressed = planner.plan([member], topic="news", now=0)
    >>> messages[0].channel, messages[0].recipient, messages[0].body, dict(suppressed)
    ('sms', '+4477', 'Hi Ann', {})
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections import Counter
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec

from sluice.audience.subscriber import (  # noqa: F401 (encode: the doctest)
    ADDRESS_FIELDS,
    Subscriber,
    decode,
    encode,
)
from sluice.audience.templates import MissingVariable, Policy, Template, compile_template
from sluice.journal.broadcasts import BroadcastMember
from sluice.model import IdGenerator, Message, Priority

#: Why a member got no message (the keys of a broadcast's `suppressed` counts).
SUPPRESSION_REASONS = (
    "duplicate",
    "no_address",
    "opted_out",
    "quiet_hours",
    "past_expiry",
    "missing_variable",
    "template_error",
)
_MINUTE_MS = 60_000


class Content(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A channel type's templates: the body, and for email the subject."""

    body: str
    subject: str | None = None


class BroadcastIn(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"sender": "from"}
):
    """`POST /v1/broadcasts` as a producer writes it."""

    topics: list[str]
    #: Channel names, in order of preference.
    channels: list[str]
    #: Templates per channel type ("sms", "email", "webhook", "push").
    content: dict[str, Content]
    missing_variable: Policy = "fail"
    defaults: dict[str, Any] = {}
    #: Template variables shared by every recipient (a subscriber's attributes come first).
    data: dict[str, Any] = {}
    sender: str | None = None
    priority: Literal["urgent", "high", "normal", "bulk"] = "bulk"
    #: When to begin (RFC 3339, or ms since the epoch); absent: now.
    send_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)] | int | None = None
    #: "HH:MM": deliver at this time in each subscriber's zone, the first on or after send_at.
    local_time: str | None = None
    respect_quiet_hours: bool = True
    expires_at: Annotated[datetime.datetime, msgspec.Meta(tz=True)] | int | None = None
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: Messages per second at most for this broadcast (0: as fast as the channels carry).
    rate: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 0.0
    metadata: dict[str, str] | None = None


class BroadcastSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A broadcast as the journal keeps it (`encode_spec`): checked and resolved."""

    tenant: str
    topics: tuple[str, ...]
    #: (channel name, channel type), in order of preference.
    channels: tuple[tuple[str, str], ...]
    content: dict[str, Content]
    start_at: int
    missing_variable: Policy = "fail"
    defaults: dict[str, Any] = {}
    data: dict[str, Any] = {}
    sender: str | None = None
    priority: int = int(Priority.BULK)
    local_time: str | None = None
    respect_quiet_hours: bool = True
    expires_at: int | None = None
    rate: float = 0.0
    metadata: dict[str, str] | None = None


_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(BroadcastSpec)


def encode_spec(spec: BroadcastSpec) -> bytes:
    return _spec_encoder.encode(spec)


def decode_spec(data: bytes) -> BroadcastSpec:
    return _spec_decoder.decode(data)


def compile_content(spec: BroadcastSpec) -> dict[str, tuple[Template, Template | None]]:
    """The spec's templates compiled (TemplateError naming `content.<type>.<field>`)."""
    compiled = {}
    for kind, content in spec.content.items():
        options: dict[str, Any] = {"policy": spec.missing_variable, "defaults": spec.defaults}
        body = compile_template(content.body, f"content.{kind}.body", **options)
        subject = None
        if content.subject is not None:
            subject = compile_template(content.subject, f"content.{kind}.subject", **options)
        compiled[kind] = (body, subject)
    return compiled


class Planner:
    """Members of a broadcast's topics → its messages (the module says how)."""

    def __init__(self, spec: BroadcastSpec, ids: IdGenerator) -> None:
        self.spec = spec
        self._ids = ids
        self._content = compile_content(spec)
        #: (channel, type, the subscriber's field holding its address for that type)
        self._channels = [(name, kind, ADDRESS_FIELDS[kind]) for name, kind in spec.channels]
        self._local = _minutes(spec.local_time) if spec.local_time else None
        names = {n for pair in self._content.values() for t in pair if t for n in t.names}
        #: Only what the templates read is built per recipient.
        self._wants_subscriber = "subscriber" in names
        self._data = {k: v for k, v in spec.data.items() if k in names}

    def plan(
        self,
        members: list[BroadcastMember],
        *,
        topic: str,
        now: int,
        reached: list[int] | None = None,
    ) -> tuple[list[Message], Counter[str]]:
        """The messages for `members` of `topic` and the count of those suppressed by reason;
        the keys of the members given a message are appended to `reached` when it is given
        (a broadcast with topics still to read remembers them)."""
        spec = self.spec
        start = max(spec.start_at, now)
        expires_at = spec.expires_at
        tenant, sender, priority, metadata = spec.tenant, spec.sender, spec.priority, spec.metadata
        channels = self._channels
        content = self._content
        # Each recipient's time is worked out only where it can differ from "at once".
        timed = self._local is not None
        quiet_applies = spec.respect_quiet_hours
        ids = self._ids.take(len(members))
        messages: list[Message] = []
        suppressed: Counter[str] = Counter()
        for member, message_id in zip(members, ids, strict=True):
            if member.duplicate:
                suppressed["duplicate"] += 1
                continue
            subscriber = decode(member.data)
            opt_out = subscriber.opt_out
            everyone = opt_out is _NO_OPT_OUT  # the decoder's shared default: no opt-out
            chosen = None
            opted = False
            for name, kind, field in channels:
                address = getattr(subscriber, field)
                if address is None:
                    continue
                if not everyone and opt_out.excludes(topic, kind):
                    opted = True
                    continue
                chosen = name, kind, address
                break
            if chosen is None:
                suppressed["opted_out" if opted else "no_address"] += 1
                continue
            name, kind, address = chosen
            due = None
            if timed or (quiet_applies and subscriber.quiet_hours is not None):
                due, why = self._due(subscriber, start)
                if due is not None and expires_at is not None and due >= expires_at:
                    suppressed[why] += 1
                    continue
            body_template, subject_template = content[kind]
            variables = self._variables(subscriber)
            try:
                body = body_template.render(variables)
                subject = subject_template.render(variables) if subject_template else None
            except MissingVariable:
                suppressed["missing_variable"] += 1
                continue
            except Exception:  # `{{ 10 / n }}` with n = 0: this recipient, not the broadcast
                suppressed["template_error"] += 1
                continue
            messages.append(
                Message(
                    message_id,
                    tenant,
                    name,
                    address,
                    body,
                    sender,
                    priority,
                    due,
                    expires_at,
                    None,
                    metadata if subject is None else {**(metadata or {}), "subject": subject},
                )
            )
            if reached is not None:
                reached.append(member.key)
        return messages, suppressed

    def _due(self, subscriber: Subscriber, start: int) -> tuple[int | None, str]:
        """When the subscriber's message is due (None: at once, `start` being now or the
        broadcast's start), and what set that time: "past_expiry" for its wave,
        "quiet_hours" for the end of its quiet hours."""
        quiet = subscriber.quiet_hours if self.spec.respect_quiet_hours else None
        if self._local is None and quiet is None:
            return None, "past_expiry"  # expansion begins once the start has come: at once
        zone = _zone(subscriber.timezone)
        due, why = start, "past_expiry"
        if self._local is not None:
            # The zone's wave is the first such local time from the broadcast's start.
            due = max(start, _next_local(self.spec.start_at, self._local, zone))
        if quiet is not None:
            after = _after_quiet(due, *quiet.minutes(), zone)
            if after != due:
                due, why = after, "quiet_hours"
        return (None if due <= start else due), why

    def _variables(self, subscriber: Subscriber) -> dict[str, Any]:
        attributes = subscriber.attributes
        variables = {**self._data, **attributes} if self._data else dict(attributes)
        if self._wants_subscriber:
            variables["subscriber"] = {
                "id": subscriber.id,
                "locale": subscriber.locale,
                "timezone": subscriber.timezone,
            }
        return variables


#: The opt-out every subscriber decoded without one shares (msgspec reuses the default).
_NO_OPT_OUT = Subscriber(id="-").opt_out


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _local_minute(ms: int, zone: zoneinfo.ZoneInfo) -> tuple[datetime.datetime, int]:
    local = datetime.datetime.fromtimestamp(ms / 1000, zone)
    return local, local.hour * 60 + local.minute


def _at_local(local: datetime.datetime, minute: int, days: int) -> int:
    """ms of `minute` past local midnight, `days` after `local`'s date, in its zone: of a
    wall time the clocks show twice (the hour repeated when they go back), the one not
    before `local` if it can be."""
    day = local.date() + datetime.timedelta(days=days)
    wall = datetime.datetime(
        day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=local.tzinfo
    )
    at = int(wall.timestamp() * 1000)
    if at < local.timestamp() * 1000:
        at = max(at, int(wall.replace(fold=1).timestamp() * 1000))
    return at


def _next_local(ms: int, minute: int, zone: zoneinfo.ZoneInfo) -> int:
    """The first instant at or after `ms` whose local time in `zone` is `minute` past midnight."""
    local, _ = _local_minute(ms, zone)
    at = _at_local(local, minute, 0)
    if at + _MINUTE_MS > ms:  # later today, or this very minute
        return max(at, ms)
    return _at_local(local, minute, 1)


def _after_quiet(ms: int, start: int, end: int, zone: zoneinfo.ZoneInfo) -> int:
    """`ms`, or the end of the quiet hours [start, end) (local minutes) it falls in."""
    local, minute = _local_minute(ms, zone)
    if start < end:
        return _at_local(local, end, 0) if start <= minute < end else ms
    # Spanning midnight: quiet from `start` to the end of the day, and until `end` after it.
    if minute >= start:
        return _at_local(local, end, 1)
    if minute < end:
        return _at_local(local, end, 0)
    return ms
