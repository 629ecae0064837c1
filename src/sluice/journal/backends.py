"""The journal a configuration asks for: SQLite (embedded, one process) or PostgreSQL."""

from __future__ import annotations

from sluice.config import JournalConfig
from sluice.journal.base import Journal


def build_journal(config: JournalConfig) -> Journal:
    if config.backend == "postgres":
        from sluice.journal.postgres import PostgresJournal

        return PostgresJournal(
            config.url,
            schema=config.schema,
            pool_size=config.pool_size,
            statement_timeout_seconds=config.statement_timeout_seconds,
            fsync_outcomes=config.fsync_outcomes,
            reconnect_seconds=config.reconnect_seconds,
            ingress_wait_seconds=config.ingress_wait_seconds,
        )
    from sluice.journal.sqlite import SqliteJournal

    return SqliteJournal(
        config.path,
        synchronous=config.synchronous,
        max_ops_per_commit=config.max_ops_per_commit,
        fsync_outcomes=config.fsync_outcomes,
        check_at_start=config.check_at_start,
        free_space_reserve_bytes=config.free_space_reserve_bytes,
        wal_limit_bytes=config.wal_limit_bytes,
    )
