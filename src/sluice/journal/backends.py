"""The journal a configuration asks for: SQLite (embedded, one owner), its owner reached from
an edge process (`server.api_processes`), or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sluice.config import Config, JournalConfig
from sluice.journal.base import Journal
from sluice.journal.remote.client import MAX_FRAME_BYTES


def split_journal(config: Config) -> bool:
    """True when the embedded journal's owner and the edges run in processes of their own."""
    return config.journal.backend == "sqlite" and config.server.api_processes > 0


def journal_socket(config: JournalConfig) -> Path:
    """The Unix socket on which the embedded journal's owner serves the edge processes."""
    return Path(f"{config.path}.sock")


def frame_limit(config: Config) -> int:
    """The largest frame on the journal's socket, at least the client's default: a call
    carries what one request brought (re-encoded as msgpack, never larger than four times
    its JSON), a reply one page."""
    return max(MAX_FRAME_BYTES, 4 * config.limits.max_request_bytes)


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


def build_remote_journal(config: Config) -> Journal:
    """The journal of an edge process: the owner's, through its socket."""
    from sluice.journal.remote import JournalClient

    return JournalClient(
        journal_socket(config.journal),
        call_wait_seconds=config.journal.ingress_wait_seconds,
        max_frame_bytes=frame_limit(config),
    )
