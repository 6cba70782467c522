-- bootstrap.sql: the audit trail itself. Runs first in CREATE EXTENSION.
-- The schema is created by CREATE EXTENSION from the control file.

-- CACHE: the one writer takes ids 100 at a time (a restart may skip some; order holds).
-- A plain sequence: PostgreSQL 15 has no identity columns on partitioned tables.
CREATE SEQUENCE activity_log.events_id_seq CACHE 100;

-- Partitioned by day of committed_at (UTC); the writer creates the partitions two days ahead
-- and drops those older than activity_log.retention. Rows no partition takes (the writer was
-- down for days, say) go to events_default.
CREATE TABLE activity_log.events (
    id               bigint NOT NULL DEFAULT nextval('activity_log.events_id_seq'),
    ts               timestamptz NOT NULL,
    committed_at     timestamptz NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('change', 'statement', 'ddl', 'event', 'system')),
    category         text NOT NULL,
    severity         text NOT NULL,
    status           text NOT NULL CHECK (status IN ('success', 'error', 'gap')),
    sqlstate         text,
    db_user          text,
    effective_user   text,
    actor            text,
    application_name text,
    client_addr      inet,
    backend_pid      integer,
    xid              xid8,
    command          text,
    schema_name      text,
    table_name       text,
    table_oid        oid,
    relations        text[],
    row_key          jsonb,
    old_row          jsonb,
    new_row          jsonb,
    changed_columns  text[],
    query            text,
    query_id         bigint,
    rows             bigint,
    duration_ms      double precision,
    context          jsonb,
    jwt_claims       jsonb,
    details          jsonb,
    -- sha256(chain of the previous row || this row's stored bytes): see activity_log.verify().
    chain            bytea
) PARTITION BY RANGE (committed_at);
ALTER SEQUENCE activity_log.events_id_seq OWNED BY activity_log.events.id;
CREATE TABLE activity_log.events_default PARTITION OF activity_log.events DEFAULT;

COMMENT ON TABLE activity_log.events IS
    'The audit trail of this database, written by the activity_log writer in commit order (id); one partition per day.';
COMMENT ON COLUMN activity_log.events.ts IS 'When the statement started or the event was logged.';
COMMENT ON COLUMN activity_log.events.committed_at IS 'When the transaction ended (committed, or rolled back for failed statements).';
COMMENT ON COLUMN activity_log.events.kind IS 'change, statement, ddl, event (log_event) or system (gap).';
COMMENT ON COLUMN activity_log.events.status IS 'success, error (a failed statement; see sqlstate) or gap (records may be missing).';
COMMENT ON COLUMN activity_log.events.db_user IS 'The session user.';
COMMENT ON COLUMN activity_log.events.effective_user IS 'The current user when the statement ran (differs inside SECURITY DEFINER functions and after SET ROLE).';
COMMENT ON COLUMN activity_log.events.actor IS 'Application-supplied: the activity_log.actor setting.';
COMMENT ON COLUMN activity_log.events.context IS 'Application-supplied: the activity_log.context setting.';
COMMENT ON COLUMN activity_log.events.jwt_claims IS 'The request.jwt.claims setting (PostgREST), when set.';
COMMENT ON COLUMN activity_log.events.chain IS 'Hash chain: sha256 of the previous row''s chain and this row''s stored bytes; checked by activity_log.verify().';
COMMENT ON COLUMN activity_log.events.relations IS 'Relations a DML statement read or wrote, schema-qualified.';

-- Tables whose rows are captured (old and new images). Kept by pg_dump (configuration).
CREATE TABLE activity_log.tracked_tables (
    relid           regclass PRIMARY KEY,
    -- One-dimensional, no NULL element: every backend's capture reads the list.
    exclude_columns text[] NOT NULL DEFAULT '{}'
        CHECK (CASE WHEN array_ndims(exclude_columns) > 1 THEN false
                    ELSE array_position(exclude_columns, NULL) IS NULL END),
    -- 'sync': the transaction's records are staged in durable_queue inside the transaction.
    durability      text NOT NULL DEFAULT 'async' CHECK (durability IN ('async', 'sync')),
    tracked_at      timestamptz NOT NULL DEFAULT now(),
    tracked_by      text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE activity_log.tracked_tables IS
    'Tables whose row changes are captured; change it with activity_log.track() and untrack().';

-- Transactions that changed a table tracked with durability 'sync' leave their records here,
-- written by the committing backend at pre-commit (one row per transaction, the same bytes
-- the ring would carry), so that they commit or vanish with the transaction. So do
-- transactions whose records outgrow the backend's buffer: they stage them in pieces as they
-- come, each inserted by the (sub)transaction that made the records, numbered by `seq` (their
-- place in the transaction's record stream) under the transaction's `xid`. The writer moves
-- them into the trail and deletes them in one transaction. No index: the backend inserts
-- with heap_insert (no executor), and the writer reads it whole. EXTERNAL: big frames are
-- moved out of line but not compressed, which would cost the committing backend CPU.
CREATE TABLE activity_log.durable_queue (
    staged_at timestamptz NOT NULL,
    records   integer NOT NULL,
    frame     bytea NOT NULL,
    xid       xid8 NOT NULL,
    seq       bigint,  -- NULL: the transaction's only row
    -- The turn of the ring that announced the transaction: the writer stores its rows when it
    -- reaches the announcement, in the ring's order; NULL (no ring, or no room) or another
    -- turn's mark (a crash-restart since): stored by commit_lsn.
    ring_mark bigint,
    -- The commit order key: the WAL insert position when the row was staged, at pre-commit
    -- for a transaction's last (or only) row. A transaction that depends on another reaches
    -- pre-commit after that one's commit record, so its key is higher; the ring's frames carry
    -- the same key, and the writer stores both in its order (a transaction's key is that of
    -- its highest row).
    commit_lsn pg_lsn NOT NULL
);
ALTER TABLE activity_log.durable_queue ALTER COLUMN frame SET STORAGE EXTERNAL;
COMMENT ON TABLE activity_log.durable_queue IS
    'Records of committed transactions (on durability ''sync'' tables, or too large for the backend''s buffer) that the writer has not moved into activity_log.events yet.';

-- The trail's indexes belong to each partition, not to activity_log.events: a dump then
-- restores a day partition with exactly its own (made by its dumped CREATE INDEX and ADD
-- CONSTRAINT), where an index of the parent would give it a second set when it is attached.
-- _index_trail_partition makes them, for events_default here and for each day partition
-- _maintain_partitions creates. They are named after the partition, unless a name is taken
-- (a partition renamed by hand keeps its indexes' names): PostgreSQL picks one then.
-- _trail_index_kind tells them apart by what they are, not by name.
CREATE FUNCTION activity_log._index_trail_partition(part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part_name text := (SELECT relname FROM pg_class WHERE oid = part);
    kind text;
    definition text;
BEGIN
    -- id is unique across the trail (one sequence); committed_at only picks the partition.
    IF to_regclass(format('activity_log.%I', part_name || '_pkey')) IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (id)', part, part_name || '_pkey');
    ELSE
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (id)', part);
    END IF;
    FOR kind, definition IN VALUES
        -- Time-range scans of an append-only table: BRIN is tiny and matches insertion order.
        ('ts_brin', 'USING brin (ts)'),
        -- One row's history: change records by table and a hash of the key. A btree of two
        -- integers: the writer inserts into it for every change, and comparing integers costs
        -- far less than comparing jsonb keys. Not a hash index: all changes of one key land in
        -- one bucket, and a hash index walks the bucket's whole overflow chain on every insert
        -- (a pgbench branch row is changed by every tenth transaction).
        ('row_key_idx', $i$(table_oid, jsonb_hash_extended(row_key, 0)) WHERE kind = 'change'$i$),
        -- The newest changes of one table (ORDER BY id DESC LIMIT n).
        ('table_idx', '(table_oid, id) WHERE table_oid IS NOT NULL'),
        -- history() after a primary-key change: the writer notes the new key of such an UPDATE.
        ('new_key_idx', $i$USING hash ((details->'new_key')) WHERE details ? 'new_key'$i$),
        -- Gap records (rare) for the health report, without reading a week of the trail.
        ('gap_idx', $i$(ts) WHERE status = 'gap'$i$)
    LOOP
        IF to_regclass(format('activity_log.%I', part_name || '_' || kind)) IS NULL THEN
            EXECUTE format('CREATE INDEX %I ON %s %s', part_name || '_' || kind, part, definition);
        ELSE
            EXECUTE format('CREATE INDEX ON %s %s', part, definition);
        END IF;
    END LOOP;
END
$$;
SELECT activity_log._index_trail_partition('activity_log.events_default');

-- _trail_index_kind names an index of a trail partition by what it is: events_pkey,
-- events_ts_brin, events_row_key_idx, events_table_idx, events_new_key_idx or events_gap_idx
-- (NULL for any other). From the catalogs alone: deparsing an index (pg_get_indexdef) locks
-- its table, and health() must not wait for the writer.
CREATE FUNCTION activity_log._trail_index_kind(index oid) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN i.indisprimary THEN 'events_pkey'
        WHEN a.amname = 'brin' THEN 'events_ts_brin'
        WHEN a.amname = 'hash' THEN 'events_new_key_idx'
        WHEN a.amname = 'btree' AND i.indexprs IS NOT NULL THEN 'events_row_key_idx'
        WHEN a.amname = 'btree' AND i.indnatts = 2 THEN 'events_table_idx'
        WHEN a.amname = 'btree' AND i.indnatts = 1 AND i.indpred IS NOT NULL THEN 'events_gap_idx'
    END
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
     WHERE i.indexrelid = index
$$;

-- Records per hour, kind and status: the writer adds each batch's counts, so that health,
-- trends, patterns and anomalies read a few hundred rows instead of the trail.
-- activity_log.rebuild_rollup() recomputes it from the trail. A key may have several rows,
-- which add up: see activity_daily (sql/analytics.sql).
CREATE TABLE activity_log.activity_hourly (
    hour   timestamptz NOT NULL,
    kind   text NOT NULL,
    status text NOT NULL,
    events bigint NOT NULL
);
CREATE INDEX activity_hourly_hour_idx ON activity_log.activity_hourly (hour);
COMMENT ON TABLE activity_log.activity_hourly IS
    'Trail records per hour (UTC-aligned), kind and status; the rows of a key add up. Kept by the writer, rebuilt by activity_log.rebuild_rollup().';

-- Rows the trail refused (say, a record that fails a constraint someone added to the trail),
-- kept whole so that nothing is lost silently; a gap record in the trail points here. So are
-- frames the writer could not read (a durable_queue row corrupted on disk or edited by hand):
-- `frame` holds their bytes as they were, `record` their durable_queue row's other columns.
CREATE TABLE activity_log.dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    committed_at timestamptz,
    what         text NOT NULL,
    error        text NOT NULL,
    record       jsonb NOT NULL,
    frame        bytea
);
COMMENT ON TABLE activity_log.dead_letters IS
    'Trail rows the writer could not store, as jsonb of activity_log.events (jsonb_populate_record(NULL::activity_log.events, record) gives the row back); and, where frame is not null, frames it could not read, as bytes, with their durable_queue row''s other columns in record.';

-- Partitions dropped by retention (activity_log.retention), one row each.
CREATE TABLE activity_log.retention_log (
    dropped_at  timestamptz NOT NULL DEFAULT now(),
    partition   text NOT NULL,
    range_from  timestamptz,
    range_to    timestamptz,
    rows        bigint NOT NULL,
    first_id    bigint,
    last_id     bigint
);
COMMENT ON TABLE activity_log.retention_log IS
    'Trail partitions the writer dropped because they were older than activity_log.retention.';

-- The chain values of dropped rows that the remaining rows link to, so that verify() can
-- check the trail that is left: every dropped row from the newest one below the oldest
-- remaining id on (rows of two days interleave in id order around midnight).
CREATE TABLE activity_log.chain_anchors (
    id    bigint PRIMARY KEY,
    chain bytea NOT NULL
);
COMMENT ON TABLE activity_log.chain_anchors IS
    'Hash-chain values of rows dropped by retention that later rows link to; read by activity_log.verify().';

-- Values removed from the trail by activity_log.redact(): which row, which columns, the
-- SHA-256 of each value removed (as the chain takes it; null for NULL), why, who and when.
-- Each insert is captured and stored as a REDACT record in the chain, and that record is what
-- verify() recomputes a redacted row's link with. Kept by pg_dump (with the trail).
CREATE TABLE activity_log.redactions (
    id          bigint PRIMARY KEY,
    columns     text[] NOT NULL,
    originals   jsonb NOT NULL,
    reason      text NOT NULL,
    redacted_by text NOT NULL DEFAULT session_user,
    redacted_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE activity_log.redactions IS
    'Values removed from the trail with activity_log.redact(); verify() keeps proving the rest of each row.';
