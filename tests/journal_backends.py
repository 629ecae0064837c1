"""Both journal backends for tests that run on each: `open_journal("sqlite" | "postgres")`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from services import shared_postgres_url, temporary_schema
from sluice.journal.base import Journal
from sluice.journal.postgres import PostgresJournal
from sluice.journal.sqlite import SqliteJournal

#: Parameters for `pytest.fixture(params=BACKENDS)`.
BACKENDS = ["sqlite", "postgres"]


@contextlib.asynccontextmanager
async def open_journal(backend: str, tmp_path: Path) -> AsyncIterator[Journal]:
    """An open journal of `backend` ("sqlite": a file in `tmp_path`; "postgres": a fresh
    schema on the shared server), closed (and its schema dropped) on exit."""
    journal: Journal
    if backend == "postgres":
        async with temporary_schema(shared_postgres_url()) as target:
            journal = PostgresJournal(target.url, schema=target.schema)
            await journal.open()
            try:
                yield journal
            finally:
                await journal.close()
        return
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()
