//! Real-cluster tests of tracked tables on a logical replication subscriber (issue 25, item 4):
//! rows applied by the apply and tablesync workers cannot be captured, so a subscription
//! target cannot be tracked, and a tracked table that becomes one leaves a gap record for
//! every transaction that changes it — never silence.

mod common;

use common::*;
use std::time::Duration;

/// Issue 25, item 4. One cluster (wal_level = logical), a publisher database and a subscriber
/// database with the extension. On the subscriber: track() refuses a subscription target, and
/// a table one of whose partitions is one, with the exact message, SQLSTATE and hint. A table
/// tracked before ALTER SUBSCRIPTION … REFRESH PUBLICATION made it a target gets a WARNING;
/// its initial synchronization and every replicated transaction (INSERT/UPDATE/DELETE, then
/// TRUNCATE and INSERT) leave exactly one gap record each with the counts, the subscription
/// and the origin; an untracked target leaves nothing; local changes of another tracked table
/// are captured as rows all the while; health() counts the gaps.
#[test]
fn rows_applied_by_logical_replication_are_refused_or_leave_gaps() {
    let c = Cluster::start("replication", &["wal_level = logical"]);
    c.sql(
        "postgres",
        "CREATE DATABASE pub;
         CREATE DATABASE sub;",
    );
    c.sql(
        "pub",
        "CREATE TABLE refused (id int PRIMARY KEY, v text);
         CREATE TABLE parted_1 (id int PRIMARY KEY, v text);
         CREATE TABLE late (id int PRIMARY KEY, v text);
         INSERT INTO late VALUES (1, 'a'), (2, 'b'), (3, 'c');
         CREATE PUBLICATION p FOR TABLE refused, parted_1;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
    );
    with_extension(&c, "sub");
    c.sql(
        "sub",
        "CREATE TABLE refused (id int PRIMARY KEY, v text);
         CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000);
         CREATE TABLE late (id int PRIMARY KEY, v text);
         CREATE TABLE local (id int PRIMARY KEY, v text);
         -- A trigger the apply worker fires: its statement runs through the executor.
         CREATE TABLE side (id int PRIMARY KEY, v text);
         CREATE FUNCTION copy_to_side() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.side VALUES (NEW.id, NEW.v); RETURN NULL; END $$;
         CREATE TRIGGER copy_to_side AFTER INSERT ON refused FOR EACH ROW EXECUTE FUNCTION copy_to_side();
         ALTER TABLE refused ENABLE ALWAYS TRIGGER copy_to_side;",
    );
    // Same-cluster subscription: the slot was made above (CREATE SUBSCRIPTION would wait for
    // its own transaction to make it).
    let conninfo = format!("host={} port={} dbname=pub user=postgres", c.dir, c.port);
    let created = c.run(
        "sub",
        &format!(
            "CREATE SUBSCRIPTION s CONNECTION '{conninfo}' PUBLICATION p
                WITH (create_slot = false, slot_name = 's');"
        ),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Nothing tracked is a target yet: no warning.
    assert!(
        !String::from_utf8_lossy(&created.stderr).contains("WARNING"),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    // A target, and a table whose partition is one, cannot be tracked.
    let err = c.error(
        "sub",
        "\\set VERBOSITY verbose\nSELECT activity_log.track('refused');",
    );
    assert!(
        err.contains(
            "ERROR:  55000: cannot track \"public.refused\": it is a target of subscription \"s\""
        ),
        "{err}"
    );
    assert!(
        err.contains("HINT:  Rows applied by logical replication cannot be captured; audit the table on the publisher."),
        "{err}"
    );
    let err = c.error("sub", "SELECT activity_log.track('parted');");
    assert!(
        err.contains("ERROR:  cannot track \"public.parted\": its partition \"public.parted_1\" is a target of subscription \"s\""),
        "{err}"
    );
    assert_eq!(
        c.one("sub", "SELECT count(*) FROM activity_log.tracked_tables"),
        "0"
    );

    // Tracked first, then made a target: a WARNING names it.
    c.sql(
        "sub",
        "SELECT activity_log.track('late');
         SELECT activity_log.track('local');
         SELECT activity_log.track('side');",
    );
    c.sql("pub", "ALTER PUBLICATION p ADD TABLE late;");
    let refreshed = c.run("sub", "ALTER SUBSCRIPTION s REFRESH PUBLICATION;");
    let stderr = String::from_utf8_lossy(&refreshed.stderr);
    assert!(refreshed.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "WARNING:  tracked table public.late is now a target of subscription \"s\"\n\
             DETAIL:  Rows applied by logical replication cannot be captured: each transaction of the subscription that changes a tracked table leaves a gap record in the trail instead.\n\
             HINT:  Audit the table on the publisher, and untrack it here (or remove it from the publication)."
        ),
        "{stderr}"
    );
    let synced = wait_until(Duration::from_secs(60), || {
        (c.one(
            "sub",
            "SELECT count(*) FILTER (WHERE srsubstate <> 'r') || '/' || count(*) FROM pg_subscription_rel",
        ) == "0/3")
            .then_some(())
    });
    assert!(
        synced.is_some(),
        "the tables never synchronized: {:?}\n{}",
        c.sql(
            "sub",
            "SELECT srrelid::regclass, srsubstate FROM pg_subscription_rel"
        ),
        c.log()
    );
    assert_eq!(c.one("sub", "SELECT count(*) FROM late"), "3");

    // Replicated transactions, and local changes on the subscriber meanwhile.
    c.sql(
        "pub",
        "BEGIN;
         INSERT INTO late VALUES (4, 'd'), (5, 'e');
         UPDATE late SET v = 'B' WHERE id = 2;
         DELETE FROM late WHERE id = 3;
         INSERT INTO refused VALUES (1, 'untracked');
         COMMIT;",
    );
    c.sql(
        "sub",
        "INSERT INTO local VALUES (1, 'here');
         UPDATE local SET v = 'still here' WHERE id = 1;",
    );
    c.sql(
        "pub",
        "BEGIN;
         TRUNCATE late;
         INSERT INTO late VALUES (10, 'z');
         COMMIT;",
    );
    let applied = wait_until(Duration::from_secs(30), || {
        (c.one(
            "sub",
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM late",
        ) == "10z")
            .then_some(())
    });
    assert!(applied.is_some(), "not applied:\n{}", c.log());
    assert_eq!(c.one("sub", "SELECT count(*) FROM refused"), "1");
    assert_eq!(c.one("sub", "SELECT count(*) FROM side"), "1");

    // Exactly one gap record per transaction that changed the tracked target.
    let (subid, relid) = {
        let ids = c.one(
            "sub",
            "SELECT s.oid || '|' || 'late'::regclass::oid FROM pg_subscription s WHERE subname = 's'",
        );
        let (s, r) = ids.split_once('|').unwrap();
        (s.to_string(), r.to_string())
    };
    let gaps_query = "SELECT command, schema_name || '.' || table_name, rows, db_user,
                             details->>'reason', details->>'subscription', details->>'worker',
                             details->>'inserted', details->>'updated', details->>'deleted',
                             details->>'truncated', (details->>'rows_captured')::text
                        FROM activity_log.events
                       WHERE kind = 'system' AND status = 'gap' ORDER BY id";
    let gaps = wait_until(Duration::from_secs(30), || {
        c.flush("sub");
        let rows = c.sql("sub", gaps_query);
        (rows.len() >= 3).then_some(rows)
    })
    .unwrap_or_else(|| {
        panic!(
            "gap records missing: {:?}\n{}",
            c.sql("sub", gaps_query),
            c.log()
        )
    });
    assert_eq!(
        gaps,
        vec![
            format!(
                "GAP|public.late|3|postgres|3 rows inserted, 0 updated, 0 deleted by logical replication's table synchronization (origin pg_{subid}_{relid}, subscription s owned by postgres) were not captured|s|tablesync|3|0|0|false|false"
            ),
            format!(
                "GAP|public.late|4|postgres|2 rows inserted, 1 updated, 1 deleted by logical replication (origin pg_{subid}, subscription s owned by postgres) were not captured|s|apply|2|1|1|false|false"
            ),
            format!(
                "GAP|public.late|1|postgres|a TRUNCATE and 1 row inserted, 0 updated, 0 deleted by logical replication (origin pg_{subid}, subscription s owned by postgres) were not captured|s|apply|1|0|0|true|false"
            ),
        ]
    );
    // The applied rows are not change records; the local ones are, exactly, and so is the row
    // the trigger wrote during apply (no gap for it: its rows were captured).
    assert_eq!(
        c.sql(
            "sub",
            "SELECT op, table_name, row_key, old_row, new_row, query FROM activity_log.changes
              WHERE table_name = 'side'"
        ),
        vec![
            "INSERT|side|{\"id\": 1}||{\"v\": \"untracked\", \"id\": 1}|INSERT INTO public.side VALUES (NEW.id, NEW.v)"
        ]
    );
    // … and names the subscription behind it, its owner and whose rights applied it
    // (review of issue 29, F4): run_as_owner exists from PostgreSQL 16 on.
    let run_as_owner = if c.major() >= 16 { "false" } else { "-" };
    assert_eq!(
        c.one(
            "sub",
            "SELECT concat_ws('|', details->>'source', details->>'worker', details->>'parallel_apply',
                              details->>'subscription', details->>'subscription_oid',
                              details->>'subscription_owner', coalesce(details->>'run_as_owner', '-'),
                              details->>'origin')
               FROM activity_log.changes WHERE table_name = 'side'"
        ),
        format!("logical replication|apply|false|s|{subid}|postgres|{run_as_owner}|pg_{subid}")
    );
    assert_eq!(
        c.sql(
            "sub",
            "SELECT op, table_name, row_key, old_row, new_row FROM activity_log.changes
              WHERE table_name <> 'side' ORDER BY id"
        ),
        vec![
            "INSERT|local|{\"id\": 1}||{\"v\": \"here\", \"id\": 1}",
            "UPDATE|local|{\"id\": 1}|{\"v\": \"here\", \"id\": 1}|{\"v\": \"still here\", \"id\": 1}",
        ]
    );
    assert_eq!(
        c.one(
            "sub",
            "SELECT count(*) FROM activity_log.events WHERE table_name IN ('late', 'refused', 'parted') AND kind = 'change'"
        ),
        "0"
    );
    // health() shows the gaps.
    assert_eq!(
        c.one(
            "sub",
            "SELECT f->>'value' || '|' || (f->>'penalty') FROM jsonb_array_elements((activity_log.health()).factors) f
              WHERE f->>'factor' = 'gap_events'"
        ),
        "3|15"
    );

    // Without table statistics (track_counts off) the counts are unknown, not the change: the
    // table the transaction locked for writing still gets its gap record.
    c.sql(
        "sub",
        "ALTER SYSTEM SET track_counts = off;
         SELECT pg_reload_conf();",
    );
    std::thread::sleep(Duration::from_secs(1));
    c.sql(
        "sub",
        "ALTER SUBSCRIPTION s DISABLE;
         ALTER SUBSCRIPTION s ENABLE;",
    );
    c.sql("pub", "UPDATE late SET v = 'y' WHERE id = 10;");
    let applied = wait_until(Duration::from_secs(30), || {
        (c.one("sub", "SELECT v FROM late WHERE id = 10") == "y").then_some(())
    });
    assert!(applied.is_some(), "not applied:\n{}", c.log());
    let last = wait_until(Duration::from_secs(30), || {
        c.flush("sub");
        let rows = c.sql("sub", gaps_query);
        (rows.len() >= 4).then(|| rows[3].clone())
    });
    assert_eq!(
        last,
        Some(format!(
            "GAP|public.late||postgres|rows changed by logical replication (origin pg_{subid}, subscription s owned by postgres) were not captured (how many is not known: track_counts is off)|s|apply|||||false"
        ))
    );

    // A conflict stops the apply worker, which tries again every few seconds: its errors are
    // the server log's, not failed statements of the subscription's owner in the trail.
    c.sql("sub", "INSERT INTO refused VALUES (100, 'here first')");
    c.sql("pub", "INSERT INTO refused VALUES (100, 'conflict')");
    // PostgreSQL 18 reports the conflict itself (same SQLSTATE, 23505).
    let conflict = if c.major() >= 18 {
        "conflict detected on relation \"public.refused\": conflict=insert_exists"
    } else {
        "duplicate key value violates unique constraint \"refused_pkey\""
    };
    let failed_twice = wait_until(Duration::from_secs(30), || {
        (c.log().matches(conflict).count() >= 2).then_some(())
    });
    assert!(failed_twice.is_some(), "{}", c.log());
    c.flush("sub");
    assert_eq!(
        c.sql(
            "sub",
            "SELECT db_user || '|' || coalesce(application_name, '-') || '|' || coalesce(query, '-') || '|' || coalesce(details::text, '-')
               FROM activity_log.events WHERE status = 'error' AND sqlstate = '23505'"
        ),
        Vec::<String>::new()
    );
    c.sql("sub", "DELETE FROM refused WHERE id = 100");
}

/// Issue 25, item 4, two-phase: CREATE SUBSCRIPTION of a tracked table warns; a subscription
/// with two_phase applies a PREPARE TRANSACTION of the publisher as a prepared transaction,
/// and the COMMIT PREPARED that follows shows nothing of its rows: the gap record goes out
/// with the prepare, and says so; the commit adds none.
#[test]
fn a_transaction_prepared_by_a_two_phase_subscription_leaves_its_gap() {
    let c = Cluster::start(
        "replication2pc",
        &["wal_level = logical", "max_prepared_transactions = 10"],
    );
    c.sql(
        "postgres",
        "CREATE DATABASE pub;
         CREATE DATABASE sub;",
    );
    c.sql(
        "pub",
        "CREATE TABLE tp (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE tp;
         SELECT pg_create_logical_replication_slot('s2', 'pgoutput', false, true);",
    );
    with_extension(&c, "sub");
    c.sql(
        "sub",
        "CREATE TABLE tp (id int PRIMARY KEY, v text);
         SELECT activity_log.track('tp');",
    );
    let conninfo = format!("host={} port={} dbname=pub user=postgres", c.dir, c.port);
    let created = c.run(
        "sub",
        &format!(
            "CREATE SUBSCRIPTION s2 CONNECTION '{conninfo}' PUBLICATION p
                WITH (create_slot = false, slot_name = 's2', two_phase = true);"
        ),
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARNING:  tracked table public.tp is now a target of subscription \"s2\""),
        "{stderr}"
    );
    // two_phase is enabled once every table is synchronized (the apply worker restarts).
    let enabled = wait_until(Duration::from_secs(60), || {
        (c.one(
            "sub",
            "SELECT subtwophasestate FROM pg_subscription WHERE subname = 's2'",
        ) == "e")
            .then_some(())
    });
    assert!(enabled.is_some(), "two_phase never enabled:\n{}", c.log());
    c.sql(
        "pub",
        "BEGIN;
         INSERT INTO tp VALUES (1, 'x'), (2, 'y');
         PREPARE TRANSACTION 'g1';",
    );
    let prepared = wait_until(Duration::from_secs(30), || {
        (c.one(
            "sub",
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = 'sub'",
        ) == "1")
            .then_some(())
    });
    assert!(
        prepared.is_some(),
        "not prepared on the subscriber:\n{}",
        c.log()
    );
    c.sql("pub", "COMMIT PREPARED 'g1';");
    let committed = wait_until(Duration::from_secs(30), || {
        (c.one("sub", "SELECT count(*) FROM tp") == "2").then_some(())
    });
    assert!(committed.is_some(), "not committed:\n{}", c.log());
    let subid = c.one(
        "sub",
        "SELECT oid FROM pg_subscription WHERE subname = 's2'",
    );
    c.sql("sub", "SELECT pg_sleep(0.5)"); // the apply worker's commit of COMMIT PREPARED
    c.flush("sub");
    assert_eq!(
        c.sql(
            "sub",
            "SELECT table_name, rows, details->>'reason', details->>'prepared'
               FROM activity_log.events WHERE status = 'gap' ORDER BY id"
        ),
        vec![format!(
            "tp|2|2 rows inserted, 0 updated, 0 deleted by logical replication (origin pg_{subid}, subscription s2 owned by postgres) were not captured (the transaction was prepared for two-phase commit, and may yet be rolled back)|true"
        )]
    );
}

/// Review of issue 29, F4: from PostgreSQL 16 a role with only pg_create_subscription and
/// CREATE on the database can make a subscription that writes into a tracked table it may
/// change anyway, and so change it without row images in the trail. The gap records its
/// apply workers leave name the subscription (name and oid), its owner, run_as_owner and
/// whether a parallel apply worker applied the transaction, so that an auditor can attribute
/// every applied row; health() counts them as it counts every gap. On 15, CREATE SUBSCRIPTION
/// takes a superuser: the role is refused.
#[test]
fn a_subscription_of_a_non_superuser_is_named_in_its_gap_records() {
    let c = Cluster::start(
        "replication-f4",
        &["wal_level = logical", "logical_decoding_work_mem = '64kB'"],
    );
    c.sql(
        "postgres",
        "CREATE ROLE mal LOGIN REPLICATION PASSWORD 'malpw';
         CREATE DATABASE pub OWNER mal;
         CREATE DATABASE sub;",
    );
    with_extension(&c, "sub");
    c.sql(
        "sub",
        "CREATE TABLE acct (id int PRIMARY KEY, balance numeric);
         INSERT INTO acct VALUES (1, 100), (2, 200);
         SELECT activity_log.track('acct');
         GRANT SELECT, INSERT, UPDATE, DELETE ON acct TO mal;
         GRANT CREATE ON DATABASE sub TO mal;",
    );
    if c.major() < 16 {
        let err = c.error_as(
            "mal",
            "sub",
            "CREATE SUBSCRIPTION s CONNECTION 'dbname=pub' PUBLICATION p WITH (connect = false);",
        );
        assert!(
            err.contains("ERROR:  must be superuser to create subscriptions"),
            "{err}"
        );
        return;
    }
    c.sql("postgres", "GRANT pg_create_subscription TO mal;");
    c.sql(
        "pub",
        "SET ROLE mal;
         CREATE TABLE acct (id int PRIMARY KEY, balance numeric);
         ALTER TABLE acct REPLICA IDENTITY FULL;
         CREATE PUBLICATION p FOR TABLE acct;
         RESET ROLE;
         SELECT pg_create_logical_replication_slot('s', 'pgoutput');",
    );
    // A non-superuser's subscription must connect with a password.
    let hba = format!("{}/data/pg_hba.conf", c.dir);
    let edited = std::process::Command::new("sudo")
        .args([
            "-u",
            "postgres",
            "sed",
            "-i",
            "1i local pub mal scram-sha-256",
            &hba,
        ])
        .status()
        .unwrap();
    assert!(edited.success());
    c.sql("postgres", "SELECT pg_reload_conf()");
    // An ordinary change by mal is captured, row and all.
    c.sql_as(
        "mal",
        "sub",
        "UPDATE acct SET balance = balance - 1 WHERE id = 1",
    );
    let conninfo = format!(
        "host={} port={} dbname=pub user=mal password=malpw",
        c.dir, c.port
    );
    let created = c.run_as(
        "mal",
        "sub",
        &format!(
            "CREATE SUBSCRIPTION s CONNECTION '{conninfo}' PUBLICATION p
                WITH (create_slot = false, slot_name = 's', copy_data = false,
                      run_as_owner = true, streaming = parallel);"
        ),
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("WARNING:  tracked table public.acct is now a target of subscription \"s\""),
        "{stderr}"
    );
    let subid = c.one("sub", "SELECT oid FROM pg_subscription WHERE subname = 's'");
    // One small transaction (the leader apply worker), one large enough to be streamed to a
    // parallel apply worker.
    c.sql("pub", "INSERT INTO acct VALUES (3, 1000000)");
    c.sql(
        "pub",
        "BEGIN;
         INSERT INTO acct SELECT g, g FROM generate_series(10, 3009) g;
         DELETE FROM acct WHERE id BETWEEN 10 AND 19;
         COMMIT;",
    );
    let applied = wait_until(Duration::from_secs(60), || {
        (c.one("sub", "SELECT count(*) FROM acct") == "2993").then_some(())
    });
    assert!(applied.is_some(), "not applied:\n{}", c.log());
    let gaps_query = "SELECT concat_ws('|', command, table_name, rows, details->>'reason',
                             details->>'worker', details->>'parallel_apply',
                             details->>'subscription', details->>'subscription_oid',
                             details->>'subscription_owner', details->>'run_as_owner',
                             details->>'inserted', details->>'deleted')
                        FROM activity_log.events WHERE status = 'gap' ORDER BY id";
    let gaps = wait_until(Duration::from_secs(30), || {
        c.flush("sub");
        let rows = c.sql("sub", gaps_query);
        (rows.len() >= 2).then_some(rows)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", c.sql("sub", gaps_query), c.log()));
    assert_eq!(
        gaps,
        [
            format!(
                "GAP|acct|1|1 row inserted, 0 updated, 0 deleted by logical replication (origin pg_{subid}, subscription s owned by mal) were not captured|apply|false|s|{subid}|mal|true|1|0"
            ),
            format!(
                "GAP|acct|3010|3000 rows inserted, 0 updated, 10 deleted by logical replication (origin pg_{subid}, subscription s owned by mal, parallel apply worker) were not captured|apply|true|s|{subid}|mal|true|3000|10"
            ),
        ],
        "{}",
        c.log()
    );
    // mal's own UPDATE is a change record with its row; the applied rows are not.
    assert_eq!(
        c.sql(
            "sub",
            "SELECT op || '|' || db_user || '|' || row_key::text FROM activity_log.changes WHERE table_name = 'acct' ORDER BY id"
        ),
        ["UPDATE|mal|{\"id\": 1}"]
    );
    // health() counts the gaps like any other.
    assert_eq!(
        c.one(
            "sub",
            "SELECT f->>'value' FROM jsonb_array_elements((activity_log.health()).factors) f
              WHERE f->>'factor' = 'gap_events'"
        ),
        "2"
    );
    c.sql("sub", "ALTER SUBSCRIPTION s DISABLE; ALTER SUBSCRIPTION s SET (slot_name = NONE); DROP SUBSCRIPTION s;");
}
