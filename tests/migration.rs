//! The trigger migration under load: pgbench writes the legacy fixture's tables (three audit
//! styles, business triggers, a foreign key, a partitioned table) while phases 1, 2 and 3 run;
//! afterwards every committed change is in the legacy trail up to phase 2 and in activity_log
//! from phase 1 on — no gap, nothing invented — the business triggers still fire, and the
//! rollback puts the catalog back exactly.

mod common;

use common::Cluster;
use std::process::Stdio;
use std::thread::sleep;
use std::time::Duration;

const DB: &str = "legacy";

/// Every operation the workload commits is noted, with its transaction, in shop.workload.
const WORKLOAD: &str = r"
\set amount random(1, 99999)
\set day random(0, 700)
BEGIN;
INSERT INTO shop.customers (name) VALUES ('w') RETURNING id AS customer_id \gset
INSERT INTO shop.workload (tbl, op) VALUES ('customers', 'I');
INSERT INTO shop.orders (customer_id, amount) VALUES (:customer_id, :amount / 100.0) RETURNING id AS order_id \gset
INSERT INTO shop.workload (tbl, op) VALUES ('orders', 'I');
INSERT INTO shop.order_lines VALUES (:order_id, 1, 'tea', 1), (:order_id, 2, 'cake', 2);
INSERT INTO shop.workload (tbl, op) VALUES ('order_lines', 'I'), ('order_lines', 'I');
UPDATE shop.orders SET status = 'paid' WHERE id = :order_id;
INSERT INTO shop.workload (tbl, op) VALUES ('orders', 'U');
UPDATE shop.order_lines SET qty = qty + 1 WHERE order_id = :order_id AND line = 1;
INSERT INTO shop.workload (tbl, op) VALUES ('order_lines', 'U');
DELETE FROM shop.order_lines WHERE order_id = :order_id AND line = 2;
INSERT INTO shop.workload (tbl, op) VALUES ('order_lines', 'D');
INSERT INTO shop.deliveries VALUES (:order_id, date '2026-01-01' + :day, :order_id, 'post');
INSERT INTO shop.workload (tbl, op) VALUES ('deliveries', 'I');
END;
";

/// Rows per table and operation in the three legacy trails, read the way each style stores
/// them (not through the migration's own reader).
const LEGACY_COUNTS: &str = "
SELECT string_agg(format('%s %s %s', tbl, op, n), ', ' ORDER BY tbl, op) FROM (
    SELECT regexp_replace(table_name, '_20..$', '') AS tbl, left(op, 1) AS op, count(*) AS n
      FROM audit.record_version GROUP BY 1, 2
    UNION ALL
    SELECT table_name, action, count(*) FROM audit.logged_actions WHERE action <> 'T' GROUP BY 1, 2
    UNION ALL
    SELECT 'order_lines', op, count(*) FROM shop.order_lines_history GROUP BY 1, 2) x";

/// The catalog rollback must restore: every trigger (partition clones included) with its
/// definition and enabled state, and the trigger functions' definitions.
const CATALOG: &str = "
SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
    SELECT format('%s %s %s %s', tgrelid::regclass, tgname, tgenabled, pg_get_triggerdef(oid)) AS x
      FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT pg_get_functiondef(p.oid) FROM pg_proc p
     WHERE p.pronamespace IN ('audit'::regnamespace, 'shop'::regnamespace)) c";

fn counts_by_op(c: &Cluster, filter: &str) -> String {
    c.one(
        DB,
        &format!(
            "SELECT coalesce(string_agg(format('%s %s %s', tbl, op, n), ', ' ORDER BY tbl, op), '')
               FROM (SELECT w.tbl, w.op, count(*) AS n FROM shop.workload w, activity_log.migration m
                      WHERE m.relid = ('shop.' || w.tbl)::regclass AND {filter} GROUP BY 1, 2) x"
        ),
    )
}

/// Adds per-(table, op) counts: "a I 2, b U 1" + "a I 1" = "a I 3, b U 1".
fn add_counts(a: &str, b: &str) -> String {
    let mut sum = std::collections::BTreeMap::<(String, String), u64>::new();
    for part in a.split(", ").chain(b.split(", ")).filter(|p| !p.is_empty()) {
        let f: Vec<&str> = part.split(' ').collect();
        *sum.entry((f[0].into(), f[1].into())).or_default() += f[2].parse::<u64>().unwrap();
    }
    sum.iter()
        .map(|((t, o), n)| format!("{t} {o} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn phase(c: &Cluster, args: &str) -> Vec<String> {
    let dry = c.sql(
        DB,
        &format!("SELECT activity_log.migrate_triggers({args}, dry_run => true)"),
    );
    let done = c.sql(DB, &format!("SELECT activity_log.migrate_triggers({args})"));
    assert_eq!(dry, done, "the dry run of migrate_triggers({args}) differs");
    assert!(!done.is_empty(), "migrate_triggers({args}) did nothing");
    done
}

#[test]
fn migration_under_load_has_no_gap_and_rolls_back_exactly() {
    let c = Cluster::start("migration", &["activity_log.capture_statements = 'none'"]);
    common::with_extension(&c, DB);
    c.sql(DB, include_str!("fixtures/legacy_audit.sql"));
    c.sql(
        DB,
        "CREATE TABLE shop.workload (id bigserial PRIMARY KEY, tbl text NOT NULL, op char(1) NOT NULL,
                                     xid xid8 NOT NULL DEFAULT pg_current_xact_id())",
    );
    let catalog_before = c.sql(DB, CATALOG);
    let legacy_before = c.one(DB, LEGACY_COUNTS);

    let script = format!("{}/workload.pgbench", c.dir);
    std::fs::write(&script, WORKLOAD).unwrap();
    let pgbench = c
        .client("pgbench")
        .args(["-n", "-c", "2", "-T", "20", "-f", &script, DB])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgbench");

    sleep(Duration::from_secs(3));
    let phase1 = phase(&c, "phase => 1");
    assert_eq!(phase1.len(), 8, "{phase1:?}"); // 4 locks, 4 track() calls
    sleep(Duration::from_secs(3));
    // Under load the comparison is exact: both sides are read in one snapshot.
    let status = c.sql(
        DB,
        "SELECT relation, matches, difference, captured_inserts > 0 FROM activity_log.migration_status()",
    );
    assert_eq!(
        status,
        [
            "shop.customers|t||t",
            "shop.deliveries|t||t",
            "shop.order_lines|t||t",
            "shop.orders|t||t"
        ]
    );
    sleep(Duration::from_secs(2));
    phase(&c, "phase => 2");
    sleep(Duration::from_secs(3));
    let phase3 = phase(&c, "phase => 3");
    assert_eq!(phase3.len(), 5, "{phase3:?}");
    let out = pgbench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.flush(DB);

    // The workload ran before, during and after the switch-over.
    let before_phase1 = c.one(DB, "SELECT count(*) FROM shop.workload w, activity_log.migration m WHERE m.relid = 'shop.orders'::regclass AND pg_visible_in_snapshot(w.xid, m.dual_start)");
    let after_phase2 = c.one(DB, "SELECT count(*) FROM shop.workload w, activity_log.migration m WHERE m.relid = 'shop.orders'::regclass AND NOT pg_visible_in_snapshot(w.xid, (m.validation->0->>'window_end')::pg_snapshot)");
    assert!(
        before_phase1.parse::<u64>().unwrap() > 100 && after_phase2.parse::<u64>().unwrap() > 100,
        "too little workload around the switch-over: {before_phase1} before phase 1, {after_phase2} after phase 2\n{report}"
    );

    // activity_log: every operation committed after phase 1, in its transaction, and nothing else.
    let mismatches = c.one(
        DB,
        "WITH w AS (SELECT w.xid, w.tbl, w.op, count(*) AS n
                      FROM shop.workload w, activity_log.migration m
                     WHERE m.relid = ('shop.' || w.tbl)::regclass AND NOT pg_visible_in_snapshot(w.xid, m.dual_start)
                     GROUP BY 1, 2, 3),
              a AS (SELECT xid, table_name AS tbl, left(op, 1) AS op, count(*) AS n
                      FROM activity_log.changes GROUP BY 1, 2, 3)
         SELECT count(*) FROM w FULL JOIN a USING (xid, tbl, op) WHERE w.n IS DISTINCT FROM a.n",
    );
    assert_eq!(
        mismatches, "0",
        "activity_log's trail differs from the committed workload"
    );

    // The legacy trails: every operation committed before phase 2, and nothing after.
    let until_phase2 = counts_by_op(
        &c,
        "pg_visible_in_snapshot(w.xid, (m.validation->0->>'window_end')::pg_snapshot)",
    );
    assert_eq!(
        c.one(DB, LEGACY_COUNTS),
        add_counts(&legacy_before, &until_phase2),
        "the legacy trails differ from the workload committed before phase 2"
    );

    // After phase 3: no audit trigger left; the business triggers still fire.
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FROM activity_log.migration_plan() WHERE verdict = 'audit'"
        ),
        "0"
    );
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FROM shop.orders WHERE status = 'paid' AND updated_at IS NULL"
        ),
        "0",
        "set_updated_at stopped firing"
    );
    assert!(
        c.error(
            DB,
            "INSERT INTO shop.orders (customer_id, amount) VALUES (1, -5)"
        )
        .contains("ERROR:  amount must not be negative: -5.00")
    );
    let listen = c.sql(
        DB,
        "LISTEN new_order; INSERT INTO shop.orders (customer_id, amount) VALUES (1, 1) RETURNING id",
    );
    assert!(
        listen
            .iter()
            .any(|l| l.starts_with("Asynchronous notification \"new_order\" with payload \"")),
        "notify_order stopped firing: {listen:?}"
    );

    // Rollback: the catalog exactly as before, tracking stopped, the legacy triggers capture.
    let rollback = c.sql(DB, "SELECT activity_log.rollback_migration()");
    assert_eq!(rollback.len(), 4 + 5 + 4, "{rollback:?}"); // locks, triggers, untrack()
    assert_eq!(c.sql(DB, CATALOG), catalog_before);
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM activity_log.tracked_tables"),
        "0"
    );
    let trail = c.one(DB, "SELECT count(*) FROM activity_log.changes");
    let history = c.one(DB, "SELECT count(*) FROM shop.order_lines_history");
    c.sql(DB, "INSERT INTO shop.order_lines VALUES (1, 9, 'scone', 1)");
    c.flush(DB);
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM activity_log.changes"),
        trail
    );
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM shop.order_lines_history")
            .parse::<u64>()
            .unwrap(),
        history.parse::<u64>().unwrap() + 1
    );
}

/// run_with_messages returns a script's rows and its messages ("NOTICE:  …", "HINT:  …").
fn run_with_messages(c: &Cluster, script: &str) -> (Vec<String>, Vec<String>) {
    let out = c.run(DB, script);
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let messages = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| match l.strip_prefix("psql:") {
            Some(rest) => rest.splitn(3, ':').nth(2).unwrap_or(rest).trim_start(),
            None => l,
        })
        .map(str::to_string)
        .collect();
    (rows, messages)
}

/// Issue 25, item 11: a disabled legacy audit trigger writes nothing, so phase 2 needs no
/// comparison for its table; a table without traffic in the window stays in phase 1 (with a
/// notice) while the verified tables move, until `include_idle => true`; and an UPDATE that
/// changes nothing, which audit-trigger skips, is not counted against it.
#[test]
fn phase2_moves_disabled_and_verified_tables_and_leaves_idle_ones() {
    let c = Cluster::start(
        "migration-idle",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, DB);
    c.sql(DB, include_str!("fixtures/legacy_audit.sql"));
    c.sql(
        DB,
        "CREATE TABLE shop.notes (id int PRIMARY KEY, body text);
         CREATE TRIGGER audit_trigger_row AFTER INSERT OR UPDATE OR DELETE ON shop.notes
             FOR EACH ROW EXECUTE FUNCTION audit.if_modified_func();
         INSERT INTO shop.notes VALUES (1, 'x'), (2, 'y');
         ALTER TABLE shop.deliveries DISABLE TRIGGER audit_i_u_d;",
    );
    let catalog_before = c.sql(DB, CATALOG);
    assert_eq!(
        c.sql(
            DB,
            "SELECT relation, trigger_name, state FROM activity_log.migration_plan()
              WHERE verdict = 'audit' ORDER BY relation::text, trigger_name"
        ),
        [
            "shop.customers|audit_i_u_d|enabled",
            "shop.deliveries|audit_i_u_d|disabled",
            "shop.notes|audit_trigger_row|enabled",
            "shop.order_lines|order_lines_history|enabled",
            "shop.orders|audit_trigger_row|enabled",
            "shop.orders|audit_trigger_stm|enabled"
        ]
    );
    assert_eq!(phase(&c, "phase => 1").len(), 10); // 5 locks, 5 track() calls

    // The window: order_lines sees no change; deliveries only one its disabled trigger misses;
    // the second UPDATE of notes changes nothing.
    c.sql(
        DB,
        "INSERT INTO shop.customers (name) VALUES ('Cy');
         UPDATE shop.orders SET status = 'shipped' WHERE id = 2;
         INSERT INTO shop.deliveries VALUES (3, '2027-03-01', 2, 'bike');
         UPDATE shop.notes SET body = 'x2' WHERE id = 1;
         UPDATE shop.notes SET body = body WHERE id = 2;",
    );
    let status = "SELECT relation, phase, status, legacy_inserts, legacy_updates, legacy_deletes,
                         captured_inserts, captured_updates, captured_deletes, captured_unchanged_updates,
                         matches, difference, note
                    FROM activity_log.migration_status()";
    let verified = [
        "shop.customers|1|verified|1|0|0|1|0|0||t||",
        "shop.deliveries|1|disabled|0|0|0|1|0|0||||audit trigger audit_i_u_d is disabled: it writes nothing, so there is nothing to compare",
        "shop.notes|1|verified|0|1|0|0|2|0|1|t||1 UPDATE that changed nothing is not counted: audit trigger audit_trigger_row skips those",
        "shop.order_lines|1|idle|0|0|0|0|0|0||||no changes in the dual-capture window yet",
        "shop.orders|1|verified|0|1|0|0|1|0|0|t||",
    ];
    assert_eq!(c.sql(DB, status), verified);

    // Phase 2 moves the verified tables and the disabled one; order_lines stays, with a notice.
    let dry = run_with_messages(
        &c,
        "SELECT activity_log.migrate_triggers(phase => 2, dry_run => true)",
    );
    let done = run_with_messages(&c, "SELECT activity_log.migrate_triggers(phase => 2)");
    assert_eq!(dry, done);
    assert_eq!(
        done.0,
        [
            "LOCK TABLE shop.customers IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE shop.orders IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE shop.order_lines IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE shop.deliveries IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE shop.notes IN SHARE ROW EXCLUSIVE MODE",
            "ALTER TABLE shop.customers DISABLE TRIGGER audit_i_u_d",
            "ALTER TABLE shop.orders DISABLE TRIGGER audit_trigger_row",
            "ALTER TABLE shop.orders DISABLE TRIGGER audit_trigger_stm",
            "ALTER TABLE shop.deliveries DISABLE TRIGGER audit_i_u_d",
            "ALTER TABLE shop.notes DISABLE TRIGGER audit_trigger_row"
        ]
    );
    assert_eq!(
        done.1,
        [
            "NOTICE:  table shop.order_lines stays in phase 1: no changes in the dual-capture window yet",
            "HINT:  Phase 2 moves it once its audit trigger and activity_log have both recorded changes to it; include_idle => true moves it without that comparison."
        ]
    );
    let migration = "SELECT relid, phase, forced FROM activity_log.migration ORDER BY relid::text";
    assert_eq!(
        c.sql(DB, migration),
        [
            "shop.customers|2|f",
            "shop.deliveries|2|f",
            "shop.notes|2|f",
            "shop.order_lines|1|f",
            "shop.orders|2|f"
        ]
    );
    // The comparison phase 2 kept, and the one still open for order_lines.
    assert_eq!(
        c.sql(DB, status),
        verified.map(|r| r
            .replacen("|1|", "|2|", 1)
            .replace("order_lines|2|", "order_lines|1|"))
    );

    // Named explicitly, the idle table moves without a comparison.
    assert_eq!(
        run_with_messages(
            &c,
            "SELECT activity_log.migrate_triggers(phase => 2, include_idle => true)"
        ),
        (
            vec![
                "LOCK TABLE shop.order_lines IN SHARE ROW EXCLUSIVE MODE".to_string(),
                "ALTER TABLE shop.order_lines DISABLE TRIGGER order_lines_history".to_string()
            ],
            vec![]
        )
    );
    assert_eq!(
        c.sql(DB, migration),
        [
            "shop.customers|2|f",
            "shop.deliveries|2|f",
            "shop.notes|2|f",
            "shop.order_lines|2|f",
            "shop.orders|2|f"
        ]
    );

    // Phase 3 drops them all; the rollback puts the disabled trigger back disabled.
    assert_eq!(phase(&c, "phase => 3").len(), 6);
    c.sql(DB, "SELECT activity_log.rollback_migration()");
    assert_eq!(c.sql(DB, CATALOG), catalog_before);
    assert_eq!(
        c.one(
            DB,
            "SELECT string_agg(format('%s %s', tgrelid::regclass, tgenabled), ', ' ORDER BY tgrelid::regclass::text)
               FROM pg_trigger WHERE tgname = 'audit_i_u_d'"
        ),
        "shop.customers O, shop.deliveries D, shop.deliveries_2026 D, shop.deliveries_2027 D"
    );
}

/// The plan's verdicts for a fixture: "table|trigger|verdict" per trigger, in the plan's order.
fn verdicts(c: &Cluster, db: &str) -> Vec<String> {
    c.sql(
        db,
        "SELECT relation, trigger_name, verdict FROM activity_log.migration_plan()",
    )
}

/// A full cycle on a fixture's audit triggers: phase 1, the writes (in the dual-capture window),
/// phase 2 (which must find the table verified), phase 3, and a rollback that puts back exactly
/// the catalog there was.
fn full_cycle(c: &Cluster, db: &str, writes: &str) {
    let catalog = "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
        SELECT format('%s %s %s %s', tgrelid::regclass, tgname, tgenabled, pg_get_triggerdef(oid)) AS x
          FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'activity_log') AND p.prokind = 'f'
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')) c";
    let before = c.sql(db, catalog);
    assert!(
        !c.sql(db, "SELECT activity_log.migrate_triggers(phase => 1)")
            .is_empty()
    );
    c.sql(db, writes);
    c.flush(db);
    assert_eq!(
        c.sql(
            db,
            "SELECT DISTINCT status FROM activity_log.migration_status()"
        ),
        ["verified"]
    );
    assert!(
        !c.sql(db, "SELECT activity_log.migrate_triggers(phase => 2)")
            .is_empty()
    );
    assert!(
        !c.sql(db, "SELECT activity_log.migrate_triggers(phase => 3)")
            .is_empty()
    );
    assert_eq!(
        c.one(
            db,
            "SELECT count(*) FROM activity_log.migration_plan() WHERE verdict = 'audit'"
        ),
        "0"
    );
    c.sql(db, "SELECT activity_log.rollback_migration()");
    assert_eq!(c.sql(db, catalog), before);
}

/// Issue 27, item 2: 2ndQuadrant's audit-trigger as shipped guards its protocol
/// (`IF TG_WHEN <> 'AFTER' THEN RAISE EXCEPTION`, the unhandled TG_OP / TG_LEVEL case); those
/// RAISEs are not validation, so both of its triggers are audit and migrate.
#[test]
fn protocol_guards_are_not_validation() {
    let c = Cluster::start(
        "migration-guards",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "guards");
    c.sql("guards", include_str!("fixtures/audit_trigger_guards.sql"));
    assert_eq!(
        verdicts(&c, "guards"),
        [
            "ledger.accounts|audit_trigger_row|audit",
            "ledger.accounts|audit_trigger_stm|audit"
        ]
    );
    // A guard that checks the row is still validation.
    c.sql(
        "guards",
        "CREATE TABLE ledger.checked (id int, amount int);
         CREATE FUNCTION ledger.checked_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_OP = 'INSERT' AND NEW.amount < 0 THEN
                 RAISE EXCEPTION 'negative';
             END IF;
             INSERT INTO audit.logged_actions (schema_name, table_name, relid, action_tstamp_tx,
                 action_tstamp_stm, action_tstamp_clk, action, row_data, statement_only)
             VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_RELID, now(), now(), now(),
                     left(TG_OP, 1), hstore(NEW.*), false);
             RETURN NULL;
         END $$;
         CREATE TRIGGER checked_audit AFTER INSERT ON ledger.checked
             FOR EACH ROW EXECUTE FUNCTION ledger.checked_audit();",
    );
    assert_eq!(
        c.one(
            "guards",
            "SELECT verdict || ' ' || why FROM activity_log.migration_plan() WHERE trigger_name = 'checked_audit'"
        ),
        "uncertain copies the changed row (hstore(NEW/OLD)) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that"
    );
    c.sql("guards", "DROP TABLE ledger.checked");
    full_cycle(
        &c,
        "guards",
        "INSERT INTO ledger.accounts (owner) VALUES ('Cy');
         UPDATE ledger.accounts SET balance = balance + 1 WHERE owner = 'Ada';
         DELETE FROM ledger.accounts WHERE owner = 'Bob';",
    );
}

/// Issue 27, item 3: a statement-level trigger's return value is ignored, so returning NULL
/// skips nothing; supa_audit's TRUNCATE companion (audit_t, writing op = 'TRUNCATE' into the
/// row trigger's audit.record_version) is audit and migrates with audit_i_u_d.
#[test]
fn statement_triggers_and_truncate_companions() {
    let c = Cluster::start(
        "migration-truncate",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "supa");
    c.sql("supa", include_str!("fixtures/supa_audit.sql"));
    assert_eq!(
        c.sql(
            "supa",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan()"
        ),
        [
            "app.members|audit_i_u_d|audit|copies the changed row (as jsonb) into audit.record_version with the operation; one system with audit_t (both write audit.record_version): they migrate together",
            "app.members|audit_t|audit|records TRUNCATE into audit.record_version, the trail of its row audit trigger audit_i_u_d: migrates with it; one system with audit_i_u_d (both write audit.record_version): they migrate together",
            "app.scratch|audit_t|business|writes audit.record_version, but not the changed row",
            "app.scratch|log_statement|business|does not copy the changed row into another table"
        ]
    );
    full_cycle(
        &c,
        "supa",
        "INSERT INTO app.members (name) VALUES ('Cy');
         UPDATE app.members SET plan = 'pro' WHERE name = 'Ada';
         DELETE FROM app.members WHERE name = 'Bob';",
    );
    // Both were backed up and dropped together, and both came back.
    assert_eq!(
        c.one(
            "supa",
            "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'app.members'::regclass"
        ),
        "audit_i_u_d,audit_t"
    );
}

/// Issue 27, item 1 (in part): a trigger that writes NEW in any form (temporal_tables'
/// `RETURN jsonb_populate_record(NEW, …)`, `NEW := …`, `SELECT … INTO NEW.col`) or notifies is
/// never audit, and neither is one feeding a delivery queue (Hasura v1's
/// hdb_catalog.event_log: delivered, tries, locked, next_retry_at).
#[test]
fn rewrites_of_new_and_delivery_queues_are_never_audit() {
    let c = Cluster::start(
        "migration-never-audit",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "temporal");
    c.sql(
        "temporal",
        include_str!("fixtures/temporal_tables_nochecks.sql"),
    );
    assert_eq!(
        c.sql(
            "temporal",
            "SELECT relation, trigger_name, verdict FROM activity_log.migration_plan()"
        ),
        [
            "prices|a_assign_whole|uncertain",
            "prices|b_select_into|uncertain",
            "prices|c_notify|uncertain",
            "subscriptions|versioning_trigger|uncertain"
        ]
    );
    assert_eq!(
        c.one(
            "temporal",
            "SELECT why FROM activity_log.migration_plan() WHERE trigger_name = 'versioning_trigger'"
        ),
        "copies the changed row (NEW.* / OLD.*) into public.subscriptions_history with the operation (a dynamic INSERT; the table is guessed from its name), but also modifies NEW: taking it over would lose that"
    );

    common::with_extension(&c, "hasura");
    c.sql("hasura", include_str!("fixtures/hasura_event_triggers.sql"));
    assert_eq!(
        c.sql(
            "hasura",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan()"
        ),
        [
            "orders|notify_hasura_order_changed_UPDATE|business|feeds a delivery queue: hdb_catalog.event_log has delivered, tries, locked, next_retry_at columns, so something consumes its rows",
            "orders|notify_hasura_order_created_INSERT|business|feeds a delivery queue: hdb_catalog.event_log has delivered, tries, locked, next_retry_at columns, so something consumes its rows",
            // through the helper hdb_catalog.insert_event_log(), as later releases do
            "orders|notify_hasura_order_removed_DELETE|business|feeds a delivery queue: hdb_catalog.event_log has delivered, tries, locked, next_retry_at columns, so something consumes its rows"
        ]
    );
    assert!(c
        .error(
            "hasura",
            "SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{notify_hasura_order_created_INSERT}')"
        )
        .contains("is a business trigger"));
}

/// Issue 27, item 6: `why` never says the table could not be determined while `audit_table`
/// names one, and a trigger that writes a table but not the row says which table.
#[test]
fn why_and_audit_table_agree() {
    let c = Cluster::start(
        "migration-why",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "columns");
    c.sql("columns", include_str!("fixtures/column_logger.sql"));
    assert_eq!(
        c.sql(
            "columns",
            "SELECT relation, trigger_name, verdict, audit_table, why FROM activity_log.migration_plan()"
        ),
        [
            // Issue 27, F9: the fixture now builds its table name as such loggers do
            // (format('INSERT INTO %I.%I …', TG_TABLE_SCHEMA, TG_TABLE_NAME || '_changes')), so the
            // table is guessed from its name instead of read from the format string.
            "settings|log_column_changes|uncertain|settings_changes|builds its INSERT at run time, probably into public.settings_changes (guessed from its name); what it copies could not be determined",
            "tokens|log_by_name|uncertain|audit.tokens|builds its INSERT at run time, probably into audit.tokens (guessed from its name); what it copies could not be determined"
        ]
    );
    common::with_extension(&c, "supa");
    c.sql("supa", include_str!("fixtures/supa_audit.sql"));
    assert_eq!(
        c.one(
            "supa",
            "SELECT format('%s %s %s', verdict, audit_table, why) FROM activity_log.migration_plan()
              WHERE relation = 'app.scratch'::regclass AND trigger_name = 'audit_t'"
        ),
        "business audit.record_version writes audit.record_version, but not the changed row"
    );
}

/// Issue 27, item 5: table names are weak evidence. django-pghistory's plain row loggers
/// (`INSERT … VALUES (NEW."col", …)` into `<app>_<model>event`, which nothing else reads) are
/// audit, and migrate; a table a view reads is not (uncertain), nor is partial tracking.
#[test]
fn plain_row_loggers_are_audit_whatever_their_table_name() {
    let c = Cluster::start(
        "migration-pghistory",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "pgh");
    c.sql("pgh", include_str!("fixtures/pghistory.sql"));
    assert_eq!(
        c.sql(
            "pgh",
            "SELECT relation, trigger_name, verdict FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "library_book|pgtrigger_insert_insert_5b7a1|audit",
            "library_book|pgtrigger_update_update_9c0d2|audit",
            "library_loan|pgtrigger_loan_insert_1f2e3|uncertain",
            // Issue 27, F9: partial tracking (fields=["title_en"]) copies some columns; NEW.title_en
            // is not NEW.title.
            "library_novel|pgtrigger_title_changed_7d3e1|uncertain"
        ]
    );
    assert_eq!(
        c.sql(
            "pgh",
            "SELECT why FROM activity_log.migration_plan() WHERE relation::text IN ('library_loan', 'library_novel') ORDER BY 1"
        ),
        [
            "copies the changed row (columns of NEW/OLD) into public.library_loanevent, but its table public.library_loanevent is read by view public.current_loans: taking it over would leave that stale",
            "copies the changed row (columns of NEW/OLD) into public.library_noveltitleevent with the operation, but only some of its columns (not title), and by its name public.library_noveltitleevent looks like a table something else reads"
        ]
    );
    full_cycle(
        &c,
        "pgh",
        "INSERT INTO library_book (title) VALUES ('Ulysses');
         UPDATE library_book SET shelf = 3 WHERE title = 'Emma';",
    );
}

/// Issue 27, item 1 (the rest): a trail that other functions read is never audit — an AS OF
/// function over temporal_tables' history (its checked variant also validates and rewrites NEW),
/// a restore function over a hand-written history table — and `why` names the reader; nor is a
/// trigger whose function belongs to an extension with C functions, which could read it unseen.
#[test]
fn trails_read_by_functions_and_extension_members_are_never_audit() {
    let c = Cluster::start(
        "migration-readers",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "temporal");
    c.sql(
        "temporal",
        include_str!("fixtures/temporal_tables_checked.sql"),
    );
    assert_eq!(
        c.sql(
            "temporal",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan()"
        ),
        [
            "contracts|contracts_history|uncertain|copies the changed row (columns of NEW/OLD) into public.contracts_history with the operation, but its table public.contracts_history is read by public.restore_contract(integer,timestamp with time zone): taking it over would leave that stale",
            "employees|versioning_trigger|uncertain|copies the changed row (NEW.* / OLD.*) into public.employees_history with the operation (a dynamic INSERT; the table is guessed from its name), but also modifies NEW, raises errors (validation): taking it over would lose that, and its table public.employees_history is read by public.employees_as_of(timestamp with time zone)"
        ]
    );
    // Without its reader, the hand-written history trigger is audit again.
    c.sql(
        "temporal",
        "DROP FUNCTION public.restore_contract(int, timestamptz)",
    );
    assert_eq!(
        c.one(
            "temporal",
            "SELECT verdict FROM activity_log.migration_plan() WHERE trigger_name = 'contracts_history'"
        ),
        "audit"
    );

    common::with_extension(&c, "guards");
    c.sql("guards", include_str!("fixtures/audit_trigger_guards.sql"));
    c.sql(
        "guards",
        "ALTER EXTENSION hstore ADD FUNCTION audit.if_modified_func()",
    );
    assert_eq!(
        c.sql(
            "guards",
            "SELECT trigger_name, verdict, why FROM activity_log.migration_plan()"
        ),
        [
            "audit_trigger_row|uncertain|copies the changed row (hstore(NEW/OLD)) into audit.logged_actions with the operation, but its function belongs to extension hstore, whose functions in C could read what it writes unseen: taking it over would leave that stale; one system with audit_trigger_stm (the same function audit.if_modified_func): they migrate together, when all of them are named",
            "audit_trigger_stm|uncertain|copies the changed row (hstore(NEW/OLD)) into audit.logged_actions with the operation, but its function belongs to extension hstore, whose functions in C could read what it writes unseen: taking it over would leave that stale; one system with audit_trigger_row (the same function audit.if_modified_func): they migrate together, when all of them are named"
        ]
    );
    c.sql(
        "guards",
        "ALTER EXTENSION hstore DROP FUNCTION audit.if_modified_func()",
    );
    assert_eq!(
        verdicts(&c, "guards"),
        [
            "ledger.accounts|audit_trigger_row|audit",
            "ledger.accounts|audit_trigger_stm|audit"
        ]
    );
}

/// Issue 27, item 4: pgMemento's five triggers per table (log_statement and log_truncate
/// statement triggers writing table_event_log / transaction_log and row_log through helpers,
/// log_insert / log_update / log_delete writing row_log, which refers to table_event_log by
/// its event_key) are one system with one verdict. Its restore functions read row_log and
/// table_event_log, so that verdict is uncertain, for all five; naming some is refused, naming
/// all of them migrates them together.
#[test]
fn pgmemento_is_one_system_read_by_its_restore_functions() {
    let c = Cluster::start(
        "migration-pgmemento",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "memento");
    c.sql("memento", include_str!("fixtures/pgmemento.sql"));
    assert_eq!(
        c.sql(
            "memento",
            "SELECT relation, trigger_name, verdict, style FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "parcels|pgmemento_delete_trigger|uncertain|generic jsonb audit",
            "parcels|pgmemento_insert_trigger|uncertain|generic jsonb audit",
            "parcels|pgmemento_transaction_trigger|uncertain|other",
            "parcels|pgmemento_truncate_trigger|uncertain|other",
            "parcels|pgmemento_update_trigger|uncertain|generic jsonb audit"
        ]
    );
    let system = " (both write pgmemento.row_log; pgmemento.row_log.event_key refers to pgmemento.table_event_log)";
    let readers = "pgmemento.restore_query(integer,integer,text,text), pgmemento.restore_record(integer,integer,text,text,bigint)";
    assert_eq!(
        c.sql(
            "memento",
            "SELECT why FROM activity_log.migration_plan()
              WHERE trigger_name IN ('pgmemento_insert_trigger', 'pgmemento_transaction_trigger') ORDER BY trigger_name"
        ),
        [
            format!("copies the changed row (as jsonb) into pgmemento.row_log with the operation, but also runs a statement built at run time: taking it over would lose that, and its table pgmemento.row_log is read by {readers}; one system with pgmemento_delete_trigger, pgmemento_transaction_trigger, pgmemento_truncate_trigger, pgmemento_update_trigger{system}: they migrate together, when all of them are named"),
            format!("writes pgmemento.table_event_log, but not the changed row; its table pgmemento.table_event_log is read by {readers}; it also writes pgmemento.transaction_log, which is not a copy of the row; one system with pgmemento_delete_trigger, pgmemento_insert_trigger, pgmemento_truncate_trigger, pgmemento_update_trigger{system}: pgmemento_delete_trigger is uncertain, so they migrate together, when all of them are named")
        ]
    );
    // The row triggers alone would split the system: refused.
    let err = c.error(
        "memento",
        "SELECT activity_log.migrate_triggers(phase => 1, dry_run => true,
             include_triggers => '{pgmemento_insert_trigger,pgmemento_update_trigger,pgmemento_delete_trigger}')",
    );
    assert!(
        err.contains("trigger pgmemento_delete_trigger on public.parcels is one system with pgmemento_insert_trigger, pgmemento_transaction_trigger, pgmemento_truncate_trigger, pgmemento_update_trigger: they migrate together or not at all"),
        "{err}"
    );
    // All five: they move together.
    c.sql(
        "memento",
        "SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{pgmemento_insert_trigger,pgmemento_update_trigger,pgmemento_delete_trigger,pgmemento_transaction_trigger,pgmemento_truncate_trigger}')",
    );
    assert_eq!(
        c.one(
            "memento",
            "SELECT string_agg(trigger_name, ',' ORDER BY trigger_name) FROM activity_log.migration_backup"
        ),
        "pgmemento_delete_trigger,pgmemento_insert_trigger,pgmemento_transaction_trigger,pgmemento_truncate_trigger,pgmemento_update_trigger"
    );
    c.sql("memento", "SELECT activity_log.rollback_migration()");
}

/// Issue 27, F1: tables something else consumes are never audit trails. Debezium's outbox
/// layout (both spellings) and a polling relay's status / sent_at columns make the trigger
/// business; a history table in a publication (the table's own, its schema's, or one for all
/// tables) is read by logical replication, so its trigger is uncertain; a table named for events
/// is weak evidence against auditing, never for it.
#[test]
fn outboxes_queues_and_published_trails_are_never_audit() {
    let c = Cluster::start(
        "migration-outbox",
        &[
            "activity_log.capture_statements = 'none'",
            "wal_level = logical",
        ],
    );
    common::with_extension(&c, "outbox");
    c.sql("outbox", include_str!("fixtures/outbox.sql"));
    assert_eq!(
        c.sql(
            "outbox",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "ledger.entries|entries_history|uncertain|copies the changed row (columns of NEW/OLD) into ledger.entries_history with the operation, but its table ledger.entries_history is published (publication ledger_feed): logical replication sends its rows on: taking it over would leave that stale",
            "shop.carts|carts_events|uncertain|copies the changed row (as jsonb) into shop.cart_events with the operation, and by its name shop.cart_events looks like a table something else reads",
            "shop.customers|customers_events|business|feeds an outbox: shop.domain_events has aggregate_type, aggregate_id, event_type, payload columns, the layout an outbox relay (Debezium's event router) reads",
            "shop.invoices|invoices_publish|business|feeds a delivery queue: shop.message_outbox has status, sent_at columns, so something consumes its rows",
            "shop.orders|orders_outbox|business|feeds an outbox: shop.outbox has aggregatetype, aggregateid, type, payload columns, the layout an outbox relay (Debezium's event router) reads",
            "shop.prices|prices_history|uncertain|copies the changed row (columns of NEW/OLD) into shop.prices_history with the operation, but its table shop.prices_history is published (publication reporting): logical replication sends its rows on: taking it over would leave that stale"
        ]
    );
    // Out of its publication the history table is a trail again; a publication of all tables
    // takes it back.
    c.sql(
        "outbox",
        "ALTER PUBLICATION reporting DROP TABLE shop.prices_history",
    );
    let verdict =
        "SELECT verdict FROM activity_log.migration_plan() WHERE trigger_name = 'prices_history'";
    assert_eq!(c.one("outbox", verdict), "audit");
    c.sql("outbox", "CREATE PUBLICATION everything FOR ALL TABLES");
    assert_eq!(c.one("outbox", verdict), "uncertain");
    assert!(c
        .error(
            "outbox",
            "SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{orders_outbox}')"
        )
        .contains("is a business trigger"));
}

/// Issue 27, F2: the allow-list. A trigger that copies the row is audit only when everything
/// else it does is on the list; UPDATE with an alias, helpers (with or without their schema)
/// that notify or update, an upsert, a second INSERT into a delivery queue, NOTIFY built at
/// run time, REFRESH MATERIALIZED VIEW and dblink_exec all keep it from being taken over, and
/// why says which. One that only calls allowed built-ins and a helper that passes the list
/// migrates.
#[test]
fn what_is_not_on_the_allow_list_keeps_a_trigger_from_audit() {
    let c = Cluster::start(
        "migration-allow-list",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "side");
    c.sql("side", include_str!("fixtures/side_effects.sql"));
    let copies = "copies the changed row (as jsonb) into audit.logged_actions with the operation";
    assert_eq!(
        c.sql(
            "side",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "accounts|accounts_audit|business|feeds a delivery queue: public.webhook_queue has delivered, tries, next_retry_at columns, so something consumes its rows".to_string(),
            "docs|docs_audit_refresh|uncertain|copies the changed row (from the transition table) into audit.logged_actions with the operation, but also refreshes a materialized view: taking it over would lose that".to_string(),
            format!("jobs|jobs_audit_notify|uncertain|{copies}, but also sends notifications: taking it over would lose that"),
            format!("ledger|ledger_audit|uncertain|{copies}, but also calls dblink_exec(), which is volatile: taking it over would lose that"),
            format!("notes|notes_audit|audit|{copies}"),
            format!("orders|orders_history|uncertain|{copies}, but also updates or deletes other rows: taking it over would lose that"),
            format!("sales|sales_audit|uncertain|{copies}, but also upserts into public.daily_sales (ON CONFLICT … DO UPDATE): taking it over would lose that, and it also writes public.daily_sales, which is not a copy of the row"),
            format!("stock_moves|stock_moves_audit|uncertain|{copies}, but also calls public.apply_move(text,integer), which updates or deletes other rows: taking it over would lose that"),
            format!("tickets|tickets_audit|uncertain|{copies}, but also calls public.announce(text,integer), which sends notifications: taking it over would lose that"),
        ]
    );
    full_cycle(
        &c,
        "side",
        "INSERT INTO public.notes VALUES (1, 'a'), (2, 'b');
         UPDATE public.notes SET body = 'c' WHERE id = 1;
         DELETE FROM public.notes WHERE id = 2;",
    );
}

/// Issue 27, F3: a column name shared by accident (table_name, unique in a cache-version table)
/// links no system, so the audit trigger stays audit and the cache bump business; a foreign key
/// does, but a member that copies no row and writes a table no row copy of the system writes
/// is never promoted to audit: the system is uncertain.
#[test]
fn systems_are_linked_by_real_references_and_promote_only_trail_writers() {
    let c = Cluster::start(
        "migration-systems",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "sys");
    c.sql("sys", include_str!("fixtures/systems.sql"));
    let link = "one system with {} (audit.row_changes references audit.batches): a_batch copies no row and writes audit.batches, which no row copy of the system writes, so they migrate together, when all of them are named";
    assert_eq!(
        c.sql(
            "sys",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "orders|audit|audit|copies the changed row (as jsonb) into audit.logged_actions with the operation".to_string(),
            "orders|bump_version|business|writes public.table_versions, but not the changed row".to_string(),
            format!("parts|a_batch|uncertain|writes audit.batches, but not the changed row; {}", link.replace("{}", "b_rows")),
            format!("parts|b_rows|uncertain|copies the changed row (as jsonb) into audit.row_changes with the operation; {}", link.replace("{}", "a_batch")),
        ]
    );
    full_cycle(
        &c,
        "sys",
        "INSERT INTO public.orders VALUES (3, 30);
         UPDATE public.orders SET total = 11 WHERE id = 1;
         DELETE FROM public.orders WHERE id = 2;",
    );
    // The cache bump kept firing throughout: the fixture's INSERT and the cycle's three statements.
    assert_eq!(
        c.one(
            "sys",
            "SELECT version FROM public.table_versions WHERE table_name = 'orders'"
        ),
        "4"
    );
}

/// Issue 27, F4: readers the source scan of SQL and PL/pgSQL functions missed — a BEGIN ATOMIC
/// function, a view, a materialized view, a rule, another table's trigger function — keep a
/// history trigger from audit, and why names them; the one nothing reads migrates.
#[test]
fn readers_seen_through_pg_depend_and_other_triggers_are_never_audit() {
    let c = Cluster::start(
        "migration-readers-f4",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "readers");
    c.sql("readers", include_str!("fixtures/readers.sql"));
    let read = |t: &str, reader: &str| {
        format!(
            "copies the changed row (columns of NEW/OLD) into public.{t}, but its table public.{t} is read by {reader}: taking it over would leave that stale"
        )
    };
    assert_eq!(
        c.sql(
            "readers",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "email_requests|email_requests_check|business|Raises errors (validation); does not copy the row elsewhere".to_string(),
            format!("members|members_versioning|uncertain|{}", read("members_history", "public.email_requests_check()")),
            format!("plans|plans_versioning|uncertain|{}", read("plans_history", "rule plans_history_names on public.plan_names")),
            format!("prices|prices_versioning|uncertain|{}", read("prices_history", "public.price_as_of(text,timestamp with time zone)")),
            format!("rates|rates_versioning|uncertain|{}", read("rates_history", "view public.rates_as_of")),
            format!("stock|stock_versioning|uncertain|{}", read("stock_history", "materialized view public.stock_churn")),
            "tags|tags_versioning|audit|copies the changed row (columns of NEW/OLD) into public.tags_history with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "readers",
        "UPDATE public.tags SET label = 'green' WHERE id = 1;
         DELETE FROM public.tags WHERE id = 2;",
    );
}

/// Issue 27, F5: a statement trigger that aggregates its transition table (GROUP BY, count)
/// copies no row; one that selects the rows as they are does, and migrates.
#[test]
fn transition_table_aggregates_are_not_row_copies() {
    let c = Cluster::start(
        "migration-transition",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "tt");
    c.sql("tt", include_str!("fixtures/transition_aggregates.sql"));
    assert_eq!(
        c.sql(
            "tt",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan()"
        ),
        [
            "books|books_audit|audit|copies the changed row (from the transition table) into public.books_audit with the operation",
            "events_in|count_kinds|business|writes public.kind_changes, but not the changed row"
        ]
    );
    full_cycle(
        &c,
        "tt",
        "INSERT INTO public.books VALUES (1, 'Emma'), (2, 'Kim');
         INSERT INTO public.books VALUES (3, 'Ulysses');",
    );
}

/// Issue 27, F6: a pinned search_path is read as PostgreSQL reads it ("a,b" is one schema;
/// '"a,b"' names a schema with quotes in its name), and the plan never fails for everyone
/// because of one function.
#[test]
fn search_paths_are_read_as_postgresql_reads_them() {
    let c = Cluster::start(
        "migration-search-path",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "sp");
    c.sql("sp", include_str!("fixtures/search_path.sql"));
    assert_eq!(
        c.sql(
            "sp",
            "SELECT relation, trigger_name, verdict, audit_table FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "mal2.other|log_other|audit|mal2.thing_log",
            "mal2.thing|log_it|audit|\"a,b\".thing_log"
        ]
    );
    // Where the rows really go.
    c.sql(
        "sp",
        "INSERT INTO mal2.thing VALUES (1, 'x'); INSERT INTO mal2.other VALUES (1, 'y')",
    );
    assert_eq!(
        c.one(
            "sp",
            "SELECT (SELECT count(*) FROM \"a,b\".thing_log) || ' ' || (SELECT count(*) FROM mal2.thing_log)"
        ),
        "1 1"
    );
    assert!(
        !c.sql(
            "sp",
            "SELECT activity_log.migrate_triggers(phase => 1, dry_run => true)"
        )
        .is_empty()
    );
}

/// Issue 27, F8: an uncertain system spans tables — pgMemento's functions serve every table it
/// logs, into one row_log — so naming its triggers on some of them is refused, with a hint
/// naming all; naming them on every table (tables => NULL matches trigger names on every
/// table) is accepted.
#[test]
fn uncertain_systems_across_tables_migrate_whole() {
    let c = Cluster::start(
        "migration-across",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "memento");
    c.sql("memento", include_str!("fixtures/pgmemento.sql"));
    c.sql(
        "memento",
        "CREATE TABLE public.plots (id serial PRIMARY KEY, name text,
             pgmemento_audit_id bigint NOT NULL UNIQUE DEFAULT nextval('pgmemento.audit_id_seq'));
         SELECT pgmemento.create_table_log_trigger('plots');",
    );
    let all = "'{pgmemento_insert_trigger,pgmemento_update_trigger,pgmemento_delete_trigger,pgmemento_transaction_trigger,pgmemento_truncate_trigger}'";
    let err = c.error(
        "memento",
        &format!("SELECT activity_log.migrate_triggers(phase => 1, dry_run => true, tables => '{{parcels}}', include_triggers => {all})"),
    );
    assert!(
        err.contains("trigger pgmemento_delete_trigger on public.parcels is one system with the triggers of public.plots: they migrate together or not at all")
            && err.contains("tables => '{public.parcels,public.plots}'"),
        "{err}"
    );
    assert_eq!(
        c.sql(
            "memento",
            &format!("SELECT s FROM activity_log.migrate_triggers(phase => 1, dry_run => true, include_triggers => {all}) s WHERE s LIKE 'LOCK%'")
        ),
        [
            "LOCK TABLE public.parcels IN SHARE ROW EXCLUSIVE MODE",
            "LOCK TABLE public.plots IN SHARE ROW EXCLUSIVE MODE"
        ]
    );
}

/// Issue 27, review findings F7 and F8: a trail that does business work itself (a view, a
/// foreign table, a trigger or rule of its own or of a partition, a default calling a user
/// function) and a trigger that writes a table besides its trail are never audit.
#[test]
fn trails_that_do_business_work_and_second_tables_are_never_audit() {
    let c = Cluster::start(
        "migration-trails-f7",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "trails");
    c.sql("trails", include_str!("fixtures/trails.sql"));
    assert_eq!(
        c.sql(
            "trails",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "audit.b3_log|b3_ship|business|Sends notifications, updates or deletes other rows; does not copy the row elsewhere".to_string(),
            "audit.b6_log|b6_log_ins|business|INSTEAD OF trigger: it carries out the write on the view; activity_log tracks tables only".to_string(),
            "audit.b7_log_all|b7_part|business|Sends notifications; does not copy the row elsewhere".to_string(),
            "b1|b1_audit|uncertain|copies the changed row (as jsonb) into audit.b1_log with the operation, but it also writes public.user_notifications, which is not a copy of the row: taking it over would leave that stale".to_string(),
            "b10|b10_audit|uncertain|copies the changed row (as jsonb) into audit.b10_log with the operation, but its table audit.b10_log runs code of its own (the default of column receipt calls public.next_number(text)): taking it over would leave that stale".to_string(),
            "b10b|b10b_audit|uncertain|copies the changed row (as jsonb) into audit.b10b_log with the operation, but its table audit.b10b_log runs code of its own (column receipt is of domain public.receipt_no, whose check calls public.receipt_ok(bigint)): taking it over would leave that stale".to_string(),
            "b11|b11_audit|uncertain|copies the changed row (as jsonb) into audit.b11_log with the operation, but its table audit.b11_log is a foreign table, not a table: taking it over would leave that stale".to_string(),
            "b3|b3_audit|uncertain|copies the changed row (as jsonb) into audit.b3_log with the operation, but its table audit.b3_log runs code of its own (trigger b3_ship on audit.b3_log): taking it over would leave that stale".to_string(),
            "b4|b4_audit|uncertain|copies the changed row (as jsonb) into audit.b4_log with the operation, but its table audit.b4_log runs code of its own (rule b4_forward on audit.b4_log, rule b4_notify on audit.b4_log): taking it over would leave that stale".to_string(),
            "b5|b5_audit|uncertain|copies the changed row (as jsonb) into audit.b5_log with the operation, but its table audit.b5_log is a view, not a table: taking it over would leave that stale".to_string(),
            "b6|b6_audit|uncertain|copies the changed row (as jsonb) into audit.b6_log with the operation, but its table audit.b6_log is a view, not a table: taking it over would leave that stale".to_string(),
            "b7|b7_audit|uncertain|copies the changed row (as jsonb) into audit.b7_log with the operation, but its table audit.b7_log runs code of its own (trigger b7_part on audit.b7_log_all): taking it over would leave that stale".to_string(),
            "c7|c7_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but it also writes public.c7_last_change, which is not a copy of the row: taking it over would leave that stale".to_string(),
            "plain|plain_audit|audit|copies the changed row (as jsonb) into audit.plain_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "trails",
        "INSERT INTO public.plain VALUES (1, 'a'), (2, 'b');
         UPDATE public.plain SET v = 'c' WHERE id = 1;",
    );
}

/// Hostile review of the parser, finding 1: in a session with standard_conforming_strings off,
/// a guard written to be a string with it on ('\' OR ' OR public.evil() …) ran its owner's
/// function as the superuser reading the plan, and the plan's own patterns ('\m…') read
/// differently. The plan pins the setting: the same plan either way, and no user code runs.
#[test]
fn the_plan_is_the_same_whatever_standard_conforming_strings() {
    let c = Cluster::start(
        "migration-scs",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "scs");
    c.sql(
        "scs",
        "CREATE ROLE mallory LOGIN;
         GRANT CREATE ON SCHEMA public TO mallory;
         CREATE SCHEMA audit;
         CREATE TABLE audit.plain_log (id bigserial PRIMARY KEY, action text, row_data jsonb);
         CREATE TABLE public.plain (id int PRIMARY KEY, v text);
         CREATE FUNCTION public.plain_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_WHEN <> 'AFTER' THEN
                 RAISE EXCEPTION 'plain_audit() may only run as an AFTER trigger';
             END IF;
             INSERT INTO audit.plain_log (action, row_data) VALUES (TG_OP, to_jsonb(NEW));
             RETURN NULL;
         END $$;
         CREATE TRIGGER plain_audit AFTER INSERT OR UPDATE ON public.plain
             FOR EACH ROW EXECUTE FUNCTION public.plain_audit();",
    );
    c.sql_as(
        "mallory",
        "scs",
        r"CREATE FUNCTION public.evil() RETURNS int LANGUAGE plpgsql AS $e$
          BEGIN
              IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                  EXECUTE 'ALTER ROLE mallory SUPERUSER';
              END IF;
              RETURN NULL;
          END $e$;
          CREATE TABLE public.t6 (id int, amount int);
          CREATE TABLE public.t6_log (action text, row_data jsonb);
          CREATE FUNCTION public.t6_audit() RETURNS trigger LANGUAGE plpgsql
              SET standard_conforming_strings = on AS $b$
          BEGIN
              IF NEW.id IS NULL THEN
                  IF tg_op = '' OR ' OR public.evil() IS NULL) --' THEN RAISE EXCEPTION 'x'; END IF;
              END IF;
              INSERT INTO public.t6_log VALUES (TG_OP, to_jsonb(NEW));
              RETURN NULL;
          END $b$;
          CREATE TRIGGER t6_audit AFTER INSERT OR UPDATE OR DELETE ON public.t6
              FOR EACH ROW EXECUTE FUNCTION public.t6_audit();",
    );
    let plan = "SELECT relation || '|' || verdict || '|' || why FROM activity_log.migration_plan() ORDER BY 1;";
    let on_then_off = c.sql(
        "scs",
        &format!("{plan} SET standard_conforming_strings = off; {plan} SELECT 'mallory superuser: ' || rolsuper FROM pg_roles WHERE rolname = 'mallory';"),
    );
    assert_eq!(
        on_then_off,
        [
            "plain|audit|copies the changed row (as jsonb) into audit.plain_log with the operation",
            "t6|uncertain|copies the changed row (as jsonb) into public.t6_log with the operation, but also raises errors (validation): taking it over would lose that",
            "plain|audit|copies the changed row (as jsonb) into audit.plain_log with the operation",
            "t6|uncertain|copies the changed row (as jsonb) into public.t6_log with the operation, but also raises errors (validation): taking it over would lose that",
            "mallory superuser: false",
        ]
    );
    // A session that starts with it off reads the same plan.
    assert_eq!(
        c.sql(
            "scs",
            &format!("SET standard_conforming_strings = off; {plan}")
        ),
        on_then_off[..2]
    );
    // A body with a backslash in a literal is read with the setting on; where sessions start
    // with it off (a role's default here) it may mean something else: not audit.
    c.sql(
        "scs",
        r"CREATE TABLE public.bs (id int PRIMARY KEY, v text);
          CREATE FUNCTION public.bs_audit() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              INSERT INTO audit.plain_log (action, row_data) VALUES (replace(TG_OP, '\', ''), to_jsonb(NEW));
              RETURN NULL;
          END $$;
          CREATE TRIGGER bs_audit AFTER INSERT OR UPDATE ON public.bs
              FOR EACH ROW EXECUTE FUNCTION public.bs_audit();",
    );
    let bs = "SELECT verdict || ' ' || why FROM activity_log.migration_plan() WHERE trigger_name = 'bs_audit'";
    assert_eq!(
        c.one("scs", bs),
        "audit copies the changed row (as jsonb) into audit.plain_log with the operation"
    );
    // Every spelling of off PostgreSQL accepts for a role (review of 2026-12-06, F1: 'f' read as
    // on, and the trigger's inserts failed in mallory's sessions).
    for off in ["f", "fa", "FALS", "of", "n", "No", "0", "off"] {
        c.sql(
            "scs",
            &format!("ALTER ROLE mallory SET standard_conforming_strings = '{off}'"),
        );
        assert_eq!(
            c.one("scs", bs),
            "uncertain copies the changed row (as jsonb) into audit.plain_log with the operation, but also has a body PL/pgSQL reads otherwise with standard_conforming_strings off, as sessions here may start: taking it over would lose that",
            "{off}"
        );
    }
}

/// Issue 27, review finding F11: a table named only at run time (format('INSERT INTO %s', TG_ARGV[0]))
/// is a guess, and an unqualified name that means another table under a role's search_path is
/// ambiguous: neither is audit.
#[test]
fn run_time_and_ambiguous_targets_are_never_audit() {
    let c = Cluster::start(
        "migration-targets-f11",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "targets");
    c.sql("targets", include_str!("fixtures/run_time_targets.sql"));
    assert_eq!(
        c.sql(
            "targets",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "c5|c5_log|uncertain|copies the changed row (NEW.* / OLD.*) into public.c5_history with the operation (a dynamic INSERT; the table is guessed from its name), but also runs a statement built at run time: taking it over would lose that".to_string(),
            "c6|c6_audit|uncertain|copies the changed row (as jsonb) into public.change_log with the operation, but it names its table without a schema: INSERT INTO change_log means app.change_log for role app_user (search_path app, public): taking it over would leave that stale".to_string(),
            "plain|plain_audit|audit|copies the changed row (as jsonb) into public.plain_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "targets",
        "INSERT INTO public.plain VALUES (1, 'a'), (2, 'b');
         UPDATE public.plain SET v = 'c' WHERE id = 1;",
    );
}

/// Issue 27, second review, findings F3, F4 and F5: a guard on an operation the trigger fires on,
/// an ELSE RAISE an event falls through to, RAISE condition_name / with no level / SQLSTATE,
/// ASSERT, INTO STRICT, a helper that raises and a CASE without ELSE all make writes fail: never
/// audit; so do (hostile review of the parser) a guard whose quotes read differently with
/// standard_conforming_strings off or whose tg_op is a type name, INSERT … RETURNING INTO,
/// INTO under plpgsql.extra_errors, a path to the end without RETURN, a NOT NULL variable; and
/// (second review) EXIT out of a block, GET STACKED DIAGNOSTICS outside a handler, a cursor
/// opened twice (outside the allow-list), a NOT NULL domain variable, an AFTER row trigger returning a non-row. A guard no event reaches (around the check, too), an ELSE or a CASE no event falls
/// through and RAISE NOTICE do not.
#[test]
fn validation_in_every_form_keeps_a_trigger_from_audit() {
    let c = Cluster::start(
        "migration-validation-f3",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "val");
    c.sql("val", include_str!("fixtures/validation.sql"));
    assert_eq!(
        c.sql(
            "val",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "a1|a1_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "a2|a2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "a3|a3_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "a4|a4_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "a5|a5_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.check_period_open(date), which raises errors: taking it over would lose that".to_string(),
            "p1|p1_audit|audit|copies the changed row (as jsonb) into audit.p1_log with the operation".to_string(),
            "p2|p2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "p3|p3_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "p4|p4_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "p5|p5_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r1|r1_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r10v|r10v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r11v|r11v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r2|r2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r3v|r3v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r4v|r4v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r5v|r5v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r6v|r6v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r7v|r7v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r8v|r8v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "r9v|r9v_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also uses a cursor: taking it over would lose that".to_string(),
            "v1|v1_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "v2|v2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "v3|v3_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "v4|v4_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "w1|w1_audit|audit|copies the changed row (as jsonb) into audit.w1_log with the operation".to_string(),
        ]
    );
    // Each of them really rejects a write it fires on (the one in the fixture's comment).
    for (write, error) in [
        (
            "INSERT INTO public.p2 VALUES (1, 'other')",
            "case not found",
        ),
        ("INSERT INTO public.p3 VALUES (1, 'a')", "p3 is append-only"),
        ("INSERT INTO public.p4 VALUES (1, 'a')", "p4 is append-only"),
        ("INSERT INTO public.p5 VALUES (1, 'a')", "p5 is append-only"),
        ("INSERT INTO public.r1 VALUES (2, -5)", "negative amount"),
        ("INSERT INTO public.r2 VALUES (1, 1)", "rejected"),
        (
            "INSERT INTO public.r3v VALUES (1, -1)",
            "query returned more than one row",
        ),
        (
            "INSERT INTO public.r4v VALUES (1, -1)",
            "query returned more than one row",
        ),
        (
            "INSERT INTO public.r5v VALUES (1, -1)",
            "control reached end of trigger procedure without RETURN",
        ),
        ("INSERT INTO public.r6v VALUES (1, -1)", "declared NOT NULL"),
        (
            "INSERT INTO public.r7v VALUES (1, 1); DELETE FROM public.r7v",
            "control reached end of trigger procedure without RETURN",
        ),
        (
            "INSERT INTO public.r8v VALUES (1, 1); DELETE FROM public.r8v",
            "GET STACKED DIAGNOSTICS cannot be used outside an exception handler",
        ),
        (
            "INSERT INTO public.r9v VALUES (1, 1); DELETE FROM public.r9v",
            "already in use",
        ),
        (
            "INSERT INTO public.r10v VALUES (1, 1); DELETE FROM public.r10v",
            "does not allow null values",
        ),
        (
            "INSERT INTO public.r11v VALUES (1, 1); DELETE FROM public.r11v",
            "cannot return non-composite value",
        ),
    ] {
        let stderr = c.error("val", &format!("{write};"));
        assert!(stderr.contains(error), "{write}: {stderr}");
    }
    // P1 to P5 are what plpgsql's compiler reads right and the reading of the text did not: a
    // check under a guard no event it fires on passes, a CASE without ELSE that raises, and
    // TG_OP assigned, shadowed by a variable or an ALIAS.
    assert_eq!(
        c.sql(
            "val",
            "SELECT tgname || ' ' || activity_log._raises_on_writes(activity_log._source_text(p.prosrc), t.tgtype)
               FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
              WHERE tgname LIKE 'p_\\_audit' ORDER BY 1"
        ),
        [
            "p1_audit true",
            "p2_audit false",
            "p3_audit false",
            "p4_audit false",
            "p5_audit false"
        ]
    );
    full_cycle(
        &c,
        "val",
        "INSERT INTO public.w1 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w1 SET v = 'c' WHERE id = 1;
         INSERT INTO public.p1 VALUES (1, 'a'), (2, 'b');
         UPDATE public.p1 SET v = 'c' WHERE id = 1;",
    );
}

/// Issue 27, second review, finding F6: NEW changed through an ALIAS FOR NEW, through a nested
/// field (NEW.address.city := …), or by a BEFORE UPDATE trigger returning OLD is never audit; a
/// BEFORE trigger that returns OLD only for DELETE is.
#[test]
fn new_changed_through_aliases_fields_and_return_old_is_never_audit() {
    let c = Cluster::start(
        "migration-new-f6",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "nw");
    c.sql("nw", include_str!("fixtures/new_rewrites.sql"));
    assert_eq!(
        c.sql(
            "nw",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "a6|a6_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "a7|a7_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "a8|a8_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "w2|w2_audit|audit|copies the changed row (as jsonb) into audit.w2_log with the operation".to_string(),
        ]
    );
}

/// Issue 27, second review, finding F2: the functions called inside an EXECUTE of a literal
/// string (a helper that updates, set_config(), pg_advisory_xact_lock()) are checked like the
/// body's own; a literal INSERT calling only harmless built-ins stays audit.
#[test]
fn calls_inside_execute_literals_are_checked() {
    let c = Cluster::start(
        "migration-execute-f2",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "ex");
    c.sql("ex", include_str!("fixtures/execute_calls.sql"));
    assert_eq!(
        c.sql(
            "ex",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "a10|a10_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls pg_advisory_xact_lock(), which is volatile, calls public.bump_counter(text), which updates or deletes other rows, calls set_config(), which is volatile: taking it over would lose that".to_string(),
            "w3|w3_audit|audit|copies the changed row (NEW.* / OLD.*) into audit.w3_log with the operation".to_string(),
        ]
    );
}

/// Issue 27, second review, finding F12: nextval() on a shared business sequence is not audit;
/// on the trail's own serial it is.
#[test]
fn nextval_only_on_the_trails_own_sequences() {
    let c = Cluster::start(
        "migration-sequences-f12",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "sq");
    c.sql("sq", include_str!("fixtures/sequences.sql"));
    assert_eq!(
        c.sql(
            "sq",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "c8|c8_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but it takes numbers from nextval('public.invoice_no'), a sequence no table it writes owns: taking it over would leave that stale".to_string(),
            "w4|w4_audit|audit|copies the changed row (as jsonb) into audit.w4_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "sq",
        "INSERT INTO public.w4 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w4 SET v = 'c' WHERE id = 1;",
    );
}

/// Issue 27, second review, finding F9: a trail read by another trigger of its table that does
/// not write it (a rate limit), a row level security policy, a foreign key of another table, or
/// published through one of its partitions is never audit.
#[test]
fn readers_through_policies_foreign_keys_partitions_and_sibling_triggers() {
    let c = Cluster::start(
        "migration-readers-f9",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "mr");
    c.sql("mr", include_str!("fixtures/more_readers.sql"));
    assert_eq!(
        c.sql(
            "mr",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "b12|b12_audit|uncertain|copies the changed row (as jsonb) into audit.b12_log with the operation, but its table audit.b12_log is used by publication b12_cdc (of its partition audit.b12_log_all): taking it over would leave that stale".to_string(),
            "b2|b2_audit|uncertain|copies the changed row (as jsonb) into audit.b2_log with the operation, but its table audit.b2_log is read by public.b2_rate_limit(): taking it over would leave that stale".to_string(),
            "b2|b2_rate_limit|business|Raises errors (validation); does not copy the row elsewhere".to_string(),
            "b8|b8_audit|uncertain|copies the changed row (as jsonb) into audit.b8_log with the operation, but its table audit.b8_log is used by policy b8_own on public.b8: taking it over would leave that stale".to_string(),
            "b9|b9_audit|uncertain|copies the changed row (as jsonb) into audit.b9_log with the operation, but its table audit.b9_log is used by foreign key approvals_audit_id_fkey of public.approvals: taking it over would leave that stale".to_string(),
        ]
    );
}

/// Issue 27, second review, finding F1: a function body is read once, left to right, as
/// PostgreSQL's scanner reads it, so `'--'`, `$q$it's$q$` or `E'\''` hide no UPDATE, TRUNCATE
/// or set_config(); a body with an unterminated string (stored with check_function_bodies off)
/// is unanalysable; every quoting form in a harmless body leaves it audit. Also the logical
/// slot rule of finding F9 (a slot whose plugin is not pgoutput decodes the trail's changes).
#[test]
fn statements_hidden_by_quotes_and_comments_are_seen() {
    let c = Cluster::start(
        "migration-hidden-f1",
        &[
            "activity_log.capture_statements = 'none'",
            "wal_level = logical",
        ],
    );
    common::with_extension(&c, "hs");
    c.sql("hs", include_str!("fixtures/hidden_statements.sql"));
    assert_eq!(
        c.sql(
            "hs",
            "SELECT relation, trigger_name, verdict, style, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "a11|a11_audit|uncertain|generic jsonb audit|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also updates or deletes other rows: taking it over would lose that".to_string(),
            "a12|a12_audit|uncertain|generic jsonb audit|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls set_config(), which is volatile, refreshes a materialized view: taking it over would lose that".to_string(),
            "a13|a13_audit|uncertain|generic jsonb audit|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls pg_advisory_lock(), which is volatile, truncates a table: taking it over would lose that".to_string(),
            "u1|u1_audit|uncertain|unanalysable|could not be analysed (a function body has an unterminated quoted string (' at character 139), so it cannot be read as PostgreSQL reads it): left alone unless named".to_string(),
            "w5|w5_audit|audit|per-table jsonb audit|copies the changed row (as jsonb) into audit.w5_log with the operation".to_string(),
        ]
    );
    c.sql(
        "hs",
        "SELECT pg_create_logical_replication_slot('cdc_f1', 'test_decoding')",
    );
    assert_eq!(
        c.sql(
            "hs",
            "SELECT verdict, why FROM activity_log.migration_plan() WHERE trigger_name = 'w5_audit'"
        ),
        [
            "uncertain|copies the changed row (as jsonb) into audit.w5_log with the operation, but its table audit.w5_log is used by logical replication slot cdc_f1 (plugin test_decoding), which decodes the changes of every table: taking it over would leave that stale"
        ]
    );
    c.sql("hs", "SELECT pg_drop_replication_slot('cdc_f1')");
    full_cycle(
        &c,
        "hs",
        "INSERT INTO public.w5 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w5 SET \"v;'x\" = 'c' WHERE id = 1;
         DELETE FROM public.w5 WHERE id = 2;",
    );
}

/// Issue 27, second review, finding F10: code a trigger runs without a call written name(…) —
/// `(NEW).bump` (bump(NEW), functional notation), a user function named `filter`, a
/// user-defined operator, a variable of a domain whose check calls a function, a function in
/// the trigger's WHEN clause — keeps it from audit; the same constructs over built-ins do not.
#[test]
fn calls_without_a_call_written_are_seen() {
    let c = Cluster::start(
        "migration-unseen-f10",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "uc");
    c.sql("uc", include_str!("fixtures/unseen_calls.sql"));
    assert_eq!(
        c.sql(
            "uc",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "a9|a9_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.bump(public.a9), which updates or deletes other rows: taking it over would lose that".to_string(),
            "c1|c1_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.filter(text), which updates or deletes other rows: taking it over would lose that".to_string(),
            "c2|c2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also uses operator public.@@~(text,integer), a user-defined operator running public.tally(text,integer): taking it over would lose that".to_string(),
            "c3|c3_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also uses domain public.tracked_name, whose check calls public.seen(text): taking it over would lose that".to_string(),
            "c4|c4_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.filter(text) in its WHEN clause, which updates or deletes other rows: taking it over would lose that".to_string(),
            "w6|w6_audit|audit|copies the changed row (as jsonb) into audit.w6_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "uc",
        "INSERT INTO public.w6 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w6 SET v = 'c' WHERE id = 1;
         UPDATE public.w6 SET v = v WHERE id = 2;",
    );
}

/// Issue 27, third review, findings F3, F17, F18, F14 and F8: a name or operator beyond ASCII
/// outside strings and comments (PostgreSQL reads every such character as an identifier
/// letter: `$€$'$€$` is a string, `€$q$` a name, `compté(…)` a call, `audit.change€` another
/// table) makes a body unanalysable; in strings and comments it changes nothing. Triggers on a
/// view are never migrated, and phase 1 over the whole database goes on past them. A body of
/// more than 65536 characters is not read (the plan's time is bounded for every caller).
#[test]
fn names_beyond_ascii_views_and_long_bodies() {
    let c = Cluster::start(
        "migration-third-review",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "nv");
    c.sql(
        "nv",
        include_str!("fixtures/non_ascii_views_long_bodies.sql"),
    );
    assert_eq!(
        c.sql(
            "nv",
            "SELECT relation, trigger_name, verdict, style, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "n1|n1_audit|uncertain|generic jsonb audit|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also updates or deletes other rows: taking it over would lose that".to_string(),
            "n2|n2_audit|uncertain|unanalysable|could not be analysed (a function body has a name or operator with characters beyond ASCII (€ at character 139), so it cannot be read as PostgreSQL reads it): left alone unless named".to_string(),
            "n3|n3_audit|uncertain|unanalysable|could not be analysed (a function body has a name or operator with characters beyond ASCII (é at character 139), so it cannot be read as PostgreSQL reads it): left alone unless named".to_string(),
            "n4|n4_audit|uncertain|unanalysable|could not be analysed (a function body has a name or operator with characters beyond ASCII (€ at character 36), so it cannot be read as PostgreSQL reads it): left alone unless named".to_string(),
            "n5|n5_audit|uncertain|unanalysable|could not be analysed (a function body has more than 65536 characters (72165): too long to analyse, so it cannot be read as PostgreSQL reads it): left alone unless named".to_string(),
            "v_orders|v_orders_ins|business|instead of|INSTEAD OF trigger: it carries out the write on the view; activity_log tracks tables only".to_string(),
            "v_orders|v_orders_stmt|business|not a table|trigger on a view, which activity_log does not track".to_string(),
            "w7|w7_audit|audit|per-table jsonb audit|copies the changed row (as jsonb) into audit.w7_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "nv",
        "INSERT INTO public.w7 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w7 SET v = 'c' WHERE id = 1;
         DELETE FROM public.w7 WHERE id = 2;
         INSERT INTO public.v_orders VALUES (1, 'x');",
    );
    assert_eq!(
        c.one("nv", "SELECT count(*) FROM public.orders_staging"),
        "1"
    );
}

/// Issue 27, third review, finding F13: migration_status() reads the legacy trail as its
/// caller; a row-level security policy on a trail owned by another role would run that role's
/// function with the caller's rights (here an admin with CREATEROLE, whom the policy tries to
/// make grant itself to the attacker). The comparison refuses such a trail and says why; the
/// policy's function never runs as the caller and the attacker gains nothing.
#[test]
fn row_level_security_on_a_trail_runs_no_code_as_the_caller() {
    let c = Cluster::start(
        "migration-trail-rls",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "rl");
    c.sql(
        "rl",
        "CREATE ROLE attacker LOGIN; CREATE ROLE victim LOGIN CREATEROLE;
         CREATE SCHEMA audit AUTHORIZATION attacker;
         GRANT USAGE ON SCHEMA activity_log TO victim, attacker;
         GRANT activity_log_admin TO victim; GRANT CREATE ON SCHEMA public TO victim;",
    );
    c.sql_as(
        "attacker",
        "rl",
        "CREATE TABLE audit.logged_actions (id bigserial PRIMARY KEY, table_name text, action text, row_data jsonb);
         CREATE TABLE audit.loot (who text);
         GRANT INSERT ON audit.loot TO PUBLIC;
         CREATE FUNCTION audit.visible(t text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             IF current_user <> 'attacker' THEN
                 INSERT INTO audit.loot (who) VALUES (current_user);
                 BEGIN EXECUTE 'GRANT victim TO attacker'; EXCEPTION WHEN OTHERS THEN NULL; END;
             END IF;
             RETURN true;
         END $$;
         ALTER TABLE audit.logged_actions ENABLE ROW LEVEL SECURITY;
         CREATE POLICY ins ON audit.logged_actions FOR INSERT WITH CHECK (true);
         CREATE POLICY sel ON audit.logged_actions FOR SELECT USING (audit.visible(table_name));
         GRANT USAGE ON SCHEMA audit TO victim; GRANT SELECT, INSERT ON audit.logged_actions TO victim;
         GRANT USAGE ON SEQUENCE audit.logged_actions_id_seq TO victim;",
    );
    c.sql_as(
        "victim",
        "rl",
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         CREATE FUNCTION public.t_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO audit.logged_actions (table_name, action, row_data) VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(NEW));
             RETURN NULL;
         END $$;
         CREATE TRIGGER t_audit AFTER INSERT OR UPDATE OR DELETE ON public.t FOR EACH ROW EXECUTE FUNCTION public.t_audit();
         SELECT activity_log.migrate_triggers(phase => 1, include_triggers => '{t_audit}');
         INSERT INTO public.t VALUES (1, 'x');",
    );
    c.flush("rl");
    assert_eq!(
        c.sql_as(
            "victim",
            "rl",
            "SELECT relation, status, legacy_inserts, captured_inserts, difference FROM activity_log.migration_status()"
        ),
        ["t|cannot compare||1|public.t or audit.logged_actions has row-level security policies that apply to you: comparing their rows would run the policies' code with your rights; compare as the table's owner (without FORCE ROW LEVEL SECURITY) or as a role with BYPASSRLS"]
    );
    assert_eq!(c.one("rl", "SELECT count(*) FROM audit.loot"), "0");
    assert_eq!(
        c.one("rl", "SELECT pg_has_role('attacker', 'victim', 'MEMBER')"),
        "f"
    );
}

/// Issue 27, third review, findings F1, F10, F2, F19, F11, F15, F16 and F20: an EXECUTE of SQL
/// built at run time (a variable, a format() with a %s argument that is not a constant) is
/// never read as its literal parts; a write in the query of OPEN, a cursor or a helper's
/// RETURN QUERY is a write (and a cursor, which can fail, is outside the allow-list); a trigger inserting into its own table, a trail with a user's
/// constraint trigger, a trail read by a rate limit that also writes elsewhere, a helper that
/// writes notifications or takes a shared sequence's numbers: none is audit. The control, a
/// format() whose run-time arguments go through %L, is, and migrates.
#[test]
fn run_time_sql_cursors_and_helpers_are_never_audit() {
    let c = Cluster::start(
        "migration-run-time-sql",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "rt");
    c.sql("rt", include_str!("fixtures/run_time_sql_and_helpers.sql"));
    assert_eq!(
        c.sql(
            "rt",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "audit.shipped_log|ship|business|constraint trigger of ship".to_string(),
            "r1|r1_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also runs a statement built at run time: taking it over would lose that".to_string(),
            "r10|r10_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but it takes numbers from nextval('public.invoice_no'), a sequence no table it writes owns: taking it over would leave that stale".to_string(),
            "r2|r2_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also runs a statement built at run time: taking it over would lose that".to_string(),
            "r3|r3_log|uncertain|copies the changed row (NEW.* / OLD.*) into public.r3_audit with the operation (a dynamic INSERT; the table is guessed from its name), but also runs a statement built at run time: taking it over would lose that".to_string(),
            "r4|r4_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also writes rows in the query of OPEN, a cursor or RETURN QUERY, uses a cursor: taking it over would lose that".to_string(),
            "r5|r5_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.tick(text), which writes rows in the query of OPEN, a cursor or RETURN QUERY: taking it over would lose that".to_string(),
            "r6|r6_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also inserts into its own table public.r6: taking it over would lose that".to_string(),
            "r7|r7_audit|uncertain|copies the changed row (as jsonb) into audit.shipped_log with the operation, but its table audit.shipped_log runs code of its own (trigger ship on audit.shipped_log): taking it over would leave that stale".to_string(),
            "r8|r8_audit|uncertain|copies the changed row (as jsonb) into audit.r8_log with the operation, but its table audit.r8_log is read by public.r8_rate_limit(): taking it over would leave that stale".to_string(),
            "r8|r8_rate_limit|uncertain|copies the changed row (columns of NEW/OLD) into public.rate_hits, but only some of its columns (not v)".to_string(),
            "r9|r9_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but it also writes public.user_notifications, which is not a copy of the row: taking it over would leave that stale".to_string(),
            "w8|w8_audit|audit|copies the changed row (as jsonb) into audit.w8_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "rt",
        "INSERT INTO public.w8 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w8 SET v = 'c' WHERE id = 1;
         DELETE FROM public.w8 WHERE id = 2;",
    );
}

/// Issue 27, third review, findings F4, F5, F6, F7, F9, F21 and F22: NEW written through a
/// block label, EXECUTE … INTO NEW, SELECT INTO NEW a, b or GET DIAGNOSTICS; a call by a
/// three-part name, after a cast (`::int IS NOT NULL AND public.bump(…)`) or inside
/// `INSERT … (SELECT …)`; an unqualified call that a role's own search_path resolves to another
/// function; an unqualified table that "$user" resolves elsewhere for a role with a schema of
/// its name; a quoted name "else" before a RAISE in a loop: none is audit. The control, with a
/// block label, casts with a type modifier and a column list, is, and migrates.
#[test]
fn new_writes_call_names_and_search_paths_of_other_roles() {
    let c = Cluster::start(
        "migration-names-new",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "pn");
    c.sql("pn", include_str!("fixtures/names_and_new_writes.sql"));
    assert_eq!(
        c.sql(
            "pn",
            "SELECT relation, trigger_name, verdict, why FROM activity_log.migration_plan() WHERE style <> 'internal'"
        ),
        [
            "f04|f04_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "f04b|f04b_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "f04c|f04c_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "f04d|f04d_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also modifies NEW: taking it over would lose that".to_string(),
            "f05|f05_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.bump(text), which updates or deletes other rows, calls set_config(), which is volatile: taking it over would lose that".to_string(),
            "f06|f06_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.bump(text), which updates or deletes other rows, calls set_config(), which is volatile: taking it over would lose that".to_string(),
            "f07|f07_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls public.bump(text), which updates or deletes other rows: taking it over would lose that".to_string(),
            "f09|f09_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also calls app.stamp(), which updates or deletes other rows: taking it over would lose that".to_string(),
            "f21|f21_audit|uncertain|copies the changed row (as jsonb) into public.change_log with the operation, but it names its table without a schema: INSERT INTO change_log means f21_app.change_log for role f21_app (search_path f21_app, public): taking it over would leave that stale".to_string(),
            "f22b|f22b_audit|uncertain|copies the changed row (as jsonb) into audit.logged_actions with the operation, but also raises errors (validation): taking it over would lose that".to_string(),
            "w9|w9_audit|audit|copies the changed row (as jsonb) into audit.w9_log with the operation".to_string(),
        ]
    );
    full_cycle(
        &c,
        "pn",
        "INSERT INTO public.w9 VALUES (1, 'a'), (2, 'b');
         UPDATE public.w9 SET v = 'c' WHERE id = 1;
         DELETE FROM public.w9 WHERE id = 2;",
    );
}

/// Issue 27's parser, first step: `_plpgsql_facts` reads a body with plpgsql's own compiler
/// and each SQL statement with the core raw parser. The guards of a RAISE are the conditions of
/// the branches around it (2ndQuadrant's TG_WHEN check, the ELSE of its TG_OP chain); a RETURN
/// of a rewritten NEW, every form of writing NEW and what a statement writes are told apart as
/// PostgreSQL parses them; a body that does not compile is an error value; only the extension's
/// own code may call it.
#[test]
fn plpgsql_bodies_are_read_by_plpgsqls_own_compiler() {
    let c = Cluster::start(
        "migration-facts",
        &["activity_log.capture_statements = 'none'"],
    );
    common::with_extension(&c, "facts");
    c.sql("facts", include_str!("fixtures/audit_trigger_guards.sql"));
    c.sql(
        "facts",
        include_str!("fixtures/temporal_tables_nochecks.sql"),
    );
    // One line per statement, in the body's order.
    let statements = |function: &str, filter: &str, shown: &str| {
        c.sql(
            "facts",
            &format!(
                "SELECT {shown}
                   FROM jsonb_array_elements(activity_log._plpgsql_facts('{function}'::regprocedure)->'statements') s
                  WHERE {filter} ORDER BY (s->>'line')::int, s::text"
            ),
        )
        .join("\n")
    };
    assert_eq!(
        statements(
            "audit.if_modified_func()",
            "s->>'kind' = 'raise'",
            "format('%s %s %s', s->>'line', s->>'level', s->'guards')"
        ),
        "11 exception [{\"cond\": \"TG_WHEN <> 'AFTER'\", \"holds\": true}]\n\
         49 exception [{\"cond\": \"(TG_OP = 'UPDATE' AND TG_LEVEL = 'ROW')\", \"holds\": false}, \
         {\"cond\": \"(TG_OP = 'DELETE' AND TG_LEVEL = 'ROW')\", \"holds\": false}, \
         {\"cond\": \"(TG_OP = 'INSERT' AND TG_LEVEL = 'ROW')\", \"holds\": false}, \
         {\"cond\": \"(TG_LEVEL = 'STATEMENT' AND TG_OP IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'))\", \"holds\": false}]"
    );
    assert_eq!(
        statements(
            "audit.if_modified_func()",
            "s ? 'command'",
            "format('%s %s %s %s', s->>'kind', s->>'command', s->'relation', s->'guards')"
        ),
        "sql INSERT {\"name\": \"logged_actions\", \"schema\": \"audit\"} []"
    );
    // temporal_tables: RETURN jsonb_populate_record(NEW, …) is a rewritten NEW.
    assert_eq!(
        statements(
            "versioning()",
            "s->>'kind' = 'return'",
            "format('%s %s %s', s->>'line', s->>'returns', s->>'sql')"
        ),
        "26 old \n34 old \n36 new \n68 expression jsonb_populate_record(NEW, manipulate)\n70 old "
    );
    c.sql(
        "facts",
        "SET check_function_bodies = off;
         CREATE FUNCTION forms() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE a int;
         BEGIN
           WITH x AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM x;
           WITH a AS (SELECT 1), b AS (WITH c AS (UPDATE t SET v = 1 RETURNING 1) SELECT * FROM c) SELECT 1;
           NEW.v[1] := 3;
           NEW.x.y := 4;
           GET DIAGNOSTICS NEW.n = ROW_COUNT;
           SELECT 1, 2 INTO a, NEW.z;
           FOR NEW IN SELECT * FROM t LOOP RAISE 'x'; END LOOP;
           CASE TG_OP WHEN 'INSERT' THEN RAISE EXCEPTION 'no'; END CASE;
           INSERT INTO s.t VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 1;
           MERGE INTO m USING t ON true WHEN MATCHED THEN DELETE;
           NOTIFY chan;
           a := 1; SELECT 1 INTO a;
           BEGIN
             PERFORM 1;
           EXCEPTION WHEN others THEN
             RAISE WARNING 'w';
           END;
           RETURN NEW;
         END $$;
         CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSRT INTO x; END $$;
         CREATE FUNCTION plain_sql() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
    );
    assert_eq!(
        statements(
            "forms()",
            "s ? 'command'",
            "concat_ws(' ', s->>'line', s->>'kind', s->>'command', s->'relation', s->>'upsert', s->>'writes_in_with')"
        ),
        "4 sql SELECT true\n5 sql SELECT true\n9 sql SELECT false\n10 for SELECT false\n\
         12 sql INSERT {\"name\": \"t\", \"schema\": \"s\"} true false\n\
         13 sql MERGE {\"name\": \"m\", \"schema\": null} false\n14 sql NOTIFY false\n\
         15 sql SELECT false\n17 perform SELECT false"
    );
    assert_eq!(
        statements(
            "forms()",
            "(s->>'writes_new')::boolean",
            "s->>'line' || ' ' || (s->>'kind')"
        ),
        "6 assign\n7 assign\n8 get diagnostics\n9 sql\n10 for"
    );
    // A RAISE in a loop, in a CASE branch (the value CASE compares is written in), the
    // CASE_NOT_FOUND of a CASE without ELSE, one in an exception handler.
    assert_eq!(
        statements(
            "forms()",
            "s->>'kind' = 'raise'",
            "concat_ws(' ', s->>'line', s->>'level', s->>'loop', s->>'handler', s->'guards', s->>'implicit')"
        ),
        "10 exception true false []\n\
         11 exception false false [{\"cond\": \"(TG_OP) IN ('INSERT')\", \"holds\": false}] case not found\n\
         11 exception false false [{\"cond\": \"(TG_OP) IN ('INSERT')\", \"holds\": true}]\n\
         19 warning false true []"
    );
    assert_eq!(
        c.one(
            "facts",
            "SELECT activity_log._plpgsql_facts('broken()'::regprocedure)"
        ),
        "{\"error\": \"\\\"x\\\" is not a known variable\"}"
    );
    let refused = c.run(
        "facts",
        "SELECT activity_log._plpgsql_facts('plain_sql()'::regprocedure)",
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("ERROR:  activity_log: function plain_sql() is written in sql, not PL/pgSQL"),
        "{refused:?}"
    );
    // The review's forms (helper, 2026-12-06): a function's own settings apply while it is read
    // (its pinned search_path finds its types; standard_conforming_strings = off splits
    // 'q\'; delete …' as the function runs it), a CALL's arguments may be INOUT, OLD changed
    // and returned writes the row, a block's defaults run under the block's conditions, MOVE
    // is not FETCH; any function but a trigger function is refused (its compiled tree would be
    // the one its calls run).
    c.sql(
        "facts",
        r"CREATE SCHEMA s1;
          CREATE DOMAIN s1.money_t AS numeric;
          CREATE PROCEDURE public.bump(INOUT x int) LANGUAGE plpgsql AS $$ BEGIN x := x + 1; END $$;
          CREATE FUNCTION pinned() RETURNS trigger LANGUAGE plpgsql SET search_path = s1 AS $$
          DECLARE v money_t := 1.5; BEGIN RETURN NEW; END $$;
          SET standard_conforming_strings = off;
          CREATE FUNCTION escapes() RETURNS trigger LANGUAGE plpgsql SET standard_conforming_strings = off AS $f$
          DECLARE c text;
          BEGIN
            c := 'q\'; delete from u; --';
            RETURN NEW;
          END $f$;
          RESET standard_conforming_strings;
          CREATE FUNCTION review() RETURNS trigger LANGUAGE plpgsql AS $$
          DECLARE cur refcursor; r record;
          BEGIN
            CALL public.bump(NEW.a);
            OLD.a := 777;
            IF NEW.a > 0 THEN
              DECLARE z int := length(NEW.b);
              BEGIN NULL; END;
            END IF;
            MOVE cur;
            RETURN OLD;
          END $$;
          CREATE FUNCTION helper() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;",
    );
    assert_eq!(
        statements("pinned()", "true", "concat_ws(' ', s->>'kind', s->>'sql')"),
        "declare 1.5\nreturn"
    );
    assert_eq!(
        statements(
            "escapes()",
            "true",
            "concat_ws(' ', s->>'kind', s->>'command')"
        ),
        "assign\nreturn"
    );
    assert_eq!(
        statements(
            "review()",
            "s->>'kind' <> 'expression'",
            "concat_ws(' ', s->>'line', s->>'kind', s->>'writes_new', s->>'writes_old', s->'guards', s->>'returns')"
        ),
        "4 call true true []\n5 assign false true []\n\
         7 declare [{\"cond\": \"NEW.a > 0\", \"holds\": true}]\n\
         10 move false false []\n11 return [] old"
    );
    assert_eq!(
        c.one(
            "facts",
            "SELECT activity_log._plpgsql_facts('helper()'::regprocedure)"
        ),
        "{\"error\": \"not a trigger function\"}"
    );
    // A body whose conditions would repeat into too much keeps its statements, without their
    // conditions past 16 MB (second review: an error value there hid a FOREACH NEW); a cancel
    // is an ERROR.
    c.sql(
        "facts",
        &format!(
            "CREATE FUNCTION amplified() RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE x int; BEGIN {} {} {} RETURN NEW; END $$",
            format!("IF TG_OP = '{}' THEN ", "a".repeat(1000)).repeat(32),
            "x := 1; ".repeat(600),
            "END IF; ".repeat(32)
        ),
    );
    assert_eq!(
        c.one(
            "facts",
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE (s->>'guards_truncated')::boolean)
               FROM jsonb_array_elements(activity_log._plpgsql_facts('amplified()'::regprocedure)->'statements') s
              WHERE s->>'kind' = 'assign'"
        ),
        "600 97"
    );
    c.sql(
        "facts",
        &format!(
            "CREATE FUNCTION long_body() RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE x int; BEGIN {} RETURN NEW; END $$",
            "x := 1; ".repeat(200_000)
        ),
    );
    let cancelled = c.run(
        "facts",
        "SET statement_timeout = '50ms'; SELECT activity_log._plpgsql_facts('long_body()'::regprocedure)",
    );
    assert!(
        String::from_utf8_lossy(&cancelled.stderr)
            .contains("ERROR:  canceling statement due to statement timeout"),
        "{cancelled:?}"
    );
    // Nesting deeper than the guards kept: the outermost 32, and a flag.
    let depth = 200;
    c.sql(
        "facts",
        &format!(
            "CREATE FUNCTION deep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {} RAISE 'x'; {} RETURN NEW; END $$",
            "IF TG_OP = 'INSERT' THEN ".repeat(depth),
            "END IF; ".repeat(depth)
        ),
    );
    assert_eq!(
        statements(
            "deep()",
            "s->>'kind' = 'raise'",
            "jsonb_array_length(s->'guards') || ' ' || (s->>'guards_truncated')"
        ),
        "32 true"
    );
    // The plan adds what the compiler reads to what its text reading found: NEW written as
    // FOREACH's variable was read as a plain row logger, and migrating it would stop the
    // rewrite of NEW.rank.
    c.sql(
        "facts",
        "CREATE TABLE public.tagged (id int PRIMARY KEY, rank int);
         CREATE TABLE audit.tagged_log (op text, row_data jsonb);
         CREATE TYPE public.mood AS ENUM ('calm');
         CREATE FUNCTION public.tagged_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE m mood;  -- found under the search_path of the session that fires it
         BEGIN
             INSERT INTO audit.tagged_log VALUES (TG_OP, to_jsonb(NEW));
             FOREACH NEW.rank IN ARRAY ARRAY[1, 2] LOOP END LOOP;
             RETURN NEW;
         END $$;
         CREATE TRIGGER tagged_audit BEFORE INSERT OR UPDATE ON public.tagged
             FOR EACH ROW EXECUTE FUNCTION public.tagged_audit();",
    );
    assert_eq!(
        c.one(
            "facts",
            "SELECT verdict || ' ' || why FROM activity_log.migration_plan() WHERE trigger_name = 'tagged_audit'"
        ),
        "uncertain copies the changed row (as jsonb) into audit.tagged_log with the operation, but also modifies NEW: taking it over would lose that"
    );
    // A trigger whose body the compiler cannot read in the plan is not audit: the parser never
    // says nothing because it could not look (second review).
    c.sql(
        "facts",
        "SET check_function_bodies = off;
         CREATE TABLE public.unread (id int PRIMARY KEY);
         CREATE FUNCTION public.unread_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE x no_such_type;
         BEGIN
             INSERT INTO audit.tagged_log VALUES (TG_OP, to_jsonb(NEW));
             RETURN NEW;
         END $$;
         CREATE TRIGGER unread_audit AFTER INSERT OR UPDATE ON public.unread
             FOR EACH ROW EXECUTE FUNCTION public.unread_audit();",
    );
    assert_eq!(
        c.one(
            "facts",
            "SELECT verdict || ' ' || why FROM activity_log.migration_plan() WHERE trigger_name = 'unread_audit'"
        ),
        "uncertain copies the changed row (as jsonb) into audit.tagged_log with the operation, but also has a body PL/pgSQL's compiler could not read here (type \"no_such_type\" does not exist): taking it over would lose that"
    );
    // Statements outside the allow-list of an audit trigger, in _body_effects' words.
    c.sql(
        "facts",
        "CREATE FUNCTION public.outside() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
             c refcursor;
             r record;
         BEGIN
             CALL public.no_arguments();
             TRUNCATE public.t;
             REFRESH MATERIALIZED VIEW public.mv;
             SET LOCAL work_mem = '64MB';
             INSERT INTO audit.l VALUES (1) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
             OPEN c FOR DELETE FROM public.t RETURNING *;
             FOR r IN WITH d AS (DELETE FROM public.t RETURNING *) SELECT * FROM d LOOP END LOOP;
             RETURN NULL;
         END $$;",
    );
    assert_eq!(
        c.sql(
            "facts",
            "SELECT unnest(outside) FROM activity_log._plpgsql_side_effects('public.outside()'::regprocedure, 1 | 4 | 16, 'public')"
        ),
        [
            "calls a procedure",
            "refreshes a materialized view",
            "runs SET",
            "truncates a table",
            "upserts into audit.l (ON CONFLICT … DO UPDATE)",
            "writes rows in the query of OPEN, a cursor or RETURN QUERY"
        ]
    );
    // A failure is remembered for one command only: the type created next in the same
    // transaction is found.
    assert_eq!(
        c.sql(
            "facts",
            "BEGIN;
             SELECT activity_log._plpgsql_facts('public.unread_audit()'::regprocedure) ? 'error';
             SELECT activity_log._plpgsql_facts('public.unread_audit()'::regprocedure) ? 'error';
             CREATE TYPE public.no_such_type AS (a int);
             SELECT activity_log._plpgsql_facts('public.unread_audit()'::regprocedure) ? 'error';
             ROLLBACK;"
        ),
        ["t", "t", "f"]
    );
    // Internal: PUBLIC may not run it.
    c.sql("facts", "CREATE ROLE someone LOGIN");
    let denied = c.run_as(
        "someone",
        "facts",
        "SELECT activity_log._plpgsql_facts('forms()'::regprocedure)",
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains("permission denied for function _plpgsql_facts"),
        "{denied:?}"
    );
}
