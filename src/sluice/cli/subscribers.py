"""`sluice subscribers import FILE`: a CSV or NDJSON file of subscribers, streamed to the
gateway's `POST /v1/subscribers/import` in requests of `--batch` records.

The file is read a request's worth at a time (a 10 M-line file never sits in memory), two
requests are in flight so that reading and storing overlap, and each request is one
transaction on the gateway: an import stopped half way and started again stores nothing twice
(subscribers are replaced by their id). Lines the gateway refuses are reported with their line
number in the file and the field at fault; the good ones are kept. A request refused for load
(429, 503) is sent again after its Retry-After.

Examples:
    sluice subscribers import subscribers.csv --key $KEY
    sluice subscribers import people.ndjson --key $KEY --url http://gw:8080 --batch 5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

#: Requests in flight at once: reading the next one while the gateway stores the last.
IN_FLIGHT = 2
#: Attempts for one request refused for load or cut off, before the import gives up.
MAX_ATTEMPTS = 20
#: The longest record the CLI joins across lines for a quoted field.
MAX_RECORD_BYTES = 1 << 20
#: Errors printed at the end (all are counted).
MAX_PRINTED_ERRORS = 50

_CONTENT_TYPES = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


class ImportFailed(Exception):
    """The import cannot go on (the file, the gateway); the message says why."""


@dataclass
class Chunk:
    """One request's records: the bytes to send, the file line each record starts on (by
    the request's line it starts on: the gateway numbers lines within the request), and the
    bytes of the file they took."""

    body: bytes
    lines: dict[int, int]
    size: int


@dataclass
class Totals:
    records: int = 0
    created: int = 0
    updated: int = 0
    subscribed: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def file_format(path: Path, given: str | None) -> str:
    if given is not None:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".ndjson", ".jsonl", ".json"):
        return "ndjson"
    raise ImportFailed(f"{path}: cannot tell the format from {suffix!r}; give --format csv|ndjson")


def _quoting(line: bytes, quoted: bool) -> bool:
    """Whether a CSV record is inside a quoted field after `line`, given whether it was
    before it. As Python's csv module reads it, a quote opens quoting only at the start of a
    field (elsewhere it is a character), and two quotes inside quoting are one."""
    start = not quoted  # a line begins a field unless it goes on with a quoted one
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quoted:
            if c == 0x22:  # '"'
                if i + 1 < n and line[i + 1] == 0x22:
                    i += 1  # an escaped quote
                else:
                    quoted = False
        elif c == 0x22 and start:
            quoted = True
        start = c == 0x2C and not quoted  # after a ','
        i += 1
    return quoted


def chunks(stream: IO[bytes], fmt: str, batch: int) -> Iterator[Chunk]:
    """The file's records, `batch` at a time. A CSV's header goes first in every request; a
    CSV record whose quotes are open goes on to the next line (a quoted newline)."""
    header = b""
    number = 0
    if fmt == "csv":
        header = stream.readline()
        number = 1
        if header.startswith(b"\xef\xbb\xbf"):
            header = header[3:]
        if not header.strip():
            raise ImportFailed("the CSV file has no header row")
        if not header.endswith(b"\n"):
            header += b"\n"
    first_line = 2 if header else 1  # of the first record, in a request
    parts: list[bytes] = [header] if header else []
    lines: dict[int, int] = {}
    at = first_line
    size = len(header)  # bytes of the file read for this request (the progress bar's)
    record = b""
    quoted = False  # the record is inside a quoted field
    first = 0
    for raw in stream:
        number += 1
        size += len(raw)
        if not record:
            if not raw.strip():
                continue  # blank lines are skipped
            first = number
        record += raw
        if fmt == "csv" and (quoted or b'"' in raw):
            quoted = _quoting(raw, quoted)  # each line scanned once
            if quoted:
                if len(record) > MAX_RECORD_BYTES:
                    raise ImportFailed(
                        f"line {first}: a quoted field runs on for more than "
                        f"{MAX_RECORD_BYTES} bytes (a quote never closed?)"
                    )
                continue  # inside a quoted field
        parts.append(record if record.endswith(b"\n") else record + b"\n")
        lines[at] = first
        at += record.count(b"\n") or 1
        record = b""
        if len(lines) >= batch:
            yield Chunk(b"".join(parts), lines, size)
            parts, lines, size, at = ([header] if header else []), {}, 0, first_line
    if record:
        parts.append(record if record.endswith(b"\n") else record + b"\n")
        lines[at] = first
    if lines:
        yield Chunk(b"".join(parts), lines, size)


async def _post(session: Any, url: str, headers: dict[str, str], chunk: Chunk) -> dict[str, Any]:
    import aiohttp

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with session.post(url, data=chunk.body, headers=headers) as resp:
                body = await resp.read()
                if resp.status in (429, 503):
                    await asyncio.sleep(_retry_after(resp.headers.get("Retry-After")))
                    continue
                answer: dict[str, Any] = msgspec.json.decode(body) if body else {}
                if resp.status != 200:
                    error = answer.get("error", {}) if isinstance(answer, dict) else {}
                    raise ImportFailed(
                        f"the gateway refused a request ({resp.status} "
                        f"{error.get('code', '?')}): {error.get('message', body[:200])}"
                    )
                return answer
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if attempt == MAX_ATTEMPTS:
                raise ImportFailed(f"cannot reach the gateway at {url}: {exc}") from None
            await asyncio.sleep(min(5.0, 0.2 * attempt))
    raise ImportFailed(f"the gateway kept refusing for load after {MAX_ATTEMPTS} attempts")


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After asks for (an HTTP date, or nonsense, counts as one)."""
    try:
        return min(60.0, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


def _account(totals: Totals, chunk: Chunk, answer: dict[str, Any]) -> None:
    totals.records += len(chunk.lines)
    totals.created += int(answer.get("created", 0))
    totals.updated += int(answer.get("updated", 0))
    totals.subscribed += int(answer.get("subscribed", 0))
    errors = answer.get("errors", [])
    totals.refused += len(errors) + int(answer.get("errors_not_listed", 0))
    for error in errors:
        where = chunk.lines.get(int(error.get("line", 0)), "?")
        field_name = error.get("field")
        at = f" ({field_name})" if field_name else ""
        if len(totals.errors) < MAX_PRINTED_ERRORS:
            totals.errors.append(f"line {where}{at}: {error.get('message', '')}")


async def import_file(args: argparse.Namespace) -> int:
    import aiohttp
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    path = Path(args.file)
    try:
        fmt = file_format(path, args.format)
        stream = await asyncio.to_thread(path.open, "rb")
    except (ImportFailed, OSError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    total_bytes = os.fstat(stream.fileno()).st_size
    url = f"{args.url.rstrip('/')}/v1/subscribers/import"
    headers = {"Authorization": f"Bearer {args.key}", "Content-Type": _CONTENT_TYPES[fmt]}
    totals = Totals()
    progress = Progress(
        TextColumn("[bold]import[/]"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[counts]}"),
        disable=not sys.stderr.isatty() or args.quiet,
        console=None,
    )
    task = progress.add_task("import", total=total_bytes, counts="")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    failed = False
    try:
        with stream, progress:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                slots = asyncio.Semaphore(IN_FLIGHT)

                async def send(chunk: Chunk) -> None:
                    try:
                        answer = await _post(session, url, headers, chunk)
                    finally:
                        slots.release()
                    _account(totals, chunk, answer)
                    progress.update(
                        task,
                        advance=chunk.size,
                        counts=f"{totals.records:,} lines, {totals.refused:,} refused",
                    )

                records = chunks(stream, fmt, args.batch)
                async with asyncio.TaskGroup() as tg:
                    # The file is read on a thread: the requests in flight go on meanwhile.
                    while (chunk := await asyncio.to_thread(next, records, None)) is not None:
                        await slots.acquire()
                        tg.create_task(send(chunk))
    except* ImportFailed as failures:
        for failure in failures.exceptions:
            print(f"sluice: {failure} (after {totals.records:,} lines)", file=sys.stderr)
        failed = True
    if failed:
        return 2
    for line in totals.errors:
        print(line, file=sys.stderr)
    if totals.refused > len(totals.errors):
        print(f"... and {totals.refused - len(totals.errors):,} more refused", file=sys.stderr)
    print(
        f"{totals.records:,} lines: {totals.created:,} created, {totals.updated:,} updated, "
        f"{totals.subscribed:,} subscriptions added, {totals.refused:,} refused"
    )
    return 1 if totals.refused else 0


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError("--batch takes 1 to 10,000 records a request")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a .csv (with a header row) or .ndjson file")
    parser.add_argument("--format", choices=sorted(_CONTENT_TYPES), help="default: by suffix")
    parser.add_argument(
        "--batch",
        type=_batch,
        default=10_000,
        help="records a request (at most the gateway's audience.max_import_lines)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
