//! Privileges: only the extension's writer writes the trail, whoever asks; the two roles grant
//! what they say; the session user recorded is the real one.

mod common;

use common::{Cluster, with_extension};

const DB: &str = "postgres";

/// The error a role gets for each way of writing the trail.
fn write_attempts(c: &Cluster, role: &str) -> Vec<String> {
    [
        "INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status) VALUES (now(), now(), 'event', 'x', 'info', 'success')",
        "UPDATE activity_log.events SET actor = 'nobody'",
        "DELETE FROM activity_log.events",
        "TRUNCATE activity_log.events",
        "ALTER TABLE activity_log.events DISABLE TRIGGER ALL",
        "CREATE RULE hide AS ON INSERT TO activity_log.events DO INSTEAD NOTHING",
        "UPDATE activity_log.activity_hourly SET events = 0",
        // A partition directly, and what later becomes trail rows or vouches for them.
        "DELETE FROM activity_log.events_default",
        "INSERT INTO activity_log.durable_queue VALUES (now(), 1, '\\x00')",
        "DELETE FROM activity_log.chain_anchors",
        "UPDATE activity_log.retention_log SET rows = 0",
    ]
    .iter()
    .map(|statement| {
        let out = c.run_as(role, DB, statement);
        assert!(!out.status.success(), "{role} could run {statement}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .lines()
            .find(|l| l.contains("ERROR"))
            .unwrap_or("")
            .split("ERROR:  ")
            .nth(1)
            .unwrap_or("")
            .to_string()
    })
    .collect()
}

#[test]
fn only_the_writer_writes_the_trail_and_roles_grant_what_they_say() {
    let c = Cluster::start("security", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, DB);
    c.sql(
        DB,
        "CREATE ROLE alice LOGIN;                 -- an ordinary user
         CREATE ROLE bob LOGIN;                   -- owns a tracked table
         CREATE ROLE carol LOGIN;                 -- may create objects in public
         CREATE ROLE rita LOGIN IN ROLE activity_log_reader;
         CREATE ROLE adam LOGIN IN ROLE activity_log_admin;
         CREATE ROLE app_role; GRANT app_role TO alice;
         GRANT CREATE ON SCHEMA public TO carol;
         CREATE TABLE accounts (id int PRIMARY KEY, owner text);
         ALTER TABLE accounts OWNER TO bob;
         GRANT ALL ON accounts TO alice;
         SELECT activity_log.track('accounts');",
    );
    c.sql(DB, "INSERT INTO accounts VALUES (1, 'bob')");
    c.flush(DB);

    for role in ["alice", "bob", "carol", "rita", "adam"] {
        assert_eq!(
            write_attempts(&c, role),
            [
                "permission denied for table events",
                "permission denied for table events",
                "permission denied for table events",
                "permission denied for table events",
                "must be owner of table events",
                "must be owner of table events",
                "permission denied for table activity_hourly",
                "permission denied for table events_default",
                "permission denied for table durable_queue",
                "permission denied for table chain_anchors",
                "permission denied for table retention_log",
            ],
            "{role}"
        );
    }
    // A role with CREATE on public cannot slip a function in front of the extension's own:
    // every SECURITY DEFINER function pins its search_path.
    c.run_as(
        "carol",
        DB,
        "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$",
    );
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FILTER (WHERE NOT coalesce(proconfig, '{}') @> '{\"search_path=pg_catalog, pg_temp\"}')
                    || ' of ' || count(*)
               FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
              WHERE d.refclassid = 'pg_extension'::regclass
                AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'activity_log')
                AND p.prosecdef"
        ),
        "0 of 8"
    );

    // The table's owner cannot stop its auditing; the admin can.
    assert!(
        c.error_as("bob", DB, "SELECT activity_log.untrack('accounts')")
            .contains("permission denied for function untrack")
    );
    assert!(
        c.error_as("bob", DB, "DELETE FROM activity_log.tracked_tables")
            .contains("permission denied for table tracked_tables")
    );
    // Readers read; others see health only.
    assert!(
        c.error_as("alice", DB, "SELECT count(*) FROM activity_log.events")
            .contains("permission denied for table events")
    );
    assert_eq!(
        c.one_as("alice", DB, "SELECT activity_health()->>'status'"),
        "healthy"
    );
    assert_eq!(
        c.one_as(
            "rita",
            DB,
            "SELECT count(*) FROM activity_log.history('accounts', '{\"id\": 1}')"
        ),
        "1"
    );
    // A reader reads every view (functions in a view run as its reader: each must be granted).
    for view in c.sql(
        DB,
        "SELECT viewname FROM pg_views WHERE schemaname = 'activity_log' ORDER BY 1",
    ) {
        assert_eq!(
            c.one_as(
                "rita",
                DB,
                &format!("SELECT count(*) >= 0 FROM activity_log.{view}")
            ),
            "t",
            "{view}"
        );
    }
    assert_eq!(
        c.one_as("rita", DB, "SELECT count(*) FROM activity_log.queue"),
        "1"
    );
    assert!(
        c.error_as("rita", DB, "SELECT activity_log.track('accounts')")
            .contains("permission denied for function track")
    );
    // The admin changes tracking only of tables its role owns, as for CREATE TRIGGER.
    assert!(
        c.error_as("adam", DB, "SELECT activity_log.untrack('accounts')")
            .contains("must be owner of table accounts")
    );
    c.sql(DB, "GRANT bob TO adam");
    c.sql_as(
        "adam",
        DB,
        "SELECT activity_log.untrack('accounts'); SELECT activity_log.track('accounts');
         SELECT activity_log.rebuild_rollup(); SELECT activity_log.refresh_metrics();",
    );

    // The session user is recorded as it is; actor is what the application says.
    c.sql_as(
        "alice",
        DB,
        "SET activity_log.actor = 'bob'; SET ROLE app_role; SELECT activity_log.log_event('login');
         RESET ROLE; UPDATE accounts SET owner = 'alice' WHERE id = 1;",
    );
    c.flush(DB);
    assert_eq!(
        c.sql(
            DB,
            "SELECT kind, db_user, effective_user, actor FROM activity_log.events
              WHERE db_user = 'alice' AND kind IN ('event', 'change') ORDER BY id"
        ),
        ["event|alice|app_role|bob", "change|alice|alice|bob"]
    );
}

/// The hash chain: a row changed, removed or added by a superuser is found by verify(), at the
/// exact row; a range after the break verifies on its own.
#[test]
fn verify_finds_the_first_row_a_superuser_changed_removed_or_added() {
    let c = Cluster::start("verify", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, DB);
    c.sql(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT activity_log.track('t');",
    );
    for i in 0..20 {
        c.sql(
            DB,
            &format!("INSERT INTO t VALUES ({i}, repeat('x', {i} * 500)); SELECT activity_log.log_event('e{i}');"),
        );
    }
    c.sql(
        DB,
        "UPDATE t SET v = 'changed' WHERE id < 10; DELETE FROM t WHERE id > 15;",
    );
    c.flush(DB);
    let rows = c.one(DB, "SELECT count(*) FROM activity_log.events");
    let verify = "SELECT rows_checked, intact, coalesce(first_broken_id::text, '-'), coalesce(problem, '-'), length(head) FROM activity_log.verify()";
    assert_eq!(c.one(DB, verify), format!("{rows}|t|-|-|32"));

    // A changed value, then the same value put back: the chain is over content.
    let mid = c.one(
        DB,
        "SELECT id FROM activity_log.events WHERE command = 'e7'",
    );
    c.sql(
        DB,
        &format!("UPDATE activity_log.events SET actor = 'mallory' WHERE id = {mid}"),
    );
    assert_eq!(
        c.one(
            DB,
            "SELECT first_broken_id, problem FROM activity_log.verify()"
        ),
        format!(
            "{mid}|the chain breaks at row {mid}: the row was changed, or a row just before it was removed or added"
        )
    );
    c.sql(
        DB,
        &format!("UPDATE activity_log.events SET actor = NULL WHERE id = {mid}"),
    );
    assert_eq!(c.one(DB, "SELECT intact FROM activity_log.verify()"), "t");

    // A removed row breaks the chain at the row after it; the range after that is intact.
    let gone = c.one(
        DB,
        "SELECT id FROM activity_log.events WHERE kind = 'change' ORDER BY id OFFSET 5 LIMIT 1",
    );
    let next = c.one(
        DB,
        &format!("SELECT min(id) FROM activity_log.events WHERE id > {gone}"),
    );
    c.sql(
        DB,
        &format!("DELETE FROM activity_log.events WHERE id = {gone}"),
    );
    assert_eq!(
        c.one(
            DB,
            "SELECT intact, first_broken_id FROM activity_log.verify()"
        ),
        format!("f|{next}")
    );
    assert_eq!(
        c.one(
            DB,
            &format!("SELECT intact FROM activity_log.verify(from_id => {next} + 1)")
        ),
        "t"
    );

    // A row added by hand has no chain; the writer goes on after it.
    let added = c.one(
        DB,
        "INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, command)
         VALUES (now(), now(), 'event', 'application', 'info', 'success', 'forged') RETURNING id",
    );
    c.sql(DB, "SELECT activity_log.log_event('after')");
    c.flush(DB);
    assert_eq!(
        c.one(
            DB,
            &format!(
                "SELECT first_broken_id, problem FROM activity_log.verify(from_id => {next} + 1)"
            )
        ),
        format!("{added}|row {added} has no chain value: the writer did not store it")
    );
    // Around it (the writer's ids may run on either side of it: it draws them in blocks).
    assert_eq!(
        c.one(
            DB,
            &format!(
                "SELECT bool_and(intact), sum(rows_checked) = (SELECT count(*) - 1 FROM activity_log.events WHERE id > {next})
                   FROM (SELECT * FROM activity_log.verify({next} + 1, {added} - 1)
                         UNION ALL SELECT * FROM activity_log.verify(from_id => {added} + 1)) v"
            )
        ),
        "t|t"
    );
    assert!(
        c.error(DB, "SELECT * FROM activity_log.verify(5, 1)")
            .contains("from_id (5) must not be greater than to_id (1)")
    );
}
