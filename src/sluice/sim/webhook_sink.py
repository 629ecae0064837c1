"""Webhook sink: an HTTP peer that stands in for a customer's webhook endpoint.

Sluice's webhook channel POSTs each message as JSON to a URL, and posts status callbacks the
same way. The sink is that URL for the demo, the integration tests and the benchmarks
(``sluice sim webhook``): a real aiohttp server that answers like a provider under load would,
slow, flaky, throttling or strict about signatures, and that counts what it got so a test can
check at-least-once delivery.

What it accepts: ``POST <any path>`` with a JSON object body carrying an ``"id"`` (callbacks
also carry a ``"state"``) and the headers ``Sluice-Message-Id``, ``Sluice-Timestamp`` (unix
seconds) and, when signed, ``Sluice-Signature: v1=<hex>`` where ``hex`` is
HMAC-SHA256(secret, ``f"{timestamp}.".encode() + raw_body``). Paths under ``/_sink/`` are the
sink's own control endpoints and are never counted as deliveries.

How it answers, checked in this order for every delivery:

1. ``secret`` set and the signature missing or wrong: 401 (counted in ``bad_signatures``).
2. Body not a JSON object, or no message id in the header nor the body: 400.
3. ``fail_status`` set: that status, for every request (tests of permanent/transient errors).
4. ``rate_limit`` > 0 and the sink's token bucket empty: 429 with ``Retry-After: 1``.
5. One draw from ``random.Random(seed)``: the first ``error_ratio`` of [0, 1) answers 503,
   the next ``throttle_ratio`` answers 429 with ``Retry-After: 1``.
6. Otherwise 200, ``{"accepted":true}`` and ``Sluice-Provider-Id: sink-<n>``; ``n`` counts
   up for the sink's lifetime (a reset does not reuse provider ids).

Every answer, refusals included, is held back ``latency_ms`` plus a uniform draw from
``[0, latency_jitter_ms]``; the decision is made and counted on arrival, before that wait.

What it counts (`WebhookSink.stats`, ``GET /_sink/stats``): requests received, accepted (2xx),
by status and by path, unique message ids and duplicates, requests in flight now and at most,
bad signatures, and arrivals per wall-clock second over the last `ARRIVAL_WINDOW_SECONDS`.
A duplicate is an id accepted again on the same path: retries after a refusal are not
duplicates, a second 200 for the same message is. Callbacks for one message carry one state
each, so on a path whose bodies have a ``"state"`` the key is the pair (id, state).

Control endpoints:
    ``GET /_sink/stats``                   the counts as JSON (status codes as string keys)
    ``GET /_sink/received?path=/hook``     ids accepted on that path, in arrival order
    ``POST /_sink/reset``                  zero every count and forget the ids
    ``GET /_sink/config``                  current options (a set secret shows as "***")
    ``POST /_sink/config``                 change options: ``{"error_ratio": 0.1}``; an
                                           unknown key or a bad value is a 400 naming it

Examples:
    From the shell::

        sluice sim webhook --port 9090 --latency-ms 20 --latency-jitter-ms 30 \\
            --error-ratio 0.01 --secret s3cret --report-seconds 5
        curl -s -XPOST localhost:9090/_sink/config -d '{"throttle_ratio": 0.5}'
        curl -s 'localhost:9090/_sink/received?path=/hook'

    In a test::

        sink = WebhookSink(SinkOptions(latency_ms=5, error_ratio=0.1, seed=1))
        await sink.start()                   # port 0: the OS picks a free port
        ...                                  # point a channel at f"{sink.url}/hook"
        await sink.wait_for(1000, "/hook")   # wakes on the 1000th accepted message
        assert sink.stats().duplicates == 0
        await sink.close()

Warning:
    Every accepted id is kept, for `WebhookSink.received` and duplicate detection: about
    100 bytes a message, so 100 MB for a million. Reset the sink between benchmark runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from sluice.sim.arrivals import ARRIVAL_WINDOW_SECONDS, ArrivalCounts
from sluice.sim.base import Simulator
from sluice.sim.control import ControlRoutes, error_body, http_host, json_response, start_http
from sluice.sim.options import check_number, check_port, options_from_flags, with_changes
from sluice.sim.report import add_report_argument, check_report_seconds, run_until_cancelled

#: Paths under this prefix are the sink's own endpoints; every other path is a webhook target.
CONTROL_PREFIX = "/_sink/"
#: Sent with every 429: the rate-limit bucket refills within a second.
RETRY_AFTER_SECONDS = 1
#: Seconds `WebhookSink.close` lets answers still being held back finish before cancelling.
CLOSE_GRACE_SECONDS = 1.0
#: Listen backlog. asyncio's default of 100 drops connects when a benchmark opens a channel's
#: whole width of connections at once; Linux caps it at net.core.somaxconn (4096 since 5.4).
LISTEN_BACKLOG = 1024

_BODY_ACCEPTED = b'{"accepted":true}'
_FAIL_STATUS_RANGE = (400, 599)
_BODY_FAIL_STATUS = error_body("fixed failure status (fail_status)")
_BODY_UNAVAILABLE = error_body("simulated outage (error_ratio)")
_BODY_THROTTLED = error_body("simulated throttling (throttle_ratio)")


class SinkOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the sink answers; every field can be changed while it runs (`WebhookSink.configure`).

    A value out of range raises ValueError naming the field (``error_ratio: expected a number
    between 0 and 1, got 1.5``).
    """

    #: Milliseconds every answer is held back.
    latency_ms: float = 0.0
    #: Up to this many milliseconds more, drawn uniformly per request.
    latency_jitter_ms: float = 0.0
    #: Share of requests answered 503.
    error_ratio: float = 0.0
    #: Share of requests answered 429 with Retry-After; drawn after error_ratio, so the two
    #: together may not exceed 1.
    throttle_ratio: float = 0.0
    #: Requests per second above which the sink answers 429 (a bucket of one second's worth,
    #: so a burst of up to this many passes at once); 0 turns it off.
    rate_limit: float = 0.0
    #: Status (400..599) answered to every request, overriding everything but the signature.
    fail_status: int | None = None
    #: HMAC-SHA256 key; when set, unsigned or badly signed requests are answered 401.
    secret: str | None = None
    #: Seed for the latency jitter and the error/throttle draws; unset seeds from the OS.
    seed: int | None = None

    def __post_init__(self) -> None:
        check_number("latency_ms", self.latency_ms, 0.0)
        check_number("latency_jitter_ms", self.latency_jitter_ms, 0.0)
        check_number("error_ratio", self.error_ratio, 0.0, 1.0)
        check_number("throttle_ratio", self.throttle_ratio, 0.0, 1.0)
        check_number("rate_limit", self.rate_limit, 0.0)
        if self.error_ratio + self.throttle_ratio > 1.0:
            raise ValueError(
                "throttle_ratio: error_ratio + throttle_ratio must be at most 1, got "
                f"{self.error_ratio!r} + {self.throttle_ratio!r}"
            )
        if self.fail_status is not None:
            low, high = _FAIL_STATUS_RANGE
            if isinstance(self.fail_status, bool) or not isinstance(self.fail_status, int):
                raise ValueError(f"fail_status: expected an integer, got {self.fail_status!r}")
            if not low <= self.fail_status <= high:
                raise ValueError(
                    f"fail_status: expected an HTTP error status between {low} and {high}, "
                    f"got {self.fail_status}"
                )
        if self.secret is not None and (not isinstance(self.secret, str) or not self.secret):
            raise ValueError(f"secret: expected a non-empty string, got {self.secret!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")

    def with_changes(self, changes: Mapping[str, object]) -> SinkOptions:
        """These options with ``changes`` applied, type-checked as if decoded from JSON."""
        return with_changes(self, changes, "sink")

    def redacted(self) -> dict[str, Any]:
        """The options as a JSON-ready dict, the secret masked."""
        shown = msgspec.structs.asdict(self)
        if self.secret is not None:
            shown["secret"] = "***"
        return shown


class PathStats(msgspec.Struct, kw_only=True, frozen=True):
    """Counts for one path."""

    received: int
    accepted: int
    unique_ids: int
    duplicates: int


class SinkStats(msgspec.Struct, kw_only=True, frozen=True):
    """A snapshot of what the sink has received since it started or was last reset."""

    #: Deliveries received (control endpoints excluded), whatever the answer.
    received: int
    #: Deliveries answered 2xx.
    accepted: int
    by_status: dict[int, int]
    by_path: dict[str, PathStats]
    #: Distinct accepted (path, id[, state]) keys, summed over paths.
    unique_ids: int
    #: Accepted deliveries whose key had been accepted before.
    duplicates: int
    in_flight: int
    max_in_flight: int
    bad_signatures: int
    #: Arrivals in each wall-clock second, oldest first, from the start (or reset) or at most
    #: `ARRIVAL_WINDOW_SECONDS` back; the last entry is the current, partial second.
    arrivals_per_second: list[int]
    #: Unix second of the last entry of ``arrivals_per_second``.
    arrivals_last_second: int

    def summary(self) -> str:
        """One line for a terminal, e.g. ``received 120 (40/s) accepted 118 ...``."""
        last_full = self.arrivals_per_second[-2] if len(self.arrivals_per_second) > 1 else 0
        statuses = " ".join(f"{status}:{n}" for status, n in sorted(self.by_status.items()))
        return (
            f"received {self.received} ({last_full}/s) accepted {self.accepted} "
            f"duplicates {self.duplicates} bad-signatures {self.bad_signatures} "
            f"in-flight {self.in_flight} (max {self.max_in_flight}) "
            f"statuses [{statuses}]"
        )


class _Envelope(msgspec.Struct):
    """The two fields of a delivery the sink reads; msgspec skips the rest unparsed."""

    id: str | None = None
    state: str | None = None


_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)


class _PathLog:
    """What arrived on one path; ``ids`` is every accepted id in arrival order."""

    __slots__ = ("duplicates", "ids", "received", "seen")

    def __init__(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.ids: list[str] = []
        self.seen: set[str] = set()


class _RequestBucket:
    """Token bucket over arrivals holding one second's worth of requests (at least one)."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class _Waiter:
    count: int
    path: str | None
    accepted_only: bool
    event: asyncio.Event


_Answer = tuple[int, bytes, dict[str, str] | None]


class WebhookSink(Simulator):
    """The sink server; see the module docstring for what it answers and counts."""

    NAME = "webhook sink"

    def __init__(self, options: SinkOptions | None = None) -> None:
        self._options = SinkOptions()
        self._rng = random.Random()
        self._key: bytes | None = None
        self._bucket: _RequestBucket | None = None
        self._rate_limited_body = b""
        self._apply(options if options is not None else SinkOptions(), reseed=True)
        self._runner: web.ServerRunner | None = None
        self._host = ""
        self._port = 0
        self._provider_seq = 0
        self._in_flight = 0
        self._waiters: list[_Waiter] = []
        self._control = ControlRoutes(
            CONTROL_PREFIX, self, {("GET", "received"): self._get_received}
        )
        self.reset()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (port 0 picks a free one) and return the bound port."""
        if self._runner is not None:
            raise RuntimeError(f"{self.NAME} already started on {self.url}")
        self._runner, self._port = await start_http(
            self._handle, host, port, backlog=LISTEN_BACKLOG, shutdown_timeout=CLOSE_GRACE_SECONDS
        )
        self._host = host
        return self._port

    async def close(self) -> None:
        """Stop listening; answers still held back get `CLOSE_GRACE_SECONDS` to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running sink."""
        self._check_started()
        return f"http://{http_host(self._host)}:{self._port}"

    @property
    def options(self) -> SinkOptions:
        return self._options

    # -- in-process control ----------------------------------------------------------------

    def configure(self, **changes: object) -> SinkOptions:
        """Change options while running; ValueError names an unknown or bad field.

        Changing ``seed`` restarts the random sequence; changing ``rate_limit`` refills the
        bucket. Returns the options now in force.
        """
        self._apply(self._options.with_changes(changes), reseed="seed" in changes)
        return self._options

    def reset(self) -> None:
        """Zero every count and forget received ids; options and provider ids carry on."""
        self._received = 0
        self._accepted = 0
        self._bad_signatures = 0
        self._max_in_flight = self._in_flight
        self._by_status: dict[int, int] = {}
        self._paths: dict[str, _PathLog] = {}
        self._arrivals = ArrivalCounts(int(time.time()))
        # The ring's own lists, counted into inline per delivery (see `_count`).
        self._arrival_counts = self._arrivals.counts
        self._arrival_stamps = self._arrivals.stamps

    def received(self, path: str) -> list[str]:
        """Ids accepted (2xx) on ``path``, in arrival order, repeats included."""
        log = self._paths.get(path)
        return list(log.ids) if log is not None else []

    def stats(self) -> SinkStats:
        now = int(time.time())
        arrivals = self._arrivals.series(now)
        by_path = {
            path: PathStats(
                received=log.received,
                accepted=len(log.ids),
                unique_ids=len(log.seen),
                duplicates=log.duplicates,
            )
            for path, log in self._paths.items()
        }
        return SinkStats(
            received=self._received,
            accepted=self._accepted,
            by_status=dict(self._by_status),
            by_path=by_path,
            unique_ids=sum(p.unique_ids for p in by_path.values()),
            duplicates=sum(p.duplicates for p in by_path.values()),
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            bad_signatures=self._bad_signatures,
            arrivals_per_second=arrivals,
            arrivals_last_second=now,
        )

    async def wait_for(
        self,
        count: int,
        path: str | None = None,
        # A test's wait always needs a bound and a message naming what was missing; a bare
        # asyncio.timeout around the call would lose the counts in the error.
        timeout: float = 10.0,  # noqa: ASYNC109
        *,
        accepted_only: bool = True,
    ) -> None:
        """Return once ``count`` deliveries were accepted, on ``path`` or on any path.

        With ``accepted_only=False`` every delivery counts, whatever the answer. Counts start
        at the last reset. Raises TimeoutError, with what did arrive, after ``timeout`` s.
        """
        if self._progress(path, accepted_only) >= count:
            return
        waiter = _Waiter(count, path, accepted_only, asyncio.Event())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            what = "accepted messages" if accepted_only else "messages"
            where = f"on path {path!r}" if path is not None else "on any path"
            stats = self.stats()
            raise TimeoutError(
                f"{self.NAME}: waited {timeout:g} s for {count} {what} {where}, got "
                f"{self._progress(path, accepted_only)} (received {stats.received}, "
                f"by status {stats.by_status}, paths {sorted(stats.by_path)})"
            ) from None
        finally:
            self._waiters.remove(waiter)

    # -- internals -------------------------------------------------------------------------

    def _apply(self, options: SinkOptions, *, reseed: bool) -> None:
        previous = self._options
        self._options = options
        if reseed:
            self._rng.seed(options.seed)
        self._key = options.secret.encode() if options.secret is not None else None
        if options.rate_limit <= 0:
            self._bucket = None
        elif self._bucket is None or options.rate_limit != previous.rate_limit:
            self._bucket = _RequestBucket(options.rate_limit, time.monotonic())
        self._rate_limited_body = error_body(
            f"rate limit of {options.rate_limit:g} requests per second exceeded (rate_limit)"
        )

    def _progress(self, path: str | None, accepted_only: bool) -> int:
        if path is None:
            return self._accepted if accepted_only else self._received
        log = self._paths.get(path)
        if log is None:
            return 0
        return len(log.ids) if accepted_only else log.received

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if self._progress(waiter.path, waiter.accepted_only) >= waiter.count:
                waiter.event.set()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return await self._control.handle(request)
        if request.method != "POST":
            return json_response(
                405,
                error_body(f"method {request.method} not allowed: webhooks are POSTed"),
                {"Allow": "POST"},
            )
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        try:
            body = await request.read()
            status, payload, headers = self._answer(path, request, body)
            options = self._options
            delay_ms = options.latency_ms
            if options.latency_jitter_ms > 0:
                delay_ms += self._rng.uniform(0.0, options.latency_jitter_ms)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            return json_response(status, payload, headers)
        finally:
            self._in_flight -= 1

    def _answer(self, path: str, request: web.BaseRequest, body: bytes) -> _Answer:
        """Decide the answer to one delivery and count it."""
        headers = request.headers
        if self._key is not None:
            problem = self._signature_problem(self._key, headers, body)
            if problem is not None:
                self._bad_signatures += 1
                return self._count(path, None, None, (401, error_body(problem), None))
        try:
            envelope = _ENVELOPE_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            return self._count(path, None, None, (400, error_body(f"body: {exc}"), None))
        message_id = headers.get("Sluice-Message-Id") or envelope.id
        if not message_id:
            problem = 'missing message id: no Sluice-Message-Id header and no "id" in the body'
            return self._count(path, None, None, (400, error_body(problem), None))
        options = self._options
        if options.fail_status is not None:
            return self._count(path, None, None, (options.fail_status, _BODY_FAIL_STATUS, None))
        if self._bucket is not None and not self._bucket.take(time.monotonic()):
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return self._count(path, None, None, (429, self._rate_limited_body, retry))
        if options.error_ratio > 0 or options.throttle_ratio > 0:
            draw = self._rng.random()
            if draw < options.error_ratio:
                return self._count(path, None, None, (503, _BODY_UNAVAILABLE, None))
            if draw < options.error_ratio + options.throttle_ratio:
                retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
                return self._count(path, None, None, (429, _BODY_THROTTLED, retry))
        self._provider_seq += 1
        key = message_id if envelope.state is None else f"{message_id}#{envelope.state}"
        provider = {"Sluice-Provider-Id": f"sink-{self._provider_seq}"}
        return self._count(path, message_id, key, (200, _BODY_ACCEPTED, provider))

    @staticmethod
    def _signature_problem(key: bytes, headers: Mapping[str, str], body: bytes) -> str | None:
        given = headers.get("Sluice-Signature")
        if given is None:
            return "missing Sluice-Signature header"
        timestamp = headers.get("Sluice-Timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            return f"Sluice-Timestamp: expected unix seconds, got {timestamp!r}"
        digest = hmac.digest(key, timestamp.encode() + b"." + body, "sha256")
        expected = b"v1=" + digest.hex().encode()
        if not hmac.compare_digest(expected, given.encode("utf-8", "surrogateescape")):
            return "Sluice-Signature: does not match HMAC-SHA256 of timestamp and body"
        return None

    def _count(
        self, path: str, message_id: str | None, key: str | None, answer: _Answer
    ) -> _Answer:
        """Count one delivery; ``message_id`` and ``key`` are given when it was accepted."""
        status = answer[0]
        self._received += 1
        self._by_status[status] = self._by_status.get(status, 0) + 1
        log = self._paths.get(path)
        if log is None:
            log = self._paths[path] = _PathLog()
        log.received += 1
        # ArrivalCounts.add, inline: this runs once per delivery.
        second = int(time.time())
        slot = second % ARRIVAL_WINDOW_SECONDS
        if self._arrival_stamps[slot] != second:
            self._arrival_stamps[slot] = second
            self._arrival_counts[slot] = 0
        self._arrival_counts[slot] += 1
        if message_id is not None and key is not None:
            self._accepted += 1
            log.ids.append(message_id)
            if key in log.seen:
                log.duplicates += 1
            else:
                log.seen.add(key)
        if self._waiters:
            self._wake_waiters()
        return answer

    # -- control endpoints (the common ones are sluice.sim.control's) ------------------------

    async def _get_received(self, request: web.BaseRequest) -> web.Response:
        path = request.query.get("path")
        if path is None:
            return json_response(
                400, error_body("path: query parameter required, e.g. ?path=/hook")
            )
        return json_response(200, msgspec.json.encode(self.received(path)))


# -- command line (`sluice sim webhook`) -----------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sluice sim webhook`` options to ``parser``."""
    defaults = SinkOptions()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (%(default)s)")
    parser.add_argument("--port", type=int, default=9090, help="port to bind, 0 for any")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=defaults.latency_ms,
        help="milliseconds every answer is held back",
    )
    parser.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=defaults.latency_jitter_ms,
        help="up to this many milliseconds more, uniform per request",
    )
    parser.add_argument(
        "--error-ratio",
        type=float,
        default=defaults.error_ratio,
        help="share of requests answered 503 (0..1)",
    )
    parser.add_argument(
        "--throttle-ratio",
        type=float,
        default=defaults.throttle_ratio,
        help="share of requests answered 429 with Retry-After (0..1)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=defaults.rate_limit,
        help="requests per second above which the sink answers 429; 0 = off",
    )
    parser.add_argument(
        "--fail-status",
        type=int,
        default=defaults.fail_status,
        help="answer every request with this status (400..599)",
    )
    parser.add_argument(
        "--secret",
        default=defaults.secret,
        help="verify Sluice-Signature with this HMAC key, answering 401 when wrong",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed for jitter and error draws"
    )
    add_report_argument(parser)


def options_from_args(args: argparse.Namespace) -> SinkOptions:
    """`SinkOptions` from parsed arguments; ValueError names the flag (``--error-ratio: ...``)."""
    return options_from_flags(SinkOptions, args, SinkOptions.__struct_fields__)


async def run_from_args(args: argparse.Namespace) -> None:
    """Run the sink until cancelled, printing a summary every ``--report-seconds``."""
    options = options_from_args(args)
    check_report_seconds(args.report_seconds)
    check_port("--port", args.port)
    sink = WebhookSink(options)
    await sink.start(args.host, args.port)

    async def listening() -> str:
        return sink.url

    await run_until_cancelled(sink, listening, args.report_seconds)
