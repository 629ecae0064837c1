"""The SQLite journal's file and its disk: damage, free space, and the WAL index's room.

- **Damage.** `check_integrity` runs `PRAGMA quick_check` at open, and a damaged file is
  refused with one line naming it and what to do. A damaged page met later fails the calls
  that touch it: `storage_error` turns SQLite's errors into `JournalError`s the callers handle
  (HTTP 503, runners wait and try again), never a raw `sqlite3.DatabaseError` that ends a task.
- **Free space.** `free_bytes` (statvfs) is probed beside the file; below the reserve, new
  messages are refused before the disk is full, and accepted again once it has room.
- **The WAL index (-shm).** SQLite maps it into memory and grows it by writing one byte at the
  end of each 4 KiB page: on a file system with 1 KiB blocks the other three blocks stay
  holes, and a store into a hole on a full disk is SIGBUS, the process dying without a word.
  `ShmRoom` allocates the file's blocks ahead of the WAL that needs them (SQLite extends the
  file only when it is shorter than it needs), so the mapping never meets a hole.

Examples:
    check_integrity(conn, path)          # raises JournalDamaged, one line
    error = storage_error(exc, path)     # a JournalError to raise, or None (a caller's mistake)
    room = ShmRoom(path); room.cover(wal_bytes)
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from sluice.journal.base import JournalDamaged, JournalError

log = logging.getLogger("sluice.journal")

#: SQLite's primary result codes (sqlite3.h) that mean the file or its disk failed.
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26
DAMAGE_CODES = frozenset({SQLITE_CORRUPT, SQLITE_NOTADB})

#: Problems quick_check lists at most (its own default is 100); the first is quoted.
QUICK_CHECK_MAX_ERRORS = 10

#: The WAL index: 32 KiB regions, each indexing 4,096 frames of one page (4 KiB) plus its
#: 24-byte header (SQLite's wal.c: WALINDEX_PGSZ, HASHTABLE_NPAGE).
SHM_REGION_BYTES = 32 * 1024
WAL_FRAMES_PER_REGION = 4096
WAL_FRAME_BYTES = 4096 + 24
#: The WAL index is allocated for this many times the WAL it must index (a group larger than
#: the WAL limit, a reader holding an old snapshot), and never less than this many regions.
SHM_HEADROOM = 4
SHM_MIN_REGIONS = 8


def damaged_message(path: Path, what: str) -> str:
    """One line: which file is damaged, how it showed, and what to do."""
    return (
        f"journal {path} is damaged ({what}): stop Sluice, keep a copy of the file with its "
        f"-wal, then recover it (sqlite3 {path} .recover | sqlite3 {path}.recovered) and point "
        "journal.path at the recovered file, or restore a backup"
    )


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged file before anything is served from it (`PRAGMA quick_check`: every
    page of every b-tree read once; the cost is in docs/benchmarks.md)."""
    try:
        rows = conn.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})").fetchall()
    except sqlite3.DatabaseError as exc:
        raise JournalDamaged(damaged_message(path, f"quick_check at start: {exc}")) from None
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    if problems:
        first = " ".join(problems[0].split())
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise JournalDamaged(damaged_message(path, f"quick_check at start: {first}{more}"))


def storage_error(exc: BaseException, path: Path) -> JournalError | None:
    """The JournalError that `exc` from SQLite means, or None when it is no storage fault
    (a constraint a caller broke, a misuse: those stay what they are)."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        return None
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in DAMAGE_CODES or type(exc) is sqlite3.DatabaseError:
        return JournalDamaged(damaged_message(path, str(exc)))
    if code == SQLITE_FULL:
        return JournalError(f"journal {path}: the disk is full ({exc})")
    return JournalError(f"journal {path}: {exc}")


def is_full(exc: BaseException) -> bool:
    """True when `exc` says the disk (or SQLite's page limit) is full."""
    cause = exc.__cause__ if isinstance(exc, JournalError) else exc
    return getattr(cause, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL


#: How the free space beside the journal is measured: bytes free on the file system of a path.
FreeSpace: TypeAlias = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class ShmRoom:
    """Keeps the journal's -shm file allocated ahead of the WAL it indexes (see the module)."""

    def __init__(self, db_path: Path) -> None:
        self._shm = Path(f"{db_path}-shm")
        self.allocated = 0

    def cover(self, wal_bytes: int) -> None:
        """Allocate the -shm for SHM_HEADROOM times a WAL of `wal_bytes`; raises OSError
        (ENOSPC) when the disk has no room for it."""
        frames = SHM_HEADROOM * (wal_bytes // WAL_FRAME_BYTES + 1)
        regions = max(SHM_MIN_REGIONS, -(-frames // WAL_FRAMES_PER_REGION))
        wanted = regions * SHM_REGION_BYTES
        if wanted <= self.allocated:
            return
        fd = os.open(self._shm, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, wanted)
        finally:
            os.close(fd)
        self.allocated = wanted
