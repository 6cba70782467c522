-- Moving a legacy database (tests/fixtures/legacy_audit.sql) from audit triggers to
-- activity_log and back: the plan, every phase, dry runs, validation, bad input, rollback.
\set ECHO none
\i tests/fixtures/legacy_audit.sql
\set ECHO all

-- Every trigger with its verdict; the foreign keys' internal triggers are named by oid.
SELECT relation, trigger_name, fires, verdict, confidence, style, audit_table, why, phase
  FROM activity_log.migration_plan() WHERE style <> 'internal';
SELECT count(*) AS internal_triggers, bool_and(verdict = 'business') AS all_business
  FROM activity_log.migration_plan() WHERE style = 'internal';

-- The catalog before: rollback must restore it exactly.
CREATE TABLE mig_before AS
SELECT tgrelid::regclass::text AS rel, tgname, tgenabled, pg_get_triggerdef(oid) AS def
  FROM pg_trigger WHERE NOT tgisinternal;
CREATE TABLE mig_functions_before AS
SELECT p.oid::regprocedure::text AS fn, pg_get_functiondef(p.oid) AS def
  FROM pg_proc p WHERE p.pronamespace IN ('audit'::regnamespace, 'shop'::regnamespace);

-- Bad input and phases out of order.
SELECT activity_log.migrate_triggers(phase => 4);
SELECT activity_log.migrate_triggers(phase => NULL);
SELECT activity_log.migrate_triggers(phase => 2);
SELECT activity_log.migrate_triggers(phase => 3);
SELECT activity_log.rollback_migration();
SELECT activity_log.migrate_triggers(phase => 1, tables => '{shop.nosuch}');
SELECT activity_log.migrate_triggers(phase => 1, tables => '{shop.signups}');
SELECT activity_log.migrate_triggers(phase => 1, tables => ARRAY[NULL]::regclass[]);
SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{no_such_trigger}');
SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{set_updated_at}');
SELECT activity_log.rollback_migration(tables => '{shop.orders}');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT activity_log.migrate_triggers(phase => 1);
ROLLBACK;
SELECT count(*) AS nothing_changed FROM activity_log.migration;

-- Phase 1: a dry run shows exactly what the real run does.
CREATE TEMP TABLE dry AS SELECT * FROM activity_log.migrate_triggers(phase => 1, dry_run => true) WITH ORDINALITY s(ddl, n);
SELECT count(*) AS nothing_changed FROM activity_log.tracked_tables;
CREATE TEMP TABLE done AS SELECT * FROM activity_log.migrate_triggers(phase => 1) WITH ORDINALITY s(ddl, n);
SELECT ddl FROM done ORDER BY n;
SELECT (SELECT array_agg(ddl ORDER BY n) FROM dry) = (SELECT array_agg(ddl ORDER BY n) FROM done) AS dry_run_matches;
SELECT relid, trigger_name, enabled, function, verdict, audit_table, legacy_baseline
  FROM activity_log.migration_backup ORDER BY relid::text, trigger_name;
-- Again: nothing left to do.
SELECT activity_log.migrate_triggers(phase => 1);
SELECT relation, trigger_name, verdict, phase FROM activity_log.migration_plan() WHERE phase IS NOT NULL;

-- The dual window: both the triggers and activity_log capture.
INSERT INTO shop.customers (name, email) VALUES ('Cy', 'cy@example.com');
INSERT INTO shop.orders (customer_id, amount) VALUES (3, 5.25);
UPDATE shop.orders SET status = 'paid' WHERE id = 3;
INSERT INTO shop.order_lines VALUES (3, 1, 'jam', 1), (3, 2, 'bread', 1);
UPDATE shop.order_lines SET qty = 2 WHERE order_id = 3 AND line = 1;
DELETE FROM shop.order_lines WHERE order_id = 2;
INSERT INTO shop.deliveries VALUES (3, '2027-03-01', 3, 'bike');
UPDATE shop.deliveries SET carrier = 'van' WHERE id = 1;
DELETE FROM shop.customers WHERE id = 2 AND NOT EXISTS (SELECT 1 FROM shop.orders WHERE customer_id = 2);
SELECT relation, phase, audit_table, legacy_inserts, legacy_updates, legacy_deletes,
       captured_inserts, captured_updates, captured_deletes, samples, samples_matched, matches, difference
  FROM activity_log.migration_status();

-- A legacy row that does not show what happened is found by its image.
UPDATE audit.logged_actions SET changed_fields = changed_fields || 'status=>refunded'
 WHERE event_id = (SELECT max(event_id) FROM audit.logged_actions WHERE action = 'U');
SELECT relation, matches, difference LIKE 'trail record % has no matching row image in audit.logged_actions' AS image_mismatch
  FROM activity_log.migration_status() WHERE relation = 'shop.orders'::regclass;
UPDATE audit.logged_actions SET changed_fields = changed_fields || 'status=>paid'
 WHERE event_id = (SELECT max(event_id) FROM audit.logged_actions WHERE action = 'U');

-- A legacy trigger dropped by hand mid-migration: the comparison no longer matches and
-- phase 2 refuses that table.
DROP TRIGGER audit_i_u_d ON shop.deliveries;
INSERT INTO shop.deliveries VALUES (4, '2026-12-24', 1, 'sleigh');
SELECT relation, legacy_inserts, captured_inserts, matches, difference
  FROM activity_log.migration_status() WHERE relation = 'shop.deliveries'::regclass;
SELECT activity_log.migrate_triggers(phase => 2);
SELECT phase, count(*) FROM activity_log.migration GROUP BY phase;

-- Phase 2 for the tables that match; dry run first.
CREATE TEMP TABLE dry2 AS SELECT * FROM activity_log.migrate_triggers(phase => 2,
    tables => '{shop.customers,shop.orders,shop.order_lines}', dry_run => true) WITH ORDINALITY s(ddl, n);
CREATE TEMP TABLE done2 AS SELECT * FROM activity_log.migrate_triggers(phase => 2,
    tables => '{shop.customers,shop.orders,shop.order_lines}') WITH ORDINALITY s(ddl, n);
SELECT ddl FROM done2 ORDER BY n;
SELECT (SELECT array_agg(ddl ORDER BY n) FROM dry2) = (SELECT array_agg(ddl ORDER BY n) FROM done2) AS dry_run_matches;
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgrelid::regclass::text, tgname;
-- Phase 3 now would leave deliveries behind; naming it is an error.
SELECT activity_log.migrate_triggers(phase => 3, tables => '{shop.deliveries}');
-- Forced: the trigger that is gone is skipped with a notice.
SELECT activity_log.migrate_triggers(phase => 2, tables => '{shop.deliveries}', force => true);
SELECT relid, phase, forced FROM activity_log.migration ORDER BY relid::text;
SELECT activity_log.migrate_triggers(phase => 2);

-- Phase 3.
CREATE TEMP TABLE dry3 AS SELECT * FROM activity_log.migrate_triggers(phase => 3, dry_run => true) WITH ORDINALITY s(ddl, n);
CREATE TEMP TABLE done3 AS SELECT * FROM activity_log.migrate_triggers(phase => 3) WITH ORDINALITY s(ddl, n);
SELECT ddl FROM done3 ORDER BY n;
SELECT (SELECT array_agg(ddl ORDER BY n) FROM dry3) = (SELECT array_agg(ddl ORDER BY n) FROM done3) AS dry_run_matches;
SELECT activity_log.migrate_triggers(phase => 3);
-- The status phase 2 recorded stays.
SELECT relation, phase, captured_inserts, matches FROM activity_log.migration_status();

-- The validation after phase 3: no audit trigger left, business triggers untouched.
SELECT count(*) AS audit_triggers_left FROM activity_log.migration_plan() WHERE verdict = 'audit';
SELECT rel, tgname, tgenabled, def FROM mig_before
 WHERE (rel, tgname) NOT IN (SELECT relid::text, trigger_name FROM activity_log.migration_backup)
   AND rel NOT LIKE 'shop.deliveries%'
EXCEPT
SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal;
-- They still fire; the changes land in activity_log only.
SELECT count(*) AS legacy_rows FROM audit.logged_actions \gset
UPDATE shop.orders SET status = 'shipped' WHERE id = 1 RETURNING status, updated_at IS NOT NULL AS updated_at_set;
INSERT INTO shop.orders (customer_id, amount) VALUES (1, -1);
SELECT count(*) - :legacy_rows AS legacy_rows_after_phase_3 FROM audit.logged_actions;
SELECT activity_log.flush();
SELECT op, old_row->>'status' AS old_status, new_row->>'status' AS new_status
  FROM activity_log.changes WHERE table_name = 'orders' ORDER BY id DESC LIMIT 1;

-- Rollback, after the per-table trigger function was dropped as well: exactly as before.
DROP FUNCTION shop.order_lines_history_fn();
SELECT activity_log.rollback_migration(tables => '{shop.signups}');
CREATE TEMP TABLE dry4 AS SELECT * FROM activity_log.rollback_migration(dry_run => true) WITH ORDINALITY s(ddl, n);
CREATE TEMP TABLE done4 AS SELECT * FROM activity_log.rollback_migration() WITH ORDINALITY s(ddl, n);
SELECT ddl FROM done4 ORDER BY n;
SELECT (SELECT array_agg(ddl ORDER BY n) FROM dry4) = (SELECT array_agg(ddl ORDER BY n) FROM done4) AS dry_run_matches;
(SELECT * FROM mig_before
 EXCEPT SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal)
UNION ALL
(SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
 EXCEPT SELECT * FROM mig_before);
(SELECT * FROM mig_functions_before
 EXCEPT SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p
         WHERE p.pronamespace IN ('audit'::regnamespace, 'shop'::regnamespace))
UNION ALL
(SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p
  WHERE p.pronamespace IN ('audit'::regnamespace, 'shop'::regnamespace)
 EXCEPT SELECT * FROM mig_functions_before);
SELECT count(*) AS tracked, (SELECT count(*) FROM activity_log.migration) AS migrating,
       (SELECT count(*) FROM activity_log.migration_backup) AS backups
  FROM activity_log.tracked_tables;
SELECT activity_log.rollback_migration();
-- The legacy triggers capture again.
INSERT INTO shop.order_lines VALUES (1, 3, 'scone', 4);
SELECT op, product, qty FROM shop.order_lines_history ORDER BY history_id DESC LIMIT 1;

-- A table that was tracked before the migration stays tracked after a rollback of it. An
-- uncertain trigger is taken over when named.
SELECT activity_log.track('shop.customers');
SELECT activity_log.migrate_triggers(phase => 1, tables => '{shop.customers}', include_triggers => '{count_signup}');
SELECT relid, trigger_name, verdict, audit_table FROM activity_log.migration_backup ORDER BY trigger_name;
SELECT activity_log.rollback_migration(tables => '{shop.customers}');
SELECT relid FROM activity_log.tracked_tables;
SELECT activity_log.untrack('shop.customers');


-- Two more shapes: a dynamic INSERT into <table>_audit, and a statement trigger that copies
-- its transition table.
CREATE TABLE shop.notes (id int PRIMARY KEY, body text);
CREATE TABLE shop.notes_audit (op text, at timestamptz DEFAULT now(), row_data jsonb);
CREATE FUNCTION shop.dynamic_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %I.%I (op, row_data) VALUES ($1, $2)', TG_TABLE_SCHEMA, TG_TABLE_NAME || '_audit')
        USING TG_OP, to_jsonb(coalesce(NEW, OLD));
    RETURN NULL;
END
$$;
CREATE TRIGGER notes_audit AFTER INSERT OR UPDATE OR DELETE ON shop.notes
    FOR EACH ROW EXECUTE FUNCTION shop.dynamic_audit();
CREATE TABLE shop.notes_log (op text, body text);
CREATE FUNCTION shop.log_new_notes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.notes_log SELECT TG_OP, n.body FROM new_notes n;
    RETURN NULL;
END
$$;
CREATE TRIGGER notes_log AFTER INSERT ON shop.notes REFERENCING NEW TABLE AS new_notes
    FOR EACH STATEMENT EXECUTE FUNCTION shop.log_new_notes();
SELECT trigger_name, verdict, confidence, style, audit_table, why
  FROM activity_log.migration_plan() WHERE relation = 'shop.notes'::regclass;
-- A table dropped mid-migration leaves the migration.
SELECT activity_log.migrate_triggers(phase => 1, tables => '{shop.notes}');
DROP TABLE shop.notes;
SELECT count(*) AS migrating FROM activity_log.migration;
SELECT activity_log.rollback_migration();

-- Triggers that are not simply enabled, tables without traffic, UPDATEs that change nothing.
-- Disabled triggers write nothing: no comparison. An ENABLE REPLICA trigger logs only what
-- replication applies: it cannot be compared. ENABLE ALWAYS is compared like enabled. A table
-- without changes in the window stays in phase 1. audit-trigger skips UPDATEs that change
-- nothing or only its ignored columns.
CREATE TABLE shop.notes (id int PRIMARY KEY, body text, touched_at int, secret text);
CREATE TRIGGER audit_trigger_row AFTER INSERT OR UPDATE OR DELETE ON shop.notes
    FOR EACH ROW EXECUTE FUNCTION audit.if_modified_func('true', '{touched_at}');
INSERT INTO shop.notes VALUES (1, 'x', 0, 's'), (2, 'y', 0, 's');
ALTER TABLE shop.deliveries DISABLE TRIGGER audit_i_u_d;
ALTER TABLE shop.customers ENABLE REPLICA TRIGGER audit_i_u_d;
ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER audit_trigger_row;
CREATE TABLE mig_states AS
SELECT tgrelid::regclass::text AS rel, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal;
SELECT relation, trigger_name, verdict, state FROM activity_log.migration_plan()
 WHERE verdict <> 'business' ORDER BY relation::text, trigger_name;
SELECT count(*) AS statements FROM activity_log.migrate_triggers(phase => 1);
INSERT INTO shop.customers (name) VALUES ('Di');
UPDATE shop.orders SET status = 'shipped' WHERE id = 3;
INSERT INTO shop.deliveries VALUES (5, '2027-05-01', 3, 'van');
UPDATE shop.notes SET body = 'x2' WHERE id = 1;
UPDATE shop.notes SET body = body WHERE id = 2;
UPDATE shop.notes SET touched_at = 1 WHERE id = 2;
SELECT relation, status, legacy_inserts, legacy_updates, legacy_deletes, captured_inserts, captured_updates,
       captured_deletes, captured_unchanged_updates, matches, difference, note
  FROM activity_log.migration_status();
SELECT activity_log.migrate_triggers(phase => 2);
SELECT activity_log.migrate_triggers(phase => 2, include_idle => NULL);
SELECT activity_log.migrate_triggers(phase => 2, tables => '{shop.orders,shop.order_lines,shop.deliveries,shop.notes}');
SELECT relid, phase, forced FROM activity_log.migration ORDER BY relid::text;
-- include_idle moves the idle table; force moves it too, and the replica-only one, recorded
-- as forced.
SELECT activity_log.migrate_triggers(phase => 2, tables => '{shop.order_lines}', include_idle => true, dry_run => true);
SELECT activity_log.migrate_triggers(phase => 2, force => true);
SELECT relid, phase, forced FROM activity_log.migration ORDER BY relid::text;
SELECT relation, status, matches, note FROM activity_log.migration_status();
SELECT count(*) AS statements FROM activity_log.migrate_triggers(phase => 3);
-- Rollback brings back each trigger's state: replica only, always, disabled.
SELECT count(*) AS statements FROM activity_log.rollback_migration();
(SELECT * FROM mig_states
 EXCEPT SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal)
UNION ALL
(SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal
 EXCEPT SELECT * FROM mig_states);
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgname IN ('audit_i_u_d', 'audit_trigger_row') ORDER BY tgrelid::regclass::text, tgname;

-- A careless DBA changes triggers during the window. Disabled during it: the legacy trail
-- has stopped, nothing to compare. Enabled during it: compared, and the rows before are
-- missing. Enabled and disabled again: reported. A table that activity_log tracks without a
-- column the legacy trigger looks at: the UPDATEs that changed only that column may or may not
-- be in the audit table. A WHEN (OLD.* IS DISTINCT FROM NEW.*) clause skips no-op UPDATEs; an
-- operation no trigger fires on is not counted.
ALTER TABLE shop.customers ENABLE TRIGGER audit_i_u_d;
ALTER TABLE shop.orders ENABLE TRIGGER audit_trigger_row;
ALTER TABLE shop.deliveries ENABLE TRIGGER audit_i_u_d;
ALTER TABLE shop.order_lines DISABLE TRIGGER order_lines_history;
ALTER TABLE shop.orders DISABLE TRIGGER audit_trigger_row;
SELECT activity_log.track('shop.notes', exclude_columns => '{secret}');
CREATE TABLE shop.tags (id int PRIMARY KEY, tag text);
CREATE TABLE shop.tags_history (op text, at timestamptz DEFAULT now(), row_data jsonb);
CREATE FUNCTION shop.tags_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.tags_history (op, row_data) VALUES (TG_OP, to_jsonb(NEW));
    RETURN NULL;
END
$$;
CREATE TRIGGER tags_history AFTER UPDATE ON shop.tags
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION shop.tags_history();
CREATE TRIGGER tags_history_insert AFTER INSERT ON shop.tags
    FOR EACH ROW EXECUTE FUNCTION shop.tags_history();
SELECT count(*) AS statements FROM activity_log.migrate_triggers(phase => 1, tables => '{shop.orders,shop.order_lines,shop.deliveries,shop.notes,shop.tags}');
INSERT INTO shop.deliveries VALUES (6, '2027-06-01', 3, 'bike');
ALTER TABLE shop.deliveries DISABLE TRIGGER audit_i_u_d;
INSERT INTO shop.deliveries VALUES (7, '2027-06-02', 3, 'bike');
INSERT INTO shop.order_lines VALUES (3, 3, 'honey', 1);
ALTER TABLE shop.order_lines ENABLE TRIGGER order_lines_history;
INSERT INTO shop.order_lines VALUES (3, 4, 'butter', 1);
ALTER TABLE shop.orders ENABLE TRIGGER audit_trigger_row;
UPDATE shop.orders SET status = 'returned' WHERE id = 3;
ALTER TABLE shop.orders DISABLE TRIGGER audit_trigger_row;
UPDATE shop.notes SET touched_at = 2 WHERE id = 1;
UPDATE shop.notes SET secret = 't' WHERE id = 1;
UPDATE shop.notes SET body = 'x3' WHERE id = 1;
INSERT INTO shop.tags VALUES (1, 'a'), (2, 'b');
UPDATE shop.tags SET tag = tag;
UPDATE shop.tags SET tag = 'c' WHERE id = 1;
DELETE FROM shop.tags WHERE id = 2;
SELECT relation, status, legacy_inserts, legacy_updates, legacy_deletes, captured_inserts, captured_updates,
       captured_deletes, captured_unchanged_updates, matches, difference, note
  FROM activity_log.migration_status();
SELECT activity_log.migrate_triggers(phase => 2);
SELECT activity_log.migrate_triggers(phase => 2, tables => '{shop.orders,shop.deliveries,shop.notes,shop.tags}');
SELECT relid, phase, forced FROM activity_log.migration ORDER BY relid::text;
SELECT count(*) AS statements FROM activity_log.rollback_migration();
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgname IN ('audit_i_u_d', 'audit_trigger_row', 'order_lines_history') ORDER BY tgrelid::regclass::text, tgname;
SELECT relid, exclude_columns FROM activity_log.tracked_tables;
SELECT activity_log.untrack('shop.notes');
ALTER TABLE shop.orders ENABLE TRIGGER audit_trigger_row;
ALTER TABLE shop.order_lines ENABLE TRIGGER order_lines_history;
ALTER TABLE shop.deliveries ENABLE TRIGGER audit_i_u_d;
-- The signature, with its defaults, as \df shows it.
SELECT pg_get_function_arguments('activity_log.migrate_triggers'::regproc) AS arguments;

DROP TABLE mig_before, mig_functions_before, mig_states;
DROP SCHEMA shop, audit CASCADE;
DROP EXTENSION hstore;
