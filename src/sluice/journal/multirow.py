"""Multi-row INSERT statements for the SQLite journal's writer thread.

Why not `executemany`: `sqlite3` releases the GIL around each step of a statement and takes it
back after. `executemany` steps once a row, so the writer waited for the GIL once a row while
the event loop parsed requests; one INSERT of a thousand rows is one step, which runs on the
second core while the event loop keeps the GIL. Measured on the 2-core machine (ingest over
HTTP, batches of 1,000): ~110k messages/s with `executemany`, ~190k with these
statements, and the gateway's CPU per message fell from ~8.5 to ~5 µs.

`sqlite3` caches prepared statements by their text (128 per connection), so rows are inserted
in chunks whose sizes are powers of two: a dozen statement texts serve every batch size. Only
the first row of a statement numbers its parameters (?3, ?4 …); the others use bare `?`, which
takes the next number. SQLite prepares numbered parameters in quadratic time: a 1,024-row
INSERT of messages takes 38 ms to prepare numbered, 4 ms bare.

Examples:
    sql = insert_sql("INSERT INTO t (run, a, b) VALUES ", "(?1,?2,?3)", "(?1,?,?)", 4)
    for rows in chunk_sizes(1000, 1024):  # 512, 256, 128, 64, 32, 8
        ...

Warning: SQLite binds at most 32,766 values a statement; `largest` times the values of a row
must stay under that.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


def chunk_sizes(n: int, largest: int) -> list[int]:
    """`n` as a sum of powers of two no larger than `largest` (a power of two), largest first."""
    sizes = [largest] * (n // largest)
    size = largest
    n %= largest
    while n:
        size >>= 1
        if n >= size:
            sizes.append(size)
            n -= size
    return sizes


@functools.cache
def insert_sql(head: str, first: str, row: str, rows: int) -> str:
    """`head` followed by `first` and `rows - 1` copies of `row`, comma-separated."""
    return head + first + ("," + row) * (rows - 1)


def statements(
    head: str,
    shape: tuple[str, str],
    fixed: Sequence[Any],
    values: Sequence[Any],
    width: int,
    largest: int,
) -> list[tuple[str, list[Any]]]:
    """Multi-row INSERTs of `values` (`width` a row, at most `largest` rows a statement,
    a power of two) after the `fixed` parameters; `shape` is (first row, other rows)."""
    first, row = shape
    built = []
    start = 0
    for rows in chunk_sizes(len(values) // width, largest):
        end = start + rows * width
        built.append((insert_sql(head, first, row, rows), [*fixed, *values[start:end]]))
        start = end
    return built
