-- setup: install the extension into the test database and check what it creates.
CREATE EXTENSION activity_log;

SELECT extname, extversion IS NOT NULL AS has_version, n.nspname AS schema, extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'activity_log';

-- Functions of the extension (the activity_log schema and public.activity_health).
SELECT n.nspname AS schema, p.proname AS name, pg_get_function_identity_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'activity_log' OR (n.nspname = 'public' AND p.proname = 'activity_health')
 ORDER BY n.nspname, p.proname;

-- Defaults of the public wrappers.
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'activity_log' AND p.proname IN ('log_event', 'flush', 'recent')
 ORDER BY p.proname;

-- Tables, views, sequences and indexes (without the writer's day partitions, named by date).
SELECT c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'activity_log' AND c.relname !~ '^events_[0-9]{8}'
 ORDER BY c.relname;


-- Columns of the trail.
SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull
  FROM pg_attribute
 WHERE attrelid = 'activity_log.events'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

-- Columns of the views.
SELECT attname FROM pg_attribute
 WHERE attrelid = 'activity_log.recent_activity'::regclass AND attnum > 0 ORDER BY attnum;
SELECT attname FROM pg_attribute
 WHERE attrelid = 'activity_log.queue'::regclass AND attnum > 0 ORDER BY attnum;

-- Every object belongs to the extension.
SELECT count(*) > 0 AS has_members,
       bool_and(classid IN ('pg_proc'::regclass, 'pg_class'::regclass, 'pg_type'::regclass,
                            'pg_event_trigger'::regclass)) AS known_kinds
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'activity_log')
   AND deptype = 'e';

-- The trail is dumped with the data (pg_extension_config_dump).
SELECT array_length(extconfig, 1) AS config_tables FROM pg_extension WHERE extname = 'activity_log';

-- A writer was started by CREATE EXTENSION: everything so far reaches the table.
SELECT activity_log.flush();

-- The writer made the partitions of today and the next two days (UTC), besides the default.
SELECT count(*) AS partitions,
       count(*) FILTER (WHERE c.relname IN (SELECT 'events_' || to_char(now() AT TIME ZONE 'UTC' + d * interval '1 day', 'YYYYMMDD')
                                             FROM generate_series(0, 2) d)) AS days_ahead,
       count(*) FILTER (WHERE c.relname = 'events_default') AS default_partition
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'activity_log.events'::regclass;

-- CREATE EXTENSION itself is the first record of the trail.
SELECT kind, category, severity, status, command, query
  FROM activity_log.events ORDER BY id LIMIT 1;
