"""Multi-row INSERT statements: chunk sizes and parameter numbering."""

from __future__ import annotations

import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from sluice.journal.multirow import chunk_sizes, insert_sql


@given(st.integers(0, 100_000), st.sampled_from([1, 2, 8, 1024, 8192]))
def test_chunk_sizes_are_powers_of_two_that_add_up(n: int, largest: int) -> None:
    sizes = chunk_sizes(n, largest)
    assert sum(sizes) == n
    assert all(size & (size - 1) == 0 and 0 < size <= largest for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) - n // largest <= largest.bit_length()  # few statements per batch


def test_chunk_sizes_of_a_batch_of_1000() -> None:
    assert chunk_sizes(1000, 1024) == [512, 256, 128, 64, 32, 8]
    assert chunk_sizes(2048, 1024) == [1024, 1024]
    assert chunk_sizes(0, 1024) == []


def test_bare_parameters_follow_the_numbered_first_row() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (run INTEGER, a INTEGER, b INTEGER)")
    sql = insert_sql("INSERT INTO t (run, a, b) VALUES ", "(?1,?2,?3)", "(?1,?,?)", 3)
    conn.execute(sql, [7, 1, 2, 3, 4, 5, 6])
    assert conn.execute("SELECT run, a, b FROM t ORDER BY a").fetchall() == [
        (7, 1, 2),
        (7, 3, 4),
        (7, 5, 6),
    ]
    assert insert_sql("INSERT INTO t (run, a, b) VALUES ", "(?1,?2,?3)", "(?1,?,?)", 3) is sql
