"""How `sluice subscribers import` cuts a file into requests: a request's worth at a time,
the CSV header in each, records whole (a quoted newline included), each with its file line."""

from __future__ import annotations

import io

import pytest

from sluice.cli.subscribers import Chunk, ImportFailed, chunks, file_format


def cut(text: bytes, fmt: str, batch: int) -> list[Chunk]:
    return list(chunks(io.BytesIO(text), fmt, batch))


def test_ndjson_is_cut_into_batches_with_the_line_of_each_record() -> None:
    text = b'{"id":"a"}\n\n{"id":"b"}\n{"id":"c"}\n   \n{"id":"d"}'
    parts = cut(text, "ndjson", 2)
    assert [p.body for p in parts] == [b'{"id":"a"}\n{"id":"b"}\n', b'{"id":"c"}\n{"id":"d"}\n']
    # By the line each record starts on in its request: the file line it came from.
    assert [p.lines for p in parts] == [{1: 1, 2: 3}, {1: 4, 2: 6}]
    assert sum(p.size for p in parts) == len(text)


def test_csv_sends_its_header_with_every_request_and_keeps_quoted_newlines() -> None:
    text = (
        b"\xef\xbb\xbfid,phone,attributes\n"
        b'u1,+1555,"{""note"": ""two\nlines""}"\n'
        b"u2,+1556,\n"
        b"u3,+1557,\n"
    )
    parts = cut(text, "csv", 2)
    header = b"id,phone,attributes\n"
    assert all(p.body.startswith(header) for p in parts)  # the BOM is not sent
    assert parts[0].body == header + b'u1,+1555,"{""note"": ""two\nlines""}"\n' + b"u2,+1556,\n"
    assert parts[1].body == header + b"u3,+1557,\n"
    # u1 takes two lines of the request (2 and 3), so u2 starts on its line 4.
    assert [p.lines for p in parts] == [{2: 2, 4: 4}, {2: 5}]


def test_a_csv_without_a_header_is_refused() -> None:
    with pytest.raises(ImportFailed, match="no header"):
        cut(b"\n", "csv", 10)


def test_the_format_comes_from_the_suffix_unless_given() -> None:
    from pathlib import Path

    assert file_format(Path("a.CSV"), None) == "csv"
    assert file_format(Path("a.jsonl"), None) == "ndjson"
    assert file_format(Path("a.txt"), "csv") == "csv"
    with pytest.raises(ImportFailed, match="--format"):
        file_format(Path("a.txt"), None)


def test_a_quote_inside_an_unquoted_field_is_a_character() -> None:
    """As Python's csv module reads it: only a field that starts with a quote is quoted. A
    stray quote once glued the rest of the file into one record."""
    text = b'id,note\nu1,5" screen\nu2,"quoted, with a comma"\nu3,"two\nlines"\nu4,x\n'
    [part] = cut(text, "csv", 10)
    assert part.lines == {2: 2, 3: 3, 4: 4, 6: 6}


def test_a_quote_never_closed_stops_the_import_naming_its_line() -> None:
    text = b'id,note\nu1,"never closed\n' + b"more\n" * 300_000
    with pytest.raises(ImportFailed, match="line 2"):
        cut(text, "csv", 10)
