-- analytics.sql: metrics of the pipeline and analytics over the trail. Runs after the Rust
-- functions it names exist and before health.sql (whose health() reads anomalies()).

-- Metrics of this database's pipeline. SECURITY DEFINER: like health(), any role may see how
-- auditing is doing (no trail rows are shown).
CREATE FUNCTION activity_log.metrics(
    OUT database name,
    OUT queued_records bigint,
    OUT queued_bytes bigint,
    OUT capacity_bytes bigint,
    OUT fill_pct numeric,
    OUT records_in bigint,
    OUT records_out bigint,
    OUT records_in_per_s_recent numeric,
    OUT records_out_per_s_recent numeric,
    OUT records_in_per_s_avg numeric,
    OUT records_out_per_s_avg numeric,
    OUT batches bigint,
    OUT avg_batch_records numeric,
    OUT max_batch_records bigint,
    OUT dropped_records bigint,
    OUT write_errors bigint,
    OUT overflow_waits bigint,
    OUT writer_state text,
    OUT writer_pid integer,
    OUT writer_failures integer,
    OUT last_flush_at timestamptz,
    OUT oldest_unwritten_age interval,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT stats_since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT current_database()::name,
           coalesce(q.queued_records, 0), coalesce(q.used_bytes, 0), coalesce(q.capacity_bytes, 0),
           coalesce(round(100.0 * q.used_bytes / nullif(q.capacity_bytes, 0), 2), 0),
           coalesce(q.published_records, 0), coalesce(q.written_records, 0),
           round(q.recent_in_per_s::numeric, 1), round(q.recent_out_per_s::numeric, 1),
           coalesce(round(q.published_records / greatest(extract(epoch FROM now() - q.stats_since), 1), 1), 0),
           coalesce(round(q.written_records / greatest(extract(epoch FROM now() - q.stats_since), 1), 1), 0),
           coalesce(q.batches, 0),
           coalesce(round(q.written_records::numeric / nullif(q.batches, 0), 1), 0),
           coalesce(q.max_batch_records, 0),
           coalesce(q.dropped_records, 0), coalesce(q.write_errors, 0), coalesce(q.overflow_waits, 0),
           coalesce(q.writer_state, 'none'), q.writer_pid, coalesce(q.writer_failures, 0),
           q.last_flush_at,
           CASE WHEN q.oldest_unwritten_at IS NOT NULL THEN greatest(now() - q.oldest_unwritten_at, interval '0') END,
           q.last_error, q.last_error_at, q.stats_since
      FROM (SELECT 1) one
      LEFT JOIN activity_log._queue() q
        ON q.database_oid = (SELECT oid FROM pg_database WHERE datname = current_database())
$$;

COMMENT ON FUNCTION activity_log.metrics() IS
    'This database''s pipeline: queue, records in/out (recent window and average), batches, errors, drops, writer. writer_state ''none'' means nothing was ever published here.';

CREATE FUNCTION activity_log.reset_metrics() RETURNS timestamptz
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT activity_log._reset_metrics();
    SELECT stats_since FROM activity_log.metrics();
$$;

COMMENT ON FUNCTION activity_log.reset_metrics() IS
    'Starts this database''s counters (records in/out, batches, errors, drops, waits) afresh; returns the new stats_since. The queue is untouched.';

-- Prometheus text exposition (version 0.0.4) of every ring's metrics, for an exporter's
-- custom query or a scrape through any SQL-to-HTTP bridge.
CREATE FUNCTION activity_log.metrics_text() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH q AS (
        SELECT format('database="%s"',
                      replace(replace(replace(coalesce(d.datname::text, q.database_oid::text), '\', '\\'), '"', '\"'), E'\n', '\n')) AS labels,
               q.*
          FROM activity_log._queue() q
          LEFT JOIN pg_database d ON d.oid = q.database_oid
    ),
    m(name, type, help, ord) AS (VALUES
        ('activity_log_queued_records', 'gauge', 'Records published and not yet stored in the trail.', 1),
        ('activity_log_queue_bytes', 'gauge', 'Bytes of the ring in use.', 2),
        ('activity_log_queue_capacity_bytes', 'gauge', 'Size of the ring.', 3),
        ('activity_log_records_published_total', 'counter', 'Records published into the ring.', 4),
        ('activity_log_records_written_total', 'counter', 'Records stored in the trail.', 5),
        ('activity_log_records_dropped_total', 'counter', 'Records dropped (overflow = drop, or larger than the ring).', 6),
        ('activity_log_batches_total', 'counter', 'Batches the writer stored.', 7),
        ('activity_log_write_errors_total', 'counter', 'Batches that failed to store.', 8),
        ('activity_log_overflow_waits_total', 'counter', 'Commits that waited for ring space.', 9),
        ('activity_log_writer_up', 'gauge', '1 when the writer runs.', 10),
        ('activity_log_writer_failures', 'gauge', 'Consecutive failed writer runs.', 11),
        ('activity_log_oldest_unwritten_seconds', 'gauge', 'Age of the oldest committed record not yet stored (0: none).', 12),
        ('activity_log_last_flush_timestamp_seconds', 'gauge', 'When the writer last stored a batch (Unix time).', 13)),
    v AS (
        SELECT m.ord, q.labels,
               CASE m.ord
                   WHEN 1 THEN q.queued_records WHEN 2 THEN q.used_bytes WHEN 3 THEN q.capacity_bytes
                   WHEN 4 THEN q.published_records WHEN 5 THEN q.written_records
                   WHEN 6 THEN q.dropped_records WHEN 7 THEN q.batches WHEN 8 THEN q.write_errors
                   WHEN 9 THEN q.overflow_waits
                   WHEN 10 THEN (q.writer_state = 'running')::int WHEN 11 THEN q.writer_failures
                   WHEN 12 THEN coalesce(extract(epoch FROM greatest(now() - q.oldest_unwritten_at, interval '0')), 0)
                   WHEN 13 THEN coalesce(extract(epoch FROM q.last_flush_at), 0)
               END::numeric AS value
          FROM m CROSS JOIN q
    )
    SELECT coalesce(string_agg(line, E'\n' ORDER BY ord, sub, labels), '') || E'\n'
      FROM (SELECT m.ord, 0 AS sub, '' AS labels, format('# HELP %s %s', m.name, m.help) AS line FROM m
            UNION ALL
            SELECT m.ord, 1, '', format('# TYPE %s %s', m.name, m.type) FROM m
            UNION ALL
            SELECT v.ord, 2, v.labels, format('%s{%s} %s', m.name, v.labels, v.value)
              FROM v JOIN m USING (ord)) lines
$$;

COMMENT ON FUNCTION activity_log.metrics_text() IS
    'Every ring''s metrics in Prometheus text exposition format.';

-- The background processes: the launcher and one writer per audited database.
CREATE VIEW activity_log.workers AS
SELECT a.pid,
       CASE WHEN a.backend_type = 'activity_log launcher' THEN 'launcher' ELSE 'writer' END AS kind,
       a.datname AS database,
       CASE WHEN a.backend_type = 'activity_log launcher' THEN 'running' ELSE coalesce(q.writer_state, 'running') END AS state,
       a.backend_start AS started_at,
       a.wait_event,
       q.last_flush_at AS last_batch_at,
       q.batches,
       q.written_records,
       q.writer_failures AS failures,
       q.last_error,
       q.last_error_at
  FROM pg_stat_activity a
  LEFT JOIN activity_log._queue() q ON q.writer_pid = a.pid
 WHERE a.backend_type IN ('activity_log launcher', 'activity_log writer');

COMMENT ON VIEW activity_log.workers IS
    'activity_log''s background processes: state, database, last batch and last error.';

-- Scans and sizes of the trail's indexes: which ones the queries use, and what they cost.
CREATE VIEW activity_log.index_usage AS
SELECT x.kind AS index_name,
       min(pg_get_indexdef(x.indexrelid)) FILTER (WHERE x.part = 'activity_log.events_default'::regclass) AS definition,
       coalesce(sum(s.idx_scan), 0)::bigint AS scans,
       coalesce(sum(s.idx_tup_read), 0)::bigint AS tuples_read,
       coalesce(sum(s.idx_tup_fetch), 0)::bigint AS tuples_fetched,
       coalesce(sum(pg_relation_size(x.indexrelid)), 0)::bigint AS size_bytes,
       pg_size_pretty(coalesce(sum(pg_relation_size(x.indexrelid)), 0)) AS size,
       bool_and(x.indisvalid) AS valid
  FROM (SELECT p.relid AS part, i.indexrelid, i.indisvalid,
               activity_log._trail_index_kind(i.indexrelid) AS kind
          FROM pg_partition_tree('activity_log.events') p
          JOIN pg_index i ON i.indrelid = p.relid
         WHERE p.isleaf) x
  LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = x.indexrelid
 WHERE x.kind IS NOT NULL
 GROUP BY x.kind;

COMMENT ON VIEW activity_log.index_usage IS
    'Index scans, tuples and sizes of activity_log.events'' indexes (each partition has its own set), summed over the partitions.';

-- _check_window refuses NULL, negative and zero intervals with a clear error.
CREATE FUNCTION activity_log._check_window(name text, value interval) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be null', name USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF value <= interval '0' THEN
        RAISE EXCEPTION '% must be a positive interval, not %', name, value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- rebuild_rollup recomputes activity_hourly from the trail (after a restore, or after rows
-- were added to the trail by hand); since: only the hours after now() - since.
CREATE FUNCTION activity_log.rebuild_rollup(since interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first timestamptz := '-infinity';
    n     bigint;
BEGIN
    IF since IS NOT NULL THEN
        PERFORM activity_log._check_window('since', since);
        first := date_bin('1 hour', now() - since, timestamptz '2000-01-01 00:00:00+00');
    END IF;
    PERFORM activity_log._require_read_committed('rebuild_rollup()');
    -- One at a time, and no merge of the writer's meanwhile; its inserts go on.
    PERFORM pg_advisory_xact_lock('activity_log.activity_daily'::regclass::oid::int, 0);
    -- Replaces the rows of those hours this statement's snapshot sees with what the same
    -- snapshot of the trail says: a batch the writer stores after it is in neither, and the
    -- writer adds it.
    WITH replaced AS (DELETE FROM activity_log.activity_hourly WHERE hour >= first RETURNING 1)
    INSERT INTO activity_log.activity_hourly (hour, kind, status, events)
    SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'), kind, status, count(*)
      FROM activity_log.events WHERE ts >= first AND committed_at >= first  -- see recent()
     GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION activity_log.rebuild_rollup(interval) IS
    'Recomputes activity_log.activity_hourly from the trail (all of it, or the hours after now() - since) while the writer goes on; returns the rows written.';

-- _counts: records per bucket from first on — from the hourly rollup when the bucket is a
-- whole number of hours (a few hundred rows), else from the trail itself.
CREATE FUNCTION activity_log._counts(first timestamptz, bucket interval,
    OUT b timestamptz, OUT events bigint, OUT changes bigint, OUT statements bigint,
    OUT app_events bigint, OUT system bigint, OUT errors bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    IF extract(epoch FROM bucket)::numeric % 3600 = 0 THEN
        RETURN QUERY
        SELECT date_bin(bucket, h.hour, timestamptz '2000-01-01 00:00:00+00'), sum(h.events)::bigint,
               coalesce(sum(h.events) FILTER (WHERE h.kind = 'change'), 0)::bigint,
               coalesce(sum(h.events) FILTER (WHERE h.kind IN ('statement', 'ddl')), 0)::bigint,
               coalesce(sum(h.events) FILTER (WHERE h.kind = 'event'), 0)::bigint,
               coalesce(sum(h.events) FILTER (WHERE h.kind = 'system'), 0)::bigint,
               coalesce(sum(h.events) FILTER (WHERE h.status = 'error'), 0)::bigint
          FROM activity_log.activity_hourly h WHERE h.hour >= first GROUP BY 1;
    ELSE
        RETURN QUERY
        SELECT date_bin(bucket, e.ts, timestamptz '2000-01-01 00:00:00+00'), count(*),
               count(*) FILTER (WHERE e.kind = 'change'),
               count(*) FILTER (WHERE e.kind IN ('statement', 'ddl')),
               count(*) FILTER (WHERE e.kind = 'event'),
               count(*) FILTER (WHERE e.kind = 'system'),
               count(*) FILTER (WHERE e.status = 'error')
          FROM activity_log.events e WHERE e.ts >= first AND e.committed_at >= first GROUP BY 1;
    END IF;
END
$$;

-- Activity over time, in buckets (empty buckets included): volume by kind, errors, error rate.
CREATE FUNCTION activity_log.trend(since interval DEFAULT '24 hours', bucket interval DEFAULT '1 hour')
RETURNS TABLE (bucket_start timestamptz, events bigint, changes bigint, statements bigint,
               app_events bigint, errors bigint, error_rate numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
DECLARE
    first timestamptz;
BEGIN
    PERFORM activity_log._check_window('since', since);
    PERFORM activity_log._check_window('bucket', bucket);
    IF extract(epoch FROM since) / extract(epoch FROM bucket) > 10000 THEN
        RAISE EXCEPTION 'too many buckets: % / % is more than 10000', since, bucket
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a larger bucket or a shorter window.';
    END IF;
    first := date_bin(bucket, now() - since, timestamptz '2000-01-01 00:00:00+00');
    RETURN QUERY
    SELECT g.b, coalesce(c.events, 0), coalesce(c.changes, 0), coalesce(c.statements, 0),
           coalesce(c.app_events, 0), coalesce(c.errors, 0),
           coalesce(round(c.errors::numeric / nullif(c.events, 0), 4), 0)
      FROM generate_series(first, now(), bucket) g(b)
      LEFT JOIN activity_log._counts(first, bucket) c ON c.b = g.b
     ORDER BY g.b;
END
$$;

COMMENT ON FUNCTION activity_log.trend(interval, interval) IS
    'Volume and errors per time bucket over a window, empty buckets included.';

-- Patterns: when activity happens (hour of day, day of week), averaged over a window.
CREATE FUNCTION activity_log.hourly_pattern(since interval DEFAULT '30 days')
RETURNS TABLE (hour_of_day integer, events bigint, errors bigint, error_rate numeric, avg_events_per_day numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
BEGIN
    PERFORM activity_log._check_window('since', since);
    RETURN QUERY
    SELECT g.h, coalesce(c.events, 0), coalesce(c.errors, 0),
           coalesce(round(c.errors::numeric / nullif(c.events, 0), 4), 0),
           round(coalesce(c.events, 0) / greatest(extract(epoch FROM since) / 86400, 1)::numeric, 2)
      FROM generate_series(0, 23) g(h)
      LEFT JOIN (SELECT extract(hour FROM r.hour)::int AS h, sum(r.events)::bigint AS events,
                        coalesce(sum(r.events) FILTER (WHERE r.status = 'error'), 0)::bigint AS errors
                   FROM activity_log.activity_hourly r WHERE r.hour > now() - since GROUP BY 1) c ON c.h = g.h
     ORDER BY g.h;
END
$$;

COMMENT ON FUNCTION activity_log.hourly_pattern(interval) IS
    'Activity by hour of day (server time zone) over a window.';

CREATE FUNCTION activity_log.daily_pattern(since interval DEFAULT '90 days')
RETURNS TABLE (day_of_week integer, day_name text, events bigint, errors bigint, error_rate numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
BEGIN
    PERFORM activity_log._check_window('since', since);
    RETURN QUERY
    SELECT g.d, (ARRAY['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'])[g.d + 1],
           coalesce(c.events, 0), coalesce(c.errors, 0),
           coalesce(round(c.errors::numeric / nullif(c.events, 0), 4), 0)
      FROM generate_series(0, 6) g(d)
      LEFT JOIN (SELECT extract(dow FROM r.hour)::int AS d, sum(r.events)::bigint AS events,
                        coalesce(sum(r.events) FILTER (WHERE r.status = 'error'), 0)::bigint AS errors
                   FROM activity_log.activity_hourly r WHERE r.hour > now() - since GROUP BY 1) c ON c.d = g.d
     ORDER BY g.d;
END
$$;

COMMENT ON FUNCTION activity_log.daily_pattern(interval) IS
    'Activity by day of week (0 = Sunday) over a window.';

-- Who did what: per database user and application actor. One pass over the window (issue 31:
-- the rows of a window read twice were materialized, 393 ms on a trail of 10 M rows): its rows
-- are counted per user, actor and table, and each user's row is rolled up from that small
-- result. A user's table rows rank first (false sorts before true: p.tbl IS NULL), so their
-- row_number is their rank among the tables, as before; sum() of counts is a numeric of scale
-- 0, as count()::numeric was, so success_rate keeps its value and scale.
CREATE FUNCTION activity_log.user_summary(since interval DEFAULT '30 days')
RETURNS TABLE (db_user text, actor text, events bigint, errors bigint, success_rate numeric,
               first_seen timestamptz, last_seen timestamptz, top_tables text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
BEGIN
    PERFORM activity_log._check_window('since', since);
    RETURN QUERY
    WITH per_table AS (
        SELECT e.db_user AS u, e.actor AS a, e.schema_name AS sch, e.table_name AS tbl, count(*) AS n,
               count(*) FILTER (WHERE e.status = 'error') AS n_error,
               count(*) FILTER (WHERE e.status = 'success') AS n_success,
               min(e.ts) AS first_ts, max(e.ts) AS last_ts
          FROM activity_log.events e
         WHERE e.ts > now() - since AND e.committed_at > now() - since AND e.kind <> 'system'
         GROUP BY e.db_user, e.actor, e.schema_name, e.table_name
    ),
    ranked AS (
        SELECT p.*, quote_ident(p.sch) || '.' || quote_ident(p.tbl) AS name,
               row_number() OVER (PARTITION BY p.u, p.a
                                  ORDER BY p.tbl IS NULL, p.n DESC, quote_ident(p.sch) || '.' || quote_ident(p.tbl)) AS rank
          FROM per_table p
    )
    SELECT r.u, r.a, sum(r.n)::bigint, sum(r.n_error)::bigint,
           round(sum(r.n_success) / sum(r.n), 4),
           min(r.first_ts), max(r.last_ts),
           array_agg(r.name ORDER BY r.rank) FILTER (WHERE r.tbl IS NOT NULL AND r.rank <= 5)
      FROM ranked r
     GROUP BY r.u, r.a
     ORDER BY sum(r.n) DESC, r.u, r.a;
END
$$;

COMMENT ON FUNCTION activity_log.user_summary(interval) IS
    'Per database user and actor: activity, errors, success rate, first/last seen, the 5 most changed tables.';

-- Anomalies: buckets of the recent window whose volume or error rate lies far outside the
-- trailing baseline. Method (README, "Anomalies"): for each recent bucket, the baseline is the
-- buckets of the `baseline` interval before it; the robust z-score is
-- 0.6745 * (x - median) / MAD (median absolute deviation). A bucket is anomalous when
-- |z| > threshold (3.5, Iglewicz and Hoaglin) and, for volume, it differs from the median by at
-- least min_events (so that a quiet system is not flagged for a handful of events). When the
-- MAD is 0 (a flat baseline), any bucket that passes the min_events test counts. A bucket is
-- judged only when it is complete and the trail reaches back over its whole baseline (a new
-- trail has no normal).
CREATE FUNCTION activity_log.anomalies(
    since     interval DEFAULT '24 hours',
    bucket    interval DEFAULT '1 hour',
    baseline  interval DEFAULT '7 days',
    threshold double precision DEFAULT 3.5,
    min_events integer DEFAULT 10)
RETURNS TABLE (bucket_start timestamptz, metric text, value numeric, baseline_median numeric,
               baseline_mad numeric, robust_z numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- bucket arithmetic gets huge estimates; JIT would cost ~0.5 s a call
AS $$
DECLARE
    first timestamptz;
BEGIN
    PERFORM activity_log._check_window('since', since);
    PERFORM activity_log._check_window('bucket', bucket);
    PERFORM activity_log._check_window('baseline', baseline);
    IF threshold IS NULL OR threshold <= 0 THEN
        RAISE EXCEPTION 'threshold must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF min_events IS NULL OR min_events < 0 THEN
        RAISE EXCEPTION 'min_events must not be null or negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF extract(epoch FROM since + baseline) / extract(epoch FROM bucket) > 10000 THEN
        RAISE EXCEPTION 'too many buckets: (% + %) / % is more than 10000', since, baseline, bucket
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a larger bucket or shorter windows.';
    END IF;
    first := date_bin(bucket, now() - since - baseline, timestamptz '2000-01-01 00:00:00+00');
    RETURN QUERY
    WITH buckets AS (
        SELECT g.b, coalesce(c.events, 0)::numeric AS events,
               coalesce(round(c.errors::numeric / nullif(c.events, 0), 4), 0) AS error_rate
          FROM generate_series(first, now(), bucket) g(b)
          LEFT JOIN (SELECT x.b, x.events - x.system AS events, x.errors
                       FROM activity_log._counts(first, bucket) x) c ON c.b = g.b
    ),
    series AS (
        SELECT b, 'events' AS metric, events AS value FROM buckets
        UNION ALL
        SELECT b, 'error_rate', error_rate FROM buckets
    ),
    scored AS (
        SELECT s.b, s.metric, s.value, m.median,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(h.value - m.median))::numeric
                  FROM series h WHERE h.metric = s.metric AND h.b >= s.b - baseline AND h.b < s.b) AS mad
          FROM series s
          CROSS JOIN LATERAL (
              SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY h.value)::numeric AS median
                FROM series h WHERE h.metric = s.metric AND h.b >= s.b - baseline AND h.b < s.b) m
         WHERE s.b >= date_bin(bucket, now() - since, timestamptz '2000-01-01 00:00:00+00')
           AND s.b + bucket <= now()  -- complete buckets only: a bucket still filling looks quiet
    )
    SELECT s.b, s.metric, s.value, round(s.median, 4), round(s.mad, 4),
           CASE WHEN s.mad > 0 THEN round(0.6745 * (s.value - s.median) / s.mad, 2) END
      FROM scored s
     WHERE s.median IS NOT NULL
       AND s.b - baseline >= (SELECT min(r.hour) FROM activity_log.activity_hourly r)
       AND (s.metric <> 'events' OR abs(s.value - s.median) >= min_events)
       AND s.value <> s.median
       AND (s.mad = 0 OR abs(0.6745 * (s.value - s.median) / s.mad) > threshold)
     ORDER BY s.b, s.metric;
END
$$;

COMMENT ON FUNCTION activity_log.anomalies(interval, interval, interval, double precision, integer) IS
    'Recent buckets whose volume or error rate lies far outside the trailing baseline (robust z-score, median/MAD).';

-- Daily rollup for dashboards: per day (UTC, like the trail's partitions and the hourly
-- rollup), kind, category and status. The writer adds each batch's rows in the batch's own
-- transaction (worker/rollup.rs), so the rollup costs a statement per batch and never a pass
-- over the trail. Durations are kept as a count, a sum and a histogram, from which
-- metrics_daily derives the average and the p95: sums, so that batches add up. Bucket k of
-- duration_buckets counts the durations in (e^(0.02(k-1)), e^(0.02k)] ms, bucket -1000 those
-- of zero; the middle of a bucket is within 1 % of every duration in it.
--
-- A key may have several rows, which add up, as in activity_hourly: each batch inserts its
-- own and never updates one, so that nothing — refresh_metrics(), a transaction someone left
-- open after it — can make the writer wait on a lock here. The writer merges the rows of the
-- days it added to every few seconds (_compact_rollups), skipping rows somebody holds.
CREATE TABLE activity_log.activity_daily (
    day              timestamptz NOT NULL,
    kind             text NOT NULL,
    category         text NOT NULL,
    status           text NOT NULL,
    events           bigint NOT NULL,
    durations        bigint NOT NULL,
    duration_sum_ms  numeric NOT NULL,
    duration_buckets jsonb NOT NULL
);
CREATE INDEX activity_daily_day_idx ON activity_log.activity_daily (day);

COMMENT ON TABLE activity_log.activity_daily IS
    'Trail records per day (UTC), kind, category and status, with their durations as a count, a sum and a histogram (bucket k: durations in (e^(0.02(k-1)), e^(0.02k)] ms; -1000: zero); the rows of a key add up. Kept by the writer; activity_log.refresh_metrics() recomputes it. Read it through activity_log.metrics_daily.';

-- _sum_buckets adds histograms (its step, _add_buckets, and _bucket_p95 are in Rust:
-- worker/rollup.rs).
CREATE AGGREGATE activity_log._sum_buckets(jsonb) (
    SFUNC = activity_log._add_buckets,
    STYPE = jsonb,
    INITCOND = '{}'
);

-- _compact_rollups merges the rows of each key of both rollups from since on (the hours
-- from since, the days from since's) that has several, skipping rows another transaction
-- holds: it never waits. Not while refresh_metrics() or rebuild_rollup() runs (they hold the
-- advisory lock and replace the rows).
CREATE FUNCTION activity_log._compact_rollups(since timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock('activity_log.activity_daily'::regclass::oid::int, 0) THEN
        RETURN;
    END IF;
    WITH merged AS (
        DELETE FROM activity_log.activity_hourly h
         WHERE h.ctid = ANY (ARRAY(
                   SELECT ctid FROM activity_log.activity_hourly
                    WHERE hour >= since
                      AND (hour, kind, status) IN (SELECT hour, kind, status FROM activity_log.activity_hourly
                                                    WHERE hour >= since GROUP BY 1, 2, 3 HAVING count(*) > 1)
                      FOR UPDATE SKIP LOCKED))
        RETURNING h.*)
    INSERT INTO activity_log.activity_hourly
    SELECT hour, kind, status, sum(events) FROM merged GROUP BY 1, 2, 3 HAVING sum(events) <> 0;
    WITH merged AS (
        DELETE FROM activity_log.activity_daily d
         WHERE d.ctid = ANY (ARRAY(
                   SELECT ctid FROM activity_log.activity_daily
                    WHERE day >= date_trunc('day', since, 'UTC')
                      AND (day, kind, category, status) IN (
                          SELECT day, kind, category, status FROM activity_log.activity_daily
                           WHERE day >= date_trunc('day', since, 'UTC') GROUP BY 1, 2, 3, 4 HAVING count(*) > 1)
                      FOR UPDATE SKIP LOCKED))
        RETURNING d.*)
    INSERT INTO activity_log.activity_daily
    SELECT day, kind, category, status, sum(events), sum(durations), sum(duration_sum_ms),
           activity_log._sum_buckets(duration_buckets)
      FROM merged
     GROUP BY 1, 2, 3, 4
    HAVING sum(events) <> 0;
END
$$;

-- _require_read_committed: refresh_metrics() and rebuild_rollup() replace the rollups' rows
-- with what one statement's snapshot of the trail says; in an older snapshot, batches stored
-- since would be counted twice.
CREATE FUNCTION activity_log._require_read_committed(what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% must run at the READ COMMITTED isolation level', what
              USING ERRCODE = 'active_sql_transaction',
                    HINT = 'Run it in its own transaction, or after SET TRANSACTION ISOLATION LEVEL READ COMMITTED.';
    END IF;
END
$$;

-- The p95 is the middle of the bucket holding the duration percentile_disc(0.95) picks (the
-- ceil(0.95 n)-th smallest): within 1 % of it.
CREATE VIEW activity_log.metrics_daily AS
SELECT d.day, d.kind, d.category, d.status, d.events,
       CASE WHEN d.status = 'error' THEN 1.0000 ELSE 0.0000 END AS error_rate,
       round(d.duration_sum_ms / nullif(d.durations, 0), 3) AS avg_duration_ms,
       round(activity_log._bucket_p95(d.duration_buckets, d.durations)::numeric, 3) AS p95_duration_ms
  FROM (SELECT day, kind, category, status, sum(events)::bigint AS events,
               sum(durations)::bigint AS durations, sum(duration_sum_ms) AS duration_sum_ms,
               activity_log._sum_buckets(duration_buckets) AS duration_buckets
          FROM activity_log.activity_daily
         GROUP BY 1, 2, 3, 4
        HAVING sum(events) <> 0) d;

COMMENT ON VIEW activity_log.metrics_daily IS
    'Per day (UTC), kind, category and status: events, error rate, average and p95 duration (ms; the p95 within 1 %). Kept by the writer as it stores rows; activity_log.refresh_metrics() recomputes it from the trail.';

CREATE FUNCTION activity_log.refresh_metrics() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM activity_log._require_read_committed('refresh_metrics()');
    -- One at a time, and no merge of the writer's meanwhile; its inserts go on.
    PERFORM pg_advisory_xact_lock('activity_log.activity_daily'::regclass::oid::int, 0);
    -- Replaces the rows this statement's snapshot sees with what the same snapshot of the
    -- trail says: a batch the writer stores after it is in neither, and the writer adds it.
    WITH replaced AS (DELETE FROM activity_log.activity_daily RETURNING 1),
         per_bucket AS (
        SELECT date_trunc('day', e.ts, 'UTC') AS day, e.kind, e.category, e.status,
               activity_log._duration_bucket(e.duration_ms) AS bucket,
               count(*) AS events, count(e.duration_ms) AS durations,
               coalesce(sum(e.duration_ms::numeric), 0) AS duration_sum_ms
          FROM activity_log.events e
         GROUP BY 1, 2, 3, 4, 5)
    INSERT INTO activity_log.activity_daily
    SELECT day, kind, category, status, sum(events), sum(durations), sum(duration_sum_ms),
           coalesce(jsonb_object_agg(bucket, durations) FILTER (WHERE bucket IS NOT NULL), '{}')
      FROM per_bucket
     GROUP BY 1, 2, 3, 4;
    RETURN now();
END
$$;

COMMENT ON FUNCTION activity_log.refresh_metrics() IS
    'Recomputes activity_log.metrics_daily from the trail: reads the whole trail (about 10 s for 10 million rows) while the writer goes on. Needed only after rows were added to, changed in or removed from the trail by hand; the writer keeps it for the rows it stores.';
