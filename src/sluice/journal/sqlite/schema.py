"""The SQLite journal's file: its tables, their migrations, and how a connection opens it.

Examples:
    conn = connect(path, "FULL")
    install(conn)                  # the writer's connection, once at open
    reader = connect(path, "FULL", READER_CACHE_KIB)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sluice.journal import recipient_index
from sluice.journal.base import JournalError
from sluice.journal.sqlite import audience, broadcasts

SCHEMA_VERSION = 3
#: SQLite page cache per connection: the writer's holds the hot ends of the indexes.
WRITER_CACHE_KIB = 64 * 1024
READER_CACHE_KIB = 16 * 1024
#: WAL size (pages of 4 KiB) at which the writer checkpoints by itself: 256 MiB.
WAL_SAFETY_CHECKPOINT_PAGES = 65_536
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    sender TEXT,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    not_before INTEGER,
    expires_at INTEGER,
    callback_url TEXT,
    metadata BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner INTEGER,
    lease_until INTEGER,
    provider_id TEXT,
    updated_at INTEGER NOT NULL,
    broadcast INTEGER
);
CREATE INDEX IF NOT EXISTS messages_due
    ON messages (channel, priority, due_at) WHERE state = 1;
CREATE INDEX IF NOT EXISTS messages_leased
    ON messages (lease_until) WHERE state = 2;
CREATE INDEX IF NOT EXISTS messages_expiring
    ON messages (expires_at) WHERE state = 1 AND expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    message_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    state INTEGER NOT NULL,
    channel TEXT,
    attempt INTEGER,
    outcome INTEGER,
    provider_id TEXT,
    latency_ms REAL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    digest BLOB,
    ids BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS provider_parts (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    delivered INTEGER,
    detail TEXT,
    PRIMARY KEY (channel, provider_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS provider_parts_message ON provider_parts (message_id);
CREATE TABLE IF NOT EXISTS saved_state (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    saved_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS early_receipts (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    detail TEXT,
    at INTEGER NOT NULL,
    PRIMARY KEY (channel, provider_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS early_receipts_age ON early_receipts (at);
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_due ON callbacks (due_at);
"""


#: Milliseconds a connection waits for another one's lock before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 10_000


def connect(
    path: Path,
    synchronous: str,
    cache_kib: int = WRITER_CACHE_KIB,
    *,
    wal_limit_bytes: int | None = None,
) -> sqlite3.Connection:
    """A connection in WAL mode; the writer's passes `wal_limit_bytes`, the size the WAL is
    cut back to when SQLite starts it over (the writer's checkpoints keep it near that)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # No memory map of the database file: a page read through a map from a file the disk
    # could not extend is SIGBUS, where read() is an error the journal reports (health.py).
    conn.execute("PRAGMA mmap_size=0")
    conn.execute("PRAGMA journal_mode=WAL")
    if wal_limit_bytes is not None:
        conn.execute(f"PRAGMA journal_size_limit={wal_limit_bytes}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # Checkpoints run in their own thread (`SqliteJournal._checkpoint_loop`); the writer only
    # checkpoints itself if that thread falls this far behind.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_CHECKPOINT_PAGES}")
    return conn


def install(conn: sqlite3.Connection) -> None:
    """Create what a new journal lacks and bring an older one up to `SCHEMA_VERSION`."""
    conn.executescript(SCHEMA + recipient_index.SCHEMA + audience.SCHEMA + broadcasts.SCHEMA)
    migrate(conn)
    conn.executescript(broadcasts.ON_MESSAGES)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a journal written by an older version up to `SCHEMA_VERSION`."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"journal schema version {version} is newer than this Sluice ({SCHEMA_VERSION})"
        )
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "not_before" not in columns:  # version 1 → 2
        conn.execute("ALTER TABLE messages ADD COLUMN not_before INTEGER")
    if "broadcast" not in columns:  # version 2 → 3
        conn.execute("ALTER TABLE messages ADD COLUMN broadcast INTEGER")
