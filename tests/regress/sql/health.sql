-- health: the score of a quiet, healthy system, and the queue behind it.
SELECT activity_log.flush();
-- A fresh trail: the earlier files failed statements on purpose (statement_error_rate).
TRUNCATE activity_log.events, activity_log.activity_hourly;

SELECT score, status FROM activity_log.health();
SELECT jsonb_array_length(factors) AS factors,
       (SELECT array_agg(f->>'factor') FROM jsonb_array_elements(factors) f) AS names
  FROM activity_log.health();
SELECT f->>'factor' AS factor, (f->>'weight')::int AS weight, (f->>'penalty')::int AS penalty, f->>'reason' AS reason
  FROM activity_log.health(), jsonb_array_elements(factors) f;
-- Values of the factors that do not depend on timing.
SELECT f->>'factor' AS factor, f->'value' AS value
  FROM activity_log.health(), jsonb_array_elements(factors) f
 WHERE f->>'factor' IN ('writer', 'writer_restarts', 'dropped_records', 'write_errors', 'gap_events');

-- The same report as one jsonb value, from the public schema.
SELECT activity_health()->>'status' AS status, (activity_health()->>'score')::int AS score,
       jsonb_array_length(activity_health()->'factors') AS factors;
SELECT activity_health() - 'factors' AS summary;

-- The queue: one ring for this database, with a running writer and nothing lost.
SELECT database, writer_state, dropped_records, write_errors, writer_failures, last_error,
       writer_pid IS NOT NULL AS has_writer_pid, capacity_bytes, overflow_waits
  FROM activity_log.queue;
SELECT count(*) AS rings FROM activity_log.queue;
-- Everything published has been written (flush waited for it).
SELECT activity_log.flush();
SELECT published_records >= written_records AS consistent, written_records > 0 AS wrote_something,
       batches > 0 AS has_batches, fill_pct < 50 AS has_room
  FROM activity_log.queue WHERE database = current_database();
SELECT activity_log._dropped_unassigned() AS dropped_unassigned,
       activity_log._launcher_pid() IS NOT NULL AS launcher_running;
-- The writer and the launcher are visible in pg_stat_activity.
SELECT backend_type, datname
  FROM pg_stat_activity WHERE backend_type LIKE 'activity_log%' ORDER BY backend_type;

-- No gap events in a trail that never crashed.
SELECT count(*) AS gaps FROM activity_log.events WHERE kind = 'system';
