"""The PostgreSQL journal's own machinery: its background loops (wake-ups from other
processes, the pending counts' refresh) and who owns them, and how it names its server."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import pytest

from services import PgTarget
from sluice.journal.base import JournalError
from sluice.journal.postgres import PostgresJournal
from sluice.journal.postgres.connection import RETRYABLE, safe_url
from sluice.model import IdGenerator, Message, Priority

TENANT = "acme"
LOOPS = {"journal-pending", "journal-listen"}

_ids = IdGenerator(node=7)


def loop_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name() in LOOPS}


def message(channel: str, **fields: Any) -> Message:
    return Message(_ids.next(), TENANT, channel, "+15550001", "hello", **fields)


async def test_close_stops_the_background_loops_and_open_starts_them_again(
    pg_schema: PgTarget,
) -> None:
    journal = PostgresJournal(pg_schema.url, schema=pg_schema.schema)
    before = loop_tasks()
    for _ in range(2):
        await journal.open()
        running = loop_tasks() - before
        assert {t.get_name() for t in running} == LOOPS
        await journal.close()
        assert all(t.done() for t in running)
        assert loop_tasks() - before == set()


async def test_an_insert_wakes_the_watchers_of_another_process(pg_schema: PgTarget) -> None:
    # Schemas of one database share the wake-up channel: a channel of its own keeps this test
    # deaf to the others'.
    channel = f"web-{secrets.token_hex(4)}"
    writer = PostgresJournal(pg_schema.url, schema=pg_schema.schema)
    reader = PostgresJournal(pg_schema.url, schema=pg_schema.schema)
    heard: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    reader.watch_due(lambda c, urgent: heard.put_nowait((c, urgent)) if c == channel else None)
    await writer.open()
    await reader.open()
    try:
        # The reader's listening connection comes up after open(): insert until it hears.
        for _ in range(50):
            await writer.insert(TENANT, [message(channel, priority=Priority.URGENT)])
            try:
                wake = await asyncio.wait_for(heard.get(), 0.2)
            except TimeoutError:
                continue
            if wake[1]:
                break
        else:
            pytest.fail("the reader never heard of an urgent insert")
        assert wake == (channel, True)
    finally:
        await reader.close()
        await writer.close()


async def test_a_crash_of_a_background_loop_reaches_the_task_that_opened_the_journal(
    pg_schema: PgTarget,
) -> None:
    journal = PostgresJournal(pg_schema.url, schema=pg_schema.schema)
    await journal.open()
    await journal.insert(TENANT, [message("web")])
    await journal.close()

    def broken(channel: str, urgent: bool) -> None:
        raise RuntimeError("a watcher that fails")

    # On connecting, the listener wakes the watchers of every channel with pending messages.
    journal.watch_due(broken)
    before = loop_tasks()

    async def owner() -> None:
        await journal.open()
        try:
            await asyncio.sleep(30)  # until the crash cancels it
        finally:
            await journal.close()

    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(owner(), 10)
    assert [type(e) for e in caught.value.exceptions] == [RuntimeError]
    assert loop_tasks() - before == set()
    with pytest.raises(JournalError, match="not open"):
        await journal.get(TENANT, 1)


def test_a_lost_connection_is_retried_and_a_failed_statement_is_not() -> None:
    assert issubclass(asyncpg.AdminShutdownError, RETRYABLE)
    assert issubclass(ConnectionResetError, RETRYABLE)
    assert not issubclass(asyncpg.QueryCanceledError, RETRYABLE)  # a statement past its timeout
    assert not issubclass(asyncpg.UniqueViolationError, RETRYABLE)


def test_messages_name_the_server_without_its_password() -> None:
    assert safe_url("postgresql://sluice:s3cret@db:5432/q") == "postgresql://sluice@db:5432/q"
    assert safe_url("postgresql://127.0.0.1/q") == "postgresql://127.0.0.1/q"
