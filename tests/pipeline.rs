//! Real-cluster tests of the pipeline from the ring to the trail: the writer's failures, restarts
//! and crashes, overflow policies, transactions larger than the ring, sync tables, commit order, a
//! full disk and a broken rollup. The harness is in tests/common.

mod common;

use common::*;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

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
            &format!(
                "SELECT count(*) BETWEEN 1 AND 2 AND count(*) = count(details->>'dropped_records')
                        AND sum((details->>'dropped_records')::int) = {dropped}
                   FROM activity_log.events WHERE status = 'gap'"
            )
        ),
        "t"
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

/// A table tracked with durability 'sync' has its records inside the transaction, staged in
/// durable_queue; an async table's committed record waits in the ring, and an immediate
/// shutdown with the writer stopped keeps it too (in a spill file, put back at the next
/// start): both reach the trail in commit order, with no gap record. An immediate shutdown with
/// empty rings loses nothing and reports nothing.
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
         INSERT INTO notes VALUES (1, 'async: kept in the ring');
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
            r#"notes|INSERT|{"id": 1}||{"id": 1, "body": "async: kept in the ring"}"#,
            r#"notes|INSERT|{"id": 2}||{"id": 2, "body": "kept: same transaction as a ledger change"}"#,
            r#"ledger|UPDATE|{"id": 2}|{"id": 2, "amount": 20}|{"id": 2, "amount": 21}"#,
        ]
    );
    // The two records of the mixed transaction carry its transaction id and commit time.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(DISTINCT xid) || ',' || count(DISTINCT committed_at) || ',' || bool_and(committed_at <= ts + interval '1 s')
               FROM activity_log.events WHERE new_row->>'body' LIKE 'kept: %' OR command = 'UPDATE'"
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
    // Announcements are not put back: the sweep took their staged rows, in commit order.
    assert!(
        !c.log().contains("are missing from durable_queue"),
        "{}",
        c.log()
    );
    // Nothing was lost: no gap record.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM activity_log.events WHERE status = 'gap'"
        ),
        "0"
    );
    // The staged records of before the stop, and the one put back into the ring, count as
    // published and written.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT published_records || ',' || written_records || ',' || dropped_records FROM activity_log.queue"
        ),
        "4,4,0"
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
        "0,1"
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

/// session_reaches waits until the session named `app` (its application_name) matches `what`
/// in pg_stat_activity: waiting for a lock, sleeping, and so on.
fn session_reaches(c: &Cluster, app: &str, what: &str) {
    let q = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND {what}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            (c.one("postgres", &q) == "1").then_some(())
        })
        .is_some(),
        "{app} never reached {what}"
    );
}

/// Keeps `db`'s writer down for good: the database takes no new connection, so every writer
/// the launcher starts fails at its start (as one kept down by a broken setting would), and the
/// running one is terminated. A session connected to `db` before then (it stays connected)
/// commits `then` once no writer is left to store it; returns its output rows.
fn without_writer(c: &Cluster, db: &str, then: &str) -> Vec<String> {
    use std::io::Write;
    let mut session = c
        .psql_command(db)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "SET application_name = 'al_without_writer';
         DO $$ BEGIN
           WHILE (SELECT datallowconn FROM pg_database WHERE datname = current_database())
              OR EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'activity_log writer' AND datname = current_database())
           LOOP PERFORM pg_sleep(0.05); END LOOP;
         END $$;
         {then}"
    );
    session
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let connected = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_without_writer'",
        ) == "1")
            .then_some(())
    });
    assert!(connected.is_some(), "the session on {db} never connected");
    c.sql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'activity_log writer' AND datname = '{db}';"
        ),
    );
    let out = session.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// writer_back waits for `app`'s writer once connections are allowed again: the launcher
/// gives a start that failed before attaching 30 s before it tries again.
fn writer_back(c: &Cluster) {
    let back = wait_until(Duration::from_secs(90), || c.writer_pid("app"));
    assert!(back.is_some(), "no writer for app; log:\n{}", c.log());
}

fn spill_files(c: &Cluster) -> Vec<String> {
    let out = Command::new("sudo")
        .args(["-u", "postgres", "ls", &format!("{}/data", c.dir)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("activity_log.spill."))
        .map(str::to_string)
        .collect()
}

fn state_file(c: &Cluster) -> String {
    data_file(c, "activity_log.state")
}

/// The trail of `app` as (kind, status, command, new_row, reason), in id order.
fn app_trail(c: &Cluster) -> Vec<String> {
    c.sql(
        "app",
        "SELECT kind, status, command, coalesce(new_row::text, '-'), coalesce(details->>'reason', '-')
           FROM activity_log.events WHERE kind IN ('change', 'event') OR status = 'gap' ORDER BY id",
    )
}

/// A clean stop while the database's writer is down (failing at its start) keeps the committed
/// records that are still in the ring: the postmaster writes them to a spill file when it
/// releases shared memory, and puts them back into the database's ring at the next start,
/// before any backend can publish; the writer then stores them in order, with no gap record
/// (review of issue 29, F3: they were lost, and the gap record called the stop unclean).
#[test]
fn a_clean_stop_with_the_writer_down_keeps_the_ring() {
    let c = Cluster::start("spill", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "app");
    c.sql(
        "app",
        "CREATE TABLE a (id int PRIMARY KEY); SELECT activity_log.track('a'); INSERT INTO a VALUES (1)",
    );
    c.flush("app");
    let oid = c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'app'",
    );
    let queued = without_writer(
        &c,
        "app",
        "INSERT INTO a VALUES (2), (3);
         SELECT activity_log.log_event('committed_before_stop');
         INSERT INTO a VALUES (4);
         SELECT queued_records FROM activity_log.queue;",
    );
    // Three records (a statement's rows are one record) wait in the ring, with no writer.
    assert_eq!(queued, ["3"]);
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert_eq!(spill_files(&c), [format!("activity_log.spill.{oid}")]);
    assert_eq!(state_file(&c), "drained");
    assert!(c.pg_ctl(&["start"]));
    // Back in the ring, as before the stop, until a writer can store them.
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    assert_eq!(spill_files(&c), Vec::<String>::new());
    writer_back(&c);
    c.sql("app", "INSERT INTO a VALUES (5)");
    c.flush("app");
    assert_eq!(
        app_trail(&c),
        [
            r#"change|success|INSERT|{"id": 1}|-"#,
            r#"change|success|INSERT|{"id": 2}|-"#,
            r#"change|success|INSERT|{"id": 3}|-"#,
            "event|success|committed_before_stop|-|-",
            r#"change|success|INSERT|{"id": 4}|-"#,
            r#"change|success|INSERT|{"id": 5}|-"#,
        ]
    );
    assert_eq!(
        c.one("app", "SELECT intact FROM activity_log.verify()"),
        "t"
    );
    assert_eq!(
        c.one(
            "app",
            "SELECT published_records || ',' || written_records || ',' || dropped_records FROM activity_log.queue"
        ),
        "4,4,0",
        "the 3 records put back and the one committed after the start"
    );
}

/// app_tracking_b makes database app with the extension and a tracked table `b (columns)`, and
/// returns app's oid.
fn app_tracking_b(c: &Cluster, columns: &str) -> String {
    with_extension(c, "app");
    c.sql(
        "app",
        &format!("CREATE TABLE b ({columns}); SELECT activity_log.track('b')"),
    );
    c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'app'",
    )
}

/// A standby made with pg_basebackup while its primary keeps a spill file gets a copy of the
/// file: the records are the primary's to store (the standby receives them with the WAL), so
/// the standby sets its copy aside instead of putting it into its ring, and after a failover
/// its trail holds each record once. Its first start (backup_label is there) says in the
/// trail where the copy begins: the primary's state file, copied while it said "running",
/// is not taken for a crash of this server's.
#[test]
fn a_standby_never_stores_its_primarys_spill_file_again() {
    let c = Cluster::start(
        "spillprimary",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '4MB'",
        ],
    );
    let app = app_tracking_b(&c, "id int PRIMARY KEY, pad text");
    // 300 transactions of 10 rows, about 1.6 MB of frames: a spill file no 1 MB ring takes.
    without_writer(
        &c,
        "app",
        "SELECT format('INSERT INTO b SELECT g, repeat(''x'', 500) FROM generate_series(%s, %s) g', i * 10 + 1, i * 10 + 10)
           FROM generate_series(0, 299) i \\gexec",
    );
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(c.pg_ctl(&["start", "-o", "-c activity_log.buffer_size=1MB"]));
    assert_eq!(spill_files(&c), [format!("activity_log.spill.{app}")]);
    let standby = c.standby_of("spillstandby");
    // The standby's ring (4 MB, from the copied postgresql.conf) would take the file.
    let copied = format!("activity_log.copied-spill.{app}");
    assert_eq!(spill_files(&standby), Vec::<String>::new());
    assert!(
        standby.log().contains(&format!(
            "WARNING:  activity_log: activity_log.spill.{app} (300 records) came with a base backup of another server, started here with standby.signal"
        )),
        "{}",
        standby.log()
    );
    // The primary, given its ring back, stores the records; the standby replays them.
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    writer_back(&c);
    c.flush("app");
    let changes = "SELECT count(*) || ',' || count(DISTINCT new_row->>'id') FROM activity_log.events WHERE kind = 'change'";
    assert_eq!(c.one("app", changes), "3000,3000");
    let at = c.one("postgres", "SELECT pg_current_wal_lsn()");
    let replayed = wait_until(Duration::from_secs(60), || {
        (standby.one(
            "postgres",
            &format!("SELECT pg_last_wal_replay_lsn() >= '{at}'"),
        ) == "t")
            .then_some(())
    });
    assert!(replayed.is_some(), "the standby never replayed {at}");
    // A restart before the promotion keeps the gap records the copy owes its trail (they were
    // noted in the first start's shared memory only: G6).
    assert!(standby.pg_ctl(&["-m", "fast", "stop"]));
    assert!(standby.pg_ctl(&["start"]));
    // Failover.
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(standby.pg_ctl(&["promote"]));
    let writer = wait_until(Duration::from_secs(90), || standby.writer_pid("app"));
    assert!(
        writer.is_some(),
        "no writer after the promotion; log:\n{}",
        standby.log()
    );
    standby.flush("app");
    assert_eq!(standby.one("app", changes), "3000,3000");
    assert_eq!(
        standby.sql(
            "app",
            "SELECT details->>'reason' FROM activity_log.events WHERE status = 'gap' ORDER BY id"
        ),
        [
            "this data directory is a base backup of another server (or was rewound from one by pg_rewind), started here for the first time: what that server had captured but neither stored in its trail nor kept in a spill file when the backup was taken is not in this trail (a standby gets what its primary stores later, with the WAL; a copy recovered to a point in time, or started on its own, does not)".to_string(),
            format!(
            "activity_log.spill.{app} (300 records) came with a base backup of another server, started here with standby.signal: it was set aside as {copied} and not put back, so that no record is stored twice (a standby receives the records its primary stores, with the WAL); once this server is promoted, if its trail lacks them (the server it was copied from was lost before it stored them, or stored them after the point this copy was recovered to), rename the file back to activity_log.spill.{app} and restart"
        )
        ]
    );
    let aside = Command::new("sudo")
        .args([
            "-u",
            "postgres",
            "test",
            "-f",
            &format!("{}/data/{copied}", standby.dir),
        ])
        .status()
        .unwrap();
    assert!(
        aside.success(),
        "{copied} is not in the standby's data directory"
    );
}

/// A server's own data directory started with standby.signal is no copy (an HA manager such as
/// Patroni starts every node so, then promotes one): its own spill file goes back into its
/// ring, and its trail gets every record, with no gap record.
#[test]
fn a_servers_own_spill_file_goes_back_when_it_starts_as_a_standby() {
    let c = Cluster::start(
        "spillownstandby",
        &["activity_log.capture_statements = 'none'"],
    );
    let app = app_tracking_b(&c, "id int PRIMARY KEY");
    without_writer(
        &c,
        "app",
        "INSERT INTO b SELECT g FROM generate_series(1, 20) g",
    );
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert_eq!(spill_files(&c), [format!("activity_log.spill.{app}")]);
    let signal = Command::new("sudo")
        .args([
            "-u",
            "postgres",
            "touch",
            &format!("{}/data/standby.signal", c.dir),
        ])
        .status()
        .unwrap();
    assert!(signal.success());
    assert!(c.pg_ctl(&["start"]));
    assert_eq!(spill_files(&c), Vec::<String>::new());
    assert!(c.pg_ctl(&["promote"]));
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    writer_back(&c);
    c.flush("app");
    assert_eq!(
        c.one(
            "app",
            "SELECT count(*) FILTER (WHERE kind = 'change') || ',' || count(*) FILTER (WHERE status = 'gap') FROM activity_log.events"
        ),
        "20,0"
    );
}

/// A spill file that cannot be put back is kept, and the database's trail gets a gap record
/// that names it and says why: its frames do not fit a ring made smaller meanwhile (a start
/// with the ring large enough again puts them back), or it is corrupt (its checksum).
#[test]
fn a_spill_file_that_cannot_be_put_back_is_kept_and_named() {
    let c = Cluster::start(
        "spillkept",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '1MB'",
        ],
    );
    for db in ["app", "other"] {
        with_extension(&c, db);
        c.sql(
            db,
            "CREATE TABLE b (id int PRIMARY KEY, pad text); SELECT activity_log.track('b')",
        );
    }
    let oid = |db: &str| {
        c.one(
            "postgres",
            &format!("SELECT oid FROM pg_database WHERE datname = '{db}'"),
        )
    };
    let (app, other) = (oid("app"), oid("other"));
    // One record of about 90 kB: more than a ring of 64 kB holds.
    without_writer(
        &c,
        "app",
        "SELECT activity_log.log_event('small');
         INSERT INTO b SELECT g, repeat('x', 200) FROM generate_series(1, 400) g;",
    );
    without_writer(&c, "other", "INSERT INTO b VALUES (1, 'to be corrupted')");
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert_eq!(
        spill_files(&c),
        [
            format!("activity_log.spill.{app}"),
            format!("activity_log.spill.{other}")
        ]
    );
    let file = |db_oid: &str| format!("{}/data/activity_log.spill.{db_oid}", c.dir);
    let size = |path: &str| -> u64 {
        let out = Command::new("sudo")
            .args(["-u", "postgres", "stat", "-c", "%s", path])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    // 40 bytes of header before the frames, a 32-byte checksum after them.
    let app_bytes = size(&file(&app)) - 40 - 32;
    // One byte of the other database's frame changed.
    assert!(
        Command::new("sudo")
            .args([
                "-u",
                "postgres",
                "sh",
                "-c",
                &format!(
                    "printf 'Z' | dd of={} bs=1 seek=100 conv=notrunc status=none",
                    file(&other)
                ),
            ])
            .status()
            .unwrap()
            .success()
    );
    assert!(c.pg_ctl(&["start", "-o", "-c activity_log.buffer_size=64kB"]));
    c.sql(
        "postgres",
        "ALTER DATABASE app ALLOW_CONNECTIONS true; ALTER DATABASE other ALLOW_CONNECTIONS true",
    );
    let gap = |name: &str, why: &str| {
        format!(
            "system|gap|GAP|-|records committed before the last stop were kept in {name} in the data directory but could not be put back into the ring: {why}; the file is kept, and its records are not in the trail"
        )
    };
    let too_large = gap(
        &format!("activity_log.spill.{app}"),
        &format!(
            "its {app_bytes} bytes of frames do not fit the ring of 65536 bytes (activity_log.buffer_size was lowered); raise activity_log.buffer_size to at least {} kB and restart the server to put them back",
            app_bytes.div_ceil(1024)
        ),
    );
    let corrupt = gap(
        &format!("activity_log.spill.{other}"),
        "it is corrupt (its checksum does not match)",
    );
    let trail = |db: &str| {
        c.sql(
            db,
            "SELECT kind, status, command, coalesce(new_row->>'id', '-'), coalesce(details->>'reason', '-')
               FROM activity_log.events WHERE kind IN ('change', 'event') OR status = 'gap' ORDER BY id",
        )
    };
    for db in ["app", "other"] {
        let back = wait_until(Duration::from_secs(90), || c.writer_pid(db));
        assert!(back.is_some(), "no writer for {db}; log:\n{}", c.log());
        c.flush(db);
    }
    assert_eq!(trail("app"), std::slice::from_ref(&too_large));
    assert_eq!(trail("other"), std::slice::from_ref(&corrupt));
    assert_eq!(
        spill_files(&c),
        [
            format!("activity_log.spill.{app}"),
            format!("activity_log.spill.{other}")
        ]
    );

    // With the ring large enough again, the next start puts the kept records back; the corrupt
    // file stays, and says so again.
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    for db in ["app", "other"] {
        c.wait_for_writer(db, None);
        c.flush(db);
    }
    let app_trail = trail("app");
    assert_eq!(app_trail.len(), 402, "{:?}", &app_trail[..3]);
    assert_eq!(
        app_trail[..3],
        [
            too_large,
            "event|success|small|-|-".to_string(),
            "change|success|INSERT|1|-".to_string()
        ]
    );
    assert_eq!(app_trail[401], "change|success|INSERT|400|-");
    assert_eq!(trail("other"), [corrupt.clone(), corrupt]);
    assert_eq!(spill_files(&c), [format!("activity_log.spill.{other}")]);
    for db in ["app", "other"] {
        assert_eq!(c.one(db, "SELECT intact FROM activity_log.verify()"), "t");
    }
}

/// stop_idle_writer SIGSTOPs `db`'s writer while it sleeps on its latch: stopped in the middle of
/// its own commit it would hold the WAL write lock, and every other commit would wait for it.
fn stop_idle_writer(c: &Cluster, db: &str) -> i32 {
    let pid = c.wait_for_writer(db, None);
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
                .success()
        )
    };
    let idle = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'Extension'"
    );
    let stopped = wait_until(Duration::from_secs(30), || {
        signal("-STOP");
        // What it showed when it stopped: the latch wait is reported before it sleeps.
        if c.one(db, &idle) == "1" {
            return Some(());
        }
        signal("-CONT");
        None
    });
    assert!(stopped.is_some(), "the writer of {db} never slept");
    pid
}

/// An immediate shutdown keeps the committed records in the ring (spilled and put back), but a
/// transaction caught between its commit record and its commit callback (here one waiting for
/// a synchronous standby that does not exist) has a frame that is still pending: whether it
/// committed is unknown to the postmaster, so its records are lost, and the next start's gap
/// record says exactly that.
#[test]
fn an_immediate_stop_keeps_committed_records_and_reports_those_mid_commit() {
    let c = Cluster::start("midcommit", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE notes (id int PRIMARY KEY); SELECT activity_log.track('notes')",
    );
    c.flush("postgres");
    stop_idle_writer(&c, "postgres");
    c.sql("postgres", "INSERT INTO notes VALUES (1)");
    c.sql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'; SELECT pg_reload_conf()",
    );
    let waiting = c.spawn("postgres", "al_mid_commit", "INSERT INTO notes VALUES (2)");
    let stuck = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_mid_commit' AND wait_event = 'SyncRep'",
        ) == "1")
            .then_some(())
    });
    assert!(stuck.is_some(), "the insert never waited for its standby");
    // The postmaster SIGKILLs the stopped writer after its 5 s grace.
    assert!(c.pg_ctl(&["-m", "immediate", "stop"]));
    let _ = waiting.wait_with_output();
    let lost = "1 records of transactions that were committing when the server stopped (an immediate shutdown or a crash) may be lost";
    assert_eq!(state_file(&c), format!("lost\n{lost}"));
    assert!(c.pg_ctl(&["start"]));
    c.sql(
        "postgres",
        "ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf()",
    );
    c.wait_for_writer("postgres", None);
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT kind, status, coalesce(new_row::text, '-'), coalesce(details->>'reason', '-'), coalesce(details->>'unclean_stop', '-')
               FROM activity_log.events WHERE kind <> 'system' OR status = 'gap' ORDER BY id"
        ),
        [
            format!("system|gap|-|the server stopped and lost records: {lost}|true"),
            r#"change|success|{"id": 1}|-|-"#.to_string(),
        ]
    );
    // The commit record of the second insert was written before it waited: the row is there,
    // its record is what the gap admits.
    assert_eq!(
        c.sql("postgres", "SELECT id FROM notes ORDER BY id"),
        ["1", "2"]
    );
}

/// A writer killed between its batch's COMMIT and the tail's move leaves a batch that is in
/// the trail already: it is not spilled (it would be stored twice), and the gap says so. Its
/// commit waits for a synchronous standby that never comes, after the commit record is
/// written: exactly that window.
#[test]
fn a_writer_killed_after_its_commit_does_not_store_its_batch_twice() {
    let c = Cluster::start("committing", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE notes (id int PRIMARY KEY); SELECT activity_log.track('notes')",
    );
    c.flush("postgres");
    c.sql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'; SELECT pg_reload_conf()",
    );
    c.sql(
        "postgres",
        "SET synchronous_commit = local; INSERT INTO notes VALUES (1)",
    );
    let stuck = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'activity_log writer' AND wait_event = 'SyncRep'",
        ) == "1")
            .then_some(())
    });
    assert!(stuck.is_some(), "the writer never waited for its standby");
    assert!(c.pg_ctl(&["-m", "immediate", "stop"]));
    let lost = "1 records a writer was committing when the server stopped (an immediate shutdown or a crash) were not kept: they may be in the trail, or lost";
    assert_eq!(state_file(&c), format!("lost\n{lost}"));
    assert!(c.pg_ctl(&["start"]));
    c.sql(
        "postgres",
        "ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf()",
    );
    c.wait_for_writer("postgres", None);
    c.flush("postgres");
    // The batch's commit record was written before the writer waited: its row is in the
    // trail, once.
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT kind, status, coalesce(new_row::text, '-'), coalesce(details->>'reason', '-')
               FROM activity_log.events WHERE kind <> 'system' OR status = 'gap' ORDER BY id"
        ),
        [
            r#"change|success|{"id": 1}|-"#.to_string(),
            format!("system|gap|-|the server stopped and lost records: {lost}"),
        ]
    );
    assert_eq!(
        c.one("postgres", "SELECT intact FROM activity_log.verify()"),
        "t"
    );
}

/// A crash-restart goes through the same release of shared memory: the committed records in
/// the rings are put back into the new shared memory, and the crash's gap record says they
/// were kept.
#[test]
fn a_crash_restart_keeps_the_committed_records_of_the_ring() {
    let c = Cluster::start(
        "crashkeep",
        &[
            "activity_log.capture_statements = 'none'",
            "restart_after_crash = on",
        ],
    );
    with_extension(&c, "postgres");
    c.sql(
        "postgres",
        "CREATE TABLE notes (id int PRIMARY KEY); SELECT activity_log.track('notes')",
    );
    c.flush("postgres");
    let pid = stop_idle_writer(&c, "postgres");
    c.sql("postgres", "INSERT INTO notes VALUES (1)");
    // A killed writer is a crash: the postmaster restarts every process.
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let back = wait_until(Duration::from_secs(60), || {
        c.run("postgres", "SELECT 1").status.success().then_some(())
    });
    assert!(back.is_some(), "no restart; log:\n{}", c.log());
    c.wait_for_writer("postgres", Some(pid));
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT kind, status, coalesce(new_row::text, '-'), coalesce(details->>'reason', '-'), details->>'crash_restarts'
               FROM activity_log.events WHERE kind <> 'system' OR status = 'gap' ORDER BY id"
        ),
        [
            "system|gap|-|the server restarted after a crash; the committed records that were in shared memory were kept|1",
            r#"change|success|{"id": 1}|-|"#,
        ]
    );
}

/// A crash-restart owes every trail a gap record, which a database's writer writes when it
/// starts. With that writer down until a clean stop, the record used to be lost with the shared
/// memory (review of issue 29, F3); then it was noted in the stop's state file, and the next
/// start gave every trail a gap record calling the clean stop unclean, a second one in trails
/// that had recorded the crash already, one in databases created after it, and one record for
/// several crashes (G6). Now each database owes each incident until its own trail holds it
/// (src/shared/owed.rs): here two crash-restarts while `app`'s writer cannot connect, then a
/// clean stop; `app` gets exactly the two crash records when its writer runs again, `beta`
/// (whose writer ran) exactly the two it wrote at once, a database created after the crashes
/// none, nor one that had no extension then (and no writer to say so: review of G6, F4), and
/// the records committed before and between them are all kept.
#[test]
fn crash_gaps_not_yet_recorded_survive_a_clean_stop() {
    let c = Cluster::start(
        "owedgap",
        &[
            "activity_log.capture_statements = 'none'",
            "restart_after_crash = on",
        ],
    );
    with_extension(&c, "app");
    with_extension(&c, "beta");
    // A database without the extension, and without a writer to say so.
    c.sql("postgres", "CREATE DATABASE late");
    c.sql("postgres", "ALTER DATABASE late ALLOW_CONNECTIONS false");
    // An audited database its owner marks a template meanwhile (review of G6, N1: templates
    // were left out, so its owner could keep the records out of its trail).
    with_extension(&c, "marked");
    c.sql("postgres", "ALTER DATABASE marked IS_TEMPLATE true");
    c.sql(
        "app",
        "CREATE TABLE a (id int PRIMARY KEY); SELECT activity_log.track('a'); INSERT INTO a VALUES (1)",
    );
    c.flush("app");
    without_writer(&c, "app", "INSERT INTO a VALUES (2)");
    let kept = "the server restarted after a crash; the committed records that were in shared memory were kept";
    for crash in 1..=2 {
        let launcher = c.one(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'activity_log launcher'",
        );
        let before = c.crash_restarts();
        assert!(
            Command::new("kill")
                .args(["-9", &launcher])
                .status()
                .unwrap()
                .success()
        );
        c.wait_for_crash_restart(before);
        // beta's writer records each crash at once, and only once.
        let recorded = wait_until(Duration::from_secs(60), || {
            let out = c.run(
                "beta",
                "SELECT count(*) FROM activity_log.events WHERE status = 'gap'",
            );
            (String::from_utf8_lossy(&out.stdout).trim() == crash.to_string()).then_some(())
        });
        assert!(
            recorded.is_some(),
            "crash {crash} not in beta; log:\n{}",
            c.log()
        );
    }
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert_eq!(state_file(&c), "drained");
    assert!(c.pg_ctl(&["start"]));
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    writer_back(&c);
    c.flush("app");
    with_extension(&c, "gamma");
    c.sql("postgres", "ALTER DATABASE late ALLOW_CONNECTIONS true");
    with_extension(&c, "late");
    c.sql("postgres", "ALTER DATABASE marked IS_TEMPLATE false");
    for db in ["gamma", "late", "marked"] {
        c.sql(db, "SELECT activity_log.log_event('after the crashes')");
    }
    for db in ["beta", "gamma", "late", "marked"] {
        c.wait_for_writer(db, None);
        c.flush(db);
    }
    let gap = format!("system|gap|GAP|-|{kept}");
    assert_eq!(
        app_trail(&c),
        [
            r#"change|success|INSERT|{"id": 1}|-"#.to_string(),
            gap.clone(),
            gap,
            r#"change|success|INSERT|{"id": 2}|-"#.to_string(),
        ]
    );
    let gaps = "SELECT details->>'crash_restarts', details->>'unclean_stop', details->>'reason'
                  FROM activity_log.events WHERE status = 'gap' ORDER BY id";
    let both = [format!("1|false|{kept}"), format!("2|false|{kept}")];
    for db in ["app", "beta", "marked"] {
        assert_eq!(c.sql(db, gaps), both, "{db}");
    }
    // Trails begun after the crashes owe nothing for them.
    for db in ["gamma", "late"] {
        assert_eq!(c.sql(db, gaps), Vec::<String>::new(), "{db}");
    }
    assert_eq!(owed_databases(&c), [1, 1, 4, 4]);

    // A writer killed after it stored an owed record, before it removed it from the file, is
    // followed by one that finds the record in its trail: no second one.
    let beta = c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'beta'",
    );
    let first = c.one(
        "beta",
        "SELECT details->>'shared_memory_started_at_us' FROM activity_log.events WHERE status = 'gap' ORDER BY id LIMIT 1",
    );
    let line = format!(
        r#"{{"db":{beta},"shared_memory_started_at_us":{first},"reason":"{kept}","crash_restarts":1,"unclean_stop":false}}"#
    );
    as_postgres(&format!("echo '{line}' > {}/data/activity_log.owed", c.dir));
    let writer = c.wait_for_writer("beta", None);
    c.sql(
        "postgres",
        &format!("SELECT pg_terminate_backend({writer})"),
    );
    c.wait_for_writer("beta", Some(writer));
    c.flush("beta");
    assert_eq!(c.sql("beta", gaps), both);
    assert_eq!(owed_databases(&c), Vec::<u64>::new());
}

/// The databases of the lines of activity_log.owed, sorted. Where no writer runs (template1
/// without the extension, template0: oids 1 and 4), lines stay.
fn owed_databases(c: &Cluster) -> Vec<u64> {
    let mut dbs: Vec<u64> = data_file(c, "activity_log.owed")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["db"]
                .as_u64()
                .unwrap()
        })
        .collect();
    dbs.sort_unstable();
    dbs
}

/// A file of the server's data directory, trimmed; empty when there is none.
fn data_file(c: &Cluster, name: &str) -> String {
    let out = Command::new("sudo")
        .args(["-u", "postgres", "cat", &format!("{}/data/{name}", c.dir)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A base backup started again before it read its backup_label (its first start waited for
/// WAL from a primary it could not reach, and was stopped) is still the same copy: its trail
/// gets one record of the backup, not one per start (review of G6, F1: the first start's was
/// kept in activity_log.owed, and the second start added its own).
#[test]
fn a_base_backup_started_again_before_it_read_its_label_owes_one_record() {
    let c = Cluster::start(
        "labelprimary",
        &[
            "activity_log.capture_statements = 'none'",
            "wal_keep_size = 256",
        ],
    );
    with_extension(&c, "app");
    c.sql("app", "SELECT activity_log.log_event('before the backup')");
    c.flush("app");
    let standby = c.base_backup("labelstandby", "none");
    let connect_to = |conninfo: &str| {
        as_postgres(&format!(
            "echo \"primary_conninfo = '{conninfo}'\" >> {}/data/postgresql.auto.conf",
            standby.dir
        ))
    };
    connect_to("host=/nonexistent port=1");
    assert!(standby.pg_ctl(&["-W", "start"]));
    let waiting = wait_until(Duration::from_secs(60), || {
        standby
            .log()
            .contains("could not connect to the primary server")
            .then_some(())
    });
    assert!(waiting.is_some(), "{}", standby.log());
    assert!(standby.pg_ctl(&["-m", "fast", "stop"]));
    assert!(data_file(&standby, "backup_label").starts_with("START WAL LOCATION"));
    connect_to(&format!("host={} port={} user=postgres", c.dir, c.port));
    assert!(standby.pg_ctl(&["start"]));
    assert!(standby.pg_ctl(&["promote"]));
    standby.wait_for_writer("app", None);
    standby.sql(
        "app",
        "SELECT activity_log.log_event('after the promotion')",
    );
    standby.flush("app");
    assert_eq!(
        standby.sql(
            "app",
            "SELECT coalesce(command, '-'), coalesce(left(details->>'reason', 54), '-')
               FROM activity_log.events WHERE kind = 'event' OR status = 'gap' ORDER BY id"
        ),
        [
            "before the backup|-",
            "GAP|this data directory is a base backup of another server",
            "after the promotion|-",
        ]
    );
}

/// A writer that dies by a FATAL leaves its message in `activity_log.queue.last_error` (it
/// was left empty while writer_failures grew: review of issue 29). Here its database stops
/// accepting connections, so each new writer ends with a FATAL at its connection. And
/// exit_on_error, which a database's owner may set, is not the writer's: it would turn the
/// ERROR the writer catches to set a refused record aside into a FATAL, at every start.
#[test]
fn a_writer_that_dies_by_a_fatal_says_why_in_last_error() {
    let c = Cluster::start(
        "writer-fatal",
        &["activity_log.capture_statements = 'none'"],
    );
    with_extension(&c, "postgres");
    with_extension(&c, "app");
    let writer = c.wait_for_writer("app", None);
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS false");
    // The writer connected already goes on; the next one cannot connect.
    c.sql(
        "postgres",
        &format!("SELECT pg_terminate_backend({writer})"),
    );
    // (A moment after the writer left, its ring may not be listed.)
    let noted = wait_until(Duration::from_secs(20), || {
        c.sql(
            "postgres",
            "SELECT last_error FROM activity_log.queue WHERE database = 'app' AND last_error <> ''",
        )
        .pop()
    });
    assert_eq!(
        noted.as_deref(),
        Some("writer exited: FATAL: database \"app\" is not currently accepting connections"),
        "{}",
        c.log()
    );

    // exit_on_error on for the database: a refused record still becomes a dead letter, and
    // last_error keeps the words the failed batch noted.
    c.sql("postgres", "ALTER DATABASE postgres SET exit_on_error = on");
    let writer = c.wait_for_writer("postgres", None);
    c.sql(
        "postgres",
        &format!("SELECT pg_terminate_backend({writer})"),
    );
    c.wait_for_writer("postgres", Some(writer));
    c.sql(
        "postgres",
        "ALTER TABLE activity_log.events ADD CONSTRAINT no_toxic CHECK (command <> 'toxic')",
    );
    c.sql("postgres", "BEGIN; SELECT activity_log.log_event('fine 1'); SELECT activity_log.log_event('toxic'); SELECT activity_log.log_event('fine 2'); COMMIT;");
    c.flush("postgres");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT kind, status, command, coalesce(details->>'reason', '-') FROM activity_log.events WHERE command IN ('fine 1', 'toxic', 'fine 2') OR details->>'reason' LIKE '%toxic%' ORDER BY id",
        ),
        [
            "event|success|fine 1|-",
            "system|gap|GAP|event record \"toxic\" could not be stored: new row for relation \"events\" violates check constraint \"no_toxic\" (kept as activity_log.dead_letters id 1)",
            "event|success|fine 2|-",
        ]
    );
    let last = c.one(
        "postgres",
        "SELECT last_error FROM activity_log.queue WHERE database = 'postgres'",
    );
    assert!(
        last.contains("violates check constraint \"no_toxic\"")
            && !last.starts_with("writer exited"),
        "{last}"
    );
}

/// as_postgres runs a shell command as the postgres OS user (the data directory's owner).
fn as_postgres(script: &str) {
    let ok = Command::new("sudo")
        .args(["-u", "postgres", "sh", "-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

/// kept_records is the record count of the last spill file the postmaster wrote for `dboid`,
/// from its LOG line.
fn kept_records(c: &Cluster, dboid: &str) -> u64 {
    let needle = format!(" committed records of database {dboid} that were still in its ring");
    let log = c.log();
    let line = log
        .lines()
        .rfind(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no spill of {dboid} in the log:\n{log}"));
    let before = &line[..line.find(&needle).unwrap()];
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A spill file kept at a start (the ring too small) whose database is dropped before a later
/// start (here: put back by hand, as a drop by an earlier release left it) is discarded by the
/// launcher at that start, with one WARNING: whether the file is kept again (ring still too
/// small) or its records were put back into a ring (ring large enough). Before, the ring went
/// to the dropped database, whose writer failed at every start, and with `max_databases = 1`
/// the other database's records waited in durable_queue for ever (review, G4).
#[test]
fn a_dropped_databases_kept_records_are_discarded_at_the_next_start() {
    let c = Cluster::start(
        "spilldropped",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '1MB'",
            "activity_log.max_databases = 1",
        ],
    );
    // One ring: other's writer gets it when app's hands it back.
    c.sql("postgres", "CREATE DATABASE other");
    c.sql("postgres", "CREATE DATABASE app");
    for db in ["other", "app"] {
        c.sql(
            db,
            "CREATE EXTENSION activity_log;
             CREATE TABLE b (id int PRIMARY KEY, pad text); SELECT activity_log.track('b');
             SELECT activity_log.log_event('setup');",
        );
    }
    let app = c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'app'",
    );
    c.flush("other");
    c.flush("app");
    // About 90 kB of records in app's ring (the only one): more than a ring of 64 kB holds.
    without_writer(
        &c,
        "app",
        "INSERT INTO b SELECT g, repeat('x', 200) FROM generate_series(1, 400) g;",
    );
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    let file = format!("activity_log.spill.{app}");
    assert_eq!(spill_files(&c), std::slice::from_ref(&file));
    let n = kept_records(&c, &app);
    assert!(n > 0);
    let data = format!("{}/data", c.dir);
    let saved = format!("{}/saved.spill", c.dir);
    as_postgres(&format!("cp {data}/{file} {saved}"));
    assert!(c.pg_ctl(&["start", "-o", "-c activity_log.buffer_size=64kB"]));
    c.sql("postgres", "DROP DATABASE app");
    as_postgres(&format!("cp {saved} {data}/{file}"));

    let warning = |in_ring: u64, in_files: u64, files: u64| {
        format!(
            "WARNING:  activity_log: database {app} no longer exists: discarded its {} records kept from before the start ({in_ring} in its ring, {in_files} in {files} spill files)",
            in_ring + in_files
        )
    };
    // other's trail: each row once, in order.
    let other_rows = |c: &Cluster| {
        c.sql(
            "other",
            "SELECT coalesce(new_row->>'id', command) FROM activity_log.events WHERE kind IN ('change', 'event') ORDER BY id",
        )
    };
    let mut expected = vec!["setup".to_string()];
    for (round, conf) in [(1, "-c activity_log.buffer_size=64kB"), (2, "")]
        .into_iter()
        .map(|(r, conf)| (r, conf.to_string()))
    {
        assert!(c.pg_ctl(&["-m", "fast", "stop"]));
        assert_eq!(
            spill_files(&c),
            std::slice::from_ref(&file),
            "round {round}"
        );
        let log_before = c.log().len();
        if conf.is_empty() {
            assert!(c.pg_ctl(&["start"]));
        } else {
            assert!(c.pg_ctl(&["start", "-o", &conf]));
        }
        let first = round * 10;
        c.sql(
            "other",
            &format!("INSERT INTO b SELECT g, 'o' FROM generate_series({first}, {first} + 2) g"),
        );
        expected.extend((first..first + 3).map(|g| g.to_string()));
        c.flush("other");
        assert_eq!(other_rows(&c), expected, "round {round}");
        let log = c.log()[log_before..].to_string();
        // Round 1: the file did not fit and was kept at the start, then removed by the
        // launcher. Round 2: its records were put back into a ring, which the launcher freed.
        let expected_warning = if round == 1 {
            warning(0, n, 1)
        } else {
            assert!(
                log.contains(&format!(
                    "put {n} committed records of database {app} back into its ring from {file}"
                )),
                "{log}"
            );
            warning(n, 0, 0)
        };
        assert_eq!(log.matches(&expected_warning).count(), 1, "{log}");
        assert!(!log.contains("does not exist"), "{log}");
        assert_eq!(spill_files(&c), Vec::<String>::new(), "round {round}");
        assert_eq!(
            c.one(
                "other",
                &format!("SELECT count(*) FROM activity_log._queue() WHERE database_oid = {app}")
            ),
            "0"
        );
        if round == 1 {
            as_postgres(&format!("cp {saved} {data}/{file}"));
        }
    }
    assert_eq!(
        c.one("other", "SELECT intact FROM activity_log.verify()"),
        "t"
    );
    assert_eq!(
        c.one(
            "other",
            "SELECT count(*) FROM activity_log.events WHERE status = 'gap'"
        ),
        "0"
    );
}

/// DROP DATABASE removes the database's spill files kept at a start, and its ring forgets it:
/// a database created afterwards with the same oid (CREATE DATABASE … OID, open to any role with
/// CREATEDB) gets none of the dropped database's records, neither at the next start (the file)
/// nor before it (the ring's restore note). A drop PostgreSQL refuses (a role without rights,
/// a client connected, IF EXISTS of a missing database) forgets nothing: the file stays and a
/// start with room puts its records back into their database (review, F2).
/// A DROP DATABASE waits for the database's lock, and meanwhile its name comes to mean another
/// database: PostgreSQL drops that one. The records in the ring of the database the name meant
/// at first stay and are stored (they were freed with the ring at the drop's commit: a
/// database owner could erase their database's queued records this way), and the database
/// dropped instead leaves nothing behind.
#[test]
fn a_drop_that_removes_another_database_than_its_name_meant_loses_nothing() {
    let c = Cluster::start("dropswap", &["activity_log.capture_statements = 'none'"]);
    with_extension(&c, "a");
    c.sql(
        "a",
        "CREATE TABLE t (id int PRIMARY KEY); SELECT activity_log.track('t');",
    );
    c.sql("postgres", "CREATE DATABASE bb");
    let a = c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'a'",
    );
    // In a's ring, with no writer to store them (a takes no connection until the end).
    without_writer(&c, "a", "INSERT INTO t SELECT generate_series(1, 50);");
    // The renamer holds a's lock (COMMENT) until the test lets it go on (the advisory lock).
    let holder = c.spawn(
        "postgres",
        "al_holder",
        "SELECT pg_advisory_lock(42), pg_sleep(120)",
    );
    session_reaches(&c, "al_holder", "wait_event = 'PgSleep'");
    let renamer = c.spawn(
        "postgres",
        "al_renamer",
        "BEGIN; COMMENT ON DATABASE a IS 'held'; SELECT pg_advisory_xact_lock(42);
         ALTER DATABASE a RENAME TO z; ALTER DATABASE bb RENAME TO a; COMMIT;",
    );
    session_reaches(&c, "al_renamer", "wait_event = 'advisory'");
    let dropper = c.spawn("postgres", "al_dropper", "DROP DATABASE a");
    session_reaches(&c, "al_dropper", "wait_event_type = 'Lock'");
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'al_holder'",
    );
    drop(holder);
    let renamed = renamer.wait_with_output().unwrap();
    assert!(renamed.status.success(), "{renamed:?}");
    let dropped = dropper.wait_with_output().unwrap();
    assert!(dropped.status.success(), "{dropped:?}");
    assert_eq!(
        c.sql(
            "postgres",
            "SELECT datname, oid FROM pg_database WHERE datname IN ('a', 'bb', 'z')"
        ),
        [format!("z|{a}")]
    );
    c.sql("postgres", "ALTER DATABASE z ALLOW_CONNECTIONS true");
    let back = wait_until(Duration::from_secs(90), || c.writer_pid("z"));
    assert!(back.is_some(), "no writer for z; log:\n{}", c.log());
    c.flush("z");
    assert_eq!(
        c.sql(
            "z",
            "SELECT count(*), count(DISTINCT new_row->>'id'), min((new_row->>'id')::int), max((new_row->>'id')::int)
               FROM activity_log.events WHERE kind = 'change'"
        ),
        ["50|50|1|50"]
    );
    assert_eq!(
        c.one(
            "z",
            "SELECT count(*) FROM activity_log.events WHERE status = 'gap'"
        ),
        "0"
    );
}

/// A DROP DATABASE cannot be undone once PostgreSQL has removed the database's files: its own
/// statement record must not fail its commit (with overflow = 'error' and a full ring it did,
/// leaving the database invalid, half-dropped, until a second DROP). The record is counted as
/// dropped instead, and the gap record says so.
#[test]
fn a_drop_database_commits_with_a_full_ring() {
    let c = Cluster::start(
        "dropfull",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '64kB'",
        ],
    );
    with_extension(&c, "app");
    c.sql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, pad text); SELECT activity_log.track('t');",
    );
    c.sql("postgres", "CREATE DATABASE x");
    let inserts: String = (1..=400)
        .map(|i| format!("INSERT INTO t VALUES ({i}, repeat('p', 300));\n"))
        .collect();
    // Its statement record is larger than any row's: it cannot fit where the last row did not.
    let long = "q".repeat(1500);
    let out = without_writer(
        &c,
        "app",
        &format!(
            "\\set ON_ERROR_STOP 0
             SET activity_log.overflow = 'error';
             {inserts}
             SET activity_log.capture_statements = 'ddl';
             DROP DATABASE x /* {long} */;
             SELECT 'dropped', count(*) FROM pg_database WHERE datname = 'x';"
        ),
    );
    assert!(
        out.iter()
            .any(|l| l.contains("dropped") && l.ends_with('0')),
        "{out:?}"
    );
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    writer_back(&c);
    c.flush("app");
    let stored: i64 = c
        .one(
            "app",
            "SELECT count(*) FROM activity_log.events WHERE kind = 'change'",
        )
        .parse()
        .unwrap();
    let committed: i64 = c.one("app", "SELECT count(*) FROM t").parse().unwrap();
    assert!(
        committed > 0 && committed < 400,
        "the ring did not fill: {committed}"
    );
    assert_eq!(stored, committed);
    let gap = c.sql(
        "app",
        "SELECT details->>'dropped_records' FROM activity_log.events WHERE status = 'gap'",
    );
    assert_eq!(gap, ["1"], "{}", c.log());
}

/// A DROP DATABASE that waits for the database's lock must not hold up the ring's next
/// database: when the ring is freed meanwhile (a DROP EXTENSION that began before it commits
/// first), the next database to take it got no writer for as long as the drop waited, the
/// drop's pause having stayed on the ring (review of G4, a stale pause). The drop now stops the
/// writer only once it holds the lock, and a pause never outlives its database's turn.
#[test]
fn a_drop_waiting_for_a_lock_holds_up_no_other_database() {
    let c = Cluster::start(
        "stalepause",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.max_databases = 1",
        ],
    );
    with_extension(&c, "a");
    c.sql("postgres", "CREATE DATABASE b");
    // The extension's drop pauses a's writer first, and waits (advisory lock 42) to commit.
    let gate = c.spawn("a", "al_gate", "SELECT pg_advisory_lock(42), pg_sleep(120)");
    session_reaches(&c, "al_gate", "wait_event = 'PgSleep'");
    let ext_drop = c.spawn(
        "a",
        "al_ext_drop",
        "BEGIN; DROP EXTENSION activity_log; SELECT pg_advisory_xact_lock(42); COMMIT;",
    );
    session_reaches(&c, "al_ext_drop", "wait_event = 'advisory'");
    // The database's drop (FORCE: it would end a's sessions) waits for a's lock.
    let holder = c.spawn(
        "postgres",
        "al_holder",
        "BEGIN; COMMENT ON DATABASE a IS 'held'; SELECT pg_sleep(120);",
    );
    session_reaches(&c, "al_holder", "wait_event = 'PgSleep'");
    let dropper = c.spawn("postgres", "al_dropper", "DROP DATABASE a WITH (FORCE)");
    session_reaches(&c, "al_dropper", "wait_event_type = 'Lock'");
    let terminate = |app: &str| {
        c.sql(
            "postgres",
            &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"),
        )
    };
    terminate("al_gate");
    drop(gate);
    let out = ext_drop.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // b takes the freed ring while the database's drop still waits: its writer starts.
    c.sql(
        "b",
        "CREATE EXTENSION activity_log;
         CREATE TABLE t (id int PRIMARY KEY); SELECT activity_log.track('t');
         INSERT INTO t SELECT generate_series(1, 10);",
    );
    c.wait_for_writer("b", None);
    c.flush("b");
    terminate("al_holder");
    drop(holder);
    let out = dropper.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // The drop's end left b's ring and writer alone.
    c.sql("b", "INSERT INTO t SELECT generate_series(11, 20);");
    c.flush("b");
    assert_eq!(
        c.sql(
            "b",
            "SELECT count(*), min((new_row->>'id')::int), max((new_row->>'id')::int)
               FROM activity_log.events WHERE kind = 'change'"
        ),
        ["20|1|20"]
    );
}

/// A DROP DATABASE waiting for the database's lock stops no writer: it stopped the writer
/// before it waited, and a stopped writer's ring is never handed back, so an owner who held
/// the lock in an open transaction (COMMENT ON DATABASE) kept another database without a writer
/// for as long as they liked (hostile review of 2026-12-06, with max_databases = 1).
#[test]
fn a_drop_waiting_for_its_lock_stops_no_writer() {
    let c = Cluster::start(
        "dropwaits",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.max_databases = 1",
        ],
    );
    with_extension(&c, "mb");
    c.sql("postgres", "CREATE DATABASE a");
    let holder = c.spawn(
        "postgres",
        "al_holder",
        "BEGIN; COMMENT ON DATABASE mb IS 'held'; SELECT pg_sleep(120);",
    );
    session_reaches(&c, "al_holder", "wait_event = 'PgSleep'");
    let dropper = c.spawn("postgres", "al_dropper", "DROP DATABASE mb WITH (FORCE)");
    session_reaches(&c, "al_dropper", "wait_event_type = 'Lock'");
    // mb's writer still runs: it hands the one ring to a, whose records reach its trail.
    c.sql(
        "a",
        "CREATE EXTENSION activity_log;
         CREATE TABLE t (id int PRIMARY KEY); SELECT activity_log.track('t');
         INSERT INTO t SELECT generate_series(1, 10);",
    );
    c.wait_for_writer("a", None);
    c.flush("a");
    assert_eq!(
        c.one(
            "a",
            "SELECT count(*) FROM activity_log.events WHERE kind = 'change'"
        ),
        "10"
    );
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'al_holder'",
    );
    drop(holder);
    let out = dropper.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        c.one(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'mb'"
        ),
        "0"
    );
}

/// A DROP DATABASE that PostgreSQL refuses right after the object access hook (a template
/// database) stops no writer: its owner, who may mark it a template, kept the ring's writer
/// stopped, and every other database's with it, by trying in a loop (review, 2026-12-06).
#[test]
fn a_refused_drop_of_a_template_stops_no_writer() {
    use std::io::Write;
    let c = Cluster::start(
        "droptemplate",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.max_databases = 1",
        ],
    );
    c.sql(
        "postgres",
        "CREATE ROLE mallory LOGIN CREATEDB; CREATE DATABASE mb OWNER mallory; CREATE DATABASE a;",
    );
    c.sql("mb", "CREATE EXTENSION activity_log");
    c.wait_for_writer("mb", None);
    c.sql_as("mallory", "postgres", "ALTER DATABASE mb IS_TEMPLATE true");
    let mut looper = c
        .psql_command_as("mallory", "postgres")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut script = String::from("\\set ON_ERROR_STOP 0\n");
    script.push_str(&"DROP DATABASE mb;\n".repeat(1_000_000));
    let mut stdin = looper.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    c.sql(
        "a",
        "CREATE EXTENSION activity_log;
         CREATE TABLE t (id int PRIMARY KEY); SELECT activity_log.track('t');
         INSERT INTO t SELECT generate_series(1, 10);",
    );
    c.wait_for_writer("a", None);
    c.flush("a");
    assert!(
        looper.try_wait().unwrap().is_none(),
        "the refused drops ended before a got its writer: the test proves nothing"
    );
    let _ = looper.kill();
    let _ = looper.wait();
    let _ = feeder.join();
    assert_eq!(
        c.one(
            "a",
            "SELECT count(*) FROM activity_log.events WHERE kind = 'change'"
        ),
        "10"
    );
}

#[test]
fn a_dropped_databases_spill_file_never_reaches_a_database_with_its_oid() {
    let c = Cluster::start(
        "spilloid",
        &[
            "activity_log.capture_statements = 'none'",
            "activity_log.buffer_size = '1MB'",
        ],
    );
    with_extension(&c, "app");
    c.sql(
        "app",
        "CREATE TABLE b (id int PRIMARY KEY, pad text); SELECT activity_log.track('b');
         CREATE ROLE mallory LOGIN CREATEDB; CREATE ROLE nobody LOGIN;",
    );
    let app = c.one(
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'app'",
    );
    let file = format!("activity_log.spill.{app}");
    let keep_a_file = |first: i32| {
        without_writer(
            &c,
            "app",
            &format!(
                "INSERT INTO b SELECT g, repeat('x', 200) FROM generate_series({first}, {first} + 399) g;"
            ),
        );
        assert!(c.pg_ctl(&["-m", "fast", "stop"]));
        assert!(c.pg_ctl(&["start", "-o", "-c activity_log.buffer_size=64kB"]));
        assert_eq!(spill_files(&c), std::slice::from_ref(&file));
    };
    keep_a_file(1);

    for role in ["nobody", "mallory"] {
        let refused = c.error_as(role, "postgres", "DROP DATABASE app");
        assert!(
            refused.contains("ERROR:  must be owner of database app"),
            "{role}: {refused}"
        );
    }
    c.sql("postgres", "DROP DATABASE IF EXISTS nosuch");
    c.sql("postgres", "ALTER DATABASE app ALLOW_CONNECTIONS true");
    let mut session = c.spawn("app", "al_holder", "SELECT pg_sleep(60)");
    let connected = wait_until(Duration::from_secs(10), || {
        (c.one(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_holder'",
        ) == "1")
            .then_some(())
    });
    assert!(connected.is_some());
    let busy = c.error("postgres", "DROP DATABASE app");
    assert!(
        busy.contains(r#"ERROR:  database "app" is being accessed by other users"#),
        "{busy}"
    );
    session.kill().unwrap();
    let _ = session.wait();
    c.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'al_holder'",
    );
    assert_eq!(spill_files(&c), std::slice::from_ref(&file));

    // A start with room puts the records back into app.
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    assert_eq!(spill_files(&c), Vec::<String>::new());
    c.wait_for_writer("app", None);
    c.flush("app");
    let rows = c.sql(
        "app",
        "SELECT count(*), count(DISTINCT new_row->>'id'), min((new_row->>'id')::int), max((new_row->>'id')::int)
           FROM activity_log.events WHERE kind = 'change'",
    );
    assert_eq!(rows, ["400|400|1|400"]);

    // Kept again, then dropped (FORCE: the same path): the drop removes the file at once.
    keep_a_file(401);
    let data = format!("{}/data", c.dir);
    let saved = format!("{}/saved.spill", c.dir);
    as_postgres(&format!("cp {data}/{file} {saved}"));
    let records = kept_records(&c, &app);
    c.sql("postgres", "DROP DATABASE app WITH (FORCE)");
    assert_eq!(spill_files(&c), Vec::<String>::new());
    let log = c.log();
    assert!(
        log.contains(&format!(
            "removed 1 spill files of dropped database {app}, with {records} records"
        )),
        "{log}"
    );
    // A file the drop did not remove (one an earlier release left, say) goes when a database
    // takes the oid, before anybody can connect to it.
    as_postgres(&format!("cp {saved} {data}/{file}"));
    c.sql_as(
        "mallory",
        "postgres",
        &format!("CREATE DATABASE c OID = {app}"),
    );
    assert_eq!(spill_files(&c), Vec::<String>::new());
    let log = c.log();
    assert!(
        log.contains(&format!(
            "removed 1 spill files of an earlier database of oid {app}, which a new database takes, with {records} records"
        )),
        "{log}"
    );
    c.sql("c", "CREATE EXTENSION activity_log");
    let writer = wait_until(Duration::from_secs(30), || c.writer_pid("c"));
    assert!(writer.is_some(), "no writer for c; log:\n{}", c.log());
    let trail = |c: &Cluster| {
        c.sql(
            "c",
            "SELECT kind, status, command, coalesce(details->>'reason', '-')
               FROM activity_log.events ORDER BY id",
        )
    };
    c.sql("c", "SELECT activity_log.log_event('c_before_restart')");
    c.flush("c");
    assert_eq!(trail(&c), ["event|success|c_before_restart|-"]);
    assert!(c.pg_ctl(&["-m", "fast", "stop"]));
    assert!(c.pg_ctl(&["start"]));
    c.sql("c", "SELECT activity_log.log_event('c_after_restart')");
    c.wait_for_writer("c", None);
    c.flush("c");
    assert_eq!(
        trail(&c),
        [
            "event|success|c_before_restart|-",
            "event|success|c_after_restart|-"
        ]
    );
}
