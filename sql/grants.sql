-- grants.sql: runs last in CREATE EXTENSION, once every object exists. Refuses a server that
-- did not preload the library, says what pg_dump keeps, sets who may run and read what
-- (PUBLIC, activity_log_reader, activity_log_admin), and starts this database's writer.

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

-- The tracked tables, the rollups and the dead letters are kept too.
SELECT pg_catalog.pg_extension_config_dump('activity_log.tracked_tables', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.activity_hourly', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.activity_daily', '');
SELECT pg_catalog.pg_extension_config_dump('activity_log.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('activity_log.dead_letters', 'id'), '');

GRANT USAGE ON SCHEMA activity_log TO PUBLIC;

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
-- Functions in a view run as the view's reader: metrics_daily's aggregate and p95, the rings'
-- counters behind queue and workers, index_usage's names of the trail's indexes.
GRANT EXECUTE ON FUNCTION activity_log._sum_buckets(jsonb), activity_log._bucket_p95(jsonb, bigint),
    activity_log._queue(), activity_log._trail_index_kind(oid) TO activity_log_reader;
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
    activity_log._readers(regclass, oid[], text[]), activity_log._system_link(oid, oid, oid[], oid, oid, oid[]),
    activity_log._regclass(text), activity_log._path_schemas(text), activity_log._call_names(text),
    activity_log._harmless_volatile(), activity_log._body_effects(oid, text, integer, boolean),
    activity_log._trail_problem(regclass), activity_log._raises_on_writes(text, integer),
    activity_log._lex(text), activity_log._domain_checks(oid[]), activity_log._plpgsql_facts(oid, text),
    activity_log._plpgsql_side_effects(oid, integer, text), activity_log._trigger_events(integer),
    activity_log._guard_excludes(text, boolean, text, text, text), activity_log._role_settings(text)
    TO activity_log_admin;
-- The analytics run as the caller (a reader) and share these checks and counts.
GRANT EXECUTE ON FUNCTION activity_log.metrics(), activity_log.metrics_text(),
    activity_log._check_window(text, interval), activity_log._counts(timestamptz, interval)
    TO activity_log_reader;

-- Start a writer for this database now rather than at the next restart.
SELECT activity_log._activate();
