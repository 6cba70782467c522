-- finalize.sql: runs last in CREATE EXTENSION, after the Rust functions exist.

-- Refuse to install into a server that did not preload the library (clear error and hint).
SELECT activity_log._require_preload();

-- pg_dump keeps the trail (it is data, not configuration, but losing it on dump/restore
-- would lose the audit history).
-- The day partitions the writer creates are not members of the extension, so pg_dump keeps
-- them (definition, their own indexes and rows) anyway; the default partition is a member.
-- A restore holds the new database's writer off until it ends (capture/restore.rs).
SELECT pg_catalog.pg_extension_config_dump('activity_log.events_default', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.retention_log', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.chain_anchors', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.redactions', '');

GRANT USAGE ON SCHEMA activity_log TO PUBLIC;

CREATE VIEW activity_log.queue AS
SELECT d.datname AS database,
       q.capacity_bytes,
       q.used_bytes,
       round(100.0 * q.used_bytes / q.capacity_bytes, 2) AS fill_pct,
       q.published_records,
       q.written_records,
       q.dropped_records,
       q.batches,
       q.write_errors,
       q.overflow_waits,
       round(q.published_records / greatest(extract(epoch FROM now() - q.started_at), 1), 1) AS records_in_per_s,
       round(q.written_records / greatest(extract(epoch FROM now() - q.started_at), 1), 1) AS records_out_per_s,
       q.writer_pid,
       q.writer_state,
       q.writer_failures,
       q.last_flush_at,
       q.last_error,
       q.last_error_at,
       q.published_bytes,
       q.started_at,
       q.queued_records,
       q.max_batch_records,
       q.stats_since,
       q.oldest_unwritten_at
  FROM activity_log._queue() q
  LEFT JOIN pg_catalog.pg_database d ON d.oid = q.database_oid;

COMMENT ON VIEW activity_log.queue IS
    'One row per shared-memory ring in use: fill, counters (since stats_since), and its writer.';

CREATE VIEW activity_log.recent_activity AS
SELECT id, ts, committed_at, kind AS source, category, severity, status, sqlstate, db_user,
       actor, application_name, client_addr, command, schema_name, table_name, relations,
       query, rows, duration_ms, context, details
  FROM activity_log.events
 WHERE ts > now() - interval '24 hours' AND committed_at > now() - interval '24 hours';

COMMENT ON VIEW activity_log.recent_activity IS
    'The last 24 hours of the trail; filter with WHERE source / category / status / severity / ts.';

CREATE FUNCTION activity_log.recent(
    since    interval DEFAULT '1 hour',
    source   text DEFAULT NULL,
    category text DEFAULT NULL,
    status   text DEFAULT NULL,
    severity text DEFAULT NULL,
    max_rows integer DEFAULT 100)
RETURNS SETOF activity_log.recent_activity
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since < interval '0' THEN
        RAISE EXCEPTION 'since must not be null or negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF source IS NOT NULL AND source NOT IN ('change', 'statement', 'ddl', 'event', 'system') THEN
        RAISE EXCEPTION 'invalid source "%"', source USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: change, statement, ddl, event, system.';
    END IF;
    IF status IS NOT NULL AND status NOT IN ('success', 'error', 'gap') THEN
        RAISE EXCEPTION 'invalid status "%"', status USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: success, error, gap.';
    END IF;
    IF severity IS NOT NULL AND severity NOT IN (SELECT activity_log.severities()) THEN
        RAISE EXCEPTION 'invalid severity "%"', severity USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Valid values are: ' || (SELECT string_agg(s, ', ') FROM activity_log.severities() s) || '.';
    END IF;
    IF category IS NOT NULL AND category NOT IN (SELECT activity_log.categories()) THEN
        RAISE EXCEPTION 'invalid category "%"', category USING ERRCODE = 'invalid_parameter_value',
            HINT = 'See SELECT activity_log.categories().';
    END IF;
    RETURN QUERY
    SELECT e.id, e.ts, e.committed_at, e.kind, e.category, e.severity, e.status, e.sqlstate,
           e.db_user, e.actor, e.application_name, e.client_addr, e.command, e.schema_name,
           e.table_name, e.relations, e.query, e.rows, e.duration_ms, e.context, e.details
      FROM activity_log.events e
     WHERE e.ts > now() - since
       -- Implied (a record commits after it starts), and it is the partition key: only the
       -- partitions of the window are read.
       AND e.committed_at > now() - since
       AND (recent.source IS NULL OR e.kind = recent.source)
       AND (recent.category IS NULL OR e.category = recent.category)
       AND (recent.status IS NULL OR e.status = recent.status)
       AND (recent.severity IS NULL OR e.severity = recent.severity)
     ORDER BY e.id DESC
     LIMIT max_rows;
END
$$;

COMMENT ON FUNCTION activity_log.recent(interval, text, text, text, text, integer) IS
    'Newest records first, filtered by age, source (kind), category, status and severity.';

-- The health score: 100 minus the penalties of each factor (README, "Health score").
-- SECURITY DEFINER: any role may see how healthy auditing is, not the trail itself.
CREATE FUNCTION activity_log.health(OUT score integer, OUT status text, OUT factors jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
SET jit = off  -- anomalies() gets huge estimates; JIT would cost ~0.5 s a call
AS $$
DECLARE
    q       record;
    gaps    bigint;
    fill    numeric := 0;
    pending bigint := 0;
    penalty integer;
    list    jsonb := '[]';
    stmts   bigint;
    failed  bigint;
    rate    numeric;
    anomalous bigint;
    today   bigint := 0;
    week_avg numeric := 0;
    broken  bigint;
    missing_idx bigint;
    trail_factors jsonb := '[]';
    staged  bigint;
    oldest_staged timestamptz;
BEGIN
    SELECT * INTO q FROM activity_log.queue WHERE database = current_database();

    IF FOUND THEN
        penalty := CASE WHEN q.writer_state = 'held by a restore' THEN 20
                        WHEN q.writer_state IS DISTINCT FROM 'running' THEN 50 ELSE 0 END;
        list := list || jsonb_build_object('factor', 'writer', 'value', coalesce(q.writer_state, 'stopped'),
            'weight', 50, 'penalty', penalty,
            'reason', CASE WHEN q.writer_state = 'held by a restore'
                           THEN 'a session restoring a dump (it created the extension with check_function_bodies off) holds the writer: records wait in shared memory until that session ends'
                           WHEN penalty > 0 THEN 'no writer is running for this database: records wait in shared memory' ELSE 'writer running' END);
    ELSE
        -- More audited databases than rings: this one has none now, and its transactions
        -- wait in durable_queue for its turn (README, "Limits").
        SELECT count(*), min(staged_at) INTO staged, oldest_staged FROM activity_log.durable_queue;
        penalty := CASE WHEN oldest_staged < now() - interval '60 seconds' THEN 20 ELSE 0 END;
        list := list || jsonb_build_object('factor', 'writer', 'value', 'waiting for a ring',
            'weight', 50, 'penalty', penalty,
            'reason', CASE WHEN staged = 0 THEN 'no ring assigned now, and no transaction waits for one'
                           ELSE format('no ring assigned now (more audited databases than activity_log.max_databases): %s staged transactions wait in activity_log.durable_queue for this database''s turn, the oldest since %s', staged, oldest_staged) END);
    END IF;

    penalty := least(20, 5 * coalesce(q.writer_failures, 0));
    list := list || jsonb_build_object('factor', 'writer_restarts', 'value', coalesce(q.writer_failures, 0),
        'weight', 20, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'the writer failed and is being restarted with a back-off' ELSE 'no recent writer failures' END);

    fill := coalesce(q.fill_pct, 0);
    penalty := CASE WHEN fill >= 95 THEN 40 WHEN fill >= 75 THEN 20 WHEN fill >= 50 THEN 5 ELSE 0 END;
    list := list || jsonb_build_object('factor', 'ring_fill_pct', 'value', fill, 'weight', 40, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'the ring is filling faster than the writer drains it' ELSE 'ring has room' END);

    penalty := CASE WHEN coalesce(q.dropped_records, 0) > 0 THEN 30 ELSE 0 END;
    list := list || jsonb_build_object('factor', 'dropped_records', 'value', coalesce(q.dropped_records, 0),
        'weight', 30, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'records were dropped since this database got its ring (activity_log.overflow = drop with a full ring); each drop has a gap record in the trail' ELSE 'nothing dropped since this database got its ring' END);

    penalty := CASE WHEN coalesce(q.write_errors, 0) = 0 THEN 0
                    WHEN q.last_error_at > now() - interval '15 minutes' THEN 20 ELSE 10 END;
    list := list || jsonb_build_object('factor', 'write_errors', 'value', coalesce(q.write_errors, 0),
        'weight', 20, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'the writer failed to insert a batch (its error: last_error in activity_log.queue)' ELSE 'no write errors' END);

    pending := coalesce(q.queued_records, 0);
    penalty := CASE WHEN pending > 0 AND coalesce(q.last_flush_at, q.started_at) < now() - interval '60 seconds' THEN 20 ELSE 0 END;
    list := list || jsonb_build_object('factor', 'writer_lag', 'value', pending, 'weight', 20, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'records are waiting and the writer has not stored a batch for over a minute' ELSE 'no backlog' END);

    -- Factors read from the trail. A session holding a lock on it must not hang the health
    -- report (lock_timeout below): they are then reported as unknown.
    BEGIN
        -- Gap records of drops are not counted while the dropped_records factor shows them, nor
        -- once reset_metrics() acknowledged them; they are when the counter starts afresh for
        -- another reason (a restart, the ring handed to another database).
        SELECT count(*) INTO gaps FROM activity_log.events
         WHERE kind = 'system' AND events.status = 'gap' AND ts > now() - interval '7 days'
           AND committed_at > now() - interval '7 days'
           AND NOT (events.details ? 'dropped_records'
                    AND (coalesce(q.dropped_records, 0) > 0
                         OR (q.stats_since > q.started_at AND events.committed_at <= q.stats_since)));
        penalty := CASE WHEN gaps > 0 THEN 15 ELSE 0 END;
        trail_factors := trail_factors || jsonb_build_object('factor', 'gap_events', 'value', gaps, 'weight', 15, 'penalty', penalty,
            'reason', CASE WHEN penalty > 0 THEN 'the trail has gap records (records lost or not capturable) in the last 7 days' ELSE 'no gaps in the last 7 days' END);

        -- Failed statements in the last hour, out of all captured statements (at least 20).
        SELECT count(*), count(*) FILTER (WHERE events.status = 'error') INTO stmts, failed
          FROM activity_log.events WHERE kind IN ('statement', 'ddl') AND ts > now() - interval '1 hour'
           AND committed_at > now() - interval '1 hour';
        rate := CASE WHEN stmts >= 20 THEN round(failed::numeric / stmts, 4) ELSE 0 END;
        penalty := CASE WHEN rate >= 0.20 THEN 15 WHEN rate >= 0.05 THEN 5 ELSE 0 END;
        trail_factors := trail_factors || jsonb_build_object('factor', 'statement_error_rate', 'value', rate, 'weight', 15, 'penalty', penalty,
            'reason', CASE WHEN penalty > 0 THEN format('%s of %s statements failed in the last hour', failed, stmts)
                           ELSE 'statement errors under 5% in the last hour' END);

        -- Anomalies: the last complete hour against the 24 hours before (anomalies(), robust z-score).
        SELECT count(*) INTO anomalous
          FROM activity_log.anomalies(since => interval '1 hour', bucket => interval '1 hour', baseline => interval '24 hours');
        penalty := CASE WHEN anomalous > 0 THEN 10 ELSE 0 END;
        trail_factors := trail_factors || jsonb_build_object('factor', 'anomalies', 'value', anomalous, 'weight', 10, 'penalty', penalty,
            'reason', CASE WHEN penalty > 0 THEN 'volume or error rate of the last hour is far outside the previous 24 hours (see activity_log.anomalies())'
                           ELSE 'the last hour looks like the 24 hours before' END);

        -- Growth of the trail: today's rows against the daily average of the week before
        -- (activity_hourly), and its size on disk.
        SELECT coalesce(sum(events) FILTER (WHERE hour >= date_trunc('day', now())), 0),
               coalesce(sum(events) FILTER (WHERE hour < date_trunc('day', now())), 0) / 7.0
          INTO today, week_avg
          FROM activity_log.activity_hourly
         WHERE hour >= date_trunc('day', now()) - interval '7 days';
        penalty := CASE WHEN today > 10000 AND today > 3 * week_avg THEN 5 ELSE 0 END;
        trail_factors := trail_factors || jsonb_build_object('factor', 'trail_growth',
            'value', jsonb_build_object('rows_today', today, 'daily_avg_last_7_days', round(week_avg, 1),
                                        'total_bytes', (SELECT sum(pg_total_relation_size(relid))::bigint
                                                          FROM pg_partition_tree('activity_log.events'))),
            'weight', 5, 'penalty', penalty,
            'reason', CASE WHEN penalty > 0 THEN 'the trail grows more than 3 times faster today than in the last 7 days'
                           ELSE 'trail growth is in line with the last 7 days' END);
        list := list || trail_factors;
    EXCEPTION WHEN lock_not_available THEN
        list := list || jsonb_build_object('factor', 'trail_access', 'value', 'locked', 'weight', 10, 'penalty', 10,
            'reason', 'activity_log.events is locked by another session: the writer cannot store, and gap_events, statement_error_rate, anomalies and trail_growth are unknown (see pg_locks)');
    END;

    -- Index health: every partition of the trail has its six indexes (whatever their names),
    -- valid. pg_inherits, not pg_partition_tree(), which locks every partition.
    SELECT coalesce(sum(6 - (SELECT count(DISTINCT activity_log._trail_index_kind(i.indexrelid))
                               FROM pg_index i WHERE i.indrelid = p.inhrelid)), 0),
           (SELECT count(*) FROM pg_inherits p2 JOIN pg_index i ON i.indrelid = p2.inhrelid
             WHERE p2.inhparent = 'activity_log.events'::regclass
               AND (NOT i.indisvalid OR NOT i.indisready))
      INTO missing_idx, broken
      FROM pg_inherits p
     WHERE p.inhparent = 'activity_log.events'::regclass;
    penalty := CASE WHEN broken + missing_idx > 0 THEN 10 ELSE 0 END;
    list := list || jsonb_build_object('factor', 'index_health', 'value', jsonb_build_object('invalid', broken, 'missing', missing_idx),
        'weight', 10, 'penalty', penalty,
        'reason', CASE WHEN penalty > 0 THEN 'an index of the trail is invalid or missing: history and time queries get slow (see activity_log.index_usage)'
                       ELSE 'the trail''s indexes are in place' END);

    score := greatest(0, 100 - (SELECT sum((f->>'penalty')::int) FROM jsonb_array_elements(list) f));
    status := CASE WHEN score >= 90 THEN 'healthy' WHEN score >= 60 THEN 'degraded' ELSE 'critical' END;
    factors := list;
END
$$;

COMMENT ON FUNCTION activity_log.health() IS
    'Health score 0-100, status (healthy, degraded, critical) and the factors behind it.';

-- In public so that it works with the default search_path right after CREATE EXTENSION.
CREATE FUNCTION public.activity_health() RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('score', h.score, 'status', h.status, 'factors', h.factors)
      FROM activity_log.health() h
$$;

COMMENT ON FUNCTION public.activity_health() IS
    'activity_log health as one jsonb value: score, status and factors.';

COMMENT ON FUNCTION activity_log.log_event(text, jsonb, text, text, text, text) IS
    'Records an application event (action, details, entity, category, severity) in the current transaction.';
COMMENT ON FUNCTION activity_log.flush(interval) IS
    'Waits until every record published before the call is in activity_log.events; false on timeout.';

SELECT pg_catalog.pg_extension_config_dump('activity_log.tracked_tables', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.activity_hourly', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.activity_daily', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('activity_log.dead_letters', 'id'), '');

-- _maintain_partitions keeps the trail's day partitions (UTC): it creates those from today to
-- two days ahead and, given a retention, drops every partition whose whole day is older than
-- it (and deletes such rows from events_default), first keeping in chain_anchors the chain
-- values the remaining rows link to. Returns what it dropped. The writer calls it at start and
-- every hour, in its own transaction; lock_timeout: readers of the trail are not held up.
CREATE FUNCTION activity_log._maintain_partitions(retention interval)
RETURNS TABLE (partition text, range_from timestamptz, range_to timestamptz, rows bigint,
               first_id bigint, last_id bigint, anchors bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '1s'
AS $$
DECLARE
    day    timestamptz;
    cutoff timestamptz := now() - retention;
    part   record;
    kept   bigint;
    m      oid;
BEGIN
    FOR day IN SELECT generate_series(date_trunc('day', now()), date_trunc('day', now()) + interval '2 days', interval '1 day')
    LOOP
        partition := 'events_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('activity_log.' || partition) IS NOT NULL;
        -- No partition can be made for a day events_default already holds rows of.
        CONTINUE WHEN EXISTS (SELECT 1 FROM activity_log.events_default d
                               WHERE d.committed_at >= day AND d.committed_at < day + interval '1 day');
        BEGIN
            EXECUTE format('CREATE TABLE activity_log.%I PARTITION OF activity_log.events FOR VALUES FROM (%L) TO (%L)',
                           partition, day, day + interval '1 day');
            PERFORM activity_log._index_trail_partition(format('activity_log.%I', partition)::regclass);
        EXCEPTION WHEN invalid_object_definition THEN
            NULL;  -- overlaps a partition made by hand: that one takes the rows
        END;
    END LOOP;
    IF retention IS NULL OR retention <= interval '0' THEN
        RETURN;
    END IF;
    FOR part IN
        SELECT c.oid::regclass AS rel, c.relname::text AS name, b.v[1]::timestamptz AS lo, b.v[2]::timestamptz AS hi
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                                 'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)') AS v) b
         WHERE i.inhparent = 'activity_log.events'::regclass AND b.v IS NOT NULL
           AND b.v[2]::timestamptz <= cutoff
         ORDER BY 4
    LOOP
        EXECUTE format('SELECT count(*), min(id), max(id) FROM %s', part.rel) INTO rows, first_id, last_id;
        -- The oldest id that stays, partition by partition (each an index probe).
        kept := NULL;
        FOR m IN SELECT c.oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = 'activity_log.events'::regclass AND c.oid <> part.rel
        LOOP
            EXECUTE format('SELECT least($1, (SELECT min(id) FROM %s))', m::regclass) INTO kept USING kept;
        END LOOP;
        anchors := activity_log._keep_anchors(part.rel, 'true', kept);
        EXECUTE format('DROP TABLE %s', part.rel);
        INSERT INTO activity_log.retention_log (partition, range_from, range_to, rows, first_id, last_id)
        VALUES (part.name, part.lo, part.hi, rows, first_id, last_id);
        partition := part.name; range_from := part.lo; range_to := part.hi;
        RETURN NEXT;
    END LOOP;
    -- Rows in events_default older than the retention.
    SELECT count(*), min(d.id), max(d.id) INTO rows, first_id, last_id
      FROM activity_log.events_default d WHERE d.committed_at < cutoff;
    IF rows > 0 THEN
        SELECT min(e.id) INTO kept FROM activity_log.events e WHERE e.committed_at >= cutoff;
        anchors := activity_log._keep_anchors('activity_log.events_default', format('committed_at < %L', cutoff), kept);
        DELETE FROM activity_log.events_default d WHERE d.committed_at < cutoff;
        INSERT INTO activity_log.retention_log (partition, range_from, range_to, rows, first_id, last_id)
        VALUES ('events_default', NULL, cutoff, rows, first_id, last_id);
        partition := 'events_default'; range_from := NULL; range_to := cutoff;
        RETURN NEXT;
    END IF;
END
$$;

-- _keep_anchors saves the chain values of the rows of `rel` matching `filter` that remaining
-- rows (the oldest of which has id `kept`) may link to: the newest such row below `kept` and
-- every one above it. Without remaining rows, the newest: the next row the writer stores
-- links to it.
CREATE FUNCTION activity_log._keep_anchors(rel regclass, filter text, kept bigint)
RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids bigint[];
BEGIN
    -- The ids go into the RETENTION record: verify() honours an anchor only where a record
    -- of the chain names it.
    EXECUTE format(
        'WITH kept AS (
             SELECT id, chain FROM %1$s
              WHERE %2$s AND chain IS NOT NULL
                AND id >= (SELECT CASE WHEN $1 IS NULL THEN max(id)
                                       ELSE coalesce(max(id) FILTER (WHERE id < $1), min(id)) END
                             FROM %1$s WHERE %2$s)),
              saved AS (INSERT INTO activity_log.chain_anchors (id, chain) SELECT id, chain FROM kept
                        ON CONFLICT (id) DO NOTHING)
         SELECT coalesce(array_agg(id ORDER BY id), ''{}'') FROM kept', rel, filter) USING kept INTO ids;
    RETURN ids;
END
$$;

-- The capture's view of tracked_tables: every partition maps to its tracked root, with the
-- root's primary-key columns. SECURITY DEFINER: the capture runs as whoever writes.
CREATE FUNCTION activity_log._tracked(
    OUT relid oid, OUT root oid, OUT key_columns text[], OUT exclude_columns text[],
    OUT has_foreign_partition boolean, OUT durable boolean)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off  -- pg_partition_tree's row estimate would otherwise JIT-compile this (~150 ms)
AS $$
    SELECT p.relid::oid, t.relid::oid,
           coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                       FROM pg_index i
                       CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE i.indrelid = t.relid AND i.indisprimary), '{}'),
           t.exclude_columns,
           EXISTS (SELECT 1 FROM pg_partition_tree(t.relid) x JOIN pg_class c ON c.oid = x.relid
                    WHERE c.relkind = 'f'),
           t.durability = 'sync'
      FROM activity_log.tracked_tables t
     CROSS JOIN LATERAL (SELECT t.relid
                         UNION
                         SELECT pt.relid FROM pg_partition_tree(t.relid) pt) p
$$;

-- Who may change what is tracked: the table's owner (or a member of the owning role, or a
-- superuser), as for CREATE TRIGGER on it. Rows of tracked_tables follow the same rule,
-- whoever writes them and however (track(), or DML by a member of activity_log_admin).
ALTER TABLE activity_log.tracked_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY tracked_tables_read ON activity_log.tracked_tables FOR SELECT USING (true);
CREATE POLICY tracked_tables_track ON activity_log.tracked_tables FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = relid) IN ('r', 'p'));
CREATE POLICY tracked_tables_change ON activity_log.tracked_tables FOR UPDATE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));
CREATE POLICY tracked_tables_untrack ON activity_log.tracked_tables FOR DELETE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));

-- The migration's state follows the same rule: only a table's owner may write the rows of that
-- table, each as itself (kept_by) and naming only a function owner it may act as; its SQL is
-- run later (by whoever rolls back) as those roles.
ALTER TABLE activity_log.migration ENABLE ROW LEVEL SECURITY;
ALTER TABLE activity_log.migration_backup ENABLE ROW LEVEL SECURITY;
CREATE POLICY migration_read ON activity_log.migration FOR SELECT USING (true);
CREATE POLICY migration_owner ON activity_log.migration FOR ALL
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));
CREATE POLICY migration_backup_read ON activity_log.migration_backup FOR SELECT USING (true);
CREATE POLICY migration_backup_keep ON activity_log.migration_backup FOR INSERT
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND kept_by = current_user::regrole AND pg_catalog.pg_has_role(function_owner, 'USAGE'));
CREATE POLICY migration_backup_change ON activity_log.migration_backup FOR UPDATE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE')
                AND pg_catalog.pg_has_role(kept_by, 'USAGE') AND pg_catalog.pg_has_role(function_owner, 'USAGE'));
CREATE POLICY migration_backup_drop ON activity_log.migration_backup FOR DELETE
    USING (pg_catalog.pg_has_role((SELECT relowner FROM pg_catalog.pg_class WHERE oid = relid), 'USAGE'));

-- _may_change_tracking refuses, with the error PostgreSQL gives for CREATE TRIGGER, a caller
-- who does not own the table; then locks it against DROP and ALTER until the transaction
-- ends, and makes sure it still exists.
CREATE FUNCTION activity_log._may_change_tracking(relation regclass, verb text)
RETURNS pg_class
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c pg_class;
BEGIN
    IF relation IS NULL THEN
        RAISE EXCEPTION 'relation must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO c FROM pg_class WHERE oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace, 'pg_toast'::regnamespace)
       OR relation::oid < 16384 THEN
        RAISE EXCEPTION 'cannot % system catalog "%"', verb, relation USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT pg_has_role(c.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', c.relname USING ERRCODE = 'insufficient_privilege',
            HINT = format('Only the owner of a table (or a superuser) may %s it, as for CREATE TRIGGER on it.', verb);
    END IF;
    IF c.relkind IN ('r', 'p') THEN  -- what else there is, track() refuses
        EXECUTE format('LOCK TABLE ONLY %s IN SHARE UPDATE EXCLUSIVE MODE', relation);
    END IF;
    SELECT * INTO c FROM pg_class WHERE oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table',
            DETAIL = 'It was dropped meanwhile.';
    END IF;
    RETURN c;
END
$$;

-- track starts capturing a table's rows; validation errors name the problem and the fix.
-- What it changes is itself recorded: tracked_tables is captured like a tracked table, and
-- the writer stores its changes as system records (TRACK, RETRACK, UNTRACK).
CREATE FUNCTION activity_log.track(relation regclass, exclude_columns text[] DEFAULT '{}',
                                   durability text DEFAULT 'async')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c       pg_class;
    missing text;
    old     activity_log.tracked_tables;
    keys    text[];
    target  regclass;
    sub     name;
BEGIN
    IF exclude_columns IS NULL THEN
        RAISE EXCEPTION 'exclude_columns must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass ''{}'' to capture every column.';
    END IF;
    IF array_ndims(exclude_columns) > 1 THEN
        RAISE EXCEPTION 'exclude_columns must be a one-dimensional array of column names'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(exclude_columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'exclude_columns must not contain NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'List the names of the columns to leave out of the row images.';
    END IF;
    SELECT string_agg(quote_ident(d.x), ', ') INTO missing
      FROM (SELECT x FROM unnest(exclude_columns) x GROUP BY x HAVING count(*) > 1) d;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column % is listed more than once in exclude_columns', missing
            USING ERRCODE = 'duplicate_column';
    END IF;
    IF durability IS NULL OR durability NOT IN ('async', 'sync') THEN
        RAISE EXCEPTION 'durability must be ''async'' or ''sync'', not %', coalesce(quote_literal(durability), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
            HINT = '''sync'' writes the records inside the transaction, so that they survive any crash the transaction survives.';
    END IF;
    c := activity_log._may_change_tracking(relation, 'track');
    IF c.relnamespace = 'activity_log'::regnamespace THEN
        RAISE EXCEPTION 'cannot track activity_log''s own table "%"', relation USING ERRCODE = 'wrong_object_type';
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION 'cannot track temporary table "%"', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Temporary tables are private to their session and not audited.';
    END IF;
    IF c.relkind = 'f' THEN
        RAISE EXCEPTION 'cannot track foreign table "%"', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Changes of a foreign table happen on the remote server; audit them there.';
    END IF;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', relation USING ERRCODE = 'wrong_object_type',
            HINT = 'Only ordinary and partitioned tables can be tracked; track the tables behind a view.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
                WHERE i.inhparent = relation AND p.relkind = 'f') THEN
        RAISE EXCEPTION 'cannot track "%": it has foreign partitions', relation USING ERRCODE = 'wrong_object_type';
    END IF;
    -- Logical replication applies rows without the executor hooks row capture works through
    -- (capture/replication.rs): a subscription target's rows cannot be captured.
    SELECT p.relid, s.subname INTO target, sub
      FROM (SELECT relation AS relid UNION SELECT t.relid FROM pg_partition_tree(relation) t) p
      JOIN pg_subscription_rel r ON r.srrelid = p.relid
      JOIN pg_subscription s ON s.oid = r.srsubid
     ORDER BY p.relid <> relation, s.subname, p.relid::oid
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot track "%": %', relation,
              CASE WHEN target = relation THEN format('it is a target of subscription "%s"', sub)
                   ELSE format('its partition "%s" is a target of subscription "%s"', target, sub) END
            USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Rows applied by logical replication cannot be captured; audit the table on the publisher.';
    END IF;
    SELECT string_agg(quote_ident(x), ', ') INTO missing
      FROM unnest(exclude_columns) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = relation AND a.attname = x AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'column % of "%" does not exist', missing, relation USING ERRCODE = 'undefined_column';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO keys
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = relation AND i.indisprimary AND a.attname = ANY (exclude_columns);
    IF keys IS NOT NULL THEN
        RAISE EXCEPTION 'cannot exclude primary-key column % of "%"', array_to_string(keys, ', '), relation
            USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Changes name their row by its primary key (row_key, history()); exclude other columns.';
    END IF;
    SELECT * INTO old FROM activity_log.tracked_tables t WHERE t.relid = relation;
    IF FOUND THEN
        IF old.exclude_columns = exclude_columns AND old.durability = durability THEN
            RAISE NOTICE '"%" is already tracked that way', relation;
            RETURN;
        END IF;
        IF old.exclude_columns <> exclude_columns THEN
            RAISE NOTICE 'excluded columns of "%" change from % to %', relation, old.exclude_columns, exclude_columns;
        END IF;
        IF old.durability <> durability THEN
            RAISE NOTICE 'durability of "%" changes from % to %', relation, old.durability, durability;
        END IF;
        UPDATE activity_log.tracked_tables t
           SET exclude_columns = track.exclude_columns, durability = track.durability
         WHERE t.relid = relation;
    ELSE
        INSERT INTO activity_log.tracked_tables (relid, exclude_columns, durability)
        VALUES (relation, exclude_columns, durability);
    END IF;
    PERFORM activity_log._tracking_changed();
END
$$;

COMMENT ON FUNCTION activity_log.track(regclass, text[], text) IS
    'Starts capturing the rows of a table (old and new images), leaving out exclude_columns; durability ''sync'' stores the records inside the transaction. Only the table''s owner may.';

CREATE FUNCTION activity_log.untrack(relation regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM activity_log._may_change_tracking(relation, 'untrack');
    DELETE FROM activity_log.tracked_tables WHERE relid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation "%" is not tracked', relation USING ERRCODE = 'undefined_object',
            HINT = 'See SELECT * FROM activity_log.tracked_tables.';
    END IF;
    PERFORM activity_log._tracking_changed();
END
$$;

COMMENT ON FUNCTION activity_log.untrack(regclass) IS 'Stops capturing the rows of a table; its trail stays. Only the table''s owner may.';

-- Follows ALTER TABLE … RENAME COLUMN of an excluded column, so that the column stays
-- excluded. Called by the utility hook only, with the extension owner's rights; not
-- executable by PUBLIC (it would let anybody move a stale exclusion onto another column).
CREATE FUNCTION activity_log._rename_excluded(relation oid, old_name text, new_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- Only a rename that happened: the old name is gone and the new one exists.
    UPDATE activity_log.tracked_tables
       SET exclude_columns = array_replace(exclude_columns, old_name, new_name)
     WHERE relid = relation::regclass
       AND NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = relation AND attname = old_name AND NOT attisdropped)
       AND EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = relation AND attname = new_name AND NOT attisdropped)
$$;

-- A dropped table is no longer tracked, nor being migrated (its trigger backup goes with it:
-- there is nothing to restore the triggers on); its trail stays.
-- SECURITY DEFINER: event triggers run as whoever drops something.
CREATE FUNCTION activity_log._untrack_dropped() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM activity_log.migration m
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objid = m.relid::oid AND d.objsubid = 0;
    DELETE FROM activity_log.tracked_tables t
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objid = t.relid::oid
       AND d.objsubid = 0;  -- a dropped column is not a dropped table
    IF FOUND THEN
        PERFORM activity_log._tracking_changed();
    END IF;
END
$$;

CREATE EVENT TRIGGER activity_log_untrack_dropped ON sql_drop
    EXECUTE FUNCTION activity_log._untrack_dropped();

CREATE VIEW activity_log.changes AS
SELECT id, ts, committed_at, command AS op, schema_name, table_name, table_oid, row_key,
       old_row, new_row, changed_columns, db_user, actor, context, xid, query, details
  FROM activity_log.events
 WHERE kind = 'change';

COMMENT ON VIEW activity_log.changes IS
    'Row changes of tracked tables in trail order: applying them in id order reproduces the tables.';

CREATE FUNCTION activity_log.history(relation regclass, key jsonb)
RETURNS SETOF activity_log.changes
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_columns text[];
BEGIN
    IF relation IS NULL OR key IS NULL THEN
        RAISE EXCEPTION 'relation and key must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF jsonb_typeof(key) <> 'object' THEN
        RAISE EXCEPTION 'key must be a JSON object of key columns, for example {"id": 42}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname), '{}') INTO key_columns
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = relation AND i.indisprimary;
    IF key_columns <> '{}' AND key_columns = (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(key) k) THEN
        -- The whole primary key: indexed. A change of the key continues the story under the
        -- new key (the writer notes it as details->'new_key').
        RETURN QUERY
        SELECT * FROM activity_log.changes c
         WHERE c.table_oid = relation::oid
           AND ((jsonb_hash_extended(c.row_key, 0) = jsonb_hash_extended(key, 0) AND c.row_key = key)
                OR (c.details ? 'new_key' AND c.details->'new_key' = key))
         ORDER BY c.id;
    ELSE
        -- Part of a key, or a table without one: every change whose image contains key.
        RETURN QUERY
        SELECT * FROM activity_log.changes c
         WHERE c.table_oid = relation::oid AND (c.row_key = key OR c.new_row @> key OR c.old_row @> key)
         ORDER BY c.id;
    END IF;
END
$$;

COMMENT ON FUNCTION activity_log.history(regclass, jsonb) IS
    'One row''s story, oldest first. With the whole primary key: an index lookup that follows key changes; otherwise every change whose image contains key.';

-- redact removes values from one trail row for good (a password typed into a statement, a
-- secret in a row image): `columns` names columns of the trail (query, details, old_row,
-- new_row, row_key, context, jwt_claims, actor, application_name). The row must verify
-- first; each value becomes '<REDACTED>' (text) or "<REDACTED>" (jsonb);
-- activity_log.redactions keeps the SHA-256 of each removed value, as the chain takes it, and
-- the redaction is itself recorded in the trail (a system record REDACT, staged inside this
-- transaction) with those digests: verify() recomputes the row's link from them, so the
-- chain still proves every other value of the row. SECURITY DEFINER: only the extension's
-- owner writes the trail.
CREATE FUNCTION activity_log.redact(id bigint, columns text[], reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    allowed CONSTANT text[] := '{query,details,old_row,new_row,row_key,context,jwt_claims,actor,application_name}';
    col       text;
    checked   record;
    originals jsonb;
BEGIN
    IF id IS NULL OR columns IS NULL OR reason IS NULL THEN
        RAISE EXCEPTION 'id, columns and reason must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(reason) = '' THEN
        RAISE EXCEPTION 'reason must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Say why the values are removed; the trail keeps the reason.';
    END IF;
    IF cardinality(columns) = 0 OR array_ndims(columns) > 1 OR array_position(columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'columns must list the columns to empty, for example ''{query}'''
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH col IN ARRAY columns LOOP
        IF NOT col = ANY (allowed) THEN
            RAISE EXCEPTION 'cannot redact "%"', col USING ERRCODE = 'invalid_parameter_value',
                HINT = format('Redact one of %s.', array_to_string(allowed, ', '));
        END IF;
    END LOOP;
    IF cardinality(columns) <> (SELECT count(DISTINCT c) FROM unnest(columns) c) THEN
        RAISE EXCEPTION 'columns must not name a column twice' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM activity_log.events e WHERE e.id = redact.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trail row % does not exist', id USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM activity_log.redactions r WHERE r.id = redact.id) THEN
        RAISE EXCEPTION 'trail row % was redacted already', id USING ERRCODE = 'unique_violation',
            HINT = 'See activity_log.redactions: a row is redacted once, with every value to remove.';
    END IF;
    SELECT * INTO checked FROM activity_log.verify(id, id);
    IF NOT checked.intact THEN
        RAISE EXCEPTION 'trail row % does not verify: %', id, checked.problem USING ERRCODE = 'data_corrupted',
            HINT = 'redact() keeps the chain proving the rest of the row, so it only redacts a row the chain still proves.';
    END IF;
    originals := activity_log._column_digests(id, columns);
    FOREACH col IN ARRAY columns LOOP
        EXECUTE format('UPDATE activity_log.events SET %I = %L WHERE id = $1 AND %1$I IS NOT NULL', col,
                       CASE WHEN col IN ('query', 'actor', 'application_name') THEN '<REDACTED>' ELSE '"<REDACTED>"' END)
            USING id;
    END LOOP;
    INSERT INTO activity_log.redactions (id, columns, originals, reason)
    VALUES (id, columns, originals, reason);
END
$$;

COMMENT ON FUNCTION activity_log.redact(bigint, text[], text) IS
    'Empties columns of one trail row for good; the redaction is recorded, and verify() keeps proving the rest of the row.';

-- The function of the synthetic triggers a COPY FROM into a tracked table finds in the relation
-- cache (capture/copy_from.rs): the trigger manager calls a trigger's function by its oid. It
-- refuses to run for any other trigger, and only the extension's owner may attach it to one
-- (EXECUTE is revoked from PUBLIC below, as for every internal function).
CREATE FUNCTION activity_log._capture_rows() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'al_capture_rows';
COMMENT ON FUNCTION activity_log._capture_rows() IS
    'Internal: records the rows of a COPY FROM into a tracked table; runs only as activity_log''s own synthetic trigger.';

-- What PUBLIC may run: log_event(), flush(), verify() (which reads the trail as the caller),
-- categories(), severities() and activity_health() (health(): the score and its factors,
-- without error texts). Everything starting with an underscore is internal: the extension's
-- own SQL calls it, as its owner or as a member of the two roles below (granted there).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'activity_log'::regnamespace AND p.proname LIKE '\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION activity_log.rebuild_rollup(interval), activity_log.reset_metrics(),
    activity_log.metrics(), activity_log.metrics_text(), activity_log.redact(bigint, text[], text),
    activity_log.migration_plan() FROM PUBLIC;

-- Two roles (cluster-wide, so made once and kept by DROP EXTENSION): activity_log_reader
-- reads the trail and its views; activity_log_admin also tracks tables, migrates triggers
-- and maintains the rollup and metrics. Nobody but the writer (running as the extension's
-- owner) writes the trail: no role is granted INSERT, UPDATE, DELETE or TRUNCATE on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'activity_log_reader') THEN
        CREATE ROLE activity_log_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'activity_log_admin') THEN
        CREATE ROLE activity_log_admin NOLOGIN;
    END IF;
    IF NOT pg_catalog.pg_has_role('activity_log_admin', 'activity_log_reader', 'MEMBER') THEN
        GRANT activity_log_reader TO activity_log_admin;
    END IF;
END
$$;
GRANT SELECT ON activity_log.events, activity_log.dead_letters, activity_log.tracked_tables, activity_log.activity_hourly,
    activity_log.activity_daily, activity_log.durable_queue, activity_log.retention_log, activity_log.chain_anchors,
    activity_log.metrics_daily, activity_log.migration, activity_log.migration_backup, activity_log.redactions,
    activity_log.queue, activity_log.recent_activity, activity_log.changes, activity_log.workers,
    activity_log.index_usage
    TO activity_log_reader;
-- metrics_daily's readers run its aggregate and its p95 (functions in a view run as the reader).
GRANT EXECUTE ON FUNCTION activity_log._sum_buckets(jsonb), activity_log._bucket_p95(jsonb, bigint)
    TO activity_log_reader;
-- track(), untrack() and the migration run as the caller and keep their state in these tables.
GRANT INSERT, UPDATE, DELETE ON activity_log.tracked_tables, activity_log.migration,
    activity_log.migration_backup TO activity_log_admin;
REVOKE EXECUTE ON FUNCTION activity_log.track(regclass, text[], text), activity_log.untrack(regclass),
    activity_log.migrate_triggers(integer, regclass[], name[], boolean, boolean, boolean),
    activity_log.rollback_migration(regclass[], boolean), activity_log.migration_status(),
    activity_log.refresh_metrics(), activity_log._maintain_partitions(interval),
    activity_log._keep_anchors(regclass, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION activity_log.track(regclass, text[], text), activity_log.untrack(regclass),
    activity_log.migrate_triggers(integer, regclass[], name[], boolean, boolean, boolean),
    activity_log.rollback_migration(regclass[], boolean), activity_log.migration_status(),
    activity_log.refresh_metrics(), activity_log.rebuild_rollup(interval), activity_log.reset_metrics(),
    activity_log._reset_metrics(), activity_log._tracking_changed(), activity_log._step(text, boolean),
    activity_log._legacy_counts(regclass, jsonb), activity_log._legacy_reader(regclass, regclass, boolean),
    activity_log._compare(regclass), activity_log._comparison(regclass),
    activity_log._resolve_table(text, oid, oid, text[], text), activity_log._trigger_backup(regclass, name),
    activity_log._may_change_tracking(regclass, text), activity_log._require_migrating(regclass[], text),
    activity_log._table_and_partitions(regclass), activity_log._pick(jsonb, text[]),
    activity_log._same_image(text[], jsonb, jsonb, jsonb, jsonb), activity_log._trigger_fires(integer),
    activity_log._trigger_state("char"), activity_log._skipped_updates(oid),
    activity_log.redact(bigint, text[], text), activity_log._run_as(oid, text), activity_log._runs_user_code(oid),
    activity_log.migration_plan(), activity_log._migration_plan(text, regclass),
    activity_log._migrate_triggers(integer, regclass[], name[], boolean, boolean, boolean, text),
    activity_log._checked_reader(regclass, regclass, jsonb), activity_log._source_text(text),
    activity_log._insert_targets(text, oid, oid, text[], text), activity_log._callees(oid),
    activity_log._readers(regclass, oid[]), activity_log._system_link(oid, oid, oid[], oid, oid, oid[])
    TO activity_log_admin;
-- The analytics run as the caller (a reader) and share these checks and counts.
GRANT EXECUTE ON FUNCTION activity_log.metrics(), activity_log.metrics_text(),
    activity_log._check_window(text, interval), activity_log._counts(timestamptz, interval)
    TO activity_log_reader;

-- Start a writer for this database now rather than at the next restart.
SELECT activity_log._activate();
