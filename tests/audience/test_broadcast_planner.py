"""The planner: which channel, when and what each member of a broadcast's topic is sent, or
why not (fixed times, no clock read)."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest

from sluice.audience.broadcast import BroadcastSpec, Content, Planner, decode_spec, encode_spec
from sluice.audience.subscriber import OptOut, QuietHours, Subscriber, encode
from sluice.audience.templates import MissingVariable, TemplateError, compile_template
from sluice.journal.broadcasts import BroadcastMember
from sluice.model import IdGenerator, Priority

UTC = datetime.UTC


def ms(*args: int, zone: str = "UTC") -> int:
    """ms since the epoch of a wall time in `zone`."""
    from zoneinfo import ZoneInfo

    return int(datetime.datetime(*args, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


NOON = ms(2026, 6, 1, 12, 0)


def spec(**fields: Any) -> BroadcastSpec:
    base: dict[str, Any] = {
        "tenant": "acme",
        "topics": ("news",),
        "channels": (("push", "push"), ("sms", "sms"), ("mail", "email")),
        "content": {
            "push": Content(body="push {{ name }}"),
            "sms": Content(body="sms {{ name }}"),
            "email": Content(body="mail {{ name }}", subject="About {{ name }}"),
        },
        "start_at": NOON,
        "defaults": {},
    }
    return BroadcastSpec(**{**base, **fields})


def member(key: int, duplicate: bool = False, **fields: Any) -> BroadcastMember:
    subscriber = Subscriber(id=f"u{key}", attributes={"name": f"N{key}"}, **fields)
    return BroadcastMember(key, subscriber.id, encode(subscriber), duplicate)


def plan(s: BroadcastSpec, members: list[BroadcastMember], now: int = NOON) -> Any:
    return Planner(s, IdGenerator(node=3, clock_ms=lambda: now)).plan(
        members, topic="news", now=now
    )


def test_the_first_channel_with_an_address_and_no_opt_out_is_chosen() -> None:
    members = [
        member(1, push="p1", phone="+1"),  # push first
        member(2, phone="+2", email="e2@x"),  # no push address: SMS
        member(3, push="p3", phone="+3", email="e3@x", opt_out=OptOut(channels=("push",))),
        member(4, phone="+4", email="e4@x", opt_out=OptOut(topic_channels={"news": ("sms",)})),
        member(5, phone="+5", opt_out=OptOut(topics=("news",))),
        member(6, email="e6@x", opt_out=OptOut(all=True)),
        member(7),  # nothing to reach it by
        member(8, phone="+8", duplicate=True),  # planned through an earlier topic
    ]
    messages, suppressed = plan(spec(), members)
    chosen = [(m.recipient, m.channel, m.body) for m in messages]
    assert chosen == [
        ("p1", "push", "push N1"),
        ("+2", "sms", "sms N2"),
        ("+3", "sms", "sms N3"),
        ("e4@x", "mail", "mail N4"),
    ]
    assert messages[3].metadata == {"subject": "About N4"}
    assert dict(suppressed) == {"opted_out": 2, "no_address": 1, "duplicate": 1}
    assert all(m.priority == Priority.BULK and m.not_before is None for m in messages)
    assert len({m.id for m in messages}) == 4


def test_a_missing_variable_fails_the_recipient_or_takes_its_default() -> None:
    nameless = BroadcastMember(9, "u9", encode(Subscriber(id="u9", phone="+9")), False)
    messages, suppressed = plan(spec(), [nameless, member(1, phone="+1")])
    assert [m.recipient for m in messages] == ["+1"] and suppressed == {"missing_variable": 1}
    lenient = spec(missing_variable="default", defaults={"name": "friend"})
    messages, suppressed = plan(lenient, [nameless])
    assert messages[0].body == "sms friend" and not suppressed
    # `data` is shared by all; a subscriber's attributes come first; `subscriber` is its own.
    shared = spec(
        data={"name": "everyone", "city": "Leeds"},
        content={"sms": Content(body="{{ name }} in {{ city }} ({{ subscriber.id }})")},
        channels=(("sms", "sms"),),
    )
    messages, _ = plan(shared, [nameless, member(1, phone="+1")])
    assert [m.body for m in messages] == ["everyone in Leeds (u9)", "N1 in Leeds (u1)"]


def test_a_template_failing_on_one_recipient_fails_that_recipient_alone() -> None:
    division = spec(content={"sms": Content(body="{{ 10 / n }}")}, channels=(("sms", "sms"),))
    members = [
        BroadcastMember(i, f"u{i}", encode(Subscriber(id=f"u{i}", phone=f"+{i}",
                                                      attributes={"n": n})), False)
        for i, n in ((1, 2), (2, 0), (3, 5))
    ]  # fmt: skip
    messages, suppressed = plan(division, members)
    assert [m.body for m in messages] == ["5.0", "2.0"]
    assert suppressed == {"template_error": 1}


def test_quiet_hours_defer_to_their_end_in_the_subscriber_zone() -> None:
    night = QuietHours(start="22:00", end="07:30")
    # 12:00 UTC is 21:00 in Tokyo... no: 21:00 is not quiet; 23:00 in Auckland (NZST+12) is.
    members = [
        member(1, phone="+1", timezone="Pacific/Auckland", quiet_hours=night),  # 00:00 local
        member(2, phone="+2", timezone="Europe/London", quiet_hours=night),  # 13:00 local
        member(3, phone="+3", timezone="Asia/Tokyo", quiet_hours=QuietHours("20:00", "23:00")),
    ]
    messages, suppressed = plan(spec(), members)
    due = {m.recipient: m.not_before for m in messages}
    assert due["+1"] == ms(2026, 6, 2, 7, 30, zone="Pacific/Auckland")
    assert due["+2"] is None  # not quiet now: at once
    assert due["+3"] == ms(2026, 6, 1, 23, 0, zone="Asia/Tokyo")  # 21:00 local now
    # Past the broadcast's expiry: suppressed, not sent late.
    messages, suppressed = plan(spec(expires_at=NOON + 3_600_000), members)
    assert [m.recipient for m in messages] == ["+2"]
    assert suppressed == {"quiet_hours": 2}
    # Unless the broadcast says quiet hours do not apply to it.
    messages, _ = plan(spec(respect_quiet_hours=False), members)
    assert [m.not_before for m in messages] == [None, None, None]


def test_quiet_hours_ending_in_the_hour_clocks_repeat_end_after_now() -> None:
    # Europe/Berlin goes back at 03:00 CEST on 2026-10-25: 02:00-03:00 comes twice. At the
    # second 02:10 (01:10 UTC) quiet hours 01:00-02:30 end at the second 02:30 (01:30 UTC).
    now = ms(2026, 10, 25, 1, 10)
    members = [member(1, phone="+1", timezone="Europe/Berlin",
                      quiet_hours=QuietHours("01:00", "02:30"))]  # fmt: skip
    messages, _ = plan(spec(start_at=now), members, now=now)
    assert messages[0].not_before == ms(2026, 10, 25, 1, 30)


def test_local_time_waves_send_at_that_hour_in_each_zone() -> None:
    members = [
        member(1, phone="+1", timezone="Europe/London"),  # 13:00 BST now: tomorrow 09:00
        member(2, phone="+2", timezone="America/New_York"),  # 08:00 EDT now: today 09:00
        member(3, phone="+3", timezone="Asia/Kolkata"),  # 17:30 IST: tomorrow
        member(4, phone="+4", timezone="UTC", quiet_hours=QuietHours("08:00", "10:00")),
    ]
    messages, _ = plan(spec(local_time="09:00"), members)
    due = {m.recipient: m.not_before for m in messages}
    assert due == {
        "+1": ms(2026, 6, 2, 9, 0, zone="Europe/London"),
        "+2": ms(2026, 6, 1, 9, 0, zone="America/New_York"),
        "+3": ms(2026, 6, 2, 9, 0, zone="Asia/Kolkata"),
        # 09:00 falls in its quiet hours: their end.
        "+4": ms(2026, 6, 2, 10, 0),
    }
    # The very minute counts as now: due at once.
    messages, _ = plan(spec(local_time="12:00"), [member(5, phone="+5")], now=NOON + 20_000)
    assert messages[0].not_before is None


def test_a_zones_wave_is_anchored_to_the_start_not_to_the_planning() -> None:
    # The broadcast starts at 12:00 UTC for 13:30 local; London (BST) reaches 13:30 at 12:30
    # UTC. A London member planned at 12:45 UTC (a slow or resumed expansion) is late for
    # its wave: sent at once, not at 13:30 tomorrow as a wave counted from "now" would be.
    london = [member(1, phone="+1", timezone="Europe/London")]
    wave = spec(local_time="13:30")
    messages, _ = plan(wave, london)
    assert messages[0].not_before == ms(2026, 6, 1, 13, 30, zone="Europe/London")
    messages, _ = plan(wave, london, now=NOON + 45 * 60_000)
    assert messages[0].not_before is None
    # A zone whose wave falls after the expiry is suppressed as such, not as quiet hours.
    tokyo = [
        member(2, phone="+2", timezone="Asia/Tokyo"),  # 13:30 JST is tomorrow
        member(3, phone="+3", timezone="UTC", quiet_hours=QuietHours("13:00", "23:00")),
    ]
    messages, suppressed = plan(spec(local_time="13:30", expires_at=NOON + 6 * 3_600_000), tokyo)
    assert messages == [] and suppressed == {"past_expiry": 1, "quiet_hours": 1}


def test_a_spec_survives_the_journal_and_templates_report_their_line() -> None:
    s = spec(rate=50.0, expires_at=NOON + 1, metadata={"campaign": "storm"})
    assert decode_spec(encode_spec(s)) == s
    with pytest.raises(TemplateError, match=r"content.sms.body: line 3: "):
        compile_template("a\nb\n{% if %}", "content.sms.body")
    loop = compile_template("{% for t in tags %}{{ t }},{% endfor %}", "x")
    assert loop.render({"tags": ["a", "b"]}) == "a,b,"
    with pytest.raises(MissingVariable):
        loop.render({})
    # The sandbox keeps templates away from Python's internals.
    escape = compile_template("{{ ''.__class__.__mro__ }}", "x")
    with pytest.raises(TemplateError):
        escape.render({})
    fast = compile_template("{{ a.b }}-{{ n }}-{{ gone | default('d') }}", "x")
    assert fast.render({"a": {"b": 1}, "n": None}) == "1-None-d"
    # What the C fast path prints is what the sandbox prints, braces in the text included.
    plain = compile_template("a {x} } {{ n }} {{ a.b }}", "x")
    sandboxed = compile_template("a {x} } {{ n }} {{ a.b }}{% if false %}{% endif %}", "x")
    for variables in ({"n": 1.5, "a": {"b": True}}, {"n": [1], "a": {"b": None}}):
        assert plain.render(variables) == sandboxed.render(variables)
    with pytest.raises(MissingVariable):
        plain.render({"n": 1, "a": "no dict"})
    # Missing names, as the sandbox reads them, under each policy.
    for policy, source, variables, defaults in (
        ("default", "{{ a.b }}", {"a": {}}, {"a": "A", "b": "B"}),
        ("default", "{{ a.b }}", {}, {"a": "A"}),
        ("fail", "{{ a.b | default('x') }}", {}, {}),
        ("fail", "{{ a.b | default('x') }}", {"a": {}}, {}),
        ("fail", "{{ a.items }}", {"a": {"items": 1}}, {}),
    ):
        options: Any = {"policy": policy, "defaults": defaults}
        fast_one = compile_template(source, "x", **options)
        slow_one = compile_template(source + "{% if false %}{% endif %}", "x", **options)
        assert _rendered(fast_one, variables) == _rendered(slow_one, variables), source
    # A template cannot hold the process: products, powers and ranges are bounded.
    for greedy in (
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{% for i in range(10**6) %}{% endfor %}",
        "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
    ):
        with pytest.raises(TemplateError, match="not allowed"):
            compile_template(greedy, "x").render({})
    # The budget is per render: a template that stays within it renders every time.
    modest = compile_template("{% for i in range(100) %}{% for j in range(50) %}.{% endfor %}"
                              "{% endfor %}", "x")  # fmt: skip
    assert [len(modest.render({})) for _ in range(3)] == [5000, 5000, 5000]

    assert msgspec.json.decode(msgspec.json.encode(s.content["sms"]))["body"] == "sms {{ name }}"


def _rendered(template: Any, variables: dict[str, Any]) -> str:
    try:
        return str(template.render(variables))
    except MissingVariable as exc:
        return f"missing {exc}"
