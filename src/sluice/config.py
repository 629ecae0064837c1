"""Configuration: one TOML file, overridable from the environment, checked at start.

Every limit the gateway enforces is a field here with its default. A bad file is refused with
the dotted key and the reason (`channels.sms.width: expected >= 1, got 0`).

Environment overrides use ``SLUICE__`` and double underscores between keys. Their values are
converted to the type of the key they set (numbers, booleans); arrays and tables are written
as in TOML:

Examples:
    SLUICE__SERVER__LISTEN=0.0.0.0:8080
    SLUICE__CHANNELS__WEB__RATE=250
    SLUICE__JOURNAL__SYNCHRONOUS=normal
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from sluice.model import NODE_MAX

ENV_PREFIX = "SLUICE__"
#: The longest path a Unix socket may have on Linux (sun_path holds 108 bytes with its NUL).
UNIX_PATH_MAX = 107

_T = TypeVar("_T")

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the reason."""


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ServerConfig(_Base, frozen=True):
    listen: str = "127.0.0.1:8080"
    #: Node number in message ids (0..1023); unset picks a random one at start. With
    #: `workers` > 1, process i takes node + i (distinct random ones when unset). Processes
    #: sharing a journal need distinct nodes: give each machine its own range.
    node: Annotated[int, msgspec.Meta(ge=0, le=NODE_MAX)] | None = None
    #: Seconds to finish in-flight work after SIGTERM before releasing it to the queue.
    shutdown_grace_seconds: Seconds = 10.0
    #: How long a thread may hold the GIL while another waits for it (Python's default is
    #: 5 ms). The journal writer takes the GIL back after every SQLite statement; a short
    #: interval keeps it from waiting behind a busy event loop (docs/benchmarks.md).
    gil_switch_interval_ms: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 0.5
    #: What this process does: "api" takes messages (HTTP, SMTP front door), "worker" delivers
    #: them (channel runners, callbacks), "all" both. Split roles need a shared journal.
    role: Literal["all", "api", "worker"] = "all"
    #: Processes `sluice serve` starts on this machine (each a full gateway of `role`, sharing
    #: the listening ports, kept running by a supervisor); more than one needs the postgres
    #: journal. `sluice serve --workers N` overrides it.
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    #: SQLite: processes of their own for the HTTP and SMTP edges, beside the one that owns
    #: the journal and delivers (each edge reaches the journal through a Unix socket beside
    #: its file, sharing the owner's group commits), so that taking messages and delivering
    #: them run on different cores. 0: both in one process. With PostgreSQL, run processes of
    #: role "api" and "worker" instead.
    api_processes: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    #: Open HTTP connections one process keeps; one more is answered 503 and closed at once.
    max_connections: Positive = 10_000
    #: Connections taken from the kernel's accept queue per turn of the event loop (uvloop's own
    #: server takes one per turn, so a busy loop left new connections waiting for seconds).
    accept_batch: Positive = 64
    #: Connections refused for load (503 overloaded, 429) read again per turn of the event
    #: loop: the refusal stage's width, so a flood of refusals cannot make every turn long
    #: (ingress/http/server.py). 0: read every connection every turn.
    refusal_batch: NonNegative = 64
    #: A connection refused for load is read again after this long at most, whatever the
    #: batch: the longest a refusal can fall behind (on top of its own turn).
    refusal_max_wait_ms: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    #: The kernel's queue of connections not yet accepted (listen backlog).
    listen_backlog: Positive = 4096
    #: Also answer /healthz and /readyz on this address ("host:port"), from a thread of their
    #: own that the busiest event loop cannot delay (ingress/http/health.py). Unset: on the
    #: main port only, where the gate answers them ahead of all other work.
    health_listen: str | None = None
    #: Longest request line (method, target, version) read; a longer one is answered 414.
    max_request_line_bytes: Annotated[int, msgspec.Meta(ge=64)] = 8 * 1024
    #: Largest header section read (names and values); a larger one is answered 431.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256)] = 32 * 1024
    #: Most header fields in one request; more are answered 431.
    max_headers: Annotated[int, msgspec.Meta(ge=8)] = 100
    #: Seconds from a request's first byte until its headers are in; then 408 and close.
    header_timeout_seconds: Seconds = 10.0
    #: Seconds from a request's first byte until its whole body is in; then the connection
    #: is closed (the request was not stored).
    body_timeout_seconds: Seconds = 30.0
    #: Seconds a connection may stay open with nothing asked and nothing owed: between
    #: requests, and before the first one.
    keep_alive_seconds: Seconds = 5.0
    #: Serve /metrics (with /healthz and /readyz) on this address ("host:port") instead of
    #: the main port, whose /metrics then answers 404.
    admin_listen: str | None = None
    #: /metrics asks for `Authorization: Bearer <this>` (on whichever port serves it).
    metrics_token: str | None = None
    #: Serve /metrics on the main port without a token even when server.listen is not a
    #: loopback address. /metrics names every tenant with its volumes.
    public_metrics: bool = False


class AdmissionConfig(_Base, frozen=True):
    """Adaptive admission at the HTTP edge (ingress/http/gate.py): an AIMD limit on requests
    in flight that holds a response-time target and an event-loop lag target; the excess is
    refused with 503 + Retry-After before its body is read."""

    #: Response time of admitted requests (from their first byte to their answer) to hold, at
    #: the `latency_quantile` of each interval.
    latency_target_ms: Annotated[float, msgspec.Meta(gt=0)] = 500.0
    latency_quantile: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.99
    #: Mean event-loop lag to hold: above it the loop is out of CPU and the limit is cut, which
    #: keeps refusals, health probes and delivery prompt under overload, while admitted
    #: requests are what keeps the loop busy (see `refusal_ratio`).
    loop_lag_target_ms: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    #: What one admitted request costs the loop in refusals (~8 measured here): with more
    #: refusals than this per admitted request in an interval, the loop is busy with refusals,
    #: admitting less would not help, and a missed target does not cut the limit.
    refusal_ratio: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    #: How often the limit is adjusted (and the loop lag sampled five times as often).
    interval_ms: Annotated[float, msgspec.Meta(ge=5)] = 100.0
    initial_limit: Positive = 64
    min_limit: Positive = 4
    max_limit: Positive = 4096
    #: Added to the limit after an interval that used it without missing a target.
    increase: Annotated[float, msgspec.Meta(gt=0)] = 4.0
    #: The limit is multiplied by this after an interval that missed a target.
    decrease: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.8
    #: Requests marked `Sluice-Priority: urgent` are admitted over the limit, up to this many
    #: times the limit in all (the hard limit).
    urgent_factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    #: Once this share of the limit is in use, a tenant holding more than an equal share of it
    #: is refused, so one tenant cannot take the whole limit from the others.
    fair_share_from: Fraction = 0.5
    #: Seconds suggested in Retry-After when a request is shed.
    retry_after_seconds: Positive = 1
    #: A request older than this when its commit would begin is refused (503), not committed:
    #: its client has likely given up, and a retry would duplicate it. 0 turns it off.
    request_deadline_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: /readyz answers 503 while requests are being shed, so a balancer moves traffic away.
    unready_while_shedding: bool = False
    #: Off: admit by backlog and tenant rates only, as without this section.
    enabled: bool = True


class JournalConfig(_Base, frozen=True):
    #: "sqlite": embedded, one process. "postgres": shared by any number of processes.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: The SQLite database file.
    path: str = "var/sluice.db"
    #: The PostgreSQL server (libpq URL) and the schema that holds Sluice's tables.
    url: str = "postgresql://127.0.0.1:5432/postgres"
    schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "sluice"
    #: Connections each process keeps to PostgreSQL.
    pool_size: Annotated[int, msgspec.Meta(ge=2, le=100)] = 8
    #: How long a PostgreSQL statement may run before it is cancelled (and retried or failed).
    statement_timeout_seconds: Seconds = 30.0
    #: How long an operation keeps trying to reach PostgreSQL (a restart, a failover) before
    #: its caller hears of it: HTTP answers 503, runners wait and try again.
    reconnect_seconds: Seconds = 30.0
    #: The same for the calls of the edges (a POST, a status read, a cancel): they give up
    #: sooner, so that clients hear 503 before their own timeouts; delivery keeps retrying.
    ingress_wait_seconds: Seconds = 3.0
    #: SQLite: check every page at start (PRAGMA quick_check) and refuse a damaged file.
    check_at_start: bool = True
    #: SQLite: free bytes kept on the journal's disk; below them new messages get 503 and
    #: /readyz is false, before the disk is full (0: only a full disk stops them).
    free_space_reserve_bytes: NonNegative = 64 * 1024 * 1024
    #: SQLite: WAL size past which the writer copies the WAL back and truncates it.
    wal_limit_bytes: Annotated[int, msgspec.Meta(ge=64 * 1024)] = 16 * 1024 * 1024
    #: FULL: a commit survives power loss. NORMAL: survives a process crash, faster.
    synchronous: Literal["full", "normal"] = "full"
    #: With FULL, also fsync commits that hold only claims, send outcomes and leases. Off by
    #: default: losing those to a power cut only re-sends what was in flight (at-least-once),
    #: while accepted messages and receipts are always fsynced before they are acknowledged.
    fsync_outcomes: bool = False
    #: A claim is owned for this long; the owner renews it every heartbeat.
    lease_seconds: Seconds = 30.0
    heartbeat_seconds: Seconds = 5.0
    #: How often leases left by dead owners and expired messages are swept.
    sweep_seconds: Seconds = 5.0
    #: Most operations folded into one group commit.
    max_ops_per_commit: Positive = 4096
    #: Most messages claimed by a channel in one claim.
    max_claim: Positive = 1000


class LimitsConfig(_Base, frozen=True):
    max_batch: Positive = 10_000
    max_request_bytes: Positive = 32 * 1024 * 1024
    max_body_bytes: Positive = 64 * 1024
    max_recipient_length: Positive = 320
    max_sender_length: Positive = 320
    max_metadata_entries: NonNegative = 32
    max_metadata_bytes: Positive = 4096
    max_idempotency_key_length: Positive = 255
    max_callback_url_length: Positive = 2048
    #: Pending (accepted, queued, sending) messages above which ingress answers 429.
    max_backlog: Positive = 10_000_000
    #: Room beyond max_backlog that only urgent messages may take.
    urgent_backlog_reserve: NonNegative = 100_000
    #: Seconds suggested in Retry-After when the backlog is full.
    backlog_retry_after_seconds: Positive = 5
    #: How long an idempotency key is remembered.
    idempotency_ttl_seconds: Seconds = 86_400.0
    #: Most messages returned by one history page.
    max_page_size: Positive = 1000
    #: How deep arrays and objects may nest in a request body (a message is four levels
    #: deep at most); deeper is answered 422, long before Python's recursion limit.
    max_json_depth: Annotated[int, msgspec.Meta(ge=4, le=256)] = 32


class RetryConfig(_Base, frozen=True):
    max_attempts: Positive = 8
    base_seconds: Seconds = 1.0
    max_seconds: Seconds = 600.0
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: Fraction = 0.2


class BreakerConfig(_Base, frozen=True):
    #: Consecutive transient failures that open the breaker.
    failure_threshold: Positive = 10
    cooldown_seconds: Seconds = 5.0
    max_cooldown_seconds: Seconds = 120.0


class WebhookConfig(_Base, frozen=True):
    url: str
    #: Secret for the HMAC-SHA256 signature header; unset sends unsigned requests.
    secret: str | None = None
    timeout_seconds: Seconds = 10.0
    connect_timeout_seconds: Seconds = 3.0


class SmppConfig(_Base, frozen=True):
    """One SMPP account: `binds` connections to one SMSC, each with its own window and rate."""

    host: str
    system_id: Annotated[str, msgspec.Meta(max_length=15)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 2775
    password: Annotated[str, msgspec.Meta(max_length=8)] = ""
    system_type: Annotated[str, msgspec.Meta(max_length=12)] = ""
    #: transceiver: submits and receives receipts and MO on one connection per bind.
    bind_type: Literal["transceiver", "transmitter"] = "transceiver"
    tls: bool = False
    #: Verify the SMSC's certificate (with tls); turn off only for test SMSCs.
    tls_verify: bool = True
    #: Connections to open; an SMSC account usually allows a few.
    binds: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: Outstanding submit_sm per bind without a response (the SMPP window).
    window: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    #: submit_sm per second per bind (the account's TPS per bind); 0 = unlimited.
    bind_rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: submit_sm a bind may send at once under `bind_rate` after a pause. 1: strict pacing,
    #: so an SMSC counting per second never sees more than bind_rate in any second (a burst
    #: of bind_rate / 10 drew a throttle from the simulator at each broadcast's start, and
    #: the halved rate took 10 s to climb back: 94 % of the cap against 99 %).
    bind_burst: Annotated[float, msgspec.Meta(ge=1)] = 1.0
    #: Seconds to wait for a response before the request counts as failed (transient).
    response_timeout_seconds: Seconds = 10.0
    enquire_link_seconds: Seconds = 30.0
    connect_timeout_seconds: Seconds = 5.0
    #: Pause before rebinding after a bind that was up (the backoff resets on every successful
    #: bind): the floor against bind storms from an SMSC that drops each bind at once.
    reconnect_min_seconds: Seconds = 0.5
    #: Ceiling of the backoff (doubling, with jitter) while binds keep failing.
    reconnect_max_seconds: Seconds = 30.0
    #: After the SMSC's unbind, seconds to wait for the responses still in flight before
    #: answering it (the window drains instead of being sent again).
    unbind_drain_seconds: Seconds = 2.0
    #: Each kind of SMSC fault (unknown sequence numbers, generic_nack, unknown statuses,
    #: timeouts, PDUs that cannot be understood) is logged once per bind per this many seconds.
    fault_log_interval_seconds: Seconds = 10.0
    #: Source address when a message has no sender.
    source_addr: Annotated[str, msgspec.Meta(max_length=20)] = ""
    source_ton: Annotated[int, msgspec.Meta(ge=0, le=6)] = 5
    source_npi: Annotated[int, msgspec.Meta(ge=0, le=18)] = 0
    dest_ton: Annotated[int, msgspec.Meta(ge=0, le=6)] = 1
    dest_npi: Annotated[int, msgspec.Meta(ge=0, le=18)] = 1
    #: How long messages are split: UDH concatenation or SAR optional parameters.
    segmentation: Literal["udh", "sar"] = "udh"
    max_segments: Annotated[int, msgspec.Meta(ge=1, le=255)] = 10
    #: Ask the SMSC for delivery receipts (registered_delivery = 1).
    receipts: bool = True
    #: A message whose receipts have not all come this long after it was sent is expired
    #: (48 h: the longest validity period SMSCs commonly keep a message for).
    receipt_deadline_seconds: Seconds = 172_800.0
    #: How often the messages past that deadline are looked for.
    receipt_sweep_seconds: Seconds = 60.0
    #: Where mobile-originated messages are POSTed as JSON; unset refuses them.
    mo_webhook: str | None = None
    #: Largest PDU accepted from the SMSC, in octets.
    max_pdu_bytes: Annotated[int, msgspec.Meta(ge=64, le=1 << 20)] = 65_536 + 512


class EmailConfig(_Base, frozen=True):
    """Email over SMTP: through a relay (`relay_host`), or straight to each recipient
    domain's MX when no relay is set."""

    #: Smart host to hand every message to; unset: look up the recipient domain's MX.
    relay_host: str | None = None
    relay_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    #: AUTH credentials for the relay (sent only over TLS).
    username: str | None = None
    password: str | None = None
    #: STARTTLS: "auto" when the server offers it, "always" (refuse to send in clear), "never".
    starttls: Literal["auto", "always", "never"] = "auto"
    #: Verify the server's certificate; turn off only for test servers.
    tls_verify: bool = True
    #: DNS servers for MX lookups as "host" or "host:port"; empty: the system's resolvers.
    nameservers: list[str] = []
    #: Port of the MX hosts (25; another for tests against a local server).
    mx_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    #: Envelope sender and From for messages that have no sender.
    default_from: str = "sluice@localhost"
    #: Name given in EHLO; empty: this host's name.
    helo_name: str = ""
    connect_timeout_seconds: Seconds = 10.0
    #: Longest wait for any one SMTP reply (DATA's final reply included).
    command_timeout_seconds: Seconds = 60.0
    #: Connections kept open per destination between messages, and for how long.
    max_idle_per_destination: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 4
    idle_seconds: Seconds = 30.0
    #: Messages sent on one connection before it is replaced (servers limit this too).
    max_messages_per_connection: Positive = 100


class ChannelConfig(_Base, frozen=True):
    type: Literal["webhook", "smpp", "email", "push"]
    #: Messages in flight at once on this channel.
    width: Positive = 32
    #: Messages per second (token bucket); 0 means unlimited.
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Tokens the bucket holds, i.e. the largest burst; 0 means max(1, rate / 10).
    burst: NonNegative = 0
    #: Share of the width kept free for urgent messages so they never wait behind bulk
    #: (rounded down: a channel narrower than 1 / urgent_reserve keeps no slot back).
    urgent_reserve: Fraction = 0.1
    #: Channel that takes this channel's messages while its breaker is open.
    failover: str | None = None
    #: A paused channel claims nothing: its messages wait in the journal (maintenance).
    paused: bool = False
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    webhook: WebhookConfig | None = None
    smpp: SmppConfig | None = None
    email: EmailConfig | None = None

    @property
    def bucket_burst(self) -> float:
        """The token bucket's size: `burst`, or max(1, rate / 10) when it is 0."""
        return self.burst or max(1.0, self.rate / 10)


class TenantConfig(_Base, frozen=True):
    #: Hashes of the tenant's API keys: "sha256:<hex>" (see `sluice hash-key`).
    api_keys: list[str]
    #: Messages per second accepted from this tenant; 0 means unlimited.
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    burst: NonNegative = 0
    #: Channels this tenant may use; empty means all.
    channels: list[str] = []


class CallbacksConfig(_Base, frozen=True):
    max_attempts: Positive = 10
    base_seconds: Seconds = 1.0
    max_seconds: Seconds = 600.0
    timeout_seconds: Seconds = 10.0
    #: Callbacks posted at once.
    width: Positive = 16
    #: Secret for signing callbacks; unset sends them unsigned.
    secret: str | None = None


Action = Literal["enforce", "drop", "ignore"]


class ScreeningConfig(_Base, frozen=True):
    """Checks on the raw connection before any SMTP work (Postfix postscreen's tests).

    Actions, as in postscreen: "enforce" lets the client go on but refuses every RCPT TO with
    550 5.7.1; "drop" answers 521 and disconnects; "ignore" only logs (and records no pass).
    """

    #: Permanent allow and deny lists (CIDR, IPv4 and IPv6); allow wins over deny.
    allow: list[str] = []
    deny: list[str] = []
    deny_action: Action = "drop"
    #: Connections one client address may have open at once; 0 = unlimited.
    max_connections_per_client: NonNegative = 50
    #: New connections per minute per client address (token bucket); 0 = unlimited.
    connection_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    connection_burst: Positive = 10
    #: Connections being screened at once; more are answered 421 and closed.
    max_screening: Positive = 1000
    #: Share of max_screening above which the shorter waits below apply.
    stress_share: Fraction = 0.8
    #: Pregreet test: the greeting's first line, then this long to catch clients that talk
    #: before the greeting ends (0 turns the test off).
    greet_wait_seconds: Annotated[float, msgspec.Meta(ge=0)] = 6.0
    greet_wait_stressed_seconds: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    pregreet_action: Action = "enforce"
    pregreet_ttl_seconds: Seconds = 86_400.0
    #: DNSBL / DNSWL zones in postscreen syntax: "zen.example.org=127.0.0.[2..11]*3",
    #: "list.dnswl.example*-5".
    dnsbl_zones: list[str] = []
    #: A client scoring at least this is listed; at most dnsbl_allowlist_threshold is
    #: allowlisted (skips the other tests).
    dnsbl_threshold: int = 1
    dnsbl_allowlist_threshold: int = -1
    dnsbl_action: Action = "enforce"
    dnsbl_timeout_seconds: Seconds = 10.0
    dnsbl_min_ttl_seconds: Positive = 60
    dnsbl_max_ttl_seconds: Positive = 3600
    #: How long a DNSBL pass is remembered for the client.
    dnsbl_ttl_seconds: Seconds = 3600.0
    #: DNS servers as "host" or "host:port"; empty: the system's resolvers.
    nameservers: list[str] = []
    #: Clients not seen for this long are forgotten.
    client_retention_seconds: Seconds = 7 * 86_400.0
    #: The client memory is saved to the journal this often (and at shutdown).
    save_every_seconds: Seconds = 60.0


class GreylistConfig(_Base, frozen=True):
    """Greylisting at RCPT TO (postgrey): a new (client /24 or /64, sender, recipient) triplet
    is refused with 451 4.7.1 until it retries after `delay_seconds`."""

    enabled: bool = False
    delay_seconds: Seconds = 300.0
    retry_window_seconds: Seconds = 2 * 86_400.0
    max_age_seconds: Seconds = 35 * 86_400.0
    #: Client networks that passed this many times (counted once an hour) skip greylisting.
    auto_allowlist_passes: NonNegative = 5
    #: Clients (CIDR) and recipients ("user@example.com", "@example.com") never greylisted.
    clients: list[str] = []
    recipients: list[str] = []


class SmtpConfig(_Base, frozen=True):
    """The SMTP front door: screening, then an SMTP session; accepted mail becomes messages."""

    #: Tenant that owns mail from clients that did not authenticate (AUTH names the tenant).
    tenant: str
    listen: str = "127.0.0.1:2525"
    #: Name in the greeting and in EHLO answers.
    hostname: str = "localhost"
    #: Mail to <number>@sms_domain becomes an SMS on sms_channel.
    sms_domain: str | None = None
    sms_channel: str | None = None
    #: Other mail goes to email_channel: to local_domains from anyone, elsewhere only from
    #: authenticated clients (no open relay).
    email_channel: str | None = None
    local_domains: list[str] = []
    #: Expect a PROXY protocol header (v1 or v2) from a load balancer on every connection.
    proxy_protocol: bool = False
    proxy_timeout_seconds: Seconds = 5.0
    #: Certificate and key (PEM) for STARTTLS; AUTH is offered only over TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    require_starttls: bool = False
    max_message_bytes: Positive = 10 * 1024 * 1024
    max_recipients: Positive = 100
    #: Longest wait for one command line (a client that sends one byte a second is cut off).
    command_timeout_seconds: Seconds = 60.0
    #: Longest SMTP session, whatever the client does.
    max_session_seconds: Seconds = 600.0
    #: Most commands of one kind in one session (aiosmtpd's command_call_limit).
    max_commands: Positive = 100
    #: The kernel's queue of connections not yet accepted (listen backlog); with Python's
    #: default of 100, 40 % of 500 clients connecting at once were never greeted.
    listen_backlog: Positive = 4096
    #: Error replies (4xx, 5xx) a session may get without delivering mail; at this many it is
    #: answered 421 4.7.0 and closed (Postfix's smtpd_hard_error_limit, 20).
    max_errors: Positive = 20
    #: Failed AUTH attempts in one session; at this many it is answered 421 4.7.0 and closed.
    max_auth_failures: Positive = 3
    screening: ScreeningConfig = ScreeningConfig()
    greylist: GreylistConfig = GreylistConfig()


class AudienceConfig(_Base, frozen=True):
    """Subscribers and topics (audience/, `/v1/subscribers`, `/v1/topics`)."""

    #: Longest address (phone, email, webhook URL, push key) of a subscriber.
    max_address_length: Positive = 320
    #: Largest `attributes` of a subscriber, as JSON.
    max_attributes_bytes: Positive = 4096
    #: Most topics one subscriber record may name.
    max_topics: Positive = 100
    #: Most lines (subscribers) in one `POST /v1/subscribers/import`: one transaction. The
    #: CLI (`sluice subscribers import`) sends a file in requests of this many.
    max_import_lines: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10_000
    #: Distinct topics one import may name (each new one is created in its transaction).
    max_import_topics: Positive = 1000
    #: Errors an import's answer lists (the count of the others is given).
    max_import_errors: Positive = 1000
    #: Page size of `GET /v1/topics` when the request names none, and the most it may name.
    page_size: Positive = 100
    max_page_size: Positive = 1000
    #: Most topics one broadcast may name (its recipients are deduplicated across them).
    max_broadcast_topics: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    #: Largest template (one field of a broadcast's content), in bytes.
    max_template_bytes: Positive = 16 * 1024
    #: Members read, planned and committed in one expansion step (one transaction).
    expansion_chunk: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    #: How far expansion runs ahead of the channels: the messages a broadcast keeps queued
    #: or in flight are at most this many seconds of what its channels carried lately ...
    lookahead_seconds: Seconds = 5.0
    #: ... and never fewer than `min_lookahead` (enough to keep wide channels full from the
    #: start) nor more than `max_lookahead`.
    min_lookahead: Positive = 5000
    max_lookahead: Positive = 200_000
    #: The lease of a broadcast's expander, renewed every third of it; another process takes
    #: over once it lapses (on PostgreSQL: how long a broadcast waits after its expander's
    #: process died; an SQLite journal drops its leases when it opens).
    expander_lease_seconds: Seconds = 10.0
    #: How often an expander looks for broadcasts to expand (a local submit wakes it at once).
    expander_poll_seconds: Seconds = 1.0
    #: Broadcasts one process expands at once.
    max_expanding: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16


class PushConfig(_Base, frozen=True):
    """The live push listener (transports/push/): WebSocket clients holding a token the
    application minted with ``POST /v1/push/tokens``."""

    #: The secret tokens are signed with (HMAC-SHA256); every process of a deployment needs
    #: the same one.
    token_secret: str
    listen: str = "127.0.0.1:8090"
    #: Longest life a minted token may ask for, and the default.
    max_token_ttl_seconds: Annotated[float, msgspec.Meta(gt=0)] = 86_400.0
    token_ttl_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3_600.0
    #: Open connections one process keeps; one more is answered 503 before its handshake.
    max_connections: Positive = 100_000
    #: Open connections of one subscriber; one more is answered 429 before its handshake.
    max_connections_per_subscriber: Positive = 8
    #: Bytes queued for one client's socket beyond which it is a slow consumer: its
    #: connection is closed with code 1013, never buffered without bound.
    max_buffer_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 256 * 1024
    #: Largest frame (message) a client may send; a larger one closes with code 1009.
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=128, le=1 << 20)] = 4096
    #: Largest request head (line and headers) before the handshake; larger: 431.
    max_request_bytes: Annotated[int, msgspec.Meta(ge=512, le=1 << 20)] = 8192
    #: Seconds from a connection's first byte until its handshake is in; then it is closed.
    handshake_seconds: Seconds = 10.0
    #: A client silent this long is pinged; one silent twice as long is closed (1001).
    ping_seconds: Seconds = 30.0
    #: A client reconnecting with the last message id it saw is sent what was pushed to its
    #: subscriber since, from the journal, up to this far back; anything older it is told
    #: it missed (a ``{"type": "missed"}`` frame).
    replay_window_seconds: Seconds = 3_600.0
    #: Most messages one replay sends (the newest ones); past it the client is told it missed.
    max_replay: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    #: Frames per second a client may send (acks, pongs); beyond it: closed with 1008.
    max_client_frames_per_second: Positive = 100


class RedisConfig(_Base, frozen=True):
    """Redis, for what processes share: global channel rates. Unset: every limit is local."""

    #: redis://host:port/db; empty: no Redis.
    url: str = ""
    #: Prefix of every key Sluice writes (several gateways can share one Redis).
    prefix: Annotated[str, msgspec.Meta(max_length=64)] = "sluice"
    #: A process counts as live while it has refreshed its key within this many seconds.
    liveness_seconds: Seconds = 5.0
    #: Connect and command timeout; past it Redis counts as down and limits fall back.
    timeout_seconds: Seconds = 0.5


class Config(_Base, frozen=True):
    server: ServerConfig = ServerConfig()
    journal: JournalConfig = JournalConfig()
    redis: RedisConfig = RedisConfig()
    limits: LimitsConfig = LimitsConfig()
    admission: AdmissionConfig = AdmissionConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    audience: AudienceConfig = AudienceConfig()
    channels: dict[str, ChannelConfig] = {}
    tenants: dict[str, TenantConfig] = {}
    #: The SMTP front door; absent: no SMTP listener.
    smtp: SmtpConfig | None = None
    #: The live push listener; absent: no push channel can be configured.
    push: PushConfig | None = None


def hash_api_key(key: str) -> str:
    """The form an API key takes in the configuration."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def _check(config: Config) -> None:
    """Rules that span fields; types and ranges are checked by the schema. One check per
    section; the first fault found is the one reported."""
    _check_server(config.server)
    _check_journal(config.journal, config.server)
    # After the journal's: with the sqlite journal, more than one process is the fault to name
    # (the range of node numbers follows from server.workers).
    _check_nodes(config.server)
    _check_redis(config.redis)
    _check_admission(config.admission)
    if config.smtp is not None:
        _check_smtp(config, config.smtp)
    for name, channel in config.channels.items():
        _check_channel(name, channel, config.channels, config.push)
    if config.push is not None:
        _check_push(config)
    _check_tenants(config.tenants, config.channels)


def _check_server(server: ServerConfig) -> None:
    addresses = {"listen": server.listen}
    for key in ("health_listen", "admin_listen"):
        address = getattr(server, key)
        if address is None:
            continue
        if not address.endswith(":0"):
            for other, taken in addresses.items():
                if address == taken:
                    raise ConfigError(
                        f"server.{key}: {address!r} is server.{other} too; "
                        "give it a port of its own, or leave it unset"
                    )
        addresses[key] = address
    for key, address in addresses.items():
        host, sep, port = address.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) < 65536
        if not sep or not host or not valid_port:
            raise ConfigError(f"server.{key}: expected host:port, got {address!r}")
    if server.metrics_token is not None and not server.metrics_token.strip():
        raise ConfigError("server.metrics_token: empty; set a secret, or leave it unset")
    if not (
        server.admin_listen or server.metrics_token or server.public_metrics
    ) and not _is_loopback(server.listen):
        raise ConfigError(
            f"server.listen: {server.listen!r} is reachable from other hosts, and /metrics "
            "names every tenant with its volumes; set server.admin_listen (a port of its "
            "own) or server.metrics_token, or server.public_metrics = true to serve it openly"
        )


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_admission(admission: AdmissionConfig) -> None:
    if not admission.min_limit <= admission.initial_limit <= admission.max_limit:
        raise ConfigError(
            "admission.initial_limit: must lie from admission.min_limit to admission.max_limit "
            f"({admission.min_limit} <= {admission.initial_limit} <= {admission.max_limit})"
        )


def _check_journal(journal: JournalConfig, server: ServerConfig) -> None:
    if journal.heartbeat_seconds >= journal.lease_seconds:
        raise ConfigError(
            "journal.heartbeat_seconds: must be shorter than journal.lease_seconds "
            f"({journal.heartbeat_seconds} >= {journal.lease_seconds})"
        )
    if journal.backend == "sqlite":
        if server.workers > 1:
            raise ConfigError(
                "server.workers: the sqlite journal serves one process; "
                'use journal.backend = "postgres" for more'
            )
        if server.role != "all":
            raise ConfigError(
                'server.role: "api" and "worker" need a journal they share '
                '(journal.backend = "postgres"); on sqlite, server.api_processes splits them'
            )
        if server.api_processes:
            socket_path = f"{journal.path}.sock"
            if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
                raise ConfigError(
                    f"journal.path: with server.api_processes the edges reach the journal on "
                    f"the Unix socket {socket_path!r}, longer than the {UNIX_PATH_MAX} bytes "
                    "such a path may have; choose a shorter journal.path"
                )
    elif server.api_processes:
        raise ConfigError(
            "server.api_processes: splits the edges from the sqlite journal's owner; with "
            'postgres, run processes of server.role "api" and "worker" instead'
        )
    elif not journal.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"journal.url: expected postgresql://…, got {journal.url!r}")


def _check_nodes(server: ServerConfig) -> None:
    node, workers = server.node, server.workers
    if node is not None and node + workers - 1 > NODE_MAX:
        raise ConfigError(
            f"server.node: {workers} processes number their message ids from server.node = "
            f"{node} up to {node + workers - 1}, past the largest node {NODE_MAX}; set "
            f"server.node to at most {NODE_MAX + 1 - workers}, or leave it unset for "
            "random distinct nodes"
        )


def _check_push(config: Config) -> None:
    push = config.push
    assert push is not None
    host, sep, port = push.listen.rpartition(":")
    if not sep or not host or not (port.isdigit() and int(port) < 65536):
        raise ConfigError(f"push.listen: expected host:port, got {push.listen!r}")
    if not push.listen.endswith(":0") and push.listen in (
        config.server.listen,
        config.server.health_listen,
        config.server.admin_listen,
        config.smtp.listen if config.smtp else None,
    ):
        raise ConfigError(f"push.listen: {push.listen!r} is another listener's address")
    if not push.token_secret.strip():
        raise ConfigError("push.token_secret: empty; set a secret to sign tokens with")
    if push.token_ttl_seconds > push.max_token_ttl_seconds:
        raise ConfigError("push.token_ttl_seconds: longer than push.max_token_ttl_seconds")


def _check_redis(redis: RedisConfig) -> None:
    if redis.url and not redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis.url: expected redis://…, got {redis.url!r}")


def _check_smtp(config: Config, smtp: SmtpConfig) -> None:
    host, sep, port = smtp.listen.rpartition(":")
    if not sep or not host or not (port.isdigit() and int(port) < 65536):
        raise ConfigError(f"smtp.listen: expected host:port, got {smtp.listen!r}")
    if smtp.tenant not in config.tenants:
        raise ConfigError(f"smtp.tenant: {smtp.tenant!r} is not a configured tenant")
    if not smtp.listen.endswith(":0") and smtp.listen in (
        config.server.listen,
        config.server.health_listen,
        config.server.admin_listen,
    ):
        raise ConfigError(f"smtp.listen: {smtp.listen!r} is already the HTTP server's address")
    for field in ("sms_channel", "email_channel"):
        channel = getattr(smtp, field)
        if channel is not None and channel not in config.channels:
            raise ConfigError(f"smtp.{field}: {channel!r} is not a configured channel")
    if (smtp.sms_domain is None) != (smtp.sms_channel is None):
        raise ConfigError("smtp.sms_domain and smtp.sms_channel: set both or neither")
    if (smtp.tls_cert is None) != (smtp.tls_key is None):
        raise ConfigError("smtp.tls_cert and smtp.tls_key: set both or neither")
    if smtp.require_starttls and smtp.tls_cert is None:
        raise ConfigError("smtp.require_starttls: needs smtp.tls_cert and smtp.tls_key")
    screening = smtp.screening
    if screening.dnsbl_min_ttl_seconds > screening.dnsbl_max_ttl_seconds:
        raise ConfigError("smtp.screening.dnsbl_min_ttl_seconds: larger than dnsbl_max_ttl")


def _check_channel(
    name: str,
    channel: ChannelConfig,
    channels: Mapping[str, ChannelConfig],
    push: PushConfig | None,
) -> None:
    key = f"channels.{name}"
    if channel.type == "webhook" and channel.webhook is None:
        raise ConfigError(f"{key}.webhook: required for a channel of type 'webhook'")
    if channel.type == "smpp" and channel.smpp is None:
        raise ConfigError(f"{key}.smpp: required for a channel of type 'smpp'")
    if channel.type == "push" and push is None:
        raise ConfigError(
            f"{key}.type: a channel of type 'push' needs the [push] section (its listener "
            "and push.token_secret)"
        )
    if channel.type == "email" and channel.email is None:
        raise ConfigError(
            f"{key}.email: required for a channel of type 'email' (an empty table sends "
            "to each recipient domain's MX)"
        )
    if channel.smpp is not None:
        smpp = channel.smpp
        if smpp.reconnect_min_seconds > smpp.reconnect_max_seconds:
            raise ConfigError(f"{key}.smpp.reconnect_min_seconds: larger than reconnect_max")
        if smpp.mo_webhook is not None and not smpp.mo_webhook.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.smpp.mo_webhook: expected an http(s) URL")
        if channel.width < smpp.binds * smpp.window:
            raise ConfigError(
                f"{key}.width: {channel.width} is less than smpp.binds * smpp.window "
                f"({smpp.binds * smpp.window}); the windows could never fill"
            )
    if channel.webhook is not None and not channel.webhook.url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{key}.webhook.url: expected an http(s) URL, got {channel.webhook.url!r}"
        )
    if channel.failover is not None:
        if channel.failover == name:
            raise ConfigError(f"{key}.failover: a channel cannot fail over to itself")
        if channel.failover not in channels:
            raise ConfigError(f"{key}.failover: unknown channel {channel.failover!r}")
    if channel.retry.base_seconds > channel.retry.max_seconds:
        raise ConfigError(f"{key}.retry.base_seconds: larger than retry.max_seconds")


def _check_tenants(
    tenants: Mapping[str, TenantConfig], channels: Mapping[str, ChannelConfig]
) -> None:
    seen_keys: dict[str, str] = {}
    for name, tenant in tenants.items():
        key = f"tenants.{name}"
        if not tenant.api_keys:
            raise ConfigError(f"{key}.api_keys: a tenant needs at least one key")
        for i, api_key in enumerate(tenant.api_keys):
            if not _HASH_RE.match(api_key):
                raise ConfigError(
                    f"{key}.api_keys[{i}]: expected 'sha256:' and 64 hex digits "
                    "(make one with `sluice hash-key`)"
                )
            if api_key in seen_keys:
                raise ConfigError(
                    f"{key}.api_keys[{i}]: the same key is given to tenant {seen_keys[api_key]!r}"
                )
            seen_keys[api_key] = name
        for channel_name in tenant.channels:
            if channel_name not in channels:
                raise ConfigError(f"{key}.channels: unknown channel {channel_name!r}")


def _env_value(text: str) -> Any:
    """Arrays and tables parse as TOML; anything else stays a string, and the schema converts
    it to the field's type (so "250" becomes 250 for a number and stays "250" for a secret)."""
    if text.lstrip().startswith(("[", "{")):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text
    return text


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``SLUICE__A__B=value`` variables on a parsed TOML document (returns a copy)."""
    merged: dict[str, Any] = _deep_copy(raw)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key in the path")
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"environment variable {name}: {'.'.join(path[: i + 1])} is not a table"
                )
            node = child
        node[path[-1]] = _env_value(environ[name])
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


_CHANNEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `([^`]*)`$")
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _convert(raw: Any, kind: type[_T], prefix: str) -> _T:
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        path, reason = "", message
        if match is not None:
            path = match.group("path").replace("['", ".").replace("']", "").lstrip(".")
            reason = message[: match.start()]
        unknown = _UNKNOWN_RE.match(reason)
        if unknown is not None:
            path = ".".join(part for part in (path, unknown.group(1)) if part)
            reason = "unknown key"
        key = ".".join(part for part in (prefix, path) if part)
        raise ConfigError(f"{key or '(top level)'}: {reason}") from None


def _convert_table(raw: dict[str, Any], name: str, kind: type[_T]) -> dict[str, _T]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table, got {type(table).__name__}")
    return {key: _convert(value, kind, f"{name}.{key}") for key, value in table.items()}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and check a Config from plain data; raise ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"(top level): expected a table, got {type(raw).__name__}")
    channels = _convert_table(raw, "channels", ChannelConfig)
    for name in channels:
        if not _CHANNEL_NAME_RE.match(name):
            raise ConfigError(
                f"channels.{name}: a channel name is 1-32 characters of a-z, 0-9, '_' and '-', "
                "starting with a letter"
            )
    tenants = _convert_table(raw, "tenants", TenantConfig)
    rest = {k: v for k, v in raw.items() if k not in ("channels", "tenants")}
    config = msgspec.structs.replace(_convert(rest, Config, ""), channels=channels, tenants=tenants)
    _check(config)
    return config


def dump_toml(raw: Mapping[str, Any], prefix: str = "") -> str:
    """Write a configuration given as plain data (tables of scalars and arrays) as TOML,
    for tools and tests that generate a file for `sluice serve --config`.

    Examples:
        >>> print(dump_toml({"server": {"listen": "127.0.0.1:0"}}), end="")
        [server]
        listen = "127.0.0.1:0"
    """
    scalars, tables = [], []
    for key, value in raw.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:  # JSON strings, numbers, booleans and arrays are valid TOML values
            scalars.append(f"{key} = {msgspec.json.encode(value).decode()}")
    out = f"[{prefix}]\n" if prefix and scalars else ""
    out += "".join(line + "\n" for line in scalars)
    for key, value in tables:
        out += dump_toml(value, f"{prefix}.{key}" if prefix else key)
    return out


def loads(text: str, environ: Mapping[str, str] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    return from_dict(apply_env(raw, os.environ if environ is None else environ))


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return loads(text, environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
