"""Configuration: defaults, every error naming its dotted key, environment overrides."""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.config import (
    ChannelConfig,
    Config,
    ConfigError,
    TenantConfig,
    apply_env,
    from_dict,
    hash_api_key,
    load,
    loads,
)

KEY_A = hash_api_key("key-a")
KEY_B = hash_api_key("key-b")

# Keys appended to WEB land in [channels.web].
WEB = """
[channels.web]
type = "webhook"
webhook = { url = "https://hooks.example.com/in" }
"""


def config_error(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, environ or {})
    return str(info.value)


# --- defaults --------------------------------------------------------------------------------


def test_an_empty_file_loads_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text("")
    config = load(path, environ={})
    assert config == Config()
    assert config.server.listen == "127.0.0.1:8080"
    assert config.journal.synchronous == "full"
    assert config.journal.heartbeat_seconds < config.journal.lease_seconds
    assert config.channels == {}
    assert config.tenants == {}


def test_a_full_file_keeps_its_values() -> None:
    text = f"""
[server]
listen = "0.0.0.0:9000"
node = 12
metrics_token = "scrape-secret"

[journal]
path = "/var/lib/sluice/j.db"
synchronous = "normal"
lease_seconds = 60
heartbeat_seconds = 10

[channels.web]
type = "webhook"
width = 8
rate = 12.5
failover = "backup"
webhook = {{ url = "https://hooks.example.com/in" }}

[channels.web.retry]
max_attempts = 3

[channels.backup]
type = "webhook"
webhook = {{ url = "http://backup.example.com", secret = "s3cret" }}

[tenants.acme]
api_keys = ["{KEY_A}"]
channels = ["web"]
rate = 100
"""
    config = loads(text, environ={})
    assert config.server.listen == "0.0.0.0:9000"
    assert config.server.node == 12
    assert config.journal.synchronous == "normal"
    assert config.journal.lease_seconds == 60.0
    assert isinstance(config.journal.lease_seconds, float)
    web = config.channels["web"]
    assert (web.width, web.rate, web.failover) == (8, 12.5, "backup")
    assert web.retry.max_attempts == 3
    assert web.retry.base_seconds == 1.0  # untouched fields keep their defaults
    assert config.channels["backup"].webhook is not None
    assert config.channels["backup"].webhook.secret == "s3cret"
    assert config.tenants["acme"].api_keys == [KEY_A]
    assert config.tenants["acme"].rate == 100.0


# --- errors name the dotted key --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ('[server]\nnode = "seven"', "server.node", "str"),
        ("[server]\nnode = 1024", "server.node", "1023"),
        ("[server]\nlisten = 8080", "server.listen", "int"),
        ("[server]\ngil_switch_interval_ms = 0", "server.gil_switch_interval_ms", "> 0"),
        ("[journal]\nlease_seconds = 0", "journal.lease_seconds", "> 0"),
        ('[journal]\nsynchronous = "sometimes"', "journal.synchronous", "sometimes"),
        ("[journal]\nmax_claim = 0", "journal.max_claim", ">= 1"),
        ("[limits]\nmax_batch = -5", "limits.max_batch", ">= 1"),
        ("[limits]\nmax_batch = 1.5", "limits.max_batch", "float"),
        ("[callbacks]\nwidth = true", "callbacks.width", "bool"),
        ('[channels.web]\nwidth = "many"', "channels.web.width", "str"),
        (WEB + "width = 0", "channels.web.width", ">= 1"),
        (WEB + "rate = -1", "channels.web.rate", ">= 0"),
        (WEB + "urgent_reserve = 1.5", "channels.web.urgent_reserve", "<= 1"),
        (WEB + "[channels.web.retry]\njitter = 2", "channels.web.retry.jitter", "<= 1"),
        (
            WEB + "[channels.web.breaker]\ncooldown_seconds = 0",
            "channels.web.breaker.cooldown_seconds",
            "> 0",
        ),
        (
            '[channels.web]\ntype = "webhook"\nwebhook = { url = "http://h", timeout_seconds = 0 }',
            "channels.web.webhook.timeout_seconds",
            "> 0",
        ),
        ('[channels.web]\ntype = "smtp"', "channels.web.type", "smtp"),
        ("[channels.web]\nwidth = 3", "channels.web", "type"),
        ("[tenants.acme]\napi_keys = 5", "tenants.acme.api_keys", "int"),
        ("[tenants.acme]\napi_keys = [5]", "tenants.acme.api_keys[0]", "int"),
        ("[tenants.acme]\nrate = 1", "tenants.acme", "api_keys"),
        ("channels = 5", "channels", "table"),
        ("tenants = []", "tenants", "table"),
        ("server = 5", "server", "int"),
    ],
)
def test_wrong_type_or_range_names_the_key(text: str, key: str, detail: str) -> None:
    message = config_error(text)
    assert message.startswith(key + ":"), message
    assert detail in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1", "colour"),
        ("[server]\nport = 80", "server.port"),
        ("[journal]\nfsync = true", "journal.fsync"),
        (WEB + "colour = 1", "channels.web.colour"),
        ('[channels.web.webhook]\nurl = "http://h"\nsigning = 1', "channels.web.webhook.signing"),
        (f'[tenants.acme]\napi_keys = ["{KEY_A}"]\nquota = 1', "tenants.acme.quota"),
    ],
)
def test_unknown_key_is_named_in_full(text: str, key: str) -> None:
    assert config_error(text) == f"{key}: unknown key"


@pytest.mark.parametrize("name", ["Web", "1web", "_web", "we b", "w" * 33, "wéb", ""])
def test_bad_channel_name(name: str) -> None:
    raw = {"channels": {name: {"type": "webhook", "webhook": {"url": "http://x"}}}}
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert str(info.value).startswith(f"channels.{name}: a channel name is 1-32 characters")


@pytest.mark.parametrize("name", ["w", "web", "sms-eu_2", "w" * 32])
def test_good_channel_names(name: str) -> None:
    raw = {"channels": {name: {"type": "webhook", "webhook": {"url": "http://x"}}}}
    assert name in from_dict(raw).channels


def test_webhook_channel_without_webhook_table() -> None:
    message = config_error('[channels.web]\ntype = "webhook"')
    assert message.startswith("channels.web.webhook: required")


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com", "HTTP//x", ""])
def test_webhook_url_must_be_http(url: str) -> None:
    text = f'[channels.web]\ntype = "webhook"\nwebhook = {{ url = "{url}" }}'
    message = config_error(text)
    assert message.startswith("channels.web.webhook.url: expected an http(s) URL")
    assert repr(url) in message


def test_failover_to_itself() -> None:
    message = config_error(WEB + 'failover = "web"')
    assert message.startswith("channels.web.failover: a channel cannot fail over to itself")


def test_failover_to_an_unknown_channel() -> None:
    message = config_error(WEB + 'failover = "sms"')
    assert message.startswith("channels.web.failover: unknown channel 'sms'")


def test_retry_base_longer_than_max() -> None:
    message = config_error(WEB + "[channels.web.retry]\nbase_seconds = 10\nmax_seconds = 5")
    assert message.startswith("channels.web.retry.base_seconds")


def test_tenant_without_keys() -> None:
    message = config_error("[tenants.acme]\napi_keys = []")
    assert message.startswith("tenants.acme.api_keys: a tenant needs at least one key")


@pytest.mark.parametrize(
    "bad",
    [
        "secret",
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,  # upper-case hex is not what `sluice hash-key` prints
        "md5:" + "0" * 64,
        " " + KEY_A,
    ],
)
def test_malformed_key_hash_names_its_index(bad: str) -> None:
    message = config_error(f'[tenants.acme]\napi_keys = ["{KEY_A}", "{bad}"]')
    assert message.startswith("tenants.acme.api_keys[1]: expected 'sha256:' and 64 hex digits")
    assert "sluice hash-key" in message


def test_same_key_for_two_tenants() -> None:
    text = (
        f'[tenants.acme]\napi_keys = ["{KEY_A}"]\n[tenants.zeta]\napi_keys = ["{KEY_B}", "{KEY_A}"]'
    )
    message = config_error(text)
    assert message.startswith("tenants.zeta.api_keys[1]: the same key is given to tenant 'acme'")


def test_tenant_with_unknown_channel() -> None:
    message = config_error(
        WEB + f'[tenants.acme]\napi_keys = ["{KEY_A}"]\nchannels = ["web", "sms"]'
    )
    assert message.startswith("tenants.acme.channels: unknown channel 'sms'")


@pytest.mark.parametrize(("heartbeat", "lease"), [(30, 30), (31, 30), (5, 4.5)])
def test_heartbeat_must_be_shorter_than_lease(heartbeat: float, lease: float) -> None:
    message = config_error(f"[journal]\nheartbeat_seconds = {heartbeat}\nlease_seconds = {lease}")
    assert message.startswith(
        "journal.heartbeat_seconds: must be shorter than journal.lease_seconds"
    )


@pytest.mark.parametrize(
    "listen", ["localhost", "localhost:", ":8080", "host:65536", "host:http", "host:-1", ""]
)
def test_bad_listen_address(listen: str) -> None:
    message = config_error(f'[server]\nlisten = "{listen}"')
    assert message.startswith("server.listen: expected host:port")
    assert repr(listen) in message


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:1", "127.0.0.1:0", "localhost:65535", "[::1]:8080", "h:08080"]
)
def test_good_listen_address(listen: str) -> None:
    text = f'[server]\nlisten = "{listen}"\npublic_metrics = true'
    assert loads(text, {}).server.listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080", "gw:8080"])
def test_metrics_on_a_reachable_address_need_a_decision(listen: str) -> None:
    """/metrics names every tenant: on an address other hosts reach, the operator chooses
    an admin port, a token, or says it may be public."""
    with pytest.raises(ConfigError, match=r"server\.admin_listen.*server\.metrics_token"):
        loads(f'[server]\nlisten = "{listen}"', {})
    for choice in (
        'admin_listen = "127.0.0.1:9100"',
        'metrics_token = "t"',
        "public_metrics = true",
    ):
        assert loads(f'[server]\nlisten = "{listen}"\n{choice}', {}).server.listen == listen
    for loopback in ("127.0.0.1:8080", "[::1]:8080", "localhost:8080"):
        assert loads(f'[server]\nlisten = "{loopback}"', {}).server.public_metrics is False


@pytest.mark.parametrize("port", ["²", "①", "1" * 5000])
def test_listen_with_exotic_digits_is_a_config_error(port: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.listen"):
        from_dict({"server": {"listen": "host:" + port}})


def test_the_health_port_and_the_smtp_port_must_differ_from_the_http_port() -> None:
    message = config_error('[server]\nlisten = "127.0.0.1:8080"\nhealth_listen = "127.0.0.1:8080"')
    assert message.startswith("server.health_listen: '127.0.0.1:8080' is server.listen too")
    # Port 0 asks the system for a free port: the same text is two different ports.
    config = loads('[server]\nlisten = "127.0.0.1:0"\nhealth_listen = "127.0.0.1:0"', {})
    assert config.server.health_listen == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"smtp\.listen: '127\.0\.0\.1:2525' is already"):
        from_dict(
            {
                "server": {"listen": "127.0.0.1:2525"},
                "tenants": {"acme": {"api_keys": [hash_api_key("k")]}},
                "smtp": {"listen": "127.0.0.1:2525", "tenant": "acme"},
            }
        )


def test_the_admin_port_must_differ_from_the_others() -> None:
    for other in ("listen", "health_listen"):
        text = (
            '[server]\nlisten = "127.0.0.1:8080"\nhealth_listen = "127.0.0.1:8081"\n'
            f'admin_listen = "127.0.0.1:{8080 if other == "listen" else 8081}"'
        )
        assert config_error(text).startswith("server.admin_listen: '127.0.0.1:80")
        assert f"is server.{other} too" in config_error(text)
    with pytest.raises(ConfigError, match=r"smtp\.listen: '127\.0\.0\.1:9100' is already"):
        from_dict(
            {
                "server": {"admin_listen": "127.0.0.1:9100"},
                "tenants": {"acme": {"api_keys": [hash_api_key("k")]}},
                "smtp": {"listen": "127.0.0.1:9100", "tenant": "acme"},
            }
        )


def test_invalid_toml() -> None:
    message = config_error("[server\nlisten = 1")
    assert message.startswith("not valid TOML:")
    assert "line 1" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml: No such file"):
        load(path, environ={})


def test_unreadable_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path, environ={})


def test_errors_from_a_file_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text("[journal]\nmax_claim = 0\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(f"{path}: journal.max_claim:")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_bytes(b'[server]\nlisten = "h\xff:80"\n')
    with pytest.raises(ConfigError, match=r"sluice\.toml"):
        load(path, environ={})


# --- environment overrides -------------------------------------------------------------------


def test_env_number_becomes_a_number() -> None:
    config = loads(WEB, {"SLUICE__CHANNELS__WEB__RATE": "250", "SLUICE__CHANNELS__WEB__WIDTH": "7"})
    assert config.channels["web"].rate == 250.0
    assert isinstance(config.channels["web"].rate, float)
    assert config.channels["web"].width == 7
    assert isinstance(config.channels["web"].width, int)


def test_env_float_becomes_a_float() -> None:
    config = loads("", {"SLUICE__JOURNAL__LEASE_SECONDS": "12.5"})
    assert config.journal.lease_seconds == 12.5


def test_env_strings_stay_strings() -> None:
    environ = {
        "SLUICE__SERVER__LISTEN": "0.0.0.0:9000",
        "SLUICE__SERVER__ADMIN_LISTEN": "127.0.0.1:9100",
        "SLUICE__JOURNAL__SYNCHRONOUS": "normal",
        "SLUICE__JOURNAL__PATH": "/data/sluice.db",
    }
    config = loads("", environ)
    assert config.server.listen == "0.0.0.0:9000"
    assert config.journal.synchronous == "normal"
    assert config.journal.path == "/data/sluice.db"


def test_env_arrays_parse() -> None:
    environ = {"SLUICE__TENANTS__ACME__API_KEYS": f'["{KEY_A}", "{KEY_B}"]'}
    config = loads(WEB + '[tenants.acme]\napi_keys = []\nchannels = ["web"]', environ)
    assert config.tenants["acme"].api_keys == [KEY_A, KEY_B]


def test_env_overrides_win_over_the_file_and_create_tables() -> None:
    config = loads(
        '[server]\nlisten = "127.0.0.1:1"',
        {"SLUICE__SERVER__LISTEN": "localhost:2", "SLUICE__LIMITS__MAX_BATCH": "5"},
    )
    assert config.server.listen == "localhost:2"
    assert config.limits.max_batch == 5


def test_env_names_are_case_insensitive_and_other_variables_ignored() -> None:
    environ = {
        "SLUICE__Server__Node": "9",
        "SLUICE_SERVER__NODE": "1",  # single underscore: not ours
        "HOME": "/root",
        "sluice__server__node": "2",  # the prefix is upper case
    }
    assert loads("", environ).server.node == 9


def test_env_values_are_checked_like_the_file() -> None:
    message = config_error(WEB, {"SLUICE__CHANNELS__WEB__WIDTH": "0"})
    assert message.startswith("channels.web.width:")


def test_env_override_into_a_non_table_names_the_variable() -> None:
    message = config_error('[server]\nlisten = "h:1"', {"SLUICE__SERVER__LISTEN__PORT": "80"})
    assert "SLUICE__SERVER__LISTEN__PORT" in message
    assert "server.listen is not a table" in message


def test_env_override_with_an_empty_key_names_the_variable() -> None:
    message = config_error("", {"SLUICE__SERVER____LISTEN": "h:1"})
    assert "SLUICE__SERVER____LISTEN" in message
    assert "empty key" in message


def test_apply_env_does_not_touch_its_input() -> None:
    raw: dict[str, Any] = {"server": {"listen": "a:1"}, "tenants": {"x": {"api_keys": ["k"]}}}
    before = copy.deepcopy(raw)
    merged = apply_env(raw, {"SLUICE__SERVER__LISTEN": "b:2", "SLUICE__TENANTS__X__API_KEYS": "[]"})
    assert raw == before
    assert merged["server"]["listen"] == "b:2"
    assert merged["tenants"]["x"]["api_keys"] == []


def test_loads_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE__SERVER__NODE", "42")
    assert loads("").server.node == 42


def test_env_digits_for_a_string_field_stay_a_string() -> None:
    environ = {
        "SLUICE__CALLBACKS__SECRET": "20250101",
        "SLUICE__JOURNAL__PATH": "2025-01-01",  # a TOML date, but a path here
        "SLUICE__CHANNELS__WEB__WEBHOOK__SECRET": "true",
    }
    config = loads(WEB, environ)
    assert config.callbacks.secret == "20250101"
    assert config.journal.path == "2025-01-01"
    assert config.channels["web"].webhook is not None
    assert config.channels["web"].webhook.secret == "true"


def test_env_inline_tables_parse() -> None:
    environ = {"SLUICE__CHANNELS__SMS__WEBHOOK": '{ url = "http://sms.example.com" }'}
    config = loads(WEB + '[channels.sms]\ntype = "webhook"', environ)
    assert config.channels["sms"].webhook is not None
    assert config.channels["sms"].webhook.url == "http://sms.example.com"


def test_env_value_of_the_wrong_type_names_the_key() -> None:
    message = config_error(WEB, {"SLUICE__CHANNELS__WEB__RATE": "fast"})
    assert message.startswith("channels.web.rate:")


# --- hash_api_key ----------------------------------------------------------------------------


def test_many_processes_need_the_postgres_journal_and_node_numbers_that_fit() -> None:
    postgres = '[journal]\nbackend = "postgres"\n'
    config = loads(postgres + '[server]\nworkers = 4\nnode = 1020\nrole = "worker"\n', {})
    assert (config.server.workers, config.server.node, config.server.role) == (4, 1020, "worker")
    with pytest.raises(ConfigError, match=r"server\.node: .* up to 1024, .* at most 1020"):
        loads(postgres + "[server]\nworkers = 4\nnode = 1021\n", {})
    with pytest.raises(ConfigError, match=r"server\.node: .* at most 1020"):
        loads(postgres + "[server]\nnode = 1021\n", {"SLUICE__SERVER__WORKERS": "4"})
    with pytest.raises(ConfigError, match=r"server\.workers: the sqlite journal serves one"):
        loads("[server]\nworkers = 2\n", {})
    with pytest.raises(ConfigError, match=r"server\.role: .* need a journal they share"):
        loads('[server]\nrole = "api"\n', {})


def test_of_two_faults_the_one_found_first_is_named() -> None:
    # The sections are checked in order; with the sqlite journal, more processes are the fault
    # (their node numbers would not fit either).
    message = config_error("[server]\nworkers = 2\nnode = 1023\n")
    assert message.startswith("server.workers: the sqlite journal serves one process")
    message = config_error('[server]\nlisten = "nowhere"\n[journal]\nheartbeat_seconds = 60\n')
    assert message.startswith("server.listen:")
    message = config_error(
        '[journal]\nheartbeat_seconds = 60\n[redis]\nurl = "http://x"\n'
        + WEB.replace("https://hooks.example.com/in", "ftp://x")
    )
    assert message.startswith("journal.heartbeat_seconds:")
    message = config_error('[redis]\nurl = "http://x"\n' + WEB.replace("https://", "ftp://"))
    assert message.startswith("redis.url:")
    message = config_error(
        WEB.replace("https://", "ftp://") + '[tenants.a]\napi_keys = []\nchannels = ["web"]\n'
    )
    assert message.startswith("channels.web.webhook.url:")


def test_hash_api_key_is_sha256_hex_and_accepted_by_the_config() -> None:
    hashed = hash_api_key("s3cr3t-κλειδί")
    assert hashed == "sha256:" + hashlib.sha256("s3cr3t-κλειδί".encode()).hexdigest()
    assert len(hashed) == len("sha256:") + 64
    assert hash_api_key("a") != hash_api_key("b")
    assert hash_api_key("a") == hash_api_key("a")
    config = from_dict({"tenants": {"acme": {"api_keys": [hashed]}}})
    assert config.tenants["acme"].api_keys == [hashed]


# --- properties ------------------------------------------------------------------------------

CHANNEL_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
FINITE = {"allow_nan": False, "allow_infinity": False}


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(CHANNEL_NAMES, min_size=1, max_size=4, unique=True))
    channels: dict[str, Any] = {}
    for name in names:
        channel: dict[str, Any] = {
            "type": "webhook",
            "width": draw(st.integers(1, 10_000)),
            "rate": draw(st.floats(0, 1e6, **FINITE)),
            "burst": draw(st.integers(0, 10_000)),
            "urgent_reserve": draw(st.floats(0, 1, **FINITE)),
            "webhook": {
                "url": draw(st.sampled_from(["http://", "https://"])) + draw(st.text(max_size=20)),
                "secret": draw(st.none() | st.text(max_size=20)),
                "timeout_seconds": draw(st.floats(0.001, 3600, **FINITE)),
            },
        }
        others = [n for n in names if n != name]
        if others and draw(st.booleans()):
            channel["failover"] = draw(st.sampled_from(others))
        channels[name] = channel
    tenant_names = draw(st.lists(st.text(min_size=1, max_size=10), max_size=4, unique=True))
    secrets = draw(st.lists(st.text(), min_size=len(tenant_names) * 2, unique=True))
    tenants = {
        tenant: {
            "api_keys": [hash_api_key(secrets[2 * i]), hash_api_key(secrets[2 * i + 1])],
            "rate": draw(st.floats(0, 1e6, **FINITE)),
            "channels": draw(st.lists(st.sampled_from(names), unique=True)),
        }
        for i, tenant in enumerate(tenant_names)
    }
    return {"channels": channels, "tenants": tenants}


@given(valid_configs())
def test_any_valid_channel_and_tenant_config_loads_and_keeps_its_values(
    raw: dict[str, Any],
) -> None:
    config = from_dict(raw)
    assert set(config.channels) == set(raw["channels"])
    for name, want in raw["channels"].items():
        got = config.channels[name]
        assert got.width == want["width"]
        assert got.rate == want["rate"]
        assert got.burst == want["burst"]
        assert got.urgent_reserve == want["urgent_reserve"]
        assert got.failover == want.get("failover")
        assert got.webhook is not None
        assert got.webhook.url == want["webhook"]["url"]
        assert got.webhook.secret == want["webhook"]["secret"]
        assert got.webhook.timeout_seconds == want["webhook"]["timeout_seconds"]
    assert set(config.tenants) == set(raw["tenants"])
    for name, want in raw["tenants"].items():
        got_tenant = config.tenants[name]
        assert got_tenant.api_keys == want["api_keys"]
        assert got_tenant.rate == want["rate"]
        assert got_tenant.channels == want["channels"]


def _field_paths(kind: type[msgspec.Struct], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    paths = []
    for field in msgspec.structs.fields(kind):
        path = (*prefix, field.name)
        paths.append(path)
        for sub in (field.type, *getattr(field.type, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
                paths.extend(_field_paths(sub, path))
    return paths


_BASE: dict[str, Any] = {
    "channels": {
        "web": {"type": "webhook", "webhook": {"url": "https://a"}, "failover": "sms"},
        "sms": {"type": "webhook", "webhook": {"url": "http://b"}},
    },
    "tenants": {"acme": {"api_keys": [KEY_A], "channels": ["web"]}},
}
_PATHS = sorted(
    {p for p in _field_paths(Config, ()) if p[0] not in ("channels", "tenants")}
    | {("channels", "web", *p) for p in _field_paths(ChannelConfig, ())}
    | {("tenants", "acme", *p) for p in _field_paths(TenantConfig, ())}
    | {("channels",), ("tenants",), ("channels", "web"), ("tenants", "acme"), ("bogus",)}
    | {("channels", "new"), ("tenants", "new"), ("server", "bogus")}
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.sampled_from(_PATHS), _JSON)
def test_any_value_for_any_field_is_a_config_or_a_config_error(
    path: tuple[str, ...], value: Any
) -> None:
    raw = copy.deepcopy(_BASE)
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    try:
        config = from_dict(raw)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)


@settings(max_examples=200)
@given(st.text())
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        loads(text, {})


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.sampled_from(_PATHS), st.text())
def test_any_env_value_for_any_field_is_a_config_or_a_config_error(
    path: tuple[str, ...], text: str
) -> None:
    environ = {"SLUICE__" + "__".join(part.upper() for part in path): text}
    try:
        config = from_dict(apply_env(_BASE, environ))
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)


def test_push_channel_needs_the_push_section() -> None:
    message = config_error('[channels.live]\ntype = "push"')
    assert message.startswith("channels.live.type: a channel of type 'push' needs the [push]")


@pytest.mark.parametrize(
    ("push", "start"),
    [
        ('token_secret = "  "', "push.token_secret: empty"),
        ('token_secret = "s"\nlisten = "nowhere"', "push.listen: expected host:port"),
        ('token_secret = "s"\nlisten = "127.0.0.1:8080"', "push.listen: '127.0.0.1:8080' is"),
        (
            'token_secret = "s"\ntoken_ttl_seconds = 100\nmax_token_ttl_seconds = 10',
            "push.token_ttl_seconds: longer than",
        ),
    ],
)
def test_push_section_checks(push: str, start: str) -> None:
    assert config_error(f"[push]\n{push}").startswith(start)
