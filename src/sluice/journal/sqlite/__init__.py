"""The embedded journal: SQLite in WAL mode with group commit.

One writer thread owns the write connection. Every write operation (insert, claim, complete …)
is queued to it with a future; the thread takes everything queued, runs it all in one
transaction (no savepoint per operation: each statement is a GIL hand-off), commits once, and
only then resolves the futures. Many producers therefore share one fsync, and nobody hears
"done" before the data is on disk.
Reads (status, history) run on a second connection in their own thread; WAL lets them proceed
while the writer commits.

One process owns a journal file at a time (an advisory lock beside it), so at start every
message left `sending` by a crashed predecessor is returned to the queue at once.

Warning: an operation that raises rolls back its whole group; the writer then runs each
operation of the group again, alone in a transaction of its own, so only the one that raises
fails and the others commit (one commit each, for that group). An operation must therefore be
safe to run again from the start. A failing COMMIT (disk full, I/O error) fails every
operation of the group.

The modules: `journal` (SqliteJournal, the public face that queues operations), `writer` (the
writer thread and its group commit), `schema` (the tables, their migrations, the connection
settings), the writer's operations (`inserts`, `claims`, `receipts`, `callbacks`, `upkeep`,
with `json_rows` for how their statements pass rows), and `reads` (the reader thread's). The
rows they hand to journal/rows.py are its named row types.
"""

from sluice.journal.sqlite.journal import SqliteJournal

__all__ = ["SqliteJournal"]
