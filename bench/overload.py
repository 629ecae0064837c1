"""Overload: what the HTTP edge does when offered 2, 5 and 10 times what it can take.

    .venv/bin/python bench/overload.py --seconds 60 --factors 2,5,10 --markdown overload.md
    .venv/bin/python bench/overload.py --quick
    .venv/bin/python bench/overload.py --admission admission.latency_target_ms=200 \\
        --admission server.max_connections=1000 --capacity 3850 --delivery 4600

Real processes on loopback: `sluice sim webhook` (answers 200 at once) and `sluice serve` on
SQLite (synchronous FULL) with one webhook channel of width 64 and no rate limit. Every
phase gets a fresh sink, gateway and journal (restarted, not drained into the next phase), so
its counts are its own. The load comes from bench/openloop.c, an open-loop generator:
requests leave on a fixed schedule whatever the gateway does, and latency counts from the
scheduled time (a closed loop such as wrk slows down with the server and hides collapse).

1. D, delivery alone: post --d-messages in batches of 10,000, then count the sink's arrivals
   over 10 s (msgs/s).
2. R, the gateway's capacity for single-message POSTs while the channel delivers them: wrk,
   64 connections, closed loop (bench/single_post.py's script), with `admission.enabled =
   false` (a closed loop against the adaptive limit measures its refusals, not capacity);
   R = 2xx/s. Beside it, for comparison only, the median 2xx/s of an open-loop run at 20 x R
   with the normal configuration. --capacity R and --delivery D skip the measurements, so
   that runs to compare offer the same rates.
3. For each factor F: a backlog is preloaded, then tenant A ("bench") posts single messages
   open-loop at F x R for --seconds; beside it, fresh-connection `GET /healthz` probes at
   20/s on the main port and 20/s on the health port (`server.health_listen`), and urgent
   POSTs (tenant A's key, `Sluice-Priority: urgent`, body priority urgent) at 10/s, recorded.
   Then "fairness": tenant A given `rate = R / 2` and flooding at 10 x that, while tenant B
   (its own key, no rate limit) posts at 200/s; and "B alone", tenant B at 200/s on an idle
   gateway (no preload) for its unloaded p99. Tenant A's rate applies to its urgent requests
   too, so in the fairness run their acceptance is shown but not judged.
4. The preload: with an empty journal the sink can deliver no faster than the goodput, so
   before each loaded phase tenant "preload" (its own key, no rate) posts D x (--seconds +
   10) messages in batches of 10,000 (a few seconds), and the load starts at once. The
   channel takes them oldest first, ahead of the flood; the journal tells when the last one
   was sent, and "sink >= 80 % of D" judges only the windows that ended before then.
5. After each phase the gateway delivers what it accepted (up to --drain-seconds), the urgent
   messages' timelines are read (`GET /v1/messages/{id}`: sent - accepted), the gateway is
   stopped and its journal counted per tenant: committed - acknowledged (2xx seen by the
   client) is "committed after the client left", which should be 0.
6. Per 5-s window and phase: offered/s, goodput (2xx/s, % of R), p99 accepted, refusals/s and
   their p99, timeouts, the sink's deliveries/s (% of D), /healthz p99 and failures on each
   port; then the goals (the GOAL_* constants). --markdown FILE writes the same tables, for
   docs/benchmarks.md.

Older gateway code (PYTHONPATH pointing at an earlier export) may not know `[admission]` or
`server.health_listen`: the configuration check names such a key as unknown, and the run
leaves it out (R then comes from the default configuration; the health port is not probed).

--admission KEY=VALUE (repeatable) adds a key to the gateway's configuration; the value is
read as a TOML scalar and a key without a section goes under [admission]. The configuration
is checked before anything starts, so an unknown key is named at once.

Windows count what happened in them: "offered" the requests that fell due, the rest what
ended (answered, timed out). What ended after the schedule (the last answers, the timeouts of
requests still queued in the generator) is one more row, in counts. A full run (60-s phases)
takes about 12 minutes, most of it the backlogs draining; --quick about 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sqlite3
import sys
import time
import tomllib
import urllib.error
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

import sluice
from sluice.config import ConfigError, from_dict, hash_api_key
from sluice.model import PENDING_STATES, Priority

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    KEY,
    batch_body,
    free_port,
    gateway,
    get_json,
    log_problems,
    post_batches,
    sink_process,
    tree_cpu_seconds,
    workdir,
)
from openloop import (
    GeneratorUnavailable,
    Latency,
    RecordedAccept,
    StreamResult,
    StreamSpec,
    WindowStats,
    build_generator,
    http_request,
    read_record,
    start_stream,
)
from single_post import WRK, lua_script, parse_wrk, run_wrk

HOOK_PATH = "/hook"
TENANT_A = "bench"
TENANT_B = "b"
KEY_B = "bench-key-b"
#: The tenant whose backlog is posted before each loaded phase (no rate).
TENANT_PRELOAD = "preload"
KEY_PRELOAD = "bench-key-preload"
#: The preload is D x (phase seconds + this): what the phase takes at D, plus what the sink
#: takes while the load ramps up and what is left for the last window.
PRELOAD_MARGIN_SECONDS = 10.0
PRELOAD_CONNECTIONS = 4
WINDOW_SECONDS = 5.0
HEALTHZ_RATE = 20.0
#: The /healthz probes: on the main port, and on `server.health_listen`'s port.
HEALTH_STREAMS = ("healthz", "healthz_port")
HEALTH_PORT_LABELS = {"healthz": "main port", "healthz_port": "health port"}
URGENT_RATE = 10.0
TENANT_B_RATE = 200.0
#: Tenant A's rate in the fairness run, as a share of R; it then floods at FAIR_FACTOR x that.
FAIR_RATE_SHARE = 0.5
FAIR_FACTOR = 10.0
#: Connections of the closed-loop R measurement (as bench/single_post.py).
R_CONNECTIONS = 64
#: The saturating open-loop run beside it offers this many times the closed-loop R.
OPEN_LOOP_R_FACTOR = 20.0
D_BATCH = 10_000
#: Pause between the last POST of phase 1 and the start of its count.
D_SETTLE_SECONDS = 1.0
DRAIN_POLL_SECONDS = 0.5
#: Urgent timelines read at once after a phase.
TIMELINE_CONCURRENCY = 8

# The goals the summary checks (the adaptive admission's targets).
GOAL_GOODPUT_SHARE = 0.90
GOAL_ACCEPTED_P99_MS = 500.0
GOAL_REFUSED_P99_MS = 10.0
GOAL_SINK_SHARE = 0.80
GOAL_HEALTHZ_P99_MS = 50.0
GOAL_URGENT_SENT_P99_MS = 200.0
GOAL_TENANT_B_FACTOR = 3.0


class GatewayFeatures(msgspec.Struct, frozen=True):
    """The configuration keys the gateway code under test knows (older code lacks some)."""

    #: `[admission]`: the adaptive limit (R is measured with it turned off).
    admission: bool
    #: `server.health_listen`: /healthz on a port and thread of its own.
    health_listen: bool


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    seconds: float
    factors: list[float]
    d_messages: int
    d_seconds: float
    r_seconds: float
    baseline_seconds: float
    drain_seconds: float
    #: Extra configuration sections from --admission.
    sections: dict[str, dict[str, Any]]
    markdown: Path | None
    #: Given R and D (--capacity, --delivery) instead of measuring them: the same offered
    #: rates for runs to compare.
    capacity: float | None
    delivery: float | None
    features: GatewayFeatures


class PhasePlan(msgspec.Struct, frozen=True, kw_only=True):
    """One overload phase: which streams run, at what rates, with which tenant limits."""

    name: str
    title: str
    seconds: float
    #: Tenant A's single-message POSTs/s; 0: no flood (the baseline).
    flood_rate: float
    #: Tenant A's configured rate (messages/s); 0: unlimited.
    tenant_a_rate: float = 0.0
    probes: bool = True
    tenant_b: bool = False
    #: Post a backlog of D x (seconds + PRELOAD_MARGIN_SECONDS) before the load.
    preload: bool = True


class LedgerRow(msgspec.Struct, frozen=True):
    """One stream's messages: acknowledged (2xx seen by the client) against the journal."""

    stream: str
    tenant: str
    acknowledged: int
    committed: int

    @property
    def after_client_left(self) -> int:
        return self.committed - self.acknowledged


class Preload(msgspec.Struct, frozen=True, kw_only=True):
    """The backlog posted before a phase's load, and how long it lasted."""

    #: Messages accepted (202), all acknowledged to the poster.
    messages: int
    refused_batches: int
    seconds: float
    #: The channel's pending messages when the load started.
    pending_at_start: int
    #: When the last preload message was sent, in seconds from the load's start; None: some
    #: were still pending when the gateway stopped.
    ran_out_s: float | None = None

    def lasted(self, end_s: float) -> bool:
        """Whether the backlog still held messages at ``end_s`` s into the load."""
        return self.ran_out_s is None or self.ran_out_s >= end_s


class PhaseResult(msgspec.Struct, frozen=True, kw_only=True):
    plan: PhasePlan
    streams: dict[str, StreamResult]
    preload: Preload | None
    #: The sink's deliveries/s in each of the flood's (or the main stream's) windows.
    sink_rates: list[float]
    ledger: list[LedgerRow]
    delivered: int
    duplicates: int
    committed: int
    #: Messages the journal still held as pending when the gateway was stopped.
    pending: int
    drained: bool
    drain_seconds: float
    #: Accept → sent of the recorded urgent messages, ms, sorted; and how many had no sent.
    urgent_sent_ms: list[int]
    urgent_unsent: int
    gateway_cores: float
    problems: list[str]

    @property
    def main(self) -> StreamResult:
        return self.streams["flood"] if "flood" in self.streams else self.streams["tenant_b"]


class Capacity(msgspec.Struct, frozen=True):
    rps: float
    requests: int
    non_2xx: int
    p50_ms: float
    p99_ms: float


class Goal(msgspec.Struct, frozen=True):
    goal: str
    measured: str
    met: bool | None  # None: not applicable in this phase


# ----------------------------------------------------------------------------- config


def parse_admission(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["admission.latency_target_ms=200", "server.max_connections=1000"]`` as sections.

    >>> parse_admission(["latency_target_ms=200", "server.max_connections=1000"])
    {'admission': {'latency_target_ms': 200}, 'server': {'max_connections': 1000}}
    """
    sections: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--admission expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            raise ValueError(
                f"--admission {key}: {text!r} is not a TOML value (quote strings: '\"x\"')"
            ) from None
        path = key.strip().split(".")
        if len(path) == 1:
            path = ["admission", *path]
        node = sections.setdefault(path[0], {})
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return sections


def channels(sink_base: str) -> dict[str, Any]:
    return {
        "web": {
            "type": "webhook",
            "width": 64,
            "rate": 0,
            "webhook": {"url": sink_base + HOOK_PATH},
        }
    }


def gateway_sections(
    settings: Settings,
    tenant_a_rate: float = 0.0,
    *,
    admission: bool = True,
    health_port: int | None = None,
) -> dict[str, Any]:
    """Configuration sections for `common.gateway`: the three tenants, --admission's keys, and
    (where the code knows them) the adaptive limit turned off unless ``admission`` and the
    health listener on ``health_port``."""
    tenant_a: dict[str, Any] = {"api_keys": [hash_api_key(KEY)]}
    if tenant_a_rate > 0:
        tenant_a["rate"] = tenant_a_rate
    sections: dict[str, Any] = {
        "tenants": {
            TENANT_A: tenant_a,
            TENANT_B: {"api_keys": [hash_api_key(KEY_B)]},
            TENANT_PRELOAD: {"api_keys": [hash_api_key(KEY_PRELOAD)]},
        }
    }
    for section, values in settings.sections.items():
        sections.setdefault(section, {}).update(values)
    if not admission and settings.features.admission:
        sections.setdefault("admission", {})["enabled"] = False
    if health_port is not None and settings.features.health_listen:
        sections.setdefault("server", {})["health_listen"] = f"127.0.0.1:{health_port}"
    return sections


def _checked_config(sections: dict[str, Any]) -> None:
    """Raise ConfigError, naming the key, if the gateway would refuse these sections."""
    raw: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:1"},
        "journal": {"path": "unused.db"},
        "channels": channels("http://127.0.0.1:9"),
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    from_dict(raw)


def check_config(settings: Settings) -> None:
    """Raise ConfigError, naming the key, if the gateway would refuse the configuration (an
    unknown --admission key, a value out of range): it would only say so in its log."""
    _checked_config(gateway_sections(settings))


def knows_key(section: str, key: str, value: Any) -> bool:
    """Whether the gateway code accepts ``section.key``; False when its configuration check
    names the key as unknown (older code), any other refusal is raised."""
    try:
        _checked_config({section: {key: value}})
    except ConfigError as error:
        text = str(error)
        if "unknown key" in text and text.startswith((f"{section}:", f"{section}.{key}:")):
            return False
        raise
    return True


def detect_features() -> GatewayFeatures:
    return GatewayFeatures(
        admission=knows_key("admission", "enabled", False),
        health_listen=knows_key("server", "health_listen", "127.0.0.1:2"),
    )


def message_body(to: str, text: str, priority: str | None = None) -> bytes:
    message: dict[str, str] = {"channel": "web", "to": to, "body": text}
    if priority is not None:
        message["priority"] = priority
    return msgspec.json.encode(message)


def post_request(base: str, key: str, body: bytes, urgent: bool = False) -> bytes:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if urgent:
        headers["Sluice-Priority"] = "urgent"
    return http_request("POST", "/v1/messages", base.removeprefix("http://"), headers, body)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- the sink


def sink_delivered(sink_base: str) -> tuple[int, int]:
    """(distinct message ids the sink accepted on the hook path, duplicates)."""
    stats = get_json(f"{sink_base}/_sink/stats")
    path = stats["by_path"].get(HOOK_PATH)
    return (int(path["unique_ids"]), int(path["duplicates"])) if path else (0, 0)


def sink_rates(sink_base: str, t0_unix: float, windows: list[WindowStats]) -> list[float]:
    """The sink's arrivals/s in each window, from its per-second counts (whole seconds: a
    window is taken as the Unix seconds its start and end fall in, end excluded)."""
    stats = get_json(f"{sink_base}/_sink/stats")
    series: list[int] = stats["arrivals_per_second"]
    last: int = stats["arrivals_last_second"]
    first = last - len(series) + 1
    rates = []
    for window in windows:
        start = math.floor(t0_unix + window.start_s)
        end = max(start + 1, math.floor(t0_unix + window.end_s))
        counts = [series[s - first] for s in range(start, end) if first <= s <= last]
        rates.append(sum(counts) / len(counts) if counts else 0.0)
    return rates


# ------------------------------------------------------------------------------ D and R


def measure_delivery(settings: Settings) -> float:
    """Phase 1: the sink's receive rate with the gateway doing nothing but deliver."""
    with (
        workdir() as directory,
        sink_process() as (_, sink_base),
        gateway(directory, channels(sink_base), "full", **gateway_sections(settings)) as (
            _,
            base,
        ),
    ):
        accepted, refused, statuses = asyncio.run(
            post_batches(base, settings.d_messages, D_BATCH, connections=4)
        )
        time.sleep(D_SETTLE_SECONDS)
        start_count, start = sink_delivered(sink_base)[0], time.perf_counter()
        count, now = start_count, start
        while now - start < settings.d_seconds and count < accepted:
            time.sleep(0.25)
            count, now = sink_delivered(sink_base)[0], time.perf_counter()
        rate = (count - start_count) / (now - start)
        problems = log_problems(directory)
    ran_out = " (the backlog ran out: a lower bound)" if count >= accepted else ""
    print(
        f"D: {accepted:,} messages posted in batches of {D_BATCH:,} (refused batches "
        f"{refused}, statuses {statuses}); the sink received {count - start_count:,} in "
        f"{now - start:.1f} s: **{rate:,.0f} msgs/s**{ran_out}"
    )
    for line in problems:
        print(f"  serve.log: {line}")
    return rate


def capacity_config(settings: Settings) -> str:
    """How R's gateway was configured, for the reports."""
    if settings.features.admission:
        return "admission.enabled = false"
    return "no [admission] in this code"


def measure_capacity(settings: Settings) -> Capacity:
    """Phase 2: single-message POSTs/s answered 2xx, closed loop, the channel delivering, the
    adaptive limit off: the gateway's capacity, whatever its admission policy."""
    sections = gateway_sections(settings, admission=False)
    with (
        workdir() as directory,
        sink_process() as (_, sink_base),
        gateway(directory, channels(sink_base), "full", **sections) as (_, base),
    ):
        script = directory / "post.lua"
        script.write_text(lua_script(message_body("+15550000001", "Overload capacity")))
        url = f"{base}/v1/messages"
        run_wrk(script, url, 1, R_CONNECTIONS, 1)  # warm-up
        figures = parse_wrk(run_wrk(script, url, 1, R_CONNECTIONS, settings.r_seconds))
        problems = log_problems(directory)
    requests = int(figures.get("requests", figures["rps"] * settings.r_seconds))
    non_2xx = int(figures["non_2xx"])
    elapsed = figures.get("elapsed_s", settings.r_seconds)
    capacity = Capacity(
        (requests - non_2xx) / elapsed,
        requests,
        non_2xx,
        figures.get("p50", math.nan),
        figures.get("p99", math.nan),
    )
    print(
        f"R: wrk, {R_CONNECTIONS} connections, {settings.r_seconds:g} s, channel delivering, "
        f"{capacity_config(settings)}: "
        f"{requests:,} requests, {non_2xx} non-2xx: **{capacity.rps:,.0f} 2xx/s** "
        f"(p50 {capacity.p50_ms:.1f} ms, p99 {capacity.p99_ms:.1f} ms, closed loop)"
    )
    for line in problems:
        print(f"  serve.log: {line}")
    return capacity


def measure_open_loop_capacity(binary: Path, settings: Settings, r: float) -> float:
    """Phase 2, open loop: the median 2xx/s of 1-s windows (the first left out) while
    single-message POSTs are offered at OPEN_LOOP_R_FACTOR x the closed-loop R, with the
    normal configuration (the adaptive limit on, where the code has it)."""
    rate = OPEN_LOOP_R_FACTOR * r
    with (
        workdir() as directory,
        sink_process() as (_, sink_base),
        gateway(directory, channels(sink_base), "full", **gateway_sections(settings)) as (
            _,
            base,
        ),
    ):
        body = message_body("+15550000001", "Overload capacity")
        spec = StreamSpec(
            name="saturate",
            port=port_of(base),
            rate=rate,
            seconds=settings.r_seconds,
            request=post_request(base, KEY, body),
            window_seconds=1.0,
        )
        with start_stream(binary, spec, directory) as stream:
            result = stream.result()
    windows = [result.windows[i] for i in judged_windows(result.windows, settings.r_seconds)]
    rates = sorted(w.ok / w.seconds for w in windows) or [result.total.ok / settings.r_seconds]
    goodput = rates[len(rates) // 2]
    t = result.total
    print(
        f"R, open loop at {OPEN_LOOP_R_FACTOR:g} x R = {rate:,.0f} req/s for "
        f"{settings.r_seconds:g} s, normal configuration: median {goodput:,.0f} 2xx/s over "
        "1-s windows "
        f"({t.ok:,} 2xx, {t.refused:,} refused, {t.timeouts:,} timeouts, "
        f"{t.connect_errors + t.server_closed:,} connect errors or closed)"
    )
    return goodput


# ---------------------------------------------------------------------- overload phases


def stream_specs(
    plan: PhasePlan, base: str, directory: Path, health_port: int | None
) -> list[StreamSpec]:
    """The phase's generators; the health port's probes only when it has one."""
    port = port_of(base)
    host = base.removeprefix("http://")

    def spec(name: str, rate: float, request: bytes, **options: Any) -> StreamSpec:
        options.setdefault("port", port)
        return StreamSpec(
            name=name,
            rate=rate,
            seconds=plan.seconds,
            request=request,
            window_seconds=WINDOW_SECONDS,
            **options,
        )

    specs = []
    if plan.flood_rate > 0:
        body = message_body("+15550000001", "Overload message")
        specs.append(spec("flood", plan.flood_rate, post_request(base, KEY, body)))
    if plan.probes:
        probe = http_request("GET", "/healthz", host, close=True)
        specs.append(spec("healthz", HEALTHZ_RATE, probe, fresh=True))
        if health_port is not None:
            probe = http_request("GET", "/healthz", f"127.0.0.1:{health_port}", close=True)
            specs.append(spec("healthz_port", HEALTHZ_RATE, probe, fresh=True, port=health_port))
        body = message_body("+15550000002", "Overload urgent", priority="urgent")
        specs.append(
            spec(
                "urgent",
                URGENT_RATE,
                post_request(base, KEY, body, urgent=True),
                record=directory / "urgent.ids",
            )
        )
    if plan.tenant_b:
        body = message_body("+15550000003", "Overload tenant B")
        specs.append(spec("tenant_b", TENANT_B_RATE, post_request(base, KEY_B, body)))
    return specs


def channel_pending(base: str, within: float = 30.0) -> int:
    """The channel's queue depth. Right after a flood the gateway may still be shedding the
    flood's tail: a 503 or 429 is asked again after its Retry-After, for up to `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            return int(get_json(f"{base}/v1/channels", auth=True)["channels"][0]["pending"])
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or time.monotonic() > deadline:
                raise
            time.sleep(float(exc.headers.get("Retry-After", "1")))


async def post_preload(base: str, total: int) -> tuple[int, int]:
    """POST ``total`` messages as tenant "preload" in batches of D_BATCH over
    PRELOAD_CONNECTIONS connections; (accepted, refused batches). A refused batch is not
    retried: what the journal holds is what was acknowledged."""
    accepted = refused = 0
    starts = iter(range(0, total, D_BATCH))
    headers = {"Authorization": f"Bearer {KEY_PRELOAD}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=PRELOAD_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal accepted, refused
            for start in starts:
                n = min(D_BATCH, total - start)
                body = batch_body(n, start=start)
                async with session.post(f"{base}/v1/messages", data=body) as resp:
                    await resp.read()
                    if resp.status == 202:
                        accepted += n
                    else:
                        refused += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(PRELOAD_CONNECTIONS):
                tg.create_task(client())
    return accepted, refused


def preload_backlog(base: str, messages: int) -> Preload:
    """Post the phase's backlog and note how long it took and what is pending after it."""
    start = time.perf_counter()
    accepted, refused = asyncio.run(post_preload(base, messages))
    seconds = time.perf_counter() - start
    return Preload(
        messages=accepted,
        refused_batches=refused,
        seconds=seconds,
        pending_at_start=channel_pending(base),
    )


def wait_drained(base: str, limit: float) -> tuple[bool, float]:
    """Wait until the channel has nothing pending; (drained, seconds waited)."""
    start = time.perf_counter()
    while (waited := time.perf_counter() - start) < limit:
        if channel_pending(base) == 0:
            return True, waited
        time.sleep(DRAIN_POLL_SECONDS)
    return False, waited


def _rfc3339_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


async def urgent_timelines(base: str, accepts: list[RecordedAccept]) -> tuple[list[int], int]:
    """Accept → sent (ms) of each recorded message from its timeline, sorted; and how many
    had no sent event."""
    latencies: list[int] = []
    unsent = 0
    slots = asyncio.Semaphore(TIMELINE_CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(message_id: str) -> None:
            nonlocal unsent
            view: dict[str, Any] = {}
            async with slots:
                for _ in range(30):  # a gateway just out of a flood may still shed a few
                    async with session.get(f"{base}/v1/messages/{message_id}") as resp:
                        if resp.status not in (429, 503):
                            view = await resp.json() if resp.status == 200 else {}
                            break
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
            times: dict[str, int] = {}
            for entry in view.get("timeline", []):
                times.setdefault(entry["state"], _rfc3339_ms(entry["at"]))
            if "accepted" in times and "sent" in times:
                latencies.append(times["sent"] - times["accepted"])
            else:
                unsent += 1

        async with asyncio.TaskGroup() as tg:
            for accept in accepts:
                tg.create_task(one(accept.id))
    return sorted(latencies), unsent


def journal_counts(database: Path) -> tuple[dict[tuple[str, bool], int], int]:
    """Messages in a stopped gateway's journal by (tenant, urgent), and how many of them
    are still pending (accepted, queued or sending)."""
    pending_states = ",".join(str(int(state)) for state in PENDING_STATES)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT tenant, priority = ?, count(*) FROM messages GROUP BY 1, 2",
            (int(Priority.URGENT),),
        ).fetchall()
        (pending,) = conn.execute(
            f"SELECT count(*) FROM messages WHERE state IN ({pending_states})"
        ).fetchone()
    finally:
        conn.close()
    return {(tenant, bool(urgent)): n for tenant, urgent, n in rows}, int(pending)


def preload_sent_at(database: Path) -> float | None:
    """Unix seconds when a stopped gateway's journal last moved a preload message out of the
    pending states (its outcome's commit); None if some are still pending, or there are none."""
    pending_states = ",".join(str(int(state)) for state in PENDING_STATES)
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        (count, pending, last_ms) = conn.execute(
            f"SELECT count(*), total(state IN ({pending_states})), max(updated_at) "
            "FROM messages WHERE tenant = ?",
            (TENANT_PRELOAD,),
        ).fetchone()
    finally:
        conn.close()
    return last_ms / 1000 if count and not pending else None


def ledger(
    streams: dict[str, StreamResult],
    counts: dict[tuple[str, bool], int],
    preload: Preload | None,
) -> list[LedgerRow]:
    """Per stream (and the preload): acknowledged against the journal's count of its tenant
    and priority."""
    keys = {"flood": (TENANT_A, False), "urgent": (TENANT_A, True), "tenant_b": (TENANT_B, False)}
    rows = [
        LedgerRow(name, keys[name][0], streams[name].total.ok, counts.get(keys[name], 0))
        for name in ("flood", "urgent", "tenant_b")
        if name in streams
    ]
    if preload is not None:
        committed = counts.get((TENANT_PRELOAD, False), 0)
        rows.append(LedgerRow("preload", TENANT_PRELOAD, preload.messages, committed))
    return rows


def run_phase(binary: Path, settings: Settings, plan: PhasePlan, d: float) -> PhaseResult:
    """One phase on a fresh sink, gateway and journal; see the module docstring."""
    health_port = free_port() if settings.features.health_listen else None
    sections = gateway_sections(settings, plan.tenant_a_rate, health_port=health_port)
    preload: Preload | None = None
    with workdir() as directory, sink_process() as (_, sink_base):
        with gateway(directory, channels(sink_base), "full", **sections) as (proc, base):
            if plan.preload:
                preload = preload_backlog(base, round(d * (plan.seconds + PRELOAD_MARGIN_SECONDS)))
            cpu0, t0 = tree_cpu_seconds(proc.pid), time.perf_counter()
            with contextlib.ExitStack() as stack:
                running = [
                    stack.enter_context(start_stream(binary, spec, directory))
                    for spec in stream_specs(plan, base, directory, health_port)
                ]
                streams = {stream.spec.name: stream.result() for stream in running}
            gateway_cores = (tree_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            main = streams["flood"] if "flood" in streams else streams["tenant_b"]
            rates = sink_rates(sink_base, main.total.t0_unix, main.windows)
            drained, drain_seconds = wait_drained(base, settings.drain_seconds)
            accepts = read_record(directory / "urgent.ids")
            urgent_ms, unsent = asyncio.run(urgent_timelines(base, accepts))
        # The gateway is stopped: its journal is read as it was left on disk.
        counts, pending = journal_counts(directory / "journal.db")
        if preload is not None:
            sent_at = preload_sent_at(directory / "journal.db")
            ran_out = None if sent_at is None else sent_at - main.total.t0_unix
            preload = msgspec.structs.replace(preload, ran_out_s=ran_out)
        delivered, duplicates = sink_delivered(sink_base)
        problems = log_problems(directory)
    return PhaseResult(
        plan=plan,
        streams=streams,
        preload=preload,
        sink_rates=rates,
        ledger=ledger(streams, counts, preload),
        delivered=delivered,
        duplicates=duplicates,
        committed=sum(counts.values()),
        pending=pending,
        drained=drained,
        drain_seconds=drain_seconds,
        urgent_sent_ms=urgent_ms,
        urgent_unsent=unsent,
        gateway_cores=gateway_cores,
        problems=problems,
    )


def plans(settings: Settings, r: float) -> list[PhasePlan]:
    seconds = settings.seconds
    phases = [
        PhasePlan(
            name=f"{factor:g}x",
            title=f"{factor:g} x R: tenant A offers {factor * r:,.0f} req/s for {seconds:g} s",
            seconds=seconds,
            flood_rate=factor * r,
        )
        for factor in settings.factors
    ]
    a_rate = FAIR_RATE_SHARE * r
    phases.append(
        PhasePlan(
            name="fair",
            title=(
                f"fairness: tenant A (rate {a_rate:,.0f}/s) offers {FAIR_FACTOR:g} x its rate = "
                f"{FAIR_FACTOR * a_rate:,.0f} req/s, tenant B {TENANT_B_RATE:g}/s, "
                f"for {seconds:g} s"
            ),
            seconds=seconds,
            flood_rate=FAIR_FACTOR * a_rate,
            tenant_a_rate=a_rate,
            tenant_b=True,
        )
    )
    phases.append(
        PhasePlan(
            name="b_alone",
            title=(
                f"baseline: tenant B alone at {TENANT_B_RATE:g} req/s for "
                f"{settings.baseline_seconds:g} s (unloaded p99)"
            ),
            seconds=settings.baseline_seconds,
            flood_rate=0.0,
            probes=False,
            tenant_b=True,
            preload=False,
        )
    )
    return phases


# ---------------------------------------------------------------------------- reports


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _p99(latency: Latency | None) -> float | None:
    return latency.p99 if latency is not None else None


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _window_cells(result: PhaseResult, i: int, r: float, d: float) -> list[str]:
    """One scheduled window of the main stream, its sink rate and the probes beside it."""
    window = result.main.windows[i]
    seconds = max(window.seconds, 1e-9)
    sink = result.sink_rates[i] if i < len(result.sink_rates) else 0.0
    cells = [
        f"{window.start_s:g}-{window.end_s:g} s",
        f"{window.sent / seconds:,.0f}",
        f"{window.ok / seconds:,.0f}",
        f"{100 * window.ok / seconds / r:.0f} %",
        _ms(_p99(window.ok_ms)),
        f"{window.refused / seconds:,.0f}",
        _ms(_p99(window.refused_ms)),
        f"{window.timeouts:,}",
        f"{sink:,.0f}",
        f"{100 * sink / d:.0f} %{_backlog_mark(result, window)}",
    ]
    if "healthz" in result.streams:
        for name in HEALTH_STREAMS:
            other = _window_of(result.streams.get(name), i)
            cells += ["-", "-"] if other is None else [_ms(_p99(other.ok_ms)), f"{other.failed:,}"]
    if "tenant_b" in result.streams and "flood" in result.streams:
        other = _window_of(result.streams["tenant_b"], i)
        cells += (
            ["-", "-"] if other is None else [f"{other.ok / seconds:,.0f}", _ms(_p99(other.ok_ms))]
        )
    return cells


def _window_of(stream: StreamResult | None, i: int) -> WindowStats | None:
    return stream.windows[i] if stream is not None and i < len(stream.windows) else None


#: Marks a sink figure taken after the preload backlog had run out (not judged).
NO_BACKLOG_MARK = " †"


def _backlog_mark(result: PhaseResult, window: WindowStats) -> str:
    preload = result.preload
    return NO_BACKLOG_MARK if preload is not None and not preload.lasted(window.end_s) else ""


def _after_cells(result: PhaseResult, first: int, width: int) -> list[str]:
    """The windows after the schedule as one row of counts (they can be milliseconds long,
    so rates would mislead): the last answers and the timeouts of requests still queued."""
    after = result.main.windows[first:]
    seconds = sum(w.seconds for w in after)
    ok_p99 = [p for w in after if (p := _p99(w.ok_ms)) is not None]
    refused_p99 = [p for w in after if (p := _p99(w.refused_ms)) is not None]
    cells = [
        f"after the schedule ({seconds:.1f} s), counts",
        "-",
        f"{sum(w.ok for w in after):,}",
        "-",
        _ms(max(ok_p99, default=None)),
        f"{sum(w.refused for w in after):,}",
        _ms(max(refused_p99, default=None)),
        f"{sum(w.timeouts for w in after):,}",
    ]
    return cells + ["-"] * (width - len(cells))


def window_table(result: PhaseResult, r: float, d: float) -> list[str]:
    """The per-window markdown table of one phase."""
    header = [
        "window",
        "offered/s",
        "goodput/s",
        "% of R",
        "p99 accepted ms",
        "refusals/s",
        "refusals p99 ms",
        "timeouts",
        "sink/s",
        "% of D",
    ]
    if "healthz" in result.streams:
        header += [
            "main port /healthz p99 ms",
            "main port failures",
            "health port /healthz p99 ms",
            "health port failures",
        ]
    if "tenant_b" in result.streams and "flood" in result.streams:
        header += ["B ok/s", "B p99 ms"]
    lines = [_row(header), "|" + "---|" * len(header)]
    windows = result.main.windows
    in_schedule = [i for i, w in enumerate(windows) if w.start_s < result.plan.seconds - 1e-6]
    lines += [_row(_window_cells(result, i, r, d)) for i in in_schedule]
    if len(in_schedule) < len(windows):
        lines.append(_row(_after_cells(result, len(in_schedule), len(header))))
    if any(_backlog_mark(result, windows[i]) for i in in_schedule):
        lines += ["", f"{NO_BACKLOG_MARK.strip()} the preload backlog had run out (not judged)."]
    return lines


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def judged_windows(windows: list[WindowStats], seconds: float) -> list[int]:
    """Indices of the schedule's windows after the first: the ones the goals judge."""
    return [i for i, w in enumerate(windows) if w.start_s < seconds - 1e-6][1:]


def goals(result: PhaseResult, r: float, d: float, b_unloaded_p99: float | None) -> list[Goal]:
    """Each goal against this phase's figures."""
    plan = result.plan
    main = result.main
    total = main.total
    judged = judged_windows(main.windows, plan.seconds)
    out: list[Goal] = []
    if "flood" in result.streams:
        target = plan.tenant_a_rate if plan.tenant_a_rate > 0 else r
        whose = "tenant A's rate" if plan.tenant_a_rate > 0 else "R"
        worst = min((main.windows[i].ok / main.windows[i].seconds for i in judged), default=0.0)
        out.append(
            Goal(
                f"goodput ≥ {GOAL_GOODPUT_SHARE:.0%} of {whose} ({target:,.0f}/s) in every "
                "window after the first",
                f"worst {worst:,.0f}/s ({worst / target:.0%})",
                worst >= GOAL_GOODPUT_SHARE * target,
            )
        )
        p99 = total.ok_ms.p99 if total.ok_ms else None
        out.append(
            Goal(
                f"p99 accepted ≤ {GOAL_ACCEPTED_P99_MS:g} ms",
                f"{_ms(p99)} ms ({total.ok:,} accepted)",
                p99 is not None and p99 <= GOAL_ACCEPTED_P99_MS,
            )
        )
        refused_p99 = total.refused_ms.p99 if total.refused_ms else None
        out.append(
            Goal(
                f"refusals p99 ≤ {GOAL_REFUSED_P99_MS:g} ms",
                f"{_ms(refused_p99)} ms ({total.refused:,} refused, "
                f"{total.no_retry_after:,} without Retry-After)",
                refused_p99 is None or refused_p99 <= GOAL_REFUSED_P99_MS,
            )
        )
    posting = [s for name, s in result.streams.items() if name not in HEALTH_STREAMS]
    timeouts = sum(s.total.timeouts for s in posting)
    lost = sum(s.total.connect_errors + s.total.server_closed for s in posting)
    out.append(
        Goal(
            "0 timeouts",
            f"{timeouts:,} (and {lost:,} connect errors or closed by the server)",
            timeouts == 0,
        )
    )
    if "flood" in result.streams:
        out.append(sink_goal(result, judged, d))
    if "healthz" in result.streams:
        out += [healthz_goal(result, name) for name in HEALTH_STREAMS]
    urgent = result.streams.get("urgent")
    if urgent is not None:
        sent_ms = result.urgent_sent_ms
        p99_sent = percentile(sent_ms, 0.99) if sent_ms else None
        p50_sent = percentile(sent_ms, 0.50) if sent_ms else None
        # In the fairness run tenant A's own rate limit applies to its urgent requests too.
        limited = plan.tenant_a_rate > 0
        out.append(
            Goal(
                "urgent 100 % accepted"
                + (" (tenant A's own rate applies: informative)" if limited else ""),
                f"{urgent.total.ok:,} of {urgent.total.sent:,}",
                None if limited else urgent.total.ok == urgent.total.sent,
            )
        )
        out.append(
            Goal(
                f"urgent accept → sent p99 ≤ {GOAL_URGENT_SENT_P99_MS:g} ms",
                f"p50 {_ms(p50_sent)} ms, p99 {_ms(p99_sent)} ms "
                f"({len(sent_ms):,} sent, {result.urgent_unsent} without a sent event)",
                p99_sent is not None and p99_sent <= GOAL_URGENT_SENT_P99_MS,
            )
        )
    tenant_b = result.streams.get("tenant_b")
    if tenant_b is not None and "flood" in result.streams:
        p99 = tenant_b.total.ok_ms.p99 if tenant_b.total.ok_ms else None
        limit = GOAL_TENANT_B_FACTOR * b_unloaded_p99 if b_unloaded_p99 else None
        out.append(
            Goal(
                f"tenant B p99 ≤ {GOAL_TENANT_B_FACTOR:g} x unloaded ({_ms(b_unloaded_p99)} ms)",
                f"{_ms(p99)} ms, {tenant_b.total.ok:,} of {tenant_b.total.sent:,} accepted",
                p99 is not None and limit is not None and p99 <= limit,
            )
        )
    out.append(
        Goal(
            "every committed (so every acknowledged) message delivered",
            f"{result.delivered:,} of {result.committed:,} at the sink, {result.pending:,} "
            f"pending after {result.drain_seconds:.0f} s of draining",
            result.delivered >= result.committed if result.drained else None,
        )
    )
    after = sum(row.after_client_left for row in result.ledger)
    out.append(
        Goal(
            "committed after the client left = 0",
            ", ".join(
                f"{row.stream} {row.committed:,} - {row.acknowledged:,} = {row.after_client_left:,}"
                for row in result.ledger
            ),
            after == 0,
        )
    )
    return out


def sink_goal(result: PhaseResult, judged: list[int], d: float) -> Goal:
    """Sink ≥ GOAL_SINK_SHARE of D in the judged windows that ended while the preload
    backlog lasted (without a backlog the sink cannot outpace the goodput)."""
    windows = result.main.windows
    preload = result.preload
    backed = [i for i in judged if preload is not None and preload.lasted(windows[i].end_s)]
    goal = f"sink ≥ {GOAL_SINK_SHARE:.0%} of D ({d:,.0f}/s) in every window after the first"
    if preload is None:
        lasted = "no backlog was preloaded"
    elif preload.ran_out_s is None:
        lasted = "the backlog lasted past the drain"
    elif preload.lasted(result.plan.seconds):
        lasted = f"the backlog lasted the whole phase (until {preload.ran_out_s:.1f} s)"
    else:
        lasted = f"the backlog **ran out** {preload.ran_out_s:.1f} s into the load"
    if not backed:
        return Goal(goal + ", while the backlog lasts", f"no window judged: {lasted}", None)
    worst = min(result.sink_rates[i] for i in backed)
    return Goal(
        goal + ", while the backlog lasts",
        f"worst {worst:,.0f}/s ({worst / d:.0%}) over {len(backed)} of {len(judged)} "
        f"windows; {lasted}",
        worst >= GOAL_SINK_SHARE * d,
    )


def healthz_goal(result: PhaseResult, name: str) -> Goal:
    """Fresh-connection /healthz on one port (main, or the health listener's own)."""
    label = HEALTH_PORT_LABELS[name]
    goal = f"fresh /healthz p99 ≤ {GOAL_HEALTHZ_P99_MS:g} ms, 0 failures, {label}"
    stream = result.streams.get(name)
    if stream is None:
        return Goal(goal, "not probed: this code has no server.health_listen", None)
    p99 = stream.total.ok_ms.p99 if stream.total.ok_ms else None
    failed = stream.total.failed
    return Goal(
        goal,
        f"{_ms(p99)} ms, {failed:,} failures of {stream.total.sent:,}",
        p99 is not None and p99 <= GOAL_HEALTHZ_P99_MS and failed == 0,
    )


def goal_table(rows: list[Goal]) -> list[str]:
    marks = {True: "met", False: "**not met**", None: "-"}
    lines = ["| goal | measured | |", "|---|---|---|"]
    lines += [f"| {g.goal} | {g.measured} | {marks[g.met]} |" for g in rows]
    return lines


def stream_lines(result: PhaseResult) -> list[str]:
    """A line per stream with its totals, and the delivery check."""
    lines = []
    for name, stream in result.streams.items():
        t = stream.total
        errnos = ", ".join(f"{k} {v}" for k, v in t.connect_errnos.items())
        lines.append(
            f"- {name}: {t.sent:,} sent at {t.rate:,.0f}/s: {t.ok:,} 2xx, {t.r429:,} 429, "
            f"{t.r503:,} 503, {t.other:,} other, {t.timeouts:,} timeouts "
            f"({t.queued_timeouts:,} never left the generator's queue), "
            f"{t.connect_errors:,} connect errors{f' ({errnos})' if errnos else ''}, "
            f"{t.server_closed:,} closed by the server; p99 2xx "
            f"{_ms(t.ok_ms.p99 if t.ok_ms else None)} ms; most queued in the generator "
            f"{t.queue_max:,}, connections {t.open_max:,}; generator CPU {t.cpu_s:.1f} s "
            f"({t.cpu_s / max(t.elapsed_s, 1e-9):.2f} cores), worst lag {t.lag_max_ms:.1f} ms"
        )
    if result.preload is not None:
        lines.append(preload_line(result.preload, result.plan.seconds))
    drained = (
        f"drained in {result.drain_seconds:.0f} s"
        if result.drained
        else f"**not drained** after {result.drain_seconds:.0f} s"
    )
    lines.append(
        f"- journal: {result.committed:,} committed, {result.pending:,} still pending at the "
        f"stop; sink: {result.delivered:,} delivered "
        f"({result.duplicates:,} duplicates), {drained}; gateway CPU during the load "
        f"{result.gateway_cores:.2f} cores"
    )
    lines += [f"- serve.log: {line}" for line in result.problems]
    return lines


def preload_line(preload: Preload, seconds: float) -> str:
    rate = preload.messages / max(preload.seconds, 1e-9)
    if preload.ran_out_s is None:
        lasted = "still pending when the gateway stopped"
    elif preload.ran_out_s >= seconds:
        lasted = f"the last sent {preload.ran_out_s:.1f} s after the load started: it lasted"
    else:
        lasted = f"**ran out** {preload.ran_out_s:.1f} s into the {seconds:g}-s load"
    return (
        f"- preload (tenant {TENANT_PRELOAD!r}): {preload.messages:,} messages posted in "
        f"batches of {D_BATCH:,} in {preload.seconds:.1f} s ({rate:,.0f} msgs/s, "
        f"{preload.refused_batches} refused batches); {preload.pending_at_start:,} pending "
        f"when the load started; {lasted}"
    )


def phase_report(
    result: PhaseResult, r: float, d: float, b_unloaded_p99: float | None
) -> list[str]:
    return [
        f"### {result.plan.title}",
        "",
        *window_table(result, r, d),
        "",
        *stream_lines(result),
        "",
        *goal_table(goals(result, r, d, b_unloaded_p99)),
        "",
    ]


# ------------------------------------------------------------------------------- main


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        seconds=args.seconds if args.seconds is not None else (10.0 if quick else 60.0),
        factors=[float(f) for f in args.factors.split(",") if f.strip()],
        d_messages=args.d_messages or (50_000 if quick else 200_000),
        d_seconds=3.0 if quick else 10.0,
        r_seconds=3.0 if quick else 10.0,
        baseline_seconds=5.0 if quick else 20.0,
        drain_seconds=args.drain_seconds or (60.0 if quick else 90.0),
        sections=parse_admission(args.admission),
        markdown=args.markdown,
        capacity=args.capacity,
        delivery=args.delivery,
        features=detect_features(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="per overload phase (60; --quick 10)")
    parser.add_argument("--factors", default="2,5,10", help="multiples of R (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--d-messages", type=int, default=0, help="phase 1 (200,000)")
    parser.add_argument(
        "--drain-seconds", type=float, default=0, help="longest wait for a backlog (90)"
    )
    parser.add_argument(
        "--admission",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra gateway configuration, e.g. admission.latency_target_ms=200 (repeatable)",
    )
    parser.add_argument("--markdown", type=Path, help="write the tables to this file")
    parser.add_argument("--capacity", type=float, help="R in 2xx/s: skip measuring it")
    parser.add_argument("--delivery", type=float, help="D in msgs/s: skip measuring it")
    args = parser.parse_args()
    try:
        settings = settings_from(args)
    except ValueError as error:
        parser.error(str(error))
    if not Path(WRK).exists():
        sys.exit(f"{WRK} not found: install it with `apt-get install -y wrk` (Debian's package)")
    try:
        check_config(settings)
    except ConfigError as error:
        sys.exit(f"--admission: the gateway would refuse this configuration: {error}")
    try:
        binary = build_generator()
    except GeneratorUnavailable as error:
        sys.exit(str(error))
    started = time.perf_counter()
    extra = " ".join(args.admission) or "none"
    features = settings.features
    known = (
        f"[admission] {'yes' if features.admission else 'no'}, "
        f"server.health_listen {'yes' if features.health_listen else 'no'}"
    )
    print(
        f"overload: phases of {settings.seconds:g} s, factors {args.factors}; extra config: "
        f"{extra}; gateway code from {Path(sluice.__file__).parent} ({known})"
    )
    d = settings.delivery or measure_delivery(settings)
    if settings.capacity:
        r = settings.capacity
        r_open = None
    else:
        r = measure_capacity(settings).rps
        r_open = measure_open_loop_capacity(binary, settings, r)
    given = " (given)" if settings.capacity else ""
    r_open_text = (
        f", {r_open:,.0f} 2xx/s open loop at {OPEN_LOOP_R_FACTOR:g} x R (normal configuration)"
        if r_open
        else ""
    )
    report = [
        "## Overload",
        "",
        f"D (delivery alone) {d:,.0f} msgs/s{' (given)' if settings.delivery else ''}; "
        f"R (single-message POSTs, closed loop, 64 connections, delivering, "
        f"{capacity_config(settings)}) {r:,.0f} 2xx/s{given}{r_open_text}; extra config: "
        f"{extra}; gateway code from {Path(sluice.__file__).parent} ({known}). Each loaded "
        f"phase starts on a backlog of D x (seconds + {PRELOAD_MARGIN_SECONDS:g}) messages "
        f"of tenant {TENANT_PRELOAD!r}.",
        "",
    ]
    results = []
    for plan in plans(settings, r):
        print(f"running: {plan.title}", flush=True)
        results.append(run_phase(binary, settings, plan, d))
    baseline = next(res for res in results if res.plan.name == "b_alone")
    b_total = baseline.streams["tenant_b"].total
    b_unloaded = b_total.ok_ms.p99 if b_total.ok_ms else None
    for result in results:
        report += phase_report(result, r, d, b_unloaded)
    report.append(f"Whole run: {time.perf_counter() - started:.0f} s.")
    text = "\n".join(report)
    print()
    print(text)
    if settings.markdown is not None:
        settings.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
