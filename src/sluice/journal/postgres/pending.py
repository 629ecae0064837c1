"""Pending counts (admission control): exact across processes, without a shared hot row.

Each transaction adds its per-channel change to a row of `pending_counts` keyed by its server
process (`pg_backend_pid()`), so concurrent transactions never wait for each other's row (one
row per process made a process's inserts and outcomes queue behind each other: 1.3 ms a
transaction), and `pending()` is the sum, read every second plus this process's own changes
since. A sweep folds the rows of connections long closed into one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

import asyncpg

from sluice.journal.postgres.changes import Tx
from sluice.journal.postgres.connection import SERVER_FAULTS, PoolConnection, describe

log = logging.getLogger("sluice.journal")

#: How often the pending counts of every process are read back.
PENDING_REFRESH_SECONDS = 1.0


class PendingCounts:
    """This process's view of the pending counts: the sums last read, plus its own changes
    committed since (`add`)."""

    __slots__ = ("_local", "_read", "view")

    def __init__(self) -> None:
        self._read: dict[str, int] = {}
        self._local: Counter[str] = Counter()
        #: Channels with pending messages and how many. Readers get a fresh dict on every
        #: change, never one being changed.
        self.view: dict[str, int] = {}

    def add(self, deltas: Counter[str]) -> None:
        """Count the changes of a transaction that committed."""
        self._local.update(deltas)
        self._publish()

    def _publish(self) -> None:
        view = Counter(self._read)
        view.update(self._local)
        self.view = {k: v for k, v in view.items() if v > 0}

    async def start(self, pool: asyncpg.Pool) -> None:
        """Forget the changes of an earlier session and read the sums."""
        self._local.clear()
        await self.refresh(pool)

    async def refresh(self, pool: asyncpg.Pool) -> None:
        # The sums include every change this process committed before the read began; those
        # committed during the read are kept, perhaps counted twice until the next read.
        local = Counter(self._local)
        rows = await pool.fetch(
            "SELECT channel, sum(n)::bigint FROM pending_counts GROUP BY channel"
        )
        self._read = {channel: n for channel, n in rows}
        self._local.subtract(local)
        self._publish()

    async def run(
        self,
        pool: asyncpg.Pool,
        read_seconds: float,
        heard: Callable[[BaseException | None], None],
    ) -> None:
        """Read the sums every `PENDING_REFRESH_SECONDS`, each read within `read_seconds`; a fault
        skips one read. Tells `heard` how each read went (None: it worked), so that a server
        gone out of reach is known within a second even when nothing else asks it."""
        while True:
            await asyncio.sleep(PENDING_REFRESH_SECONDS)
            try:
                async with asyncio.timeout(read_seconds):
                    await self.refresh(pool)
            except SERVER_FAULTS as exc:
                log.debug("journal: pending counts not refreshed: %s", describe(exc))
                heard(exc)
            else:
                heard(None)


async def add_pending(conn: PoolConnection, deltas: Counter[str]) -> None:
    changed = [(channel, n) for channel, n in deltas.items() if n]
    if not changed:
        return
    await conn.execute(
        "INSERT INTO pending_counts (channel, backend, n) "
        "SELECT c, pg_backend_pid(), n FROM unnest($1::text[], $2::bigint[]) AS d(c, n) "
        "ON CONFLICT (channel, backend) DO UPDATE SET n = pending_counts.n + excluded.n",
        [c for c, _ in changed],
        [n for _, n in changed],
    )


async def op_fold_pending(conn: PoolConnection, tx: Tx) -> None:
    """Fold the other rows into this connection's (the sums stay the same), so that rows of
    connections long closed do not pile up. One process at a time."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('sluice.fold'))"):
        return
    await conn.execute(
        "WITH gone AS (DELETE FROM pending_counts WHERE backend <> pg_backend_pid() "
        "RETURNING channel, n) "
        "INSERT INTO pending_counts (channel, backend, n) "
        "SELECT channel, pg_backend_pid(), sum(n) FROM gone GROUP BY channel "
        "ON CONFLICT (channel, backend) DO UPDATE SET n = pending_counts.n + excluded.n"
    )
