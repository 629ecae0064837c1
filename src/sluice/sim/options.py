"""What the simulators share: run-time option changes (unknown keys and bad types named) and
the command line's periodic one-line report."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

_AT_FIELD = re.compile(r"(?P<reason>.*) - at `\$\.(?P<field>\w+)(?P<rest>[^`]*)`")


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


def add_report_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-seconds",
        type=float,
        default=0.0,
        help="print a one-line stats summary every N seconds; 0 = off",
    )


async def report(summary: Callable[[], str], every: float) -> None:
    """Print `summary()` every `every` seconds (0: never) until cancelled."""
    if not (math.isfinite(every) and every >= 0):
        raise ValueError(f"--report-seconds: expected a number >= 0, got {every}")
    if every == 0:
        await asyncio.Event().wait()
    while True:
        await asyncio.sleep(every)
        print(summary(), flush=True)
