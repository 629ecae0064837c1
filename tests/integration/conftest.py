"""The journal every gateway test runs on: each test runs once on SQLite, once on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from journal_backends import BACKENDS
from services import shared_postgres_url, temporary_schema


@pytest.fixture(params=BACKENDS)
async def journal_section(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """The `[journal]` table of a gateway's configuration: a file in tmp_path, or a fresh
    schema on the shared PostgreSQL (dropped afterwards)."""
    if request.param == "postgres":
        async with temporary_schema(shared_postgres_url()) as target:
            yield {"backend": "postgres", "url": target.url, "schema": target.schema}
        return
    yield {"path": str(tmp_path / "journal.db"), "synchronous": "normal"}
