"""Push tokens: minted and verified under one secret, refused with the reason when not good."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.ingress.push.tokens import MAX_TOKEN_BYTES, BadToken, Grant, PushTokens


def test_a_token_round_trips_its_grant() -> None:
    tokens = PushTokens(b"k", clock_ms=lambda: 5_000)
    token = tokens.mint("acme", "u1", ("news", "sport"), ttl_ms=1_000)
    assert tokens.verify(token) == Grant("acme", "u1", ("news", "sport"), 6_000)


def test_expiry_is_checked_on_the_injected_clock() -> None:
    now = [0]
    tokens = PushTokens(b"k", clock_ms=lambda: now[0])
    token = tokens.mint("acme", "u1", (), ttl_ms=1_000)
    now[0] = 999
    assert tokens.verify(token).subscriber == "u1"
    now[0] = 1_000
    with pytest.raises(BadToken, match="expired"):
        tokens.verify(token)


def test_another_secret_or_a_changed_payload_does_not_verify() -> None:
    token = PushTokens(b"one").mint("acme", "u1", (), ttl_ms=60_000)
    with pytest.raises(BadToken, match="signature"):
        PushTokens(b"two").verify(token)
    forged = PushTokens(b"two").mint("acme", "admin", (), ttl_ms=60_000)
    payload = forged.partition(".")[0]
    with pytest.raises(BadToken, match="signature"):
        PushTokens(b"one").verify(payload + "." + token.partition(".")[2])


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "not <payload>.<signature>"),
        ("abc", "not <payload>.<signature>"),
        (".abc", "not <payload>.<signature>"),
        ("a!b.c", "not base64url"),
        ("x" * (MAX_TOKEN_BYTES + 1), "longer than"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(token: str, reason: str) -> None:
    with pytest.raises(BadToken, match=reason):
        PushTokens(b"k").verify(token)


@given(st.text(max_size=200))
def test_any_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(BadToken):
        PushTokens(b"k").verify(text)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=r"push\.token_secret"):
        PushTokens(b"")
