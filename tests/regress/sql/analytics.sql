-- analytics: metrics, trend, patterns, per-user summaries, anomalies and the daily rollup,
-- with exact results on constructed rows.
SET activity_log.capture_statements = none;
SELECT activity_log.flush();
TRUNCATE activity_log.events, activity_log.activity_hourly;

-- The last complete hour (anomalies() judges complete buckets only); every row is placed
-- relative to it.
CREATE TEMP TABLE clock AS SELECT date_bin('1 hour', now(), timestamptz '2000-01-01') - interval '1 hour' AS h;
-- 25 quiet hours before it (the oldest one only makes the trail reach back over a full
-- 24-hour baseline): 20 records an hour — alice (actor web) changes 10 orders and
-- 5 items rows, bob runs 5 statements of which the first fails.
INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, db_user, actor,
                                 command, schema_name, table_name)
SELECT t, t, kind, 'data_change', 'info', status, who, actor, 'UPDATE', sch, tbl
  FROM clock, generate_series(1, 25) k, generate_series(0, 19) n,
       LATERAL (SELECT h - k * interval '1 hour' + n * interval '1 minute' AS t) x,
       LATERAL (SELECT CASE WHEN n < 15 THEN 'change' ELSE 'statement' END AS kind,
                       CASE WHEN n = 15 THEN 'error' ELSE 'success' END AS status,
                       CASE WHEN n < 15 THEN 'alice' ELSE 'bob' END AS who,
                       CASE WHEN n < 15 THEN 'web' END AS actor,
                       CASE WHEN n < 15 THEN 'public' END AS sch,
                       CASE WHEN n < 10 THEN 'orders' WHEN n < 15 THEN 'items' END AS tbl) y
 ORDER BY t;  -- ids in time order, as the writer assigns them
-- The last hour: a burst of 100 order changes and 100 failing statements.
INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, db_user, actor,
                                 command, schema_name, table_name)
SELECT h, h, 'change', 'data_change', 'info', 'success', 'alice', 'web', 'UPDATE', 'public', 'orders'
  FROM clock, generate_series(1, 100)
UNION ALL
SELECT h, h, 'statement', 'data_change', 'error', 'error', 'bob', NULL, 'UPDATE', NULL, NULL
  FROM clock, generate_series(1, 100);

-- Rows added by hand reach the hourly rollup through rebuild_rollup() (the writer keeps it for
-- the rows it stores).
SELECT activity_log.rebuild_rollup() AS rollup_rows;

-- trend: one row per bucket, empty ones included.
SELECT (extract(epoch FROM (SELECT h FROM clock) - bucket_start) / 3600)::int AS hours_ago,
       events, changes, statements, app_events, errors, error_rate
  FROM activity_log.trend(since => '3 hours', bucket => '1 hour');
SELECT count(*) AS buckets, sum(events) AS events FROM activity_log.trend('2 days', '1 hour');

-- hourly_pattern: every hour of the day has its 20 (the hour 25 hours back doubles one), the
-- burst's hour also the burst; the current hour has nothing yet.
SELECT events, count(*) AS hours FROM activity_log.hourly_pattern() GROUP BY 1 ORDER BY 1;
SELECT hour_of_day = extract(hour FROM (SELECT h FROM clock))::int AS is_burst_hour, errors, error_rate
  FROM activity_log.hourly_pattern() WHERE events = 220;
SELECT count(*) AS days, sum(events) AS events, sum(errors) AS errors FROM activity_log.daily_pattern();

-- user_summary: per user and actor, the most changed tables first.
SELECT db_user, actor, events, errors, success_rate, top_tables,
       last_seen - (SELECT h FROM clock) AS last_seen, first_seen - (SELECT h FROM clock) AS first_seen
  FROM activity_log.user_summary();

-- anomalies: the burst, in volume and in error rate; the quiet hours are not flagged. The
-- baseline is flat (MAD 0), so there is no finite z-score and any step of min_events counts.
SELECT (extract(epoch FROM (SELECT h FROM clock) - bucket_start) / 3600)::int AS hours_ago,
       metric, value, baseline_median, baseline_mad, robust_z
  FROM activity_log.anomalies(since => '2 hours', baseline => '24 hours');
SELECT count(*) AS flagged FROM activity_log.anomalies(since => '2 hours', baseline => '24 hours', min_events => 1000);
-- A noisy baseline (18 and 22 records an hour: median 20, MAD 2) gives a finite robust
-- z-score: 40 is 0.6745 * 20 / 2 = 6.75 away and flagged; 22 is not.
TRUNCATE activity_log.activity_hourly;
INSERT INTO activity_log.activity_hourly (hour, kind, status, events)
SELECT h - k * interval '1 hour', 'event', 'success', CASE WHEN k % 2 = 0 THEN 18 ELSE 22 END
  FROM clock, generate_series(1, 25) k
UNION ALL
SELECT h, 'event', 'success', 40 FROM clock;
SELECT (extract(epoch FROM (SELECT h FROM clock) - bucket_start) / 3600)::int AS hours_ago,
       metric, value, baseline_median, baseline_mad, robust_z
  FROM activity_log.anomalies(since => '2 hours', baseline => '24 hours');
TRUNCATE activity_log.activity_hourly;

-- metrics_daily: the writer counts the rows it stores, not rows added by hand;
-- refresh_metrics() recomputes every day from the trail.
SELECT activity_log.refresh_metrics() IS NOT NULL AS refreshed;
SELECT kind, status, sum(events) AS events, max(error_rate) AS error_rate
  FROM activity_log.metrics_daily GROUP BY 1, 2 ORDER BY 1, 2;
-- Once it agrees with the trail, a refresh changes nothing.
CREATE TEMP TABLE daily AS SELECT * FROM activity_log.activity_daily;
SELECT activity_log.refresh_metrics() IS NOT NULL AS refreshed_again;
SELECT count(*) AS differing
  FROM ((TABLE daily EXCEPT ALL TABLE activity_log.activity_daily)
        UNION ALL (TABLE activity_log.activity_daily EXCEPT ALL TABLE daily)) x;

-- Bad arguments get clear errors.
SELECT * FROM activity_log.trend(since => '-1 hour');
SELECT * FROM activity_log.trend(since => NULL);
SELECT * FROM activity_log.trend(since => '1 year', bucket => '1 second');
SELECT * FROM activity_log.hourly_pattern('0');
SELECT * FROM activity_log.anomalies(threshold => 0);
SELECT * FROM activity_log.anomalies(min_events => -1);
SELECT * FROM activity_log.user_summary(NULL);

-- The trail's indexes and the background processes.
SELECT index_name, valid, scans >= 0 AS has_stats FROM activity_log.index_usage ORDER BY 1;
SELECT kind, database, state FROM activity_log.workers ORDER BY kind;

-- metrics(): counters since reset_metrics(), exact.
SELECT activity_log.reset_metrics() <= clock_timestamp() AS reset;
SELECT records_in, records_out, batches, dropped_records, write_errors FROM activity_log.metrics();
SELECT count(activity_log.log_event('metrics probe')) FROM generate_series(1, 5);
SELECT activity_log.flush();
-- The writer counted them in the rollup.
SELECT kind, status, sum(events) AS events FROM activity_log.activity_hourly
 WHERE hour >= date_bin('1 hour', now(), timestamptz '2000-01-01') AND kind = 'event' GROUP BY 1, 2;
SELECT database = current_database() AS this_db, queued_records, records_in, records_out,
       batches >= 1 AS batched, max_batch_records BETWEEN 1 AND 5 AS max_batch,
       writer_state, writer_pid IS NOT NULL AS has_pid, dropped_records, write_errors,
       oldest_unwritten_age, stats_since <= now() AS since_ok
  FROM activity_log.metrics();
-- The same in Prometheus text format.
SELECT count(*) FILTER (WHERE l LIKE '# HELP %') AS help, count(*) FILTER (WHERE l LIKE '# TYPE %') AS type
  FROM regexp_split_to_table(activity_log.metrics_text(), E'\n') l;
SELECT l FROM regexp_split_to_table(activity_log.metrics_text(), E'\n') l
 WHERE l LIKE 'activity_log_records_written_total{database="al_regress"}%'
    OR l LIKE 'activity_log_writer_up{database="al_regress"}%'
    OR l LIKE '# TYPE activity_log_records_written_total %'
 ORDER BY l;

TRUNCATE activity_log.events, activity_log.activity_hourly;

-- user_summary on a varied trail (issue 31: it reads the window once): carol's six tables
-- (the 5 most changed, ties by name, a quoted name), a table without a schema (its name is
-- NULL), a NULL user and NULL actors (ordered last), equal totals ordered by db_user then
-- actor, a row committed before the window, system rows and a user only outside the window
-- (none counted).
CREATE TEMP TABLE t0 AS SELECT now() - interval '1 hour' AS t;
INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, db_user, actor,
                                 command, schema_name, table_name)
SELECT t0.t - n * interval '1 minute', t0.t - n * interval '1 minute' - v.committed_before, v.kind, 'data_change', 'info',
       v.status, v.u, v.a, 'UPDATE', v.sch, v.tbl
  FROM t0, (VALUES
    (3, 'change', 'success', 'carol', 'web', 'public', 't_a', interval '0'),
    (2, 'change', 'success', 'carol', 'web', 'public', 'Odd T', interval '0'),
    (2, 'change', 'error', 'carol', 'web', 'app', 't_b', interval '0'),
    (1, 'change', 'success', 'carol', 'web', 'public', 't_e', interval '0'),
    (1, 'change', 'success', 'carol', 'web', 'public', 't_d', interval '0'),
    (1, 'change', 'success', 'carol', 'web', 'public', 't_c', interval '0'),
    (2, 'system', 'gap', 'carol', 'web', NULL, NULL, interval '0'),
    (10, 'change', 'success', 'erin', 'web', 'public', 't_a', interval '0'),
    (1, 'change', 'success', 'erin', 'web', 'public', 't_z', interval '2 days'),
    (2, 'change', 'success', 'dave', NULL, NULL, 'loose', interval '0'),
    (2, 'statement', 'success', 'dave', NULL, NULL, NULL, interval '0'),
    (3, 'change', 'success', 'dave', 'web', 'public', 't_a', interval '0'),
    (1, 'event', 'error', 'dave', 'web', NULL, NULL, interval '0'),
    (4, 'statement', 'error', NULL, 'batch', NULL, NULL, interval '0'),
    (1, 'event', 'success', NULL, NULL, NULL, NULL, interval '0')) v(rows, kind, status, u, a, sch, tbl, committed_before),
       generate_series(1, v.rows) n
UNION ALL
SELECT now() - interval '3 days', now() - interval '3 days', 'change', 'data_change', 'info', 'success', 'gone', NULL,
       'UPDATE', 'public', 't_a';
SELECT db_user, actor, events, errors, success_rate, top_tables, last_seen - first_seen AS span,
       last_seen = (SELECT t FROM t0) - interval '1 minute' AS last_ok
  FROM activity_log.user_summary('1 day');
TRUNCATE activity_log.events, activity_log.activity_hourly;
RESET activity_log.capture_statements;
