//! Real-cluster tests of statement and event records: their fields, failures, rolled-back work,
//! application events, and the server's own processes (autovacuum) that are not users' statements. The harness is in tests/common.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn statement_records_have_the_right_fields() {
    let c = Cluster::start("fields", &["activity_log.capture_statements = 'mod'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        r#"
        CREATE TABLE items (id int PRIMARY KEY, name text);
        CREATE ROLE clerk;
        GRANT ALL ON items TO clerk;
        SET activity_log.actor = 'alice';
        SET activity_log.context = '{"request_id": "r-1"}';
        SET request.jwt.claims = '{"sub": "user-7", "role": "authenticated"}';
        SET application_name = 'shop';
        INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');
        UPDATE items SET name = 'uno' WHERE id = 1;
        SET ROLE clerk;
        DELETE FROM items WHERE id > 1;
        RESET ROLE;
        SELECT count(*) FROM items;
        "#,
    );
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind, category, severity, status, coalesce(sqlstate, '-'), db_user, effective_user, actor,
                context, jwt_claims->>'sub', application_name, coalesce(client_addr::text, '-'), command,
                query, rows, relations, query_id IS NOT NULL, xid IS NOT NULL, backend_pid > 0,
                duration_ms >= 0, committed_at >= ts
           FROM activity_log.events ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "ddl|schema_change|info|success|-|postgres|postgres||||psql|-|CREATE EXTENSION|CREATE EXTENSION activity_log|||f|t|t|t|t",
            "ddl|schema_change|info|success|-|postgres|postgres||||psql|-|CREATE TABLE|CREATE TABLE items (id int PRIMARY KEY, name text)|||f|t|t|t|t",
            "ddl|schema_change|info|success|-|postgres|postgres||||psql|-|CREATE ROLE|CREATE ROLE clerk|||f|t|t|t|t",
            "ddl|schema_change|info|success|-|postgres|postgres||||psql|-|GRANT|GRANT ALL ON items TO clerk|||f|t|t|t|t",
            r#"statement|data_change|info|success|-|postgres|postgres|alice|{"request_id": "r-1"}|user-7|shop|-|INSERT|INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')|3|{public.items}|t|t|t|t|t"#,
            r#"statement|data_change|info|success|-|postgres|postgres|alice|{"request_id": "r-1"}|user-7|shop|-|UPDATE|UPDATE items SET name = 'uno' WHERE id = 1|1|{public.items}|t|t|t|t|t"#,
            r#"statement|data_change|info|success|-|postgres|clerk|alice|{"request_id": "r-1"}|user-7|shop|-|DELETE|DELETE FROM items WHERE id > 1|2|{public.items}|t|t|t|t|t"#,
        ]
    );
}

/// A statement's `relations` name the views it reads as well as the tables (PostgreSQL 16
/// turned a view in the plan into a subquery that keeps the view's oid; 15 keeps a relation).
#[test]
fn statement_records_name_the_views_they_read() {
    let c = Cluster::start("views", &["activity_log.capture_statements = 'mod'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE vt (id int PRIMARY KEY, v text);
         CREATE VIEW vv AS SELECT * FROM vt;
         INSERT INTO vv VALUES (1, 'through the view');
         INSERT INTO vt SELECT id + 100, v FROM vv;
         UPDATE vt SET v = 'x' WHERE id IN (SELECT id FROM (SELECT id FROM vt) AS plain);",
    );
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT command, relations FROM activity_log.events
              WHERE kind = 'statement' AND command IN ('INSERT', 'UPDATE') ORDER BY id"
        ),
        [
            "INSERT|{public.vv,public.vt}",
            "INSERT|{public.vt,public.vv}",
            "UPDATE|{public.vt}",
        ]
    );
}

/// The tables read through a UNION ALL are named (the planner flattens it into an append
/// whose legs it lists as children, as it lists a partitioned table's partitions: review of
/// 2026-12-06, the legs were left out); a partitioned table is named, not its partitions.
#[test]
fn statement_records_name_the_tables_of_a_union_all() {
    let c = Cluster::start("union_all", &["activity_log.capture_statements = 'mod'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE m0 (x int); CREATE TABLE m3 (x int); CREATE TABLE m4 (x int);
         CREATE TABLE p (x int) PARTITION BY RANGE (x);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);
         CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);
         INSERT INTO m0 SELECT x FROM m3 UNION ALL SELECT x FROM m4;
         INSERT INTO m0 SELECT x FROM (SELECT x FROM m3 UNION ALL SELECT x FROM m4) s;
         DELETE FROM m0 WHERE x IN (SELECT x FROM m3 UNION ALL SELECT 1 FROM m4);
         INSERT INTO m0 SELECT x FROM m3 UNION SELECT x FROM m4;
         INSERT INTO m0 SELECT x FROM p UNION ALL SELECT x FROM m3;
         UPDATE p SET x = x;",
    );
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT command, (SELECT array_agg(r ORDER BY r) FROM unnest(relations) r)
               FROM activity_log.events
              WHERE kind = 'statement' AND command IN ('INSERT', 'UPDATE', 'DELETE') ORDER BY id"
        ),
        [
            "INSERT|{public.m0,public.m3,public.m4}",
            "INSERT|{public.m0,public.m3,public.m4}",
            "DELETE|{public.m0,public.m3,public.m4}",
            "INSERT|{public.m0,public.m3,public.m4}",
            "INSERT|{public.m0,public.m3,public.p}",
            "UPDATE|{public.p}",
        ]
    );
}

#[test]
fn truncate_copy_and_tcp_clients_are_recorded() {
    let c = Cluster::start(
        "utility",
        &[
            "activity_log.capture_statements = 'mod'",
            "listen_addresses = '127.0.0.1'",
        ],
    );
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE t (v int);
         COPY t FROM stdin;
1
2
3
\\.
         COPY t TO stdout;
         TRUNCATE t;",
    );
    let out = Command::new(format!("{}/psql", *BIN))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "INSERT INTO t VALUES (9)",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind, command, coalesce(rows::text, '-'), coalesce(client_addr::text, 'local')
           FROM activity_log.events WHERE command <> 'CREATE EXTENSION' ORDER BY id",
    );
    // COPY TO only reads: it is recorded at level 'all', not at 'mod'.
    assert_eq!(
        rows,
        [
            "ddl|CREATE TABLE|-|local",
            "statement|COPY|3|local",
            "statement|TRUNCATE TABLE|-|local",
            "statement|INSERT|1|127.0.0.1/32"
        ]
    );
}

#[test]
fn rolled_back_work_leaves_no_success_records() {
    let c = Cluster::start("rollback", &["activity_log.capture_statements = 'mod'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "
        CREATE TABLE t (v text);
        BEGIN; INSERT INTO t VALUES ('rolled back'); SELECT activity_log.log_event('gone'); ROLLBACK;
        BEGIN;
        INSERT INTO t VALUES ('kept 1');
        SAVEPOINT s1;
        INSERT INTO t VALUES ('rolled back to savepoint');
        SELECT activity_log.log_event('gone too');
        SAVEPOINT s2;
        INSERT INTO t VALUES ('nested, rolled back with s1');
        RELEASE SAVEPOINT s2;
        ROLLBACK TO SAVEPOINT s1;
        SAVEPOINT s3;
        INSERT INTO t VALUES ('kept 2');
        RELEASE SAVEPOINT s3;
        SELECT activity_log.log_event('kept 3');
        COMMIT;
        ",
    );
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT coalesce(query, details->>'action') FROM activity_log.events
          WHERE kind IN ('statement', 'event') ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "INSERT INTO t VALUES ('kept 1')",
            "INSERT INTO t VALUES ('kept 2')",
            "kept 3"
        ]
    );
    // The committed transaction is one frame: its records share an xid and a commit time.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(DISTINCT (xid, committed_at)) FROM activity_log.events WHERE kind IN ('statement', 'event')"
        ),
        "1"
    );
}

#[test]
fn failed_statements_leave_failure_records() {
    let c = Cluster::start("failures", &["activity_log.capture_statements = 'ddl'"]);
    with_extension(&c, "postgres");
    c.sql("postgres", "CREATE TABLE u (id int PRIMARY KEY)");
    for stmt in [
        "INSERT INTO u VALUES (1), (1)",
        "BEGIN; INSERT INTO u VALUES (5); SELECT 1/(id - id) FROM u; COMMIT;",
        "SELECT 1/0",
        "SELEC oops",
        "BEGIN; INSERT INTO u VALUES (7); SAVEPOINT a; INSERT INTO u VALUES (7), (7); ROLLBACK TO a; INSERT INTO u VALUES (8); COMMIT;",
    ] {
        c.run("postgres", &format!("\\set ON_ERROR_STOP 0\n{stmt}"));
    }
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind, category, severity, status, sqlstate, coalesce(command, '-'), query, details->>'error'
           FROM activity_log.events WHERE status = 'error' ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "statement|data_change|error|error|23505|INSERT|INSERT INTO u VALUES (1), (1)|duplicate key value violates unique constraint \"u_pkey\"",
            "statement|data_access|error|error|22012|SELECT|SELECT 1/(id - id) FROM u|division by zero",
            // Folded at plan time, before the executor starts: the command is not known.
            "statement|data_access|error|error|22012|-|SELECT 1/0|division by zero",
            "statement|data_access|error|error|42601|-|SELEC oops|syntax error at or near \"SELEC\"",
            "statement|data_change|error|error|23505|INSERT|INSERT INTO u VALUES (7), (7)|duplicate key value violates unique constraint \"u_pkey\"",
        ]
    );
    // Only the committed transaction's rows exist; the failures never show up as successes.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM u"
        ),
        "7,8"
    );
    assert_eq!(c.one("postgres", "SELECT count(*) FROM activity_log.events WHERE status = 'success' AND kind = 'statement'"), "0");
}

#[test]
fn log_event_records_actor_context_and_entity() {
    let c = Cluster::start("events", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        r#"
        SET activity_log.actor = 'api:bob';
        SET activity_log.context = '{"tenant": 42}';
        SELECT activity_log.log_event('user_login', '{"method": "password"}', entity_type => 'user',
                                      entity_id => 'u-9', category => 'authentication', severity => 'notice');
        RESET activity_log.actor;
        RESET activity_log.context;
        SELECT activity_log.log_event('data_backup');
        "#,
    );
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind, category, severity, status, db_user, coalesce(actor, '-'), coalesce(context::text, '-'), command, details
           FROM activity_log.events ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            r#"event|authentication|notice|success|postgres|api:bob|{"tenant": 42}|user_login|{"data": {"method": "password"}, "action": "user_login", "entity_id": "u-9", "entity_type": "user"}"#,
            r#"event|application|info|success|postgres|-|-|data_backup|{"data": {}, "action": "data_backup"}"#,
        ]
    );
}

/// Only processes that run statements for a user are audited: an autovacuum worker cancelled
/// by a lock conflict is the server's business, not a failed statement of the bootstrap
/// superuser with an empty query.
#[test]
fn a_cancelled_autovacuum_is_not_a_failed_statement() {
    let c = Cluster::start("autovacuum", &["autovacuum_naptime = 1"]);
    with_extension(&c, "postgres");
    // Slow enough that autovacuum is still on it when the lock comes.
    c.sql(
        "postgres",
        "CREATE TABLE big (id int, pad text) WITH (autovacuum_vacuum_cost_delay = 100,
             autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 1,
             autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1000000000);
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g;
         DELETE FROM big WHERE id % 2 = 0;",
    );
    let worker = wait_until(Duration::from_secs(60), || {
        c.sql(
            "postgres",
            "SELECT pid FROM pg_stat_activity
              WHERE backend_type = 'autovacuum worker' AND query LIKE '%public.big%'",
        )
        .into_iter()
        .next()
    })
    .expect("autovacuum never started on big");
    // Waits for autovacuum to be cancelled (after deadlock_timeout), then commits.
    c.sql(
        "postgres",
        "BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE; COMMIT;",
    );
    c.error("postgres", "SELECT 1 / 0");
    c.flush("postgres");
    assert!(
        c.log().contains("canceling autovacuum task"),
        "autovacuum was not cancelled:\n{}",
        c.log()
    );
    assert_eq!(
        c.one(
            "postgres",
            &format!(
                "SELECT count(*) FILTER (WHERE backend_pid = {worker} OR sqlstate = '57014') || ' '
                        || count(*) FILTER (WHERE sqlstate = '22012' AND query = 'SELECT 1 / 0')
                   FROM activity_log.events WHERE status = 'error'"
            )
        ),
        "0 1"
    );
}

/// Changes made by autovacuum are captured like any other: an index expression can write to a
/// tracked table while autoanalyze samples rows (only autovacuum's own errors are not
/// statements).
#[test]
fn changes_made_during_an_autoanalyze_are_captured() {
    let c = Cluster::start(
        "autoanalyze",
        &[
            "autovacuum_naptime = 1",
            "activity_log.capture_statements = 'none'",
        ],
    );
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE t (id serial PRIMARY KEY, what text); SELECT activity_log.track('t');
         CREATE FUNCTION note_it(x int) RETURNS int LANGUAGE plpgsql VOLATILE
             AS $$ BEGIN INSERT INTO public.t (what) VALUES ('evaluated'); RETURN x; END $$;
         -- Schema-qualified: autovacuum's search_path is pg_catalog only.
         CREATE FUNCTION wrapped(x int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT public.note_it(x) $$;
         CREATE TABLE s (x int) WITH (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);
         CREATE INDEX ON s (wrapped(x));
         INSERT INTO s SELECT generate_series(1, 100);",
    );
    let analyzed = wait_until(Duration::from_secs(60), || {
        (c.one(
            "postgres",
            "SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 's'",
        ) == "t")
            .then_some(())
    });
    assert!(analyzed.is_some(), "autoanalyze never ran on s");
    c.flush("postgres");
    let rows: i64 = c.one("postgres", "SELECT count(*) FROM t").parse().unwrap();
    assert!(rows > 100, "autoanalyze wrote nothing to t ({rows} rows)");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.changes WHERE table_name = 't' AND op = 'INSERT'"
        ),
        rows.to_string()
    );
}
