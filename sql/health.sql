-- health.sql: how auditing is doing. The queue view (each ring, its counters and its writer),
-- health() (the score and its factors) and activity_health(). Runs after the Rust functions
-- behind queue and after analytics.sql (health() reads anomalies() and the rollups).

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
