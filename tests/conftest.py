"""Fixtures for tests on real PostgreSQL and Redis servers (tests/services.py has the servers).

On the shared servers a test gets a namespace of its own that is removed afterwards:
``pg_schema`` (a schema) and ``redis_prefix`` (a key prefix). A test that restarts or kills a
server takes ``private_postgres`` or ``private_redis`` and marks itself ``integration``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from services import (
    PgTarget,
    PrivatePostgres,
    PrivateRedis,
    RedisTarget,
    shared_postgres_url,
    shared_redis_url,
    temporary_prefix,
    temporary_schema,
)
from sluice.sim.smtp_sink import SmtpSink, SmtpSinkOptions


@pytest.fixture
async def pg_schema() -> AsyncIterator[PgTarget]:
    """A fresh schema ``t_<hex>`` on the shared PostgreSQL, dropped with CASCADE afterwards."""
    async with temporary_schema(shared_postgres_url()) as target:
        yield target


@pytest.fixture
async def redis_prefix() -> AsyncIterator[RedisTarget]:
    """A key prefix ``t:<hex>:`` on the shared Redis; its keys are deleted afterwards."""
    async with temporary_prefix(shared_redis_url()) as target:
        yield target


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL of the test's own; killed and removed afterwards."""
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A started Redis of the test's own; killed and removed afterwards."""
    with PrivateRedis() as server:
        yield server


@pytest.fixture
async def make_smtp_sink() -> AsyncIterator[Callable[..., Awaitable[SmtpSink]]]:
    """Starts SMTP sinks (`make_smtp_sink(**SmtpSinkOptions)`), closed afterwards."""
    sinks: list[SmtpSink] = []

    async def make(**options: Any) -> SmtpSink:
        sink = SmtpSink(SmtpSinkOptions(**options))
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.close()
