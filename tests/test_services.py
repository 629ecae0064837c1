"""The test servers themselves: shared-server namespaces vanish, private servers come back."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import redis.asyncio

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


async def _schema_exists(schema: str) -> bool:
    conn = await asyncpg.connect(shared_postgres_url())
    try:
        found = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    finally:
        await conn.close()
    return found is not None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_pg_schema_is_a_namespace_of_its_own(pg_schema: PgTarget) -> None:
    async with temporary_schema(shared_postgres_url()) as other:
        assert other.schema != pg_schema.schema
        for target, rows in ((pg_schema, [1, 2]), (other, [3])):
            conn = await asyncpg.connect(target.url, server_settings={"search_path": target.schema})
            try:
                await conn.execute("CREATE TABLE item (n int)")
                await conn.executemany("INSERT INTO item VALUES ($1)", [(n,) for n in rows])
            finally:
                await conn.close()
        conn = await asyncpg.connect(
            pg_schema.url, server_settings={"search_path": pg_schema.schema}
        )
        try:
            assert [r["n"] for r in await conn.fetch("SELECT n FROM item ORDER BY n")] == [1, 2]
        finally:
            await conn.close()
    assert not await _schema_exists(other.schema)
    assert await _schema_exists(pg_schema.schema)


async def test_redis_prefix_deletes_its_keys_and_no_others(redis_prefix: RedisTarget) -> None:
    client = redis.asyncio.Redis.from_url(shared_redis_url())
    try:
        async with temporary_prefix(shared_redis_url()) as inner:
            assert inner.prefix != redis_prefix.prefix
            # More keys than one deletion batch, so the batching is exercised too.
            await client.mset({f"{inner.prefix}{n}": n for n in range(1200)})
            await client.set(f"{redis_prefix.prefix}kept", 1)
        assert [key async for key in client.scan_iter(match=f"{inner.prefix}*")] == []
        assert await client.get(f"{redis_prefix.prefix}kept") == b"1"
    finally:
        await client.aclose()


@pytest.mark.integration
async def test_private_postgres_comes_back_on_its_port(private_postgres: PrivatePostgres) -> None:
    url = private_postgres.url
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE item (n int); INSERT INTO item VALUES (1)")

    private_postgres.restart()
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()

    # Committed rows survive a crash too: SIGKILL, then crash recovery on the next start.
    conn = await asyncpg.connect(url)
    await conn.execute("INSERT INTO item VALUES (2)")
    private_postgres.kill()
    assert not _listening(private_postgres.port)
    conn.terminate()
    private_postgres.start()

    assert private_postgres.url == url
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT sum(n) FROM item") == 3
    finally:
        await conn.close()


@pytest.mark.integration
async def test_private_redis_comes_back_empty_on_its_port(private_redis: PrivateRedis) -> None:
    async with redis.asyncio.Redis.from_url(private_redis.url) as client:
        await client.set("k", "v")
    private_redis.restart()
    # A client made before the restart fails its next command (the server closed its
    # connection); a new connection reaches the same port, on a server that kept nothing.
    async with redis.asyncio.Redis.from_url(private_redis.url) as client:
        assert await client.get("k") is None
    private_redis.kill()
    assert not _listening(private_redis.port)
    private_redis.start()
    async with redis.asyncio.Redis.from_url(private_redis.url) as client:
        assert await client.ping()


@pytest.mark.integration
def test_private_servers_leave_nothing_behind() -> None:
    for server in (PrivatePostgres(), PrivateRedis()):
        with server:
            directory = server._dir
            assert _listening(server.port)
        assert not _listening(server.port)
        assert not directory.exists()
        with pytest.raises(RuntimeError, match="closed"):
            server.start()
