"""`sluice demo`: the whole pipeline on its embedded defaults, in one process, in a few seconds.

It starts the bundled webhook sink (with a little latency, some 503s and some 429s, so retries
and throttling show), starts the gateway on SQLite with a webhook channel pointed at the sink,
posts a bulk batch and then a few urgent messages over the real HTTP API, watches them drain,
and prints what happened: states, the sink's tally, urgent vs bulk latency and one timeline.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import statistics
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.config import from_dict, hash_api_key
from sluice.model import State
from sluice.process.gateway import SluiceGateway
from sluice.sim.smsc import SmscOptions, SmscSimulator
from sluice.sim.smtp_sink import SmtpSink, SmtpSinkOptions
from sluice.sim.webhook_sink import SinkOptions, WebhookSink

DEMO_KEY = "demo-key"
URGENT_COUNT = 10


def demo_config(directory: Path, sink_url: str) -> dict[str, object]:
    return {
        "server": {"listen": "127.0.0.1:0", "shutdown_grace_seconds": 5},
        "journal": {"path": str(directory / "sluice.db")},
        "callbacks": {"secret": "demo-secret"},
        "channels": {
            "web": {
                "type": "webhook",
                "width": 32,
                "rate": 2000,
                "burst": 200,
                "retry": {"base_seconds": 0.2, "max_seconds": 2, "max_attempts": 6},
                "webhook": {"url": f"{sink_url}/hook", "secret": "demo-secret"},
            }
        },
        "tenants": {"demo": {"api_keys": [hash_api_key(DEMO_KEY)]}},
    }


def sms_channel(smsc_port: int) -> dict[str, object]:
    return {
        "type": "smpp",
        "width": 40,
        "smpp": {
            "host": "127.0.0.1",
            "port": smsc_port,
            "system_id": "sluice",
            "password": "secret",
            "binds": 2,
            "window": 20,
            "response_timeout_seconds": 5,
        },
    }


MAIL_DOMAIN = "demo.test"
MAIL_COUNT = 5


def smtp_front_door(smtp_sink_port: int) -> tuple[dict[str, object], dict[str, object]]:
    """The email channel (to the bundled SMTP sink) and the SMTP front door's section."""
    email: dict[str, object] = {
        "type": "email",
        "width": 4,
        "email": {"relay_host": "127.0.0.1", "relay_port": smtp_sink_port},
    }
    smtp: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "hostname": f"mx.{MAIL_DOMAIN}",
        "tenant": "demo",
        "sms_domain": f"sms.{MAIL_DOMAIN}",
        "sms_channel": "sms",
        "email_channel": "email",
        "local_domains": [MAIL_DOMAIN],
        "screening": {"greet_wait_seconds": 0.5},
    }
    return email, smtp


async def run_demo(
    messages: int = 2000, directory: str = "var/demo", subscribers: int = 100_000
) -> int:
    console = Console()
    workdir = Path(directory)
    await asyncio.to_thread(_fresh_directory, workdir)
    sink = WebhookSink(
        SinkOptions(
            latency_ms=5,
            latency_jitter_ms=5,
            error_ratio=0.03,
            throttle_ratio=0.01,
            secret="demo-secret",
            seed=7,
        )
    )
    await sink.start()
    smsc = SmscSimulator(
        SmscOptions(
            latency_ms=2,
            latency_jitter_ms=3,
            receipt_delay_ms=100,
            receipt_jitter_ms=200,
            receipt_states={"DELIVRD": 0.97, "UNDELIV": 0.03},
            seed=7,
        )
    )
    await smsc.start()
    mail_sink = SmtpSink(SmtpSinkOptions())
    await mail_sink.start()
    raw = demo_config(workdir, sink.url)
    raw["channels"]["sms"] = sms_channel(smsc.port)  # type: ignore[index]
    raw["channels"]["email"], raw["smtp"] = smtp_front_door(mail_sink.port)  # type: ignore[index]
    gateway = SluiceGateway(from_dict(raw))
    console.print(
        f"[bold]Sluice demo[/]: webhook sink at {sink.url}, SMSC simulator at "
        f"127.0.0.1:{smsc.port}, SMTP sink at 127.0.0.1:{mail_sink.port}, journal in {workdir}"
    )
    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(gateway.run())
            await gateway.started.wait()
            base = f"http://127.0.0.1:{gateway.port}"
            console.print(f"gateway API at {base} (tenant 'demo', key '{DEMO_KEY}')")
            try:
                await _drive(console, gateway, base, sink, smsc, messages)
                await _mail(console, gateway, mail_sink)
                if subscribers:
                    await _broadcast(console, base, smsc, sink, subscribers)
                console.print(
                    "[bold green]done[/]: every message reached a final state; see the "
                    "timeline API at GET /v1/messages/{id}"
                )
            finally:
                gateway.request_stop()
            await serving
    finally:
        await sink.close()
        await smsc.close()
        await mail_sink.close()
    return 0


BROADCAST_TOPIC = "storm-alerts"


def _subscriber_lines(count: int) -> list[bytes]:
    """NDJSON lines of `count` subscribers of the demo topic: nine in ten with a phone, one in
    three with a webhook too; one in fifty opted out of SMS (reached by webhook instead, or not
    at all), one in a thousand with no address."""
    zones = ("Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")
    lines = []
    for i in range(count):
        line: dict[str, Any] = {
            "id": f"sub-{i:07d}",
            "timezone": zones[i % len(zones)],
            "attributes": {"name": f"Reader {i}", "city": ("Leeds", "Osaka", "Perth")[i % 3]},
            "topics": [BROADCAST_TOPIC],
        }
        if i % 10 != 9:
            line["phone"] = f"+4477{i:08d}"
        if i % 3 == 0 or i % 10 == 9:
            line["webhook"] = f"https://apps.example/hooks/{i}"
        if i % 50 == 1:
            line["opt_out"] = {"channels": ["sms"]}
        if i % 1000 == 999:
            line.pop("phone", None)
            line.pop("webhook", None)
        lines.append(msgspec.json.encode(line))
    return lines


async def _broadcast(
    console: Console, base: str, smsc: SmscSimulator, sink: WebhookSink, count: int
) -> None:
    """Import `count` subscribers, broadcast to them by SMS (then webhook), and watch the
    broadcast drain with its live counts and ETA."""
    from sluice.cli.broadcasts import BarDisplay, BroadcastClient, summary_line, watch_broadcast

    auth = {"Authorization": f"Bearer {DEMO_KEY}"}
    lines = await asyncio.to_thread(_subscriber_lines, count)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(lines), 10_000):
            body = b"\n".join(lines[start : start + 10_000])
            async with session.post(
                f"{base}/v1/subscribers/import",
                data=body,
                headers={**auth, "Content-Type": "application/x-ndjson"},
            ) as resp:
                result = await resp.json()
                if resp.status != 200 or result["errors"]:
                    raise RuntimeError(f"the demo's import was refused: {result}")
    elapsed = time.perf_counter() - started
    console.print(
        f"imported {count:,} subscribers of topic '{BROADCAST_TOPIC}' in {elapsed:.1f} s "
        f"({count / elapsed:,.0f}/s)"
    )
    request = {
        "topics": [BROADCAST_TOPIC],
        "channels": ["sms", "web"],
        "content": {
            "sms": {"body": "{{ name }}: storm warning for {{ city }} tonight. Stay inside."},
            "webhook": {"body": "storm warning for {{ city }}, {{ subscriber.id }}"},
        },
        "priority": "bulk",
        "ttl_seconds": 3600,
    }
    async with BroadcastClient(base, DEMO_KEY) as client:
        view = await client.call("POST", "/v1/broadcasts", msgspec.json.encode(request))
        console.print(
            f"broadcast {view['id']} committed (202): {view['audience']:,} subscribers, "
            "by SMS where they have a phone and have not opted out, else by webhook"
        )
        final = await watch_broadcast(client, view["id"], 0.5, BarDisplay(console))
    console.print(summary_line(final))
    console.print(
        f"the SMSC simulator holds {len(smsc.messages()):,} messages; the webhook sink "
        f"{sink.stats().by_path['/hook'].accepted:,} deliveries in all"
    )


def _send_mail(port: int, to: str, body: str) -> None:
    message = EmailMessage()
    message["From"] = f"app@{MAIL_DOMAIN}"
    message["To"] = to
    message["Subject"] = "Sluice demo"
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(message)


async def _mail(console: Console, gateway: SluiceGateway, mail_sink: SmtpSink) -> None:
    """Mail through the SMTP front door: to numbers at the SMS domain, and to local users."""
    assert gateway.smtp is not None
    port = gateway.smtp.port
    before = sum((await gateway.journal.count_by_state()).values())
    for i in range(MAIL_COUNT):
        await asyncio.to_thread(_send_mail, port, f"+4477008{i:05d}@sms.{MAIL_DOMAIN}",
                                f"Mail to SMS #{i}: your parcel arrives today")  # fmt: skip
        await asyncio.to_thread(_send_mail, port, f"user{i}@{MAIL_DOMAIN}", f"Hello #{i}")
    await mail_sink.wait_for(messages=MAIL_COUNT, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the SMS get their receipts
        if not gateway.backlog():
            break
        await asyncio.sleep(0.1)
    after = sum((await gateway.journal.count_by_state()).values())
    counts = gateway.smtp.stats().verdicts
    console.print(
        f"SMTP front door: {2 * MAIL_COUNT} mails accepted ({after - before} messages stored "
        f"before each 250); screening: {counts.get(('screening', 'pass_new'), 0)} PASS NEW, "
        f"{counts.get(('screening', 'pass_old'), 0)} PASS OLD; the email channel delivered "
        f"{len(mail_sink.messages())} to the SMTP sink, the SMS channel takes the rest"
    )


def _fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def _post(
    session: aiohttp.ClientSession, base: str, batch: Sequence[Mapping[str, object]]
) -> list[str]:
    async with session.post(
        f"{base}/v1/messages",
        data=msgspec.json.encode({"messages": batch}),
        headers={"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"},
    ) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"the API refused the batch: {resp.status} {body}")
        return list(body["ids"])


SMS_TEXTS = (
    "Your code is {n:06d}",
    "Prix : 10€ [promo] {{code {n}}}",
    "Привет! Ваш заказ №{n} доставлен 📦. Спасибо, что выбрали нас — "
    "мы всегда рады помочь. Ответьте STOP, чтобы отписаться.",
)


async def _drive(
    console: Console,
    gateway: SluiceGateway,
    base: str,
    sink: WebhookSink,
    smsc: SmscSimulator,
    messages: int,
) -> None:
    callback = f"{sink.url}/callbacks"
    sms = [
        {"channel": "sms", "to": f"+4477009{i:05d}", "from": "Sluice",
         "body": SMS_TEXTS[i % len(SMS_TEXTS)].format(n=i)}
        for i in range(max(30, messages // 4))
    ]  # fmt: skip
    bulk = [
        {
            "channel": "web",
            "to": f"+1555{i:07d}",
            "body": f"Breaking news #{i}",
            "priority": "bulk",
            "callback_url": callback,
        }
        for i in range(messages)
    ]
    urgent = [
        {
            "channel": "web",
            "to": f"+1666{i:07d}",
            "body": f"Your code is {100000 + i}",
            "priority": "urgent",
            "callback_url": callback,
        }
        for i in range(URGENT_COUNT)
    ]
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        bulk_ids = await _post(session, base, bulk)
        accepted = time.perf_counter() - started
        console.print(
            f"accepted {len(bulk_ids):,} bulk messages in {accepted * 1000:.0f} ms "
            "(committed to disk before the 202)"
        )
        await asyncio.sleep(0.2)  # let the bulk backlog start draining before the OTPs arrive
        urgent_ids = await _post(session, base, urgent)
        console.print(f"then {len(urgent_ids)} urgent messages while the bulk drains")
        sms_ids = await _post(session, base, sms)
        console.print(
            f"and {len(sms_ids):,} SMS over SMPP (GSM 7-bit, the euro sign and brackets from "
            "its extension table, long UCS-2 texts with emoji in concatenated parts)"
        )
        total = len(bulk_ids) + len(urgent_ids) + len(sms_ids)
        with Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("web", total=total)
            while True:
                done = total - gateway.backlog()
                progress.update(task, completed=done)
                if done >= total:
                    break
                await asyncio.sleep(0.1)
        await sink.wait_for(len(bulk_ids) + len(urgent_ids), path="/callbacks", timeout=30)
        console.print("waiting for the SMS delivery receipts…")
        await _receipts(gateway, len(sms_ids))
        await _report(console, gateway, sink, session, base, bulk_ids, urgent_ids)
        _report_sms(console, smsc)


async def _receipts(gateway: SluiceGateway, count: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = await gateway.journal.count_by_state()
        if states.get(State.DELIVERED, 0) + states.get(State.FAILED, 0) >= count:
            return
        await asyncio.sleep(0.1)


def _report_sms(console: Console, smsc: SmscSimulator) -> None:
    stats = smsc.stats()
    table = Table(title="What the SMSC simulator saw")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("binds", str(stats.binds_total))
    table.add_row("submit_sm accepted (segments)", f"{stats.accepted:,}")
    table.add_row("messages after reassembly", f"{len(smsc.messages()):,}")
    table.add_row("delivery receipts sent", f"{stats.receipts_sent:,}")
    table.add_row("receipts acknowledged after commit", f"{stats.receipts_acked:,}")
    console.print(table)


async def _latencies(
    session: aiohttp.ClientSession, base: str, ids: list[str]
) -> tuple[list[float], dict[str, Any] | None]:
    """Accept-to-sent latencies of `ids`, and the record (decoded JSON) of one that was retried."""
    latencies: list[float] = []
    retried: dict[str, Any] | None = None
    for message_id in ids:
        async with session.get(
            f"{base}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {DEMO_KEY}"}
        ) as resp:
            record = await resp.json()
        timeline = record["timeline"]
        sent = [e for e in timeline if e["state"] == "sent"]
        if sent:
            latencies.append(_ms(sent[-1]["at"]) - _ms(timeline[0]["at"]))
        if retried is None and sum(1 for e in timeline if e["state"] == "sending") > 1:
            retried = record
    return latencies, retried


def _ms(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp() * 1000


async def _report(
    console: Console,
    gateway: SluiceGateway,
    sink: WebhookSink,
    session: aiohttp.ClientSession,
    base: str,
    bulk_ids: list[str],
    urgent_ids: list[str],
) -> None:
    counts = await gateway.journal.count_by_state()
    states = Table(title="Messages by state")
    states.add_column("state")
    states.add_column("count", justify="right")
    for state in State:
        if counts.get(state):
            states.add_row(state.name.lower(), f"{counts[state]:,}")
    console.print(states)

    stats = sink.stats()
    tally = Table(title="What the webhook sink saw")
    tally.add_column("")
    tally.add_column("count", justify="right")
    hook = stats.by_path.get("/hook")
    callbacks = stats.by_path.get("/callbacks")
    if hook is not None:
        tally.add_row("messages delivered (200)", f"{hook.accepted:,}")
        tally.add_row("refused with 503, retried", f"{stats.by_status.get(503, 0):,}")
        tally.add_row("refused with 429, slowed down", f"{stats.by_status.get(429, 0):,}")
        tally.add_row("duplicate deliveries", f"{hook.duplicates:,}")
    if callbacks is not None:
        tally.add_row("status callbacks received", f"{callbacks.accepted:,}")
    tally.add_row("most requests in flight", str(stats.max_in_flight))
    console.print(tally)

    urgent_ms, _ = await _latencies(session, base, urgent_ids)
    sample = bulk_ids[:: max(1, len(bulk_ids) // 200)]
    bulk_ms, retried = await _latencies(session, base, sample)
    lanes = Table(title="Accept → sent latency")
    lanes.add_column("lane")
    lanes.add_column("median ms", justify="right")
    lanes.add_column("max ms", justify="right")
    for lane, values in (("urgent", urgent_ms), ("bulk (sample)", bulk_ms)):
        if values:
            lanes.add_row(lane, f"{statistics.median(values):.0f}", f"{max(values):.0f}")
    console.print(lanes)
    if retried is not None:
        console.print(f"A message that needed a retry ({retried['id']}):")
        for event in retried["timeline"]:
            extra = " ".join(
                f"{k}={event[k]}" for k in ("attempt", "outcome", "detail") if k in event
            )
            console.print(f"  {event['at']}  {event['state']:<9} {extra}")
