"""The journal's tables in its own PostgreSQL schema, and their migrations.

The schema (`journal.schema`) is migrated at start, one version at a time, under an advisory
lock so that processes starting together migrate it once.
"""

from __future__ import annotations

import logging

from sluice.journal.base import JournalError
from sluice.journal.postgres.connection import PoolConnection
from sluice.model import now_ms

log = logging.getLogger("sluice.journal")

#: Each migration brings the schema from the version before it to its own number.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id bigint PRIMARY KEY,
        tenant text NOT NULL,
        channel text NOT NULL,
        recipient text NOT NULL,
        sender text,
        body text NOT NULL,
        priority smallint NOT NULL,
        state smallint NOT NULL,
        due_at bigint NOT NULL,
        not_before bigint,
        expires_at bigint,
        callback_url text,
        metadata bytea,
        attempts integer NOT NULL DEFAULT 0,
        lease_owner bigint,
        lease_until bigint,
        provider_id text,
        updated_at bigint NOT NULL
    );
    CREATE INDEX messages_due ON messages (channel, priority, due_at) WHERE state = 1;
    -- Leased rows are the few in flight: renewals and releases by owner scan them all.
    CREATE INDEX messages_leased ON messages (lease_until) WHERE state = 2;
    CREATE INDEX messages_expiring ON messages (expires_at)
        WHERE state = 1 AND expires_at IS NOT NULL;
    CREATE INDEX messages_recipient ON messages (tenant, recipient, id);
    CREATE TABLE events (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        message_id bigint NOT NULL,
        at bigint NOT NULL,
        state smallint NOT NULL,
        channel text,
        attempt integer,
        outcome smallint,
        provider_id text,
        latency_ms real,
        detail text
    );
    CREATE INDEX events_message ON events (message_id, seq);
    CREATE TABLE idempotency (
        tenant text NOT NULL,
        key text NOT NULL,
        digest bytea,
        ids bigint[] NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);
    -- A part of a SENT message and its receipt, whichever came first: message_id is NULL
    -- while the receipt waits for its SENT commit, delivered while the SENT waits for it.
    CREATE TABLE provider_parts (
        channel text NOT NULL,
        provider_id text NOT NULL,
        message_id bigint,
        part integer,
        parts integer,
        delivered boolean,
        detail text,
        at bigint NOT NULL,
        PRIMARY KEY (channel, provider_id)
    );
    CREATE INDEX provider_parts_message ON provider_parts (message_id)
        WHERE message_id IS NOT NULL;
    CREATE INDEX provider_parts_early ON provider_parts (at) WHERE message_id IS NULL;
    CREATE TABLE callbacks (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id bigint NOT NULL,
        url text NOT NULL,
        payload bytea NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        due_at bigint NOT NULL
    );
    CREATE INDEX callbacks_due ON callbacks (due_at);
    CREATE TABLE saved_state (
        name text PRIMARY KEY,
        data bytea NOT NULL,
        saved_at bigint NOT NULL
    );
    -- Additive counters, one row per channel and server process that wrote it.
    CREATE TABLE pending_counts (
        channel text NOT NULL,
        backend integer NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (channel, backend)
    );
    """,
    # Audiences (journal/audience.py): a topic's count of subscribers is a counter kept in
    # the transaction of every change. Names sort by code point, as in SQLite.
    """
    CREATE TABLE subscribers (
        key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant text NOT NULL,
        external_id text NOT NULL,
        data bytea NOT NULL,
        updated_at bigint NOT NULL,
        UNIQUE (tenant, external_id)
    );
    CREATE TABLE topics (
        key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant text NOT NULL,
        name text COLLATE "C" NOT NULL,
        subscribers bigint NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        UNIQUE (tenant, name)
    );
    CREATE TABLE subscriptions (
        topic bigint NOT NULL,
        subscriber bigint NOT NULL,
        PRIMARY KEY (topic, subscriber)
    );
    CREATE INDEX subscriptions_subscriber ON subscriptions (subscriber, topic);
    """,
    # Broadcasts (journal/broadcasts.py, as sqlite/broadcasts.py): one row each, and their
    # messages' counts per channel and state, which a trigger keeps with every change of a
    # broadcast message, whichever statement makes it. The trigger runs once a statement
    # over its transition tables: a claim of 1,000 ordinary messages pays one scan of them.
    # Counter rows are spread over 16 slots (the server process id modulo 16), so that the
    # processes claiming and completing one broadcast's messages seldom wait for each other's
    # row; reads sum the slots.
    """
    ALTER TABLE messages ADD COLUMN broadcast bigint;
    CREATE INDEX messages_broadcast_queued ON messages (broadcast)
        WHERE state = 1 AND broadcast IS NOT NULL;
    CREATE TABLE broadcasts (
        id bigint PRIMARY KEY,
        tenant text NOT NULL,
        spec bytea NOT NULL,
        topic_keys bigint[] NOT NULL,
        status text NOT NULL,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        start_at bigint NOT NULL,
        audience bigint NOT NULL,
        topic_index integer NOT NULL DEFAULT 0,
        cursor bigint NOT NULL DEFAULT 0,
        expanded boolean NOT NULL DEFAULT false,
        examined bigint NOT NULL DEFAULT 0,
        planned bigint NOT NULL DEFAULT 0,
        suppressed jsonb NOT NULL DEFAULT '{}',
        started_at bigint NOT NULL DEFAULT 0,
        expanded_at bigint NOT NULL DEFAULT 0,
        lease_owner bigint,
        lease_until bigint
    );
    CREATE INDEX broadcasts_tenant ON broadcasts (tenant, id);
    CREATE INDEX broadcasts_to_expand ON broadcasts (start_at)
        WHERE NOT expanded AND status = 'running';
    CREATE TABLE broadcast_counts (
        broadcast bigint NOT NULL,
        channel text NOT NULL,
        state smallint NOT NULL,
        slot smallint NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (broadcast, channel, state, slot)
    );
    -- The search path of the migration (the journal's schema) is the function's whatever
    -- the session that updates messages has.
    CREATE FUNCTION count_broadcast_messages() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        -- Ordinary traffic stops here, after one pass over the rows the statement changed.
        IF NOT EXISTS (SELECT FROM old_rows WHERE broadcast IS NOT NULL) THEN
            RETURN NULL;
        END IF;
        -- In key order, so that two statements meeting in a slot lock its rows in one order.
        INSERT INTO broadcast_counts AS c (broadcast, channel, state, slot, n)
        SELECT d.broadcast, d.channel, d.state, pg_backend_pid() % 16, sum(d.n)
        FROM (SELECT * FROM old_rows WHERE broadcast IS NOT NULL) o
        JOIN new_rows w ON w.id = o.id AND (w.state <> o.state OR w.channel <> o.channel)
        CROSS JOIN LATERAL (VALUES (o.broadcast, o.channel, o.state, -1),
            (o.broadcast, w.channel, w.state, 1)) AS d(broadcast, channel, state, n)
        GROUP BY d.broadcast, d.channel, d.state
        HAVING sum(d.n) <> 0
        ORDER BY d.broadcast, d.channel, d.state
        ON CONFLICT (broadcast, channel, state, slot) DO UPDATE SET n = c.n + excluded.n;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER messages_broadcast_counts AFTER UPDATE ON messages
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_broadcast_messages();
    -- A message queued again (a retry, a lease that lapsed, a restart) while its broadcast
    -- is paused or cancelled is held like the others; the sweep cancels those of a
    -- cancelled one. The WHEN keeps ordinary traffic out of the function.
    CREATE FUNCTION hold_broadcast_message() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        IF EXISTS (SELECT FROM broadcasts WHERE id = NEW.broadcast AND status <> 'running')
        THEN
            NEW.due_at := 4611686018427387903;
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER messages_broadcast_held BEFORE UPDATE OF state ON messages
        FOR EACH ROW WHEN (NEW.state = 1 AND OLD.state <> 1 AND NEW.broadcast IS NOT NULL)
        EXECUTE FUNCTION hold_broadcast_message();
    """,
    # 4: the members a broadcast of several topics has reached, while topics remain to read
    # (a later topic's duplicates are those, not whoever follows an earlier topic now).
    """
    CREATE TABLE broadcast_reached (
        broadcast bigint NOT NULL,
        subscriber bigint NOT NULL,
        PRIMARY KEY (broadcast, subscriber)
    );
    """,
    # 5: a message queued again while its broadcast is paused is held by adding 2^62 to its
    # due time (taken off at the resume, so a retry keeps its backoff), not at one fixed time.
    """
    CREATE OR REPLACE FUNCTION hold_broadcast_message() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        IF NEW.due_at < 4611686018427387903 AND EXISTS (
            SELECT FROM broadcasts WHERE id = NEW.broadcast AND status <> 'running')
        THEN
            NEW.due_at := 4611686018427387904 + NEW.due_at;
        END IF;
        RETURN NEW;
    END
    $$;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: PoolConnection, schema: str) -> None:
    """Create the schema, or bring it from the version it has to SCHEMA_VERSION."""
    async with conn.transaction():
        # One process migrates; the others wait here, then find nothing to do.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('sluice.migrate.' || $1))", schema
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, "
            "applied_at bigint NOT NULL)"
        )
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal schema version {version} is newer than this Sluice ({SCHEMA_VERSION})"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                number,
                now_ms(),
            )
            log.info("journal schema %s migrated to version %d", schema, number)
