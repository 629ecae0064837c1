"""What the simulators share about their options: checks whose error names the field, run-time
changes (unknown keys and bad types named), and the same errors named by command-line flag.

Examples:
    >>> check_number("error_ratio", 1.5, 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: error_ratio: expected a number between 0 and 1, got 1.5
    >>> error = ValueError("accounts['acme']: expected 0 to 8 characters")
    >>> str(named_by_flag(error, {"accounts": "--account"}))
    "--account['acme']: expected 0 to 8 characters"
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

_AT_FIELD = re.compile(r"(?P<reason>.*) - at `\$\.(?P<field>\w+)(?P<rest>[^`]*)`")
#: TCP ports are 16 bits; 0 asks the OS for a free one.
MAX_PORT = 65535


def check_number(name: str, value: object, low: float, high: float | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name}: expected a number {bounds}, got {value!r}")


def check_port(flag: str, port: int) -> None:
    """ValueError naming ``flag`` unless ``port`` is 0..65535."""
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"{flag}: expected 0..{MAX_PORT}, got {port}")


def name_field_first(message: str) -> str:
    """msgspec's ``Expected `float`, got `str` - at `$.x``` as ``x: expected `float`, ...``."""
    match = _AT_FIELD.fullmatch(message)
    if match is None:
        return message
    reason = match["reason"]
    return f"{match['field']}{match['rest']}: {reason[:1].lower()}{reason[1:]}"


def with_changes(options: S, changes: Mapping[str, object], what: str) -> S:
    """`options` with `changes` applied, type-checked as if decoded from JSON; a ValueError
    names an unknown key (listing the known ones, as `what` options) or a badly typed one."""
    kind = type(options)
    fields = kind.__struct_fields__
    for key in changes:
        if key not in fields:
            raise ValueError(f"{key}: unknown {what} option; known: {', '.join(fields)}")
    merged = msgspec.structs.asdict(options) | dict(changes)
    try:
        return msgspec.convert(merged, kind)
    except msgspec.ValidationError as exc:
        raise ValueError(name_field_first(str(exc))) from None


def options_from_flags(
    kind: type[S],
    args: argparse.Namespace,
    names: Iterable[str],
    flags: Mapping[str, str] | None = None,
    **given: object,
) -> S:
    """``kind`` from the parsed flag of each field in ``names``, plus the fields ``given``
    already converted; a ValueError names the flag (see `named_by_flag`)."""
    fields = {name: getattr(args, name) for name in names} | given
    try:
        return kind(**fields)
    except ValueError as exc:
        raise named_by_flag(exc, flags) from None


def named_by_flag(exc: ValueError, flags: Mapping[str, str] | None = None) -> ValueError:
    """An options error (``field[key]: reason``) renamed for the command line
    (``--field[key]: reason``); ``flags`` names the fields whose flag is not the field name
    with dashes (``accounts`` is ``--account``)."""
    field, sep, reason = str(exc).partition(": ")
    base = field.split("[", 1)[0]
    flag = (flags or {}).get(base, "--" + base.replace("_", "-"))
    return ValueError(f"{flag}{field[len(base) :]}{sep}{reason}")
