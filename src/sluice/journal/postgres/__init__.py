"""The PostgreSQL journal: the same contract as the SQLite one, shared by many processes.

Every process (on any machine) opens a pool of connections to one PostgreSQL server and runs
each operation as one transaction. Batches travel as arrays (`unnest`), so an insert of 1,000
messages or a batch of 5,000 outcomes is one statement; PostgreSQL's own group commit shares
the WAL flushes of concurrent transactions.

- **Claims** and **leases** (`leases`): due rows are locked with `FOR UPDATE SKIP LOCKED`;
  a lease names its owning process, and a sweep in any process returns the messages of an
  owner that stopped renewing (it died) to the queue.
- **Wake-ups** (`wakeups`): an insert notifies every process listening; an idle worker claims
  at once instead of at its next poll.
- **Pending counts** (`pending`, admission control) are exact, without a row that concurrent
  transactions wait for.
- **Faults** (`connection`): an operation that loses its connection is run again on a fresh
  one until `RECONNECT_SECONDS` have passed. Every operation is safe to run twice: state
  changes check the state they expect, and an insert whose first commit did land finds its
  own ids and reports success.
- **Schema** (`schema`) lives in its own PostgreSQL schema (`journal.schema`) and is migrated
  at start, one version at a time, under an advisory lock so that processes starting together
  migrate it once.
- The rest of the operations: `inserts`, `outcomes`, `receipts`, `callbacks`, `reads`; the
  class that runs them all is `journal.PostgresJournal`.

Examples:
    journal = PostgresJournal("postgresql://127.0.0.1:5432/postgres", schema="sluice")
    await journal.open()
    journal.watch_due(lambda channel, urgent: runners[channel].wake(urgent))
"""

from sluice.journal.postgres.connection import RECONNECT_SECONDS
from sluice.journal.postgres.journal import PostgresJournal
from sluice.journal.postgres.leases import MAX_EXPIRE_PER_SWEEP
from sluice.journal.postgres.pending import PENDING_REFRESH_SECONDS
from sluice.journal.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from sluice.journal.postgres.wakeups import DUE_CHANNEL

__all__ = [
    "DUE_CHANNEL",
    "MAX_EXPIRE_PER_SWEEP",
    "MIGRATIONS",
    "PENDING_REFRESH_SECONDS",
    "RECONNECT_SECONDS",
    "SCHEMA_VERSION",
    "PostgresJournal",
]
