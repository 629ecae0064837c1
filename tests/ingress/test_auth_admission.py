"""API-key lookup and admission control, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.config import Config, from_dict, hash_api_key
from sluice.ingress.http.admission import Admission
from sluice.ingress.http.auth import MAX_KEY_LENGTH, ApiKeys


def make_config(limits: dict[str, Any] | None = None, **tenants: dict[str, Any]) -> Config:
    raw_tenants = {
        name: {"api_keys": [hash_api_key(f"key-{name}")], **extra}
        for name, extra in tenants.items()
    }
    return from_dict({"tenants": raw_tenants, "limits": limits or {}})


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------- auth


def test_keys_map_to_their_tenant() -> None:
    config = from_dict(
        {
            "tenants": {
                "a": {"api_keys": [hash_api_key("a1"), hash_api_key("a2")]},
                "b": {"api_keys": [hash_api_key("b1")]},
            }
        }
    )
    keys = ApiKeys(config.tenants)
    assert keys.tenant_for(b"Bearer a1") == "a"
    assert keys.tenant_for(b"Bearer a2") == "a"
    assert keys.tenant_for(b"bearer b1") == "b"  # the scheme is case-insensitive
    assert keys.tenant_for(b"BEARER  b1 ") == "b"


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer unknown",
        b"Basic a1",
        b"a1",
        b"Bearer A1",  # keys are case-sensitive
        b"Bearer " + b"x" * (MAX_KEY_LENGTH + 1),
        b"Bearer sha256:" + hash_api_key("a1").encode()[7:],  # the digest is not the key
    ],
)
def test_bad_headers_name_no_tenant(header: bytes | None) -> None:
    keys = ApiKeys(from_dict({"tenants": {"a": {"api_keys": [hash_api_key("a1")]}}}).tenants)
    assert keys.tenant_for(header) is None


def test_non_ascii_keys_hash_as_utf8() -> None:
    keys = ApiKeys(from_dict({"tenants": {"a": {"api_keys": [hash_api_key("clé")]}}}).tenants)
    assert keys.tenant_for("Bearer clé".encode()) == "a"


# ----------------------------------------------------------------------------- admission


def test_unlimited_tenant_is_never_rate_limited() -> None:
    admission = Admission(make_config(a={}), backlog=lambda: 0, clock=Clock())
    for _ in range(100):
        assert admission.precheck("a") is None
        assert admission.admit("a", 10_000) is None
        admission.release(10_000)


def test_rate_limit_charges_per_message_and_refills() -> None:
    clock = Clock()
    admission = Admission(make_config(a={"rate": 10, "burst": 20}), lambda: 0, clock)
    assert admission.admit("a", 15) is None
    rejection = admission.admit("a", 10)
    assert rejection is not None
    assert (rejection.status, rejection.code) == (429, "rate_limited")
    assert rejection.retry_after == 1  # 5 tokens short at 10/s: 0.5 s, rounded up to 1
    assert admission.admit("a", 5) is None  # the refusal took nothing
    assert admission.precheck("a") is not None  # empty: refused before any parsing
    clock.now += 2.0
    assert admission.precheck("a") is None
    assert admission.admit("a", 20) is None
    rejection = admission.admit("a", 20)
    assert rejection is not None and rejection.retry_after == 2


def test_burst_defaults_to_max_of_one_and_rate() -> None:
    clock = Clock()
    admission = Admission(make_config(a={"rate": 5}, b={"rate": 0.5}), lambda: 0, clock)
    assert admission.admit("a", 5) is None
    assert admission.admit("a", 1) is not None
    assert admission.admit("b", 1) is None
    rejection = admission.admit("b", 1)
    assert rejection is not None and rejection.retry_after == 2  # 1 token at 0.5/s


def test_batch_larger_than_burst_is_413_not_429() -> None:
    admission = Admission(make_config(a={"rate": 5, "burst": 8}), lambda: 0, Clock())
    rejection = admission.admit("a", 9)
    assert rejection is not None
    assert (rejection.status, rejection.code, rejection.retry_after) == (
        413,
        "batch_too_large",
        None,
    )
    assert "8" in rejection.message
    assert admission.admit("a", 8) is None


def test_tenants_have_separate_buckets() -> None:
    admission = Admission(make_config(a={"rate": 1}, b={"rate": 1}), lambda: 0, Clock())
    assert admission.admit("a", 1) is None
    assert admission.admit("a", 1) is not None
    assert admission.admit("b", 1) is None


def test_backlog_limit_counts_messages_in_flight() -> None:
    backlog = [0]
    config = make_config({"max_backlog": 10, "backlog_retry_after_seconds": 3}, a={})
    admission = Admission(config, lambda: backlog[0], Clock())
    assert admission.admit("a", 6) is None
    assert admission.in_flight == 6
    rejection = admission.admit("a", 5)  # 6 being committed + 5 > 10
    assert rejection is not None
    assert (rejection.status, rejection.code, rejection.retry_after) == (429, "backlog_full", 3)
    assert admission.admit("a", 4) is None
    assert admission.precheck("a") is not None  # 10 of 10: not even one more
    admission.release(10)  # committed: now the journal counts them
    backlog[0] = 10
    assert admission.precheck("a") is not None
    backlog[0] = 9
    assert admission.precheck("a") is None
    assert admission.admit("a", 2) is not None
    assert admission.admit("a", 1) is None


def test_backlog_refusal_spends_no_tokens() -> None:
    backlog = [100]
    config = make_config({"max_backlog": 100}, a={"rate": 1, "burst": 1})
    admission = Admission(config, lambda: backlog[0], Clock())
    assert admission.admit("a", 1) is not None
    backlog[0] = 0
    assert admission.admit("a", 1) is None
