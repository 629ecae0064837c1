"""How the journal reaches its server: the pool, and which faults are worth another try.

An operation that loses its connection (a server restart, a network cut, a failover) is run
again on a fresh one until `reconnect_seconds` (`RECONNECT_SECONDS` by default) have passed,
or `ingress_wait_seconds` (`INGRESS_WAIT_SECONDS`) for the calls of the edges, whose clients
time out long before 30 s; `RETRYABLE` names the errors that mean "the connection or the
server's state, not the statement", `UNREACHABLE` those that mean the server cannot be used at
all (the journal's `fault()` while they last). Every other server error fails the call at once.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

import asyncpg
import asyncpg.pool

#: How long an operation keeps trying to reach the server before it fails.
RECONNECT_SECONDS = 30.0
#: The same for an operation of the edges (insert, status read, cancel): a client hears 503
#: within a few seconds, before its own timeout, while the delivery side keeps trying.
INGRESS_WAIT_SECONDS = 3.0

#: Errors after which the operation is run again on another connection.
RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ReadOnlySQLTransactionError,  # a failover in progress: the old primary is a replica
)
#: The retryable errors that say the server cannot be used at all, rather than that this
#: transaction collided with another one.
UNREACHABLE: tuple[type[BaseException], ...] = tuple(
    error
    for error in RETRYABLE
    if error not in (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
)


class PoolExhausted(asyncio.TimeoutError):
    """No connection came free within the call's wait, every one of the pool's being in use:
    the journal is busy, not out of reach (retried like a timeout, but /readyz stays true)."""


#: Every fault of the server or of the way to it: what a background loop outlives.
SERVER_FAULTS: tuple[type[BaseException], ...] = (*RETRYABLE, asyncpg.PostgresError)

#: A connection lent by the pool, as every operation receives it.
PoolConnection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


async def create_pool(
    url: str, schema: str, size: int, statement_timeout_ms: int, timeout_seconds: float
) -> asyncpg.Pool:
    """A pool whose connections work in `schema` and cut statements off after the timeout."""
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        server_settings={
            "search_path": schema,
            "statement_timeout": str(statement_timeout_ms),
            "application_name": "sluice",
        },
        timeout=timeout_seconds,
    )


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully if the server answers within 10 s, else cut the connections."""
    try:
        await asyncio.wait_for(pool.close(), 10)
    except (TimeoutError, OSError, asyncpg.InterfaceError):
        pool.terminate()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
