"""What the simulators share about options: checks, and errors named by flag."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from sluice.sim.options import check_number, check_port, named_by_flag, options_from_flags


class _Options(msgspec.Struct, kw_only=True, frozen=True):
    error_ratio: float = 0.0
    accounts: dict[str, str] = {}

    def __post_init__(self) -> None:
        check_number("error_ratio", self.error_ratio, 0.0, 1.0)
        for name, password in self.accounts.items():
            if not password:
                raise ValueError(f"accounts[{name!r}]: expected a password")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "x: expected a number, got True"),
        ("1", "x: expected a number, got '1'"),
        (float("nan"), "x: expected a number between 0 and 1, got nan"),
        (-1, "x: expected a number between 0 and 1, got -1"),
    ],
)
def test_check_number_names_the_field(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_number("x", value, 0.0, 1.0)
    assert str(caught.value) == message


def test_check_port() -> None:
    check_port("--port", 0)
    check_port("--port", 65535)
    with pytest.raises(ValueError, match=r"^--control-port: expected 0\.\.65535, got 70000$"):
        check_port("--control-port", 70000)


def test_named_by_flag_keeps_the_key() -> None:
    renamed = named_by_flag(ValueError("error_ratio: too big"))
    assert str(renamed) == "--error-ratio: too big"
    keyed = named_by_flag(ValueError("accounts['a']: bad"), {"accounts": "--account"})
    assert str(keyed) == "--account['a']: bad"


def test_options_from_flags() -> None:
    args = argparse.Namespace(error_ratio=0.5, unrelated=1)
    options = options_from_flags(_Options, args, ["error_ratio"], accounts={"a": "pw"})
    assert options == _Options(error_ratio=0.5, accounts={"a": "pw"})
    with pytest.raises(ValueError, match=r"^--error-ratio: expected a number between 0 and 1"):
        options_from_flags(_Options, argparse.Namespace(error_ratio=2.0), ["error_ratio"])
    with pytest.raises(ValueError, match=r"^--account\['a'\]: expected a password$"):
        options_from_flags(
            _Options, args, ["error_ratio"], {"accounts": "--account"}, accounts={"a": ""}
        )
