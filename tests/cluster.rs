//! Real-cluster tests of the pipeline: statements, events, transactions, the writer, rings,
//! overflow, restarts and crashes. The harness is in tests/common.

mod common;

use common::*;
use std::process::Command;
use std::thread::sleep;
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
fn a_failing_batch_is_retried_after_a_back_off_and_nothing_is_lost() {
    let c = Cluster::start("poison", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    let first = c.wait_for_writer("postgres", None);
    // A constraint that the next batch violates: the writer's insert fails.
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.events ADD CONSTRAINT no_poison CHECK (command <> 'poison')",
    );
    c.sql("postgres", "SELECT activity_log.log_event('poison')");
    let failed = wait_until(Duration::from_secs(10), || {
        let errors = c.one("postgres", "SELECT write_errors FROM activity_log.queue");
        (errors != "0").then_some(())
    });
    assert!(failed.is_some());
    assert_eq!(
        c.one("postgres", "SELECT activity_log.flush('200 ms')"),
        "f"
    );
    assert!(
        c.one("postgres", "SELECT last_error FROM activity_log.queue")
            .contains("violates check constraint \"no_poison\"")
    );
    let health = c.one(
        "postgres",
        "SELECT f->>'penalty' FROM activity_log.health() h, jsonb_array_elements(h.factors) f WHERE f->>'factor' = 'write_errors'",
    );
    assert_eq!(health, "20");
    // Once the cause is gone, a new writer stores the very same record.
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.events DROP CONSTRAINT no_poison",
    );
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'poison'"
        ),
        "1"
    );
    assert_ne!(c.wait_for_writer("postgres", None), first);
    assert_eq!(
        c.one("postgres", "SELECT dropped_records FROM activity_log.queue"),
        "0"
    );

    // If the cause stays, the third try stores the batch record by record: the refused record
    // goes to the dead-letter table, a gap record in the trail says why and where, and the
    // others arrive.
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.events ADD CONSTRAINT no_toxic CHECK (command <> 'toxic')",
    );
    c.sql("postgres", "BEGIN; SELECT activity_log.log_event('fine 1'); SELECT activity_log.log_event('toxic'); SELECT activity_log.log_event('fine 2'); COMMIT;");
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind, status, command, coalesce(details->>'reason', '-') FROM activity_log.events WHERE id > (SELECT max(id) FROM activity_log.events WHERE command = 'poison') ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            "event|success|fine 1|-",
            "system|gap|GAP|event record \"toxic\" could not be stored: new row for relation \"events\" violates check constraint \"no_toxic\" (kept as activity_log.dead_letters id 1)",
            "event|success|fine 2|-",
        ]
    );
    // The refused row itself is kept whole in the dead-letter table.
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT d.id, d.what, d.error, r.kind, r.command, r.details->>'action', r.committed_at = d.committed_at
               FROM activity_log.dead_letters d, jsonb_populate_record(NULL::activity_log.events, d.record) r"
        ),
        ["1|event record \"toxic\"|new row for relation \"events\" violates check constraint \"no_toxic\"|event|toxic|toxic|t"]
    );

    // A refusal by an index, which comes after the heap insert (when the buffered rows are
    // flushed), takes the same way.
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.events DROP CONSTRAINT no_toxic;
         CREATE UNIQUE INDEX twin ON activity_log.events (command, committed_at) WHERE command = 'twin'",
    );
    c.sql("postgres", "BEGIN; SELECT activity_log.log_event('twin'); SELECT activity_log.log_event('twin'); COMMIT;");
    c.flush("postgres");
    let rows = c.sql(
        "postgres",
        "SELECT kind || '|' || status || '|' || command || '|' || coalesce(details->>'reason', '-')
           FROM activity_log.events WHERE id > (SELECT max(id) FROM activity_log.events WHERE command = 'fine 2') ORDER BY id",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], "event|success|twin|-");
    assert!(
        rows[1].starts_with("system|gap|GAP|event record \"twin\" could not be stored: duplicate key value violates unique constraint")
            && rows[1].ends_with("(kept as activity_log.dead_letters id 2)"),
        "{}",
        rows[1]
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

#[test]
fn each_database_gets_its_own_trail() {
    let c = Cluster::start("twodbs", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "alpha");
    with_extension(&c, "beta");
    c.sql("postgres", "CREATE DATABASE gamma");
    for db in ["alpha", "beta", "gamma"] {
        c.sql(db, "CREATE TABLE IF NOT EXISTS x (v int)");
    }
    for db in ["alpha", "beta"] {
        c.sql(
            db,
            &format!("SELECT activity_log.log_event('hello from {db}')"),
        );
    }
    for db in ["alpha", "beta"] {
        c.flush(db);
        assert_eq!(
            c.one(
                db,
                "SELECT string_agg(command, ',') FROM activity_log.events"
            ),
            format!("hello from {db}")
        );
    }
    assert_eq!(
        c.one(
            "alpha",
            "SELECT string_agg(database, ',' ORDER BY database) FROM activity_log.queue"
        ),
        "alpha,beta"
    );
    assert_eq!(
        c.one(
            "gamma",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'activity_log'"
        ),
        "0"
    );
    let writers = c.one(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'activity_log writer'",
    );
    assert_eq!(writers, "2");
}

#[test]
fn drop_extension_and_drop_database_release_the_ring() {
    let c = Cluster::start("drops", &["activity_log.capture_statements = 'all'"]);
    with_extension(&c, "alpha");
    with_extension(&c, "beta");
    let alpha_writer = c.wait_for_writer("alpha", None);
    c.sql(
        "alpha",
        "SET activity_log.allow_drop_trail = on; DROP EXTENSION activity_log",
    );
    // Work goes on in alpha, unaudited and without errors; its writer goes away.
    c.sql(
        "alpha",
        "CREATE TABLE after_drop (v int); INSERT INTO after_drop VALUES (1);",
    );
    let gone = wait_until(Duration::from_secs(10), || {
        let n = c.one(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {alpha_writer}"),
        );
        (n == "0").then_some(())
    });
    assert!(gone.is_some(), "alpha's writer did not exit");
    assert_eq!(
        c.one(
            "beta",
            "SELECT string_agg(database, ',') FROM activity_log.queue"
        ),
        "beta"
    );
    // Installing it again starts a new trail.
    with_extension(&c, "alpha");
    c.sql("alpha", "SELECT activity_log.log_event('back')");
    c.flush("alpha");
    assert_eq!(c.one("alpha", "SELECT string_agg(coalesce(command, '?'), ',' ORDER BY id) FROM activity_log.events WHERE kind <> 'statement'"), "CREATE EXTENSION,back");
    // DROP EXTENSION right after activity: the writer stores what is queued and stops first,
    // so there is no deadlock and nothing is lost; the database's ring counters carry on.
    for round in 0..3 {
        c.sql("alpha", &format!("CREATE TABLE IF NOT EXISTS busy (v int); INSERT INTO busy VALUES ({round}); SET activity_log.allow_drop_trail = on; DROP EXTENSION activity_log; CREATE EXTENSION activity_log;"));
    }
    c.flush("alpha");
    // Statements are captured here: each query below publishes its own record after it reads
    // the counters, so they match once the writer has stored the records of the queries before.
    let settled = wait_until(Duration::from_secs(10), || {
        let q = "SELECT published_records = written_records AND dropped_records = 0 AND write_errors = 0 FROM activity_log.queue WHERE database = 'alpha'";
        (c.one("alpha", q) == "t").then_some(())
    });
    assert!(
        settled.is_some(),
        "{:?}",
        c.sql("alpha", "SELECT published_records, written_records, dropped_records, write_errors, last_error FROM activity_log.queue")
    );
    assert_eq!(
        c.one("alpha", "SELECT score FROM activity_log.health()"),
        "100"
    );
    // A relation dropped before its statement record is written shows as its OID.
    c.sql(
        "alpha",
        "BEGIN; CREATE TABLE gone (v int); INSERT INTO gone VALUES (1); DROP TABLE gone; COMMIT;",
    );
    c.flush("alpha");
    assert_eq!(
        c.one("alpha", "SELECT relations[1] ~ '^[0-9]+$' FROM activity_log.events WHERE query = 'INSERT INTO gone VALUES (1)'"),
        "t"
    );
    // A DROP DATABASE that PostgreSQL refuses leaves the ring and its writer alone.
    c.sql("postgres", "CREATE ROLE intruder LOGIN");
    let beta_writer = c.wait_for_writer("beta", None);
    let err = c.error("postgres", "SET ROLE intruder; DROP DATABASE beta;");
    assert!(err.contains("must be owner of database beta"), "{err}");
    assert_eq!(c.writer_pid("beta"), Some(beta_writer));
    // A connected writer does not block DROP DATABASE.
    c.sql("postgres", "DROP DATABASE beta");
    assert_eq!(
        c.one(
            "alpha",
            "SELECT string_agg(database, ',') FROM activity_log.queue"
        ),
        "alpha"
    );
}

#[test]
fn terminated_writer_comes_back_and_nothing_is_lost() {
    let c = Cluster::start("terminate", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    let first = c.wait_for_writer("postgres", None);
    let locker = c.lock_trail("postgres");
    c.sql(
        "postgres",
        &"SELECT activity_log.log_event('before');\n".repeat(50),
    );
    // The writer is blocked on the lock with records in its ring; SIGTERM makes it drain and exit.
    c.sql("postgres", &format!("SELECT pg_terminate_backend({first})"));
    sleep(Duration::from_millis(300));
    c.unlock_trail("postgres", locker);
    let second = c.wait_for_writer("postgres", Some(first));
    assert_ne!(first, second);
    c.sql(
        "postgres",
        &"SELECT activity_log.log_event('after');\n".repeat(50),
    );
    c.flush("postgres");
    assert_eq!(c.one("postgres", "SELECT count(*) FILTER (WHERE command = 'before') || ',' || count(*) FILTER (WHERE command = 'after') FROM activity_log.events"), "50,50");
    assert_eq!(
        c.one("postgres", "SELECT dropped_records FROM activity_log.queue"),
        "0"
    );
}

#[test]
fn killed_writer_crash_restart_leaves_a_gap_event_in_every_trail() {
    let c = Cluster::start(
        "crash",
        &[
            "activity_log.capture_statements = 'none'",
            "restart_after_crash = on",
        ],
    );
    with_extension(&c, "alpha");
    with_extension(&c, "beta");
    let pid = c.wait_for_writer("alpha", None);
    c.sql("alpha", "SELECT activity_log.log_event('before crash')");
    c.flush("alpha");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // The postmaster restarts every process and re-creates shared memory.
    let back = wait_until(Duration::from_secs(60), || {
        let out = c.run(
            "beta",
            "SELECT count(*) FROM activity_log.events WHERE status = 'gap'",
        );
        (out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
    });
    assert!(back.is_some(), "no gap event in beta; log:\n{}", c.log());
    for db in ["alpha", "beta"] {
        c.wait_for_writer(db, None);
        c.flush(db);
        let rows = c.sql(db, "SELECT kind, category, severity, command, details->>'crash_restarts' FROM activity_log.events WHERE status = 'gap'");
        assert_eq!(rows, ["system|system|critical|GAP|1"], "in {db}");
    }
    assert_eq!(
        c.one(
            "alpha",
            "SELECT count(*) FROM activity_log.events WHERE command = 'before crash'"
        ),
        "1"
    );
    // The window in which records may be missing: after the newest stored, before the restart.
    assert_eq!(
        c.one(
            "alpha",
            "SELECT (details->>'lost_after')::timestamptz = (SELECT committed_at FROM activity_log.events WHERE command = 'before crash'),
                    (details->>'lost_before')::timestamptz > (details->>'lost_after')::timestamptz,
                    (details->>'lost_before')::timestamptz <= ts
               FROM activity_log.events WHERE status = 'gap'"
        ),
        "t|t|t"
    );
}

#[test]
fn fast_shutdown_drains_queued_records() {
    let c = Cluster::start("shutdown", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    let locker = c.lock_trail("postgres");
    c.sql(
        "postgres",
        &"SELECT activity_log.log_event('queued');\n".repeat(200),
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT published_records - written_records FROM activity_log.queue"
        ),
        "200"
    );
    // Fast shutdown ends the locker session; the writer then stores everything before exiting.
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    let _ = locker.wait_with_output();
    assert!(c.pg_ctl(&["start"]));
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'queued'"
        ),
        "200"
    );
}

/// Fills a 64 kB ring while the writer is blocked, under each overflow policy.
#[test]
fn overflow_policies_count_exactly() {
    let c = Cluster::start(
        "overflow",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '64kB'",
        ],
    );
    with_extension(&c, "postgres");
    c.sql("postgres", "CREATE TABLE paid (id int)");
    let big =
        "SELECT activity_log.log_event('big', jsonb_build_object('pad', repeat('x', 1000)));\n"
            .to_string();

    // drop: every record that does not fit is counted, and the rest arrive.
    let locker = c.lock_trail("postgres");
    c.sql(
        "postgres",
        &format!("SET activity_log.overflow = 'drop';\n{}", big.repeat(200)),
    );
    let dropped: i64 = c
        .one("postgres", "SELECT dropped_records FROM activity_log.queue")
        .parse()
        .unwrap();
    assert!(dropped > 100 && dropped < 200, "dropped {dropped}");
    c.unlock_trail("postgres", locker);
    c.flush("postgres");
    let written: i64 = c
        .one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'big'",
        )
        .parse()
        .unwrap();
    assert_eq!(written + dropped, 200);
    assert_eq!(
        c.one(
            "postgres",
            "SELECT score || ',' || status FROM activity_log.health()"
        ),
        "70,degraded",
        "drops cost 30 points (their gap record no more while the counter shows them)"
    );
    // The loss is in the trail too, before any record committed after it: in one gap record,
    // or in two when the writer first looked while the drops were under way.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT sum((details->>'dropped_records')::int) FROM activity_log.events WHERE status = 'gap'"
        ),
        dropped.to_string()
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT published_records || ',' || written_records FROM activity_log.queue"
        ),
        format!("{written},{written}")
    );

    // error: the transaction that does not fit fails, and its change does not commit.
    let locker = c.lock_trail("postgres");
    c.sql(
        "postgres",
        &format!("SET activity_log.overflow = 'drop';\n{}", big.repeat(100)),
    );
    let err = c.error(
        "postgres",
        &format!("SET activity_log.overflow = 'error';\nBEGIN;\nINSERT INTO paid VALUES (1);\n{big}COMMIT;"),
    );
    assert!(err.contains("ERROR:  activity_log ring is full"), "{err}");
    assert!(
        err.contains("HINT:  The transaction was rolled back so that no unaudited change commits."),
        "{err}"
    );
    assert_eq!(c.one("postgres", "SELECT count(*) FROM paid"), "0");

    // wait: the commit blocks until the writer makes room, then succeeds; nothing is dropped.
    let dropped_before = c.one("postgres", "SELECT dropped_records FROM activity_log.queue");
    let waiter = c.spawn(
        "postgres",
        "al_waiter",
        "SET activity_log.overflow = 'wait'; SET activity_log.overflow_timeout = '60s'; BEGIN; INSERT INTO paid VALUES (2); SELECT activity_log.log_event('waited'); COMMIT;",
    );
    sleep(Duration::from_secs(1));
    assert_eq!(c.one("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_waiter' AND state = 'active'"), "1");
    assert_eq!(c.one("postgres", "SELECT count(*) FROM paid"), "0");
    c.unlock_trail("postgres", locker);
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.flush("postgres");
    assert_eq!(c.one("postgres", "SELECT count(*) FROM paid"), "1");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'waited'"
        ),
        "1"
    );
    assert_eq!(
        c.one("postgres", "SELECT dropped_records FROM activity_log.queue"),
        dropped_before
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT overflow_waits > 0 FROM activity_log.queue"
        ),
        "t"
    );

    // wait with a short timeout: the transaction fails rather than commit unaudited.
    let locker = c.lock_trail("postgres");
    c.sql(
        "postgres",
        &format!("SET activity_log.overflow = 'drop';\n{}", big.repeat(100)),
    );
    let err = c.error(
        "postgres",
        &format!("SET activity_log.overflow_timeout = '300ms';\nBEGIN;\nINSERT INTO paid VALUES (3);\n{big}COMMIT;"),
    );
    assert!(
        err.contains("ERROR:  activity_log ring stayed full for activity_log.overflow_timeout"),
        "{err}"
    );
    c.unlock_trail("postgres", locker);
    assert_eq!(
        c.one("postgres", "SELECT count(*) FROM paid WHERE id = 3"),
        "0"
    );
}

/// A transaction whose records are larger than the whole ring (64 kB here) is neither refused
/// nor dropped, under any overflow policy: it publishes through durable_queue. Rolling back
/// to a savepoint drops exactly what the subtransaction added, staged or not.
#[test]
fn a_transaction_larger_than_the_ring_commits_and_is_stored_whole() {
    let c = Cluster::start(
        "toolarge",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '64kB'",
        ],
    );
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('huge', jsonb_build_object('pad', repeat('x', 100000)));
         SET activity_log.overflow = 'drop';
         SELECT activity_log.log_event('huge', jsonb_build_object('pad', repeat('y', 100000)));
         SET activity_log.overflow = 'error';
         SELECT activity_log.log_event('huge', jsonb_build_object('pad', repeat('z', 100000)));",
    );
    c.sql(
        "postgres",
        "CREATE TABLE wide (id int PRIMARY KEY, v text); SELECT activity_log.track('wide');
         INSERT INTO wide SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;",
    );
    c.sql(
        "postgres",
        "DO $$
         BEGIN
             INSERT INTO wide VALUES (0, 'before');
             BEGIN
                 INSERT INTO wide SELECT g, repeat('x', 100) FROM generate_series(10001, 30000) g;
                 RAISE EXCEPTION 'changed my mind';
             EXCEPTION WHEN raise_exception THEN
                 RAISE NOTICE 'rolled back';
             END;
             INSERT INTO wide VALUES (-1, 'after');
         END $$;",
    );
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT left(details->'data'->>'pad', 1), length(details->'data'->>'pad') FROM activity_log.events WHERE command = 'huge' ORDER BY id"
        ),
        ["x|100000", "y|100000", "z|100000"]
    );
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT count(*), min((new_row->>'id')::int), max((new_row->>'id')::int)
               FROM activity_log.changes WHERE table_name = 'wide' AND new_row->>'v' LIKE 'x%'"
        ),
        ["2000|1|2000"]
    );
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT op || ' ' || (new_row->>'v') FROM activity_log.changes
              WHERE table_name = 'wide' AND new_row->>'v' NOT LIKE 'x%' ORDER BY id"
        ),
        ["INSERT before", "INSERT after"]
    );
    assert_eq!(
        c.one("postgres", "SELECT dropped_records FROM activity_log.queue"),
        "0"
    );
}

#[test]
fn create_extension_without_preloading_says_how_to_fix_it() {
    let c = Cluster::start("nopreload", &["shared_preload_libraries = ''"]);
    let err = c.error("postgres", "CREATE EXTENSION activity_log");
    assert!(
        err.contains("ERROR:  activity_log must be loaded via shared_preload_libraries"),
        "{err}"
    );
    assert!(
        err.contains("HINT:  Add activity_log to shared_preload_libraries in postgresql.conf and restart the server."),
        "{err}"
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM pg_extension WHERE extname = 'activity_log'"
        ),
        "0"
    );
}

#[test]
fn out_of_range_settings_are_rejected() {
    let c = Cluster::start("gucs", &[]);
    for (setting, value, message) in [
        (
            "activity_log.buffer_size",
            "'1kB'",
            "is outside the valid range for parameter \"activity_log.buffer_size\" (64 .. 1048576)",
        ),
        (
            "activity_log.max_databases",
            "0",
            "is outside the valid range for parameter \"activity_log.max_databases\" (1 .. 64)",
        ),
        (
            "activity_log.batch_size",
            "0",
            "is outside the valid range for parameter \"activity_log.batch_size\" (1 .. 100000)",
        ),
        (
            "activity_log.flush_interval",
            "'1ms'",
            "is outside the valid range for parameter \"activity_log.flush_interval\" (10 .. 60000)",
        ),
        (
            "activity_log.capture_statements",
            "'everything'",
            "invalid value for parameter \"activity_log.capture_statements\": \"everything\"",
        ),
        (
            "activity_log.overflow",
            "'block'",
            "invalid value for parameter \"activity_log.overflow\": \"block\"",
        ),
    ] {
        let err = c.error("postgres", &format!("ALTER SYSTEM SET {setting} = {value}"));
        assert!(err.contains(message), "{setting}: {err}");
    }
    let err = c.error("postgres", "SET activity_log.context = '[1, 2]'");
    assert!(
        err.contains("DETAIL:  activity_log.context must be a JSON object"),
        "{err}"
    );
    let err = c.error("postgres", "SET activity_log.unknown_thing = 1");
    assert!(
        err.contains("invalid configuration parameter name \"activity_log.unknown_thing\""),
        "{err}"
    );
}

#[test]
fn pg_regress_suite() {
    let c = Cluster::start("regress", &["activity_log.capture_statements = 'all'"]);
    c.sql("postgres", "CREATE DATABASE al_regress");
    let out_dir = format!("{}/target/regress", env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(format!("{}/../lib/pgxs/src/test/regress/pg_regress", *BIN))
        .args([
            "--use-existing",
            &format!("--host={}", c.dir),
            &format!("--port={}", c.port),
        ])
        .args([
            "--user=postgres",
            "--dbname=al_regress",
            "--inputdir=tests/regress",
        ])
        .arg(format!("--outputdir={out_dir}"))
        .arg(format!("--bindir={}", *BIN))
        .args([
            "setup",
            "log_event",
            "flush_and_recent",
            "settings",
            "health",
            "analytics",
            "migration",
            "hostile",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let diffs = std::fs::read_to_string(format!("{out_dir}/regression.diffs")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pg_regress failed:\n{}\n{diffs}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The health score, computed from constructed situations: a quiet system scores 100; a ring
/// 95 % full is degraded; dropped records count until reset_metrics(); no writer is critical.
#[test]
fn health_score_reflects_constructed_situations() {
    let c = Cluster::start(
        "health",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '64kB'",
            "activity_log.overflow = 'drop'",
        ],
    );
    with_extension(&c, "postgres");
    c.flush("postgres");
    let health = || {
        c.one(
            "postgres",
            "SELECT score || ' ' || status || ' ' || coalesce((SELECT string_agg((f->>'factor') || '=' || (f->>'penalty'), ',')
                                                             FROM jsonb_array_elements(factors) f WHERE (f->>'penalty')::int > 0), '-')
               FROM activity_log.health()",
        )
    };
    assert_eq!(health(), "100 healthy -");

    // The writer is paused; events of about 1 % of the ring each fill it to 95 %.
    let writer = c.one("postgres", "SELECT writer_pid FROM activity_log.metrics()");
    let signal = |sig: &str, pid: &str| {
        assert!(
            Command::new("kill")
                .args([sig, pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP", &writer);
    let fill = || -> f64 {
        c.one("postgres", "SELECT fill_pct FROM activity_log.metrics()")
            .parse()
            .unwrap()
    };
    while fill() < 95.0 {
        c.sql(
            "postgres",
            "SELECT activity_log.log_event('fill', jsonb_build_object('pad', repeat('x', 500)))",
        );
    }
    assert_eq!(health(), "60 degraded ring_fill_pct=40");
    // A record that does not fit is dropped (overflow = drop).
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('too big', jsonb_build_object('pad', repeat('x', 30000)))",
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT dropped_records FROM activity_log.metrics()"
        ),
        "1"
    );
    assert_eq!(health(), "30 critical ring_fill_pct=40,dropped_records=30");
    signal("-CONT", &writer);
    c.flush("postgres");
    assert_eq!(health(), "70 degraded dropped_records=30");
    // A session locking the trail does not hang the report: its factors become unknown.
    let locker = c.lock_trail("postgres");
    assert_eq!(health(), "60 degraded dropped_records=30,trail_access=10");
    c.unlock_trail("postgres", locker);
    c.sql("postgres", "SELECT activity_log.reset_metrics()");
    assert_eq!(health(), "100 healthy -");

    // No writer: the launcher is paused, so the terminated writer is not restarted.
    let launcher = c.one("postgres", "SELECT activity_log._launcher_pid()");
    signal("-STOP", &launcher);
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(writer_pid) FROM activity_log.metrics()",
    );
    let stopped = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT writer_state FROM activity_log.metrics()",
        ) != "running")
            .then_some(())
    });
    assert!(stopped.is_some(), "the writer did not stop");
    assert_eq!(health(), "50 critical writer=50");
    signal("-CONT", &launcher);
    c.wait_for_writer("postgres", None);
    c.flush("postgres");
    assert_eq!(health(), "100 healthy -");

    // Failing statements: 20 of 20 captured statements in the last hour.
    let failing = format!(
        "\\set ON_ERROR_STOP 0\nSET activity_log.capture_statements = 'all';\n{}",
        "SELECT 1/0;\n".repeat(20)
    );
    c.run("postgres", &failing);
    c.flush("postgres");
    assert_eq!(health(), "85 degraded statement_error_rate=15");
    c.sql("postgres", "TRUNCATE activity_log.events");
    assert_eq!(health(), "100 healthy -");

    // A missing index of the trail.
    c.sql(
        "postgres",
        "DROP INDEX activity_log.events_default_table_idx",
    );
    assert_eq!(health(), "90 healthy index_health=10");
    c.sql("postgres", "CREATE INDEX events_default_table_idx ON activity_log.events_default (table_oid, id) WHERE table_oid IS NOT NULL");
    assert_eq!(health(), "100 healthy -");

    // metrics_daily has the rows of every batch as soon as the batch is stored.
    let events_today = || -> i64 {
        c.one(
            "postgres",
            "SELECT coalesce(sum(events), 0) FROM activity_log.metrics_daily
              WHERE kind = 'event' AND day = date_trunc('day', now(), 'UTC')",
        )
        .parse()
        .unwrap()
    };
    let before = events_today();
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('metrics') FROM generate_series(1, 3)",
    );
    c.flush("postgres");
    assert_eq!(events_today(), before + 3);
}

/// metrics_daily is kept by the writer batch by batch: the rows it stores are counted in the
/// batch's own transaction, and rows added or changed by hand are not, until refresh_metrics()
/// recomputes every day from the trail — while the writer goes on storing and counting.
#[test]
fn metrics_daily_is_kept_batch_by_batch_and_refresh_metrics_repairs_it() {
    let c = Cluster::start(
        "metrics-daily",
        &["activity_log.capture_statements = 'none'"],
    );
    with_extension(&c, "postgres");
    c.flush("postgres");
    // Two old days, added by hand (as a restore would): 3 and 4 days ago (UTC), in
    // events_default (no partition holds them). Negative ids: not the writer's.
    c.sql(
        "postgres",
        "INSERT INTO activity_log.events (id, ts, committed_at, kind, category, severity, status, duration_ms, command)
         SELECT -g, t, t, kind, cat, 'info', status, dur, 'X'
           FROM generate_series(1, 30) g,
                LATERAL (SELECT date_trunc('day', now(), 'UTC') - (3 + g % 2) * interval '1 day' + g * interval '1 minute' AS t,
                                CASE WHEN g <= 20 THEN 'statement' ELSE 'change' END AS kind,
                                CASE WHEN g <= 20 THEN 'data_access' ELSE 'data_change' END AS cat,
                                CASE WHEN g <= 20 AND g % 5 = 0 THEN 'error' ELSE 'success' END AS status,
                                CASE WHEN g <= 20 THEN g::float8 END AS dur) x",
    );
    let old_days = "SET TimeZone = 'UTC';
                    SELECT coalesce(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', (day::date - current_date), kind, category, status,
                                             events, error_rate, avg_duration_ms, p95_duration_ms), ' ' ORDER BY day, kind, category, status), '-')
                      FROM activity_log.metrics_daily WHERE day < date_trunc('day', now(), 'UTC') - interval '1 day'";
    // The writer did not store them: they are not counted.
    assert_eq!(c.one("postgres", old_days), "-");
    c.sql("postgres", "SELECT activity_log.refresh_metrics()");
    // 3 days ago: the even g (10 statements: 2, 4, …, 20, of which 10 and 20 failed; 5
    // changes, no duration); 4 days ago: the odd ones (5 and 15 failed). The p95 is the middle
    // of the histogram bucket of percentile_disc(0.95): 15 is shown as 15.029, 18 as 17.992,
    // 19 as 19.105 and 20 as 19.885.
    let exact = [
        "-4|change|data_change|success|5|0.0000||",
        "-4|statement|data_access|error|2|1.0000|10.000|15.029",
        "-4|statement|data_access|success|8|0.0000|10.000|19.105",
        "-3|change|data_change|success|5|0.0000||",
        "-3|statement|data_access|error|2|1.0000|15.000|19.885",
        "-3|statement|data_access|success|8|0.0000|10.000|17.992",
    ]
    .join(" ");
    assert_eq!(c.one("postgres", old_days), exact);
    // Within 1 % of percentile_disc(0.95) of the trail, for every group.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.metrics_daily m
               JOIN (SELECT date_trunc('day', ts, 'UTC') AS day, kind, category, status,
                            percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95
                       FROM activity_log.events GROUP BY 1, 2, 3, 4) e USING (day, kind, category, status)
              WHERE e.p95 IS NOT NULL AND abs(m.p95_duration_ms - e.p95::numeric) <= 0.01 * e.p95::numeric"
        ),
        "4"
    );

    // Today, through the writer: counted as soon as flush() returns.
    let today = |what: &str| {
        c.one(
            "postgres",
            &format!(
                "SELECT coalesce(sum(events), 0) FROM activity_log.metrics_daily
                  WHERE day = date_trunc('day', now(), 'UTC') AND kind = 'event' AND category = '{what}'"
            ),
        )
    };
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('a', category => 'billing') FROM generate_series(1, 7)",
    );
    c.flush("postgres");
    assert_eq!(today("billing"), "7");

    // The old days' rows are changed behind the writer's back: it does not see it.
    c.sql(
        "postgres",
        "UPDATE activity_log.events SET status = 'error' WHERE id < 0;
         DELETE FROM activity_log.events WHERE id IN (-1, -2)",
    );
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('b', category => 'billing') FROM generate_series(1, 5)",
    );
    c.flush("postgres");
    assert_eq!(today("billing"), "12");
    assert_eq!(c.one("postgres", old_days), exact);

    // Nobody holding the rollups makes the writer wait: transactions left open after
    // refresh_metrics() and rebuild_rollup(), and one holding today's rows.
    let holders = [
        c.spawn(
            "postgres",
            "rebuilder",
            "BEGIN; SELECT activity_log.rebuild_rollup(); SELECT pg_sleep(30); COMMIT;",
        ),
        c.spawn(
            "postgres",
            "refresher",
            "BEGIN; SELECT activity_log.refresh_metrics(); SELECT pg_sleep(30); COMMIT;",
        ),
        c.spawn(
            "postgres",
            "holder",
            "BEGIN; SELECT count(*) FROM (SELECT FROM activity_log.activity_daily FOR UPDATE) held; SELECT pg_sleep(30); COMMIT;",
        ),
    ];
    let held = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('rebuilder', 'refresher', 'holder')
                AND query LIKE '%pg_sleep%' AND state = 'active'",
        ) == "3")
            .then_some(())
    });
    assert!(held.is_some(), "the three sessions never got their locks");
    // Over the writer's merge interval (10 s), so that it merges while they hold.
    for _ in 0..6 {
        c.sql(
            "postgres",
            "SELECT activity_log.log_event('d', category => 'order') FROM generate_series(1, 10)",
        );
        assert_eq!(c.one("postgres", "SELECT activity_log.flush('5 s')"), "t");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(today("order"), "60");
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name IN ('rebuilder', 'refresher', 'holder')",
    );
    for mut holder in holders {
        holder.wait().unwrap();
    }

    // refresh_metrics() recomputes them: every old row failed now, two fewer. It runs while
    // two sessions log events, committing all the while: none is lost or counted twice.
    let loggers: Vec<_> = (0..2)
        .map(|i| {
            c.spawn(
                "postgres",
                &format!("logger{i}"),
                "DO $$ BEGIN
                   FOR i IN 1..400 LOOP
                     PERFORM activity_log.log_event('c', category => 'payment');
                     COMMIT;
                   END LOOP;
                 END $$;",
            )
        })
        .collect();
    for _ in 0..3 {
        c.sql("postgres", "SELECT activity_log.refresh_metrics()");
    }
    for mut logger in loggers {
        assert!(logger.wait().unwrap().success());
    }
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT string_agg(format('%s|%s|%s|%s', (day::date - current_date), kind, status, events), ' ' ORDER BY day, kind)
               FROM activity_log.metrics_daily WHERE day < date_trunc('day', now(), 'UTC') - interval '1 day'"
        ),
        "-4|change|error|5 -4|statement|error|9 -3|change|error|5 -3|statement|error|9"
    );
    assert_eq!(today("billing"), "12");
    assert_eq!(today("payment"), "800");
    // The writer merges the rows of each key it added to (each batch adds its own) every 10 s.
    std::thread::sleep(Duration::from_secs(11));
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('e', category => 'payment')",
    );
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) || ' ' || sum(events) FROM activity_log.activity_daily
              WHERE day = date_trunc('day', now(), 'UTC') AND category = 'payment'"
        ),
        "1 801"
    );
    // The repair runs only where its snapshot is one statement's.
    let err = c.error(
        "postgres",
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT activity_log.refresh_metrics(); COMMIT;",
    );
    assert!(
        err.contains("refresh_metrics() must run at the READ COMMITTED isolation level"),
        "{err}"
    );
    // A row broken by hand costs the writer neither its counting nor the repair: the merge
    // that fails on it is its own subtransaction.
    c.sql(
        "postgres",
        r#"INSERT INTO activity_log.activity_daily
           VALUES (date_trunc('day', now(), 'UTC'), 'event', 'payment', 'success', 1, 1, 1, '{"1": 1.5}')"#,
    );
    std::thread::sleep(Duration::from_secs(11));
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('f', category => 'payment') FROM generate_series(1, 2)",
    );
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT sum(events) FROM activity_log.activity_daily
              WHERE day = date_trunc('day', now(), 'UTC') AND category = 'payment'"
        ),
        "804"
    );
    assert!(
        c.log().contains("the rollups' rows were not merged"),
        "{}",
        c.log()
    );
    c.sql("postgres", "SELECT activity_log.refresh_metrics()");
    assert_eq!(today("payment"), "803");
    // A role with activity_log_reader only reads it (the view runs an internal aggregate).
    c.sql(
        "postgres",
        "CREATE ROLE dashboard LOGIN IN ROLE activity_log_reader",
    );
    assert_eq!(
        c.one_as(
            "dashboard",
            "postgres",
            "SELECT events FROM activity_log.metrics_daily
              WHERE day = date_trunc('day', now(), 'UTC') AND category = 'payment'"
        ),
        "803"
    );
    // And every group equals a count of the trail.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.metrics_daily m
               FULL JOIN (SELECT date_trunc('day', ts, 'UTC') AS day, kind, category, status, count(*) AS events
                            FROM activity_log.events GROUP BY 1, 2, 3, 4) e USING (day, kind, category, status)
              WHERE m.events IS DISTINCT FROM e.events"
        ),
        "0"
    );
}

/// The hourly rollup is a convenience: when it cannot be updated the trail still gets every
/// record, and rebuild_rollup() repairs it.
#[test]
fn a_broken_rollup_does_not_hold_up_the_trail() {
    let c = Cluster::start("rollup", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.activity_hourly RENAME TO activity_hourly_away",
    );
    c.sql("postgres", "SELECT activity_log.log_event('while broken')");
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'while broken'"
        ),
        "1"
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT write_errors FROM activity_log.metrics()"
        ),
        "0"
    );
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.activity_hourly_away RENAME TO activity_hourly",
    );
    c.sql("postgres", "SELECT activity_log.rebuild_rollup()");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT sum(events) FROM activity_log.activity_hourly WHERE kind = 'event'"
        ),
        "1"
    );
    // Counted batch by batch, the rollup is what a rebuild recomputes from the trail.
    c.sql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); SELECT activity_log.track('t');
         INSERT INTO t SELECT generate_series(1, 5); UPDATE t SET id = id + 10 WHERE id < 3;
         SELECT activity_log.log_event('after'), activity_log.log_event('after')",
    );
    c.flush("postgres");
    let rollup = "SELECT hour || ' ' || kind || ' ' || status || ' ' || sum(events)
                    FROM activity_log.activity_hourly GROUP BY hour, kind, status ORDER BY hour, kind, status";
    let counted = c.sql("postgres", rollup);
    c.sql("postgres", "SELECT activity_log.rebuild_rollup()");
    assert_eq!(counted, c.sql("postgres", rollup));
    assert_eq!(
        c.one(
            "postgres",
            "SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind)
               FROM (SELECT kind, sum(events) n FROM activity_log.activity_hourly GROUP BY kind) k"
        ),
        "change 7, event 3, system 1"
    );
}

/// A table tracked with durability 'sync' has its records inside the transaction: a crash
/// that loses the ring (the writer stopped, then an immediate shutdown) loses the records of
/// async tables, which the gap record admits, but not those of transactions that touched a
/// sync table. An immediate shutdown with empty rings loses nothing and reports nothing.
#[test]
fn sync_tables_keep_their_records_through_a_crash() {
    let c = Cluster::start("durable", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE ledger (id int PRIMARY KEY, amount numeric);
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         SELECT activity_log.track('ledger', durability => 'sync');
         SELECT activity_log.track('notes');",
    );
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT relid, durability FROM activity_log.tracked_tables ORDER BY relid::text"
        ),
        ["ledger|sync", "notes|async"]
    );
    let pid = c.wait_for_writer("postgres", None);
    c.sql("postgres", "INSERT INTO ledger VALUES (1, 10)");
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT op, row_key, new_row FROM activity_log.changes ORDER BY id"
        ),
        [r#"INSERT|{"id": 1}|{"id": 1, "amount": 10}"#]
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.durable_queue"
        ),
        "0"
    );

    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    c.sql(
        "postgres",
        "INSERT INTO ledger VALUES (2, 20);
         INSERT INTO notes VALUES (1, 'async: lost in the crash');
         BEGIN;
         INSERT INTO notes VALUES (2, 'kept: same transaction as a ledger change');
         UPDATE ledger SET amount = 21 WHERE id = 2;
         COMMIT;
         BEGIN;
         INSERT INTO ledger VALUES (3, 30);
         ROLLBACK;",
    );
    // One staged row per committed transaction; the rolled-back one left none.
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT records FROM activity_log.durable_queue ORDER BY staged_at"
        ),
        ["1", "2"]
    );
    assert_eq!(
        c.one("postgres", "SELECT activity_log.flush('200 ms')"),
        "f"
    );
    // The postmaster SIGKILLs the stopped writer after its 5 s grace.
    assert!(c.pg_ctl(&["-m", "immediate", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    c.wait_for_writer("postgres", None);
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT table_name, op, row_key, old_row, new_row FROM activity_log.changes ORDER BY id"
        ),
        [
            r#"ledger|INSERT|{"id": 1}||{"id": 1, "amount": 10}"#,
            r#"ledger|INSERT|{"id": 2}||{"id": 2, "amount": 20}"#,
            r#"notes|INSERT|{"id": 2}||{"id": 2, "body": "kept: same transaction as a ledger change"}"#,
            r#"ledger|UPDATE|{"id": 2}|{"id": 2, "amount": 20}|{"id": 2, "amount": 21}"#,
        ]
    );
    // The two records of the mixed transaction carry its transaction id and commit time.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(DISTINCT xid) || ',' || count(DISTINCT committed_at) || ',' || bool_and(committed_at <= ts + interval '1 s')
               FROM activity_log.events WHERE table_name = 'notes' OR command = 'UPDATE'"
        ),
        "1,1,true"
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.durable_queue"
        ),
        "0"
    );
    // The async record was in the lost ring: the trail says records may be missing.
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT details->>'unclean_stop', details->>'crash_restarts' FROM activity_log.events WHERE status = 'gap'"
        ),
        ["true|0"]
    );
    // The staged records of before the crash count as published and written.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT published_records || ',' || written_records || ',' || dropped_records FROM activity_log.queue"
        ),
        "3,3,0"
    );
    // A stop with every ring drained is clean: no gap record after the next start.
    assert!(c.pg_ctl(&["-m", "immediate", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    c.sql(
        "postgres",
        "INSERT INTO notes VALUES (3, 'after a clean immediate stop')",
    );
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FILTER (WHERE status = 'gap') || ',' || count(*) FILTER (WHERE new_row->>'id' = '3') FROM activity_log.events"
        ),
        "1,1"
    );
}

/// activity_log.retention: the trail has a partition per day, made ahead by the writer; a
/// partition whose day is older than the retention is dropped by the writer, the drop is
/// recorded, and verify() still checks the rows that are left. Aging a partition takes a
/// superuser's hand: detach it, move its rows ten days back, attach it for that day.
#[test]
fn retention_drops_old_partitions_and_the_rest_still_verifies() {
    let c = Cluster::start(
        "retention",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.retention = '2d'",
        ],
    );
    with_extension(&c, "postgres");
    let writer = c.wait_for_writer("postgres", None);
    let partitions = "SELECT c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid)
                        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = 'activity_log.events'::regclass ORDER BY c.relname";
    let day = |offset: i32| {
        c.one(
            "postgres",
            &format!("SELECT to_char(date_trunc('day', now() AT TIME ZONE 'UTC') + interval '{offset} days', 'YYYYMMDD')"),
        )
    };
    let bound = |offset: i32| {
        c.one(
            "postgres",
            &format!(
                "SET TimeZone = 'UTC'; SELECT date_trunc('day', now()) + interval '{offset} days'"
            ),
        )
    };
    // Today and two days ahead, and the default partition.
    let expected = |days: &[i32]| {
        let mut lines: Vec<String> = days
            .iter()
            .map(|&d| {
                format!(
                    "events_{} FOR VALUES FROM ('{}') TO ('{}')",
                    day(d),
                    bound(d),
                    bound(d + 1)
                )
            })
            .collect();
        lines.push("events_default DEFAULT".into());
        lines.sort();
        lines
    };
    // The writer makes them when it starts, just after it shows up in activity_log.queue.
    let made = wait_until(Duration::from_secs(30), || {
        (c.sql("postgres", &format!("SET TimeZone = 'UTC'; {partitions}")) == expected(&[0, 1, 2]))
            .then_some(())
    });
    assert!(made.is_some(), "{:?}", c.sql("postgres", partitions));

    c.sql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT activity_log.track('t');
         INSERT INTO t SELECT g, 'old' FROM generate_series(1, 50) g;",
    );
    c.flush("postgres");
    let (first_id, last_id) = {
        let v = c.one(
            "postgres",
            "SELECT min(id) || ',' || max(id) FROM activity_log.events",
        );
        let (a, b) = v.split_once(',').unwrap();
        (a.to_string(), b.to_string())
    };
    let (today, old) = (day(0), day(-10));
    c.sql(
        "postgres",
        &format!(
            "ALTER TABLE activity_log.events DETACH PARTITION activity_log.events_{today};
             UPDATE activity_log.events_{today} SET committed_at = committed_at - interval '10 days';
             ALTER TABLE activity_log.events_{today} RENAME TO events_{old};
             ALTER TABLE activity_log.events ATTACH PARTITION activity_log.events_{old}
                   FOR VALUES FROM ('{}') TO ('{}');",
            bound(-10),
            bound(-9)
        ),
    );
    // The next writer maintains the partitions when it starts.
    c.sql(
        "postgres",
        &format!("SELECT pg_terminate_backend({writer})"),
    );
    c.wait_for_writer("postgres", Some(writer));
    c.sql(
        "postgres",
        "UPDATE t SET v = 'new' WHERE id = 1; DELETE FROM t WHERE id = 2;",
    );
    c.flush("postgres");

    assert_eq!(
        c.sql("postgres", &format!("SET TimeZone = 'UTC'; {partitions}")),
        expected(&[0, 1, 2])
    );
    assert_eq!(
        c.sql(
            "postgres",
            "SET TimeZone = 'UTC'; SELECT partition, range_from, range_to, rows, first_id, last_id FROM activity_log.retention_log"
        ),
        [format!(
            "events_{old}|{}|{}|51|{first_id}|{last_id}",
            bound(-10),
            bound(-9)
        )]
    );
    // The drop is in the trail; the rows of the dropped day are not.
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT kind, status, command, details->>'partition', details->>'rows', details->>'retention'
               FROM activity_log.events WHERE kind = 'system'"
        ),
        [format!("system|success|RETENTION|events_{old}|51|2 days")]
    );
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT op, row_key, new_row->>'v' FROM activity_log.history('t', '{\"id\": 1}')"
        ),
        [r#"UPDATE|{"id": 1}|new"#]
    );
    assert_eq!(
        c.one("postgres", "SELECT count(*) FROM activity_log.changes"),
        "2"
    );
    // The rows left link to the dropped rows' chain: anchors keep it.
    assert_eq!(
        c.sql("postgres", "SELECT id FROM activity_log.chain_anchors"),
        [last_id]
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT rows_checked || ',' || intact FROM activity_log.verify()"
        ),
        "3,true"
    );
    // Changing a row that is left is still found.
    c.sql(
        "postgres",
        "UPDATE activity_log.events SET new_row = '{\"id\": 1, \"v\": \"forged\"}' WHERE command = 'UPDATE'",
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT intact || ',' || (first_broken_id = (SELECT id FROM activity_log.events WHERE command = 'UPDATE')) FROM activity_log.verify()"
        ),
        "false,true"
    );
    // One row's history looks at every partition through its own index.
    let plan = c.sql(
        "postgres",
        "SET enable_seqscan = off; EXPLAIN (COSTS OFF) SELECT * FROM activity_log.changes WHERE table_oid = 't'::regclass AND jsonb_hash_extended(row_key, 0) = jsonb_hash_extended('{\"id\": 1}', 0) AND row_key = '{\"id\": 1}'",
    );
    // (Today's partition was renamed by hand above: its indexes kept their names.)
    for d in [0, 1, 2] {
        let partition = format!(" on events_{} ", day(d));
        assert!(
            plan.iter()
                .any(|l| l.contains("Index Scan using ") && l.contains(&partition)),
            "{plan:?}"
        );
    }
}

/// Disk full: today's partition of the trail is moved to a tablespace on a 1 MB tmpfs and
/// overfilled. Each batch fails ("could not extend file … No space left on device"), the
/// records wait in the ring, the health score shows it; the error says nothing about the
/// records, so however often it repeats none goes to the dead letters; once there is room
/// (the tmpfs grown) every record arrives. Mounting needs root with CAP_SYS_ADMIN: where that is
/// refused the test says so and does nothing.
#[test]
fn a_full_disk_keeps_records_waiting_until_there_is_room() {
    let space = format!("/tmp/al-test-tiny-space-{}", std::process::id());
    let space = space.as_str();
    let _ = Command::new("umount").arg(space).status();
    std::fs::create_dir_all(space).unwrap();
    let mount = |options: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", space])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount("size=1m") {
        eprintln!("SKIPPED: mount -t tmpfs is not permitted here (needs root with CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").args(["-l", &self.0]).status();
        }
    }
    let _unmount = Unmount(space.to_string());
    assert!(
        Command::new("chown")
            .args(["postgres", space])
            .status()
            .unwrap()
            .success()
    );
    let c = Cluster::start("diskfull", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.wait_for_writer("postgres", None);
    let today = c.one(
        "postgres",
        "SELECT 'activity_log.events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
    );
    let made = wait_until(Duration::from_secs(30), || {
        (c.one(
            "postgres",
            &format!("SELECT to_regclass('{today}') IS NOT NULL"),
        ) == "t")
            .then_some(())
    });
    assert!(made.is_some());
    c.sql(
        "postgres",
        &format!("CREATE TABLEspace tiny LOCATION '{space}'"),
    );
    c.sql(
        "postgres",
        &format!("ALTER TABLE {today} SET TABLEspace tiny"),
    );
    // 100 application events of 40 kB that compress badly: 4 MB for a 1 MB disk.
    c.sql(
        "postgres",
        &"SELECT activity_log.log_event('big', jsonb_build_object('blob', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 1250))));\n"
            .repeat(100),
    );
    // Three failed runs: more than it takes the writer to start isolating records.
    let failing = wait_until(Duration::from_secs(60), || {
        let v = c.sql(
            "postgres",
            "SELECT writer_failures >= 3 AND last_error LIKE '%No space left on device%' FROM activity_log.queue",
        );
        (v == ["t"]).then_some(())
    });
    assert!(
        failing.is_some(),
        "{:?}",
        c.sql("postgres", "SELECT * FROM activity_log.queue")
    );
    // Those that found room are stored, the rest wait in the ring.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT published_records || ',' || (written_records < 100) || ',' || (queued_records = 100 - written_records)
                    || ',' || dropped_records || ',' || (write_errors >= 3)
               FROM activity_log.queue"
        ),
        "100,true,true,0,true"
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT (SELECT (f->>'penalty')::int > 0 FROM jsonb_array_elements(activity_health()->'factors') f WHERE f->>'factor' = 'write_errors')
                    || ',' || (activity_health()->>'status' <> 'healthy')"
        ),
        "true,true"
    );
    assert!(mount("remount,size=64m"));
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT (SELECT count(*) FROM activity_log.events WHERE command = 'big')
                    || ',' || (SELECT count(*) FROM activity_log.events WHERE status = 'gap')
                    || ',' || (SELECT count(*) FROM activity_log.dead_letters)"
        ),
        "100,0,0"
    );
}

/// Durable (sync) transactions and ring transactions reach the trail in commit order: each
/// sync transaction is announced in the ring at pre-commit and stored when the writer reaches
/// its announcement, so an async table's record committed while four sessions keep committing
/// 50-row transactions to a sync table comes after exactly the sync transactions that
/// committed before it (row-level conflicts cannot be reordered), and afterwards both trails
/// are exact. (Before announcements, the async record overtook the sync backlog: faster, but
/// out of commit order.)
#[test]
fn sync_and_async_transactions_reach_the_trail_in_commit_order() {
    let c = Cluster::start("mixed", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE s (id bigserial PRIMARY KEY, v int);
         CREATE TABLE a (id int PRIMARY KEY, sync_rows_before bigint);
         SELECT activity_log.track('s', durability => 'sync');
         SELECT activity_log.track('a');",
    );
    c.wait_for_writer("postgres", None);
    let script = format!("{}/sync.sql", c.dir);
    std::fs::write(
        &script,
        "INSERT INTO s (v) SELECT 1 FROM generate_series(1, 50);\n",
    )
    .unwrap();
    let mut load = c
        .client("pgbench")
        .args([
            "-n", "-c", "4", "-j", "4", "-T", "6", "-f", &script, "postgres",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_secs(2));
    // The sync rows committed before this transaction are those it sees (READ COMMITTED,
    // and a sync transaction's rows and its announcement commit together).
    c.sql("postgres", "INSERT INTO a SELECT 1, count(*) FROM s");
    let load_still_running = load.try_wait().unwrap().is_none();
    assert!(
        load_still_running,
        "the sync load ended too early to show anything"
    );
    assert!(load.wait().unwrap().success());
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT (SELECT count(*) FROM s) = (SELECT count(*) FROM activity_log.changes WHERE table_name = 's')
                    AND (SELECT count(*) FROM s) > 1000
                    AND (SELECT count(*) FROM activity_log.durable_queue) = 0"
        ),
        "t"
    );
    // Stored after at least the sync rows committed before it, and before the later ones.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT (SELECT count(*) FROM activity_log.changes s, activity_log.changes a
                      WHERE s.table_name = 's' AND a.table_name = 'a' AND s.id < a.id)
                    >= (SELECT sync_rows_before FROM a)
                AND (SELECT count(*) FROM activity_log.changes s, activity_log.changes a
                      WHERE s.table_name = 's' AND a.table_name = 'a' AND s.id > a.id) > 0"
        ),
        "t"
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

/// DROP EXTENSION activity_log is refused while the trail holds records, whichever way it is
/// dropped, unless a superuser says so with activity_log.allow_drop_trail.
#[test]
fn dropping_the_extension_is_refused_while_the_trail_holds_records() {
    let c = Cluster::start("drop-refused", &[]);
    with_extension(&c, "postgres");
    c.flush("postgres");
    let last = c.one("postgres", "SELECT max(id) FROM activity_log.events");
    let err = c.error("postgres", "DROP EXTENSION activity_log");
    assert!(
        err.contains(&format!(
            "cannot drop extension activity_log: its audit trail holds records (the last has id {last})"
        )) && err.contains("SET activity_log.allow_drop_trail = on"),
        "{err}"
    );
    let err = c.error("postgres", "DROP SCHEMA activity_log CASCADE");
    assert!(
        err.contains("cannot drop extension activity_log this way"),
        "{err}"
    );
    c.sql("postgres", "CREATE ROLE eve LOGIN");
    let err = c.error_as("eve", "postgres", "SET activity_log.allow_drop_trail = on");
    assert!(err.contains("permission denied"), "{err}");
    // A max() planted in the search_path does not run in the trail check, for the owner nor
    // for anybody else (who is refused before any check).
    c.sql(
        "postgres",
        "CREATE SCHEMA eve_s AUTHORIZATION eve;
         CREATE TABLE eve_s.ran (who text); GRANT INSERT ON eve_s.ran TO PUBLIC;
         SET ROLE eve;
         CREATE FUNCTION eve_s.fin(bigint) RETURNS bigint LANGUAGE plpgsql
             AS $$ BEGIN INSERT INTO eve_s.ran VALUES (current_user); RETURN $1; END $$;
         CREATE AGGREGATE eve_s.max(bigint) (SFUNC = int8larger, STYPE = bigint, FINALFUNC = eve_s.fin);
         RESET ROLE;",
    );
    let err = c.error_as(
        "eve",
        "postgres",
        "SET search_path = eve_s, pg_catalog; DROP EXTENSION activity_log",
    );
    assert!(
        err.contains("must be owner of extension activity_log"),
        "{err}"
    );
    let err = c.error(
        "postgres",
        "SET search_path = eve_s, pg_catalog; DROP EXTENSION activity_log",
    );
    assert!(err.contains("its audit trail holds records"), "{err}");
    assert_eq!(c.one("postgres", "SELECT count(*) FROM eve_s.ran"), "0");
    // A drop rolled back to a savepoint lets the writer go on at once, while its
    // transaction is still open.
    let dropper = c.spawn(
        "postgres",
        "dropper",
        "BEGIN; SAVEPOINT a; SET LOCAL activity_log.allow_drop_trail = on; DROP EXTENSION activity_log;
         ROLLBACK TO a; SELECT pg_sleep(30); COMMIT;",
    );
    let sleeping = wait_until(Duration::from_secs(20), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dropper' AND wait_event = 'PgSleep'",
        ) == "1")
            .then_some(())
    });
    assert!(
        sleeping.is_some(),
        "the dropping session never got to sleep"
    );
    c.sql(
        "postgres",
        "SELECT activity_log.log_event('after the savepoint')",
    );
    assert_eq!(c.one("postgres", "SELECT activity_log.flush('10 s')"), "t");
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dropper'",
    );
    let _ = dropper.wait_with_output();
    // The trail goes on.
    c.sql("postgres", "SELECT activity_log.log_event('still here')");
    c.flush("postgres");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE command = 'still here'"
        ),
        "1"
    );
    c.sql(
        "postgres",
        "SET activity_log.allow_drop_trail = on; DROP EXTENSION activity_log",
    );
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'activity_log'::regnamespace"
        ),
        "0"
    );
}

/// A drop that does not happen costs no record: a DROP DATABASE PostgreSQL refuses (another
/// session is connected) and a DROP EXTENSION cancelled by statement_timeout leave every queued
/// record to the writer, and the cancelled drop returns at its timeout.
#[test]
fn a_refused_or_cancelled_drop_loses_no_record() {
    let c = Cluster::start("drop-kept", &["activity_log.capture_statements = 'none'"]);
    c.sql("postgres", "CREATE DATABASE d");
    with_extension(&c, "d");
    c.sql(
        "d",
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT activity_log.track('t');",
    );
    c.flush("d");
    let gaps = "SELECT count(*) FROM activity_log.events WHERE status = 'gap'";
    // The writer takes the first row and waits for the lock; the next 40 wait in the ring.
    let locker = c.lock_trail("d");
    c.sql("d", "INSERT INTO t VALUES (1, 'a')");
    std::thread::sleep(Duration::from_secs(1));
    c.sql(
        "d",
        "INSERT INTO t SELECT g, 'b' FROM generate_series(2, 41) g",
    );
    let err = c.error("postgres", "DROP DATABASE d");
    assert!(err.contains("is being accessed by other users"), "{err}");
    c.unlock_trail("d", locker);
    c.flush("d");
    assert_eq!(
        c.one(
            "d",
            "SELECT count(*) FROM activity_log.changes WHERE table_name = 't'"
        ),
        "41"
    );
    assert_eq!(c.one("d", gaps), "0");

    // A session merely connected: the writer stops for the drop and starts again after it.
    let idle = c.spawn("d", "idle", "SELECT pg_sleep(20)");
    let connected = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle'",
        ) == "1")
            .then_some(())
    });
    assert!(connected.is_some(), "the idle session never connected");
    let err = c.error("postgres", "DROP DATABASE d");
    assert!(err.contains("is being accessed by other users"), "{err}");
    c.sql("d", "INSERT INTO t VALUES (42, 'after')");
    c.flush("d");
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'idle'",
    );
    let _ = idle.wait_with_output();

    // A cancelled DROP EXTENSION: it waits for the writer, which waits for the lock.
    let locker = c.lock_trail("d");
    c.sql("d", "INSERT INTO t VALUES (43, 'c')");
    std::thread::sleep(Duration::from_secs(1));
    c.sql(
        "d",
        "INSERT INTO t SELECT g, 'd' FROM generate_series(44, 63) g",
    );
    let started = std::time::Instant::now();
    let err = c.error(
        "d",
        "SET statement_timeout = '1s'; SET activity_log.allow_drop_trail = on; DROP EXTENSION activity_log",
    );
    let took = started.elapsed();
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the cancelled drop took {took:?}"
    );
    c.unlock_trail("d", locker);
    c.flush("d");
    assert_eq!(
        c.one(
            "d",
            "SELECT count(*) FROM activity_log.changes WHERE table_name = 't'"
        ),
        "63"
    );
    assert_eq!(c.one("d", gaps), "0");
    assert_eq!(
        c.one(
            "d",
            "SELECT rows_checked > 0 AND intact FROM activity_log.verify()"
        ),
        "t"
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
