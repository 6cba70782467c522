//! Limits (issue 24): what fixed sizes must never do to a user — refuse a transaction because
//! of its size, or lose records without saying so. One cluster per test, at default settings
//! unless a test is about a setting.

mod common;

use common::{Cluster, with_extension};
use std::io::Write;
use std::process::Stdio;

const DB: &str = "postgres";

fn items(c: &Cluster, rows: u32) {
    c.sql(
        DB,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, price int NOT NULL, name text NOT NULL);
             INSERT INTO items SELECT g, g, 'item ' || g FROM generate_series(1, {rows}) g;
             SELECT activity_log.track('items');"
        ),
    );
}

/// pieces_staged is how many pieces durable_queue has taken since the cluster started.
fn pieces_staged(c: &Cluster) -> u64 {
    c.sql(DB, "SELECT pg_stat_force_next_flush()");
    c.one(
        DB,
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'activity_log.durable_queue'::regclass",
    )
    .parse()
    .unwrap()
}

/// A 1 000 000-row UPDATE at default settings (a 16 MB ring; the records are ~150 MB) commits,
/// and the trail holds every row's exact old and new image.
#[test]
fn a_million_row_update_is_captured_whole_at_defaults() {
    let c = Cluster::start("limits-million", &[]);
    with_extension(&c, DB);
    items(&c, 1_000_000);
    c.sql(
        DB,
        "CREATE TABLE sample AS SELECT * FROM items WHERE id % 997 = 0;
         UPDATE items SET price = price + 1, name = name || '!';",
    );
    assert!(pieces_staged(&c) > 50, "the records were staged in pieces");
    assert_eq!(
        c.one(DB, "SELECT activity_log.flush('600 s')"),
        "t",
        "the writer did not store the transaction"
    );
    assert_eq!(
        c.sql(
            DB,
            "SELECT count(*), count(DISTINCT row_key), count(DISTINCT xid), count(DISTINCT committed_at)
               FROM activity_log.events WHERE table_name = 'items' AND command = 'UPDATE'"
        ),
        ["1000000|1000000|1|1"]
    );
    // Replay of a sample: old image = the row before, new image = the row now, exactly.
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FROM sample s
               JOIN activity_log.events e ON e.table_name = 'items' AND e.row_key = jsonb_build_object('id', s.id)
               JOIN items i ON i.id = s.id
              WHERE jsonb_populate_record(NULL::items, e.old_row) = ROW(s.id, s.price, s.name)::items
                AND jsonb_populate_record(NULL::items, e.new_row) = i"
        ),
        c.one(DB, "SELECT count(*) FROM sample")
    );
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM activity_log.durable_queue"),
        "0"
    );
    assert_eq!(c.one(DB, "SELECT intact FROM activity_log.verify()"), "t");
    // The staged pieces count as published, like records that passed through the ring.
    assert_eq!(
        c.one(
            DB,
            "SELECT published_records - written_records FROM activity_log.queue WHERE database = current_database()"
        ),
        "0"
    );
}

/// Pieces staged inside a savepoint vanish with ROLLBACK TO, pieces staged before it stay, and
/// what a PL/pgSQL loop of exception blocks keeps arrives in the order it happened.
#[test]
fn savepoints_keep_exactly_the_surviving_records_of_a_big_transaction() {
    let c = Cluster::start("limits-savepoint", &[]);
    with_extension(&c, DB);
    items(&c, 300_000);
    let before = pieces_staged(&c);
    c.sql(
        DB,
        "BEGIN;
         UPDATE items SET price = price + 1 WHERE id <= 100000;
         SAVEPOINT s;
         UPDATE items SET price = price + 10 WHERE id > 100000 AND id <= 200000;
         ROLLBACK TO s;
         UPDATE items SET price = price + 100 WHERE id > 200000;
         COMMIT;
         DO $$ BEGIN
             FOR i IN 1..20000 LOOP
                 BEGIN
                     UPDATE items SET name = name || '!' WHERE id = i;
                     IF i % 1000 = 0 THEN RAISE EXCEPTION 'no %', i; END IF;
                 EXCEPTION WHEN raise_exception THEN NULL;
                 END;
             END LOOP;
         END $$;",
    );
    assert!(
        pieces_staged(&c) - before > 20,
        "the records were staged in pieces"
    );
    assert_eq!(c.one(DB, "SELECT activity_log.flush('300 s')"), "t");
    assert_eq!(
        c.sql(
            DB,
            "SELECT (new_row->>'price')::int - (old_row->>'price')::int AS delta, count(*),
                    min((row_key->>'id')::int), max((row_key->>'id')::int)
               FROM activity_log.events WHERE table_name = 'items' AND query LIKE 'UPDATE%'
              GROUP BY 1 ORDER BY 1"
        ),
        ["1|100000|1|100000", "100|100000|200001|300000"]
    );
    // The loop: every iteration but the 20 that raised, in iteration order.
    assert_eq!(
        c.sql(
            DB,
            "SELECT count(*), count(*) FILTER (WHERE k % 1000 = 0),
                    count(*) FILTER (WHERE k <= prev)
               FROM (SELECT (row_key->>'id')::int AS k,
                            lag((row_key->>'id')::int) OVER (ORDER BY id) AS prev
                       FROM activity_log.events WHERE table_name = 'items' AND query LIKE 'DO%') x"
        ),
        ["19980|0|0"]
    );
    // The rows the trail says are there are the table's rows.
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FROM items i
               LEFT JOIN (SELECT (row_key->>'id')::int AS id,
                                 sum((new_row->>'price')::int - (old_row->>'price')::int) AS delta
                            FROM activity_log.events WHERE table_name = 'items' GROUP BY 1) e USING (id)
              WHERE i.price <> i.id + coalesce(e.delta, 0)"
        ),
        "0"
    );
}

/// A backend that dies in the middle of a transaction that staged pieces (the server restarts
/// after the crash) leaves nothing of it in the trail, and the queue holds nothing.
#[test]
fn a_crash_in_the_middle_of_a_big_transaction_leaves_nothing_of_it() {
    let c = Cluster::start("limits-crash", &[]);
    with_extension(&c, DB);
    items(&c, 300_000);
    let mut session = c.spawn(
        DB,
        "al_big",
        "BEGIN; UPDATE items SET price = -1; SELECT pg_sleep(300); COMMIT;",
    );
    let sleeping = common::wait_until(std::time::Duration::from_secs(120), || {
        (c.one(
            DB,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_big' AND query LIKE '%pg_sleep%' AND wait_event = 'PgSleep'",
        ) == "1")
            .then_some(())
    });
    assert!(
        sleeping.is_some(),
        "the big transaction never got to its sleep"
    );
    let pid = c.one(
        DB,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'al_big'",
    );
    let before = c.crash_restarts();
    let killed = std::process::Command::new("sudo")
        .args(["kill", "-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = session.wait();
    c.wait_for_crash_restart(before);
    c.wait_for_writer(DB, None);
    c.sql(DB, "UPDATE items SET price = price + 1 WHERE id = 1");
    c.flush(DB);
    assert_eq!(
        c.sql(
            DB,
            "SELECT query, count(*) FROM activity_log.events WHERE table_name = 'items' GROUP BY 1"
        ),
        ["UPDATE items SET price = price + 1 WHERE id = 1|1"]
    );
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM activity_log.durable_queue"),
        "0"
    );
    assert_eq!(
        c.one(DB, "SELECT count(*) FROM items WHERE price = -1"),
        "0"
    );
}

/// At capture_statements = 'all', a read-only transaction of 150 000 statements (records far
/// larger than the ring) commits, and each statement is in the trail.
#[test]
fn a_read_only_transaction_of_150000_statements_commits() {
    let c = Cluster::start("limits-reads", &["activity_log.capture_statements = 'all'"]);
    with_extension(&c, DB);
    let mut script = String::from("BEGIN READ ONLY;\n");
    for i in 0..150_000 {
        script.push_str(&format!(
            "SELECT {i} AS n /* padding to make each record larger than a few bytes */;\n"
        ));
    }
    script.push_str("COMMIT;\n");
    let mut psql = c
        .psql_command(DB)
        .args(["-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    psql.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.one(DB, "SELECT activity_log.flush('300 s')"), "t");
    assert_eq!(
        c.sql(
            DB,
            "SELECT count(*), count(DISTINCT xid), count(DISTINCT query)
               FROM activity_log.events WHERE kind = 'statement' AND query LIKE 'SELECT % AS n %'"
        ),
        ["150000|1|150000"]
    );
}

/// 50 databases with the extension on a stock cluster (4 rings, 8 background-worker slots):
/// concurrent writes in each, every record stored, nothing dropped; a 51st database added
/// later works without a restart.
#[test]
fn fifty_databases_share_the_rings_and_lose_nothing() {
    let c = Cluster::start("limits-dbs", &["activity_log.capture_statements = 'none'"]);
    let setup = "CREATE EXTENSION activity_log;
                 CREATE TABLE t (id int PRIMARY KEY, v text);
                 SELECT activity_log.track('t');";
    for i in 0..50 {
        c.sql(DB, &format!("CREATE DATABASE d{i}"));
        c.sql(&format!("d{i}"), setup);
    }
    let sessions: Vec<_> = (0..50)
        .map(|i| {
            c.spawn(
                &format!("d{i}"),
                "al_writes",
                "DO $$ BEGIN FOR n IN 1..20 LOOP
                     INSERT INTO t SELECT n * 100 + g, 'x' FROM generate_series(1, 10) g;
                     COMMIT;
                 END LOOP; END $$;",
            )
        })
        .collect();
    for s in sessions {
        let out = s.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.sql(DB, "CREATE DATABASE d50");
    c.sql("d50", setup);
    c.sql(
        "d50",
        "INSERT INTO t SELECT g, 'late' FROM generate_series(1, 200) g",
    );
    for i in 0..=50 {
        let db = format!("d{i}");
        assert_eq!(
            c.one(&db, "SELECT activity_log.flush('300 s')"),
            "t",
            "{db} was not stored; queue: {:?}",
            c.sql(DB, "SELECT * FROM activity_log.queue")
        );
        assert_eq!(
            c.sql(
                &db,
                "SELECT (SELECT count(*) FROM activity_log.changes WHERE table_name = 't' AND op = 'INSERT'),
                        (SELECT count(*) FROM activity_log.events WHERE status = 'gap'),
                        (SELECT count(*) FROM activity_log.durable_queue)"
            ),
            ["200|0|0"],
            "{db}"
        );
    }
    assert!(
        !c.log().contains("no background worker slot is free"),
        "{}",
        c.log()
    );
}

/// The trail's order is the commit order of conflicting transactions, also when one of them
/// staged its records: a staged transaction is announced in the ring at pre-commit, and the
/// writer stores its rows when it reaches the announcement. Replaying the trail gives the
/// table.
#[test]
fn staged_transactions_keep_their_place_in_the_commit_order() {
    let c = Cluster::start("limits-order", &[]);
    with_extension(&c, DB);
    c.sql(
        DB,
        "CREATE TABLE other (id int PRIMARY KEY, pad text NOT NULL);
         INSERT INTO other SELECT g, 'start' FROM generate_series(1, 20000) g;
         CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO acct VALUES (1, 0);
         CREATE TABLE ledger (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO ledger VALUES (1, 0);
         SELECT activity_log.track('other');
         SELECT activity_log.track('acct');
         SELECT activity_log.track('ledger', durability => 'sync');",
    );
    for round in 0..3 {
        // A big transaction, then small ones changing the same rows right after it.
        c.sql(
            DB,
            &format!(
                "UPDATE other SET pad = repeat('{round}', 1000);
                 UPDATE other SET pad = 'after {round}' WHERE id % 1000 = 0;
                 UPDATE ledger SET v = v + 1;"
            ),
        );
        // A small transaction holds a row that a big one then waits for: the small one
        // commits first, and its change must come first in the trail.
        let small = c.spawn(
            DB,
            "al_small",
            &format!("BEGIN; UPDATE acct SET v = {round} * 10 + 1 WHERE id = 1; SELECT pg_sleep(2); COMMIT;"),
        );
        let held = common::wait_until(std::time::Duration::from_secs(10), || {
            (c.one(DB, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'al_small' AND wait_event = 'PgSleep'") == "1").then_some(())
        });
        assert!(held.is_some());
        c.sql(
            DB,
            &format!(
                "BEGIN;
                 UPDATE other SET pad = repeat('b', 1000) WHERE id <= 5000;
                 UPDATE acct SET v = {round} * 10 + 2 WHERE id = 1;
                 UPDATE ledger SET v = v + 1;
                 COMMIT;"
            ),
        );
        let out = small.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    assert_eq!(c.one(DB, "SELECT activity_log.flush('300 s')"), "t");
    for table in ["other", "acct", "ledger"] {
        assert_eq!(
            c.one(
                DB,
                &format!(
                    "SELECT count(*) FROM {table} t
                       FULL JOIN (SELECT DISTINCT ON (row_key) row_key, new_row FROM activity_log.changes
                                   WHERE table_name = '{table}' ORDER BY row_key, id DESC) last
                         ON last.row_key = jsonb_build_object('id', t.id)
                      WHERE last.new_row IS DISTINCT FROM to_jsonb(t)"
                )
            ),
            "0",
            "replaying {table} in id order does not give the table"
        );
    }
    // Each big transaction's records are one run of ids: nothing committed later in between.
    assert_eq!(
        c.one(
            DB,
            "SELECT count(*) FROM (SELECT xid, max(id) - min(id) + 1 AS span, count(*) AS n
                                      FROM activity_log.events WHERE xid IS NOT NULL GROUP BY xid) x
              WHERE span <> n"
        ),
        "0"
    );
}

/// Failure records of a database without a ring are stored when it can take a free ring, and
/// otherwise counted, with a gap record, by the ring it gets next: never lost silently.
#[test]
fn failures_in_a_database_without_a_ring_are_not_lost_silently() {
    let c = Cluster::start(
        "limits-failures",
        &[
            "activity_log.max_databases = 1",
            "activity_log.capture_statements = 'all'",
        ],
    );
    for db in ["x1", "x2", "x3"] {
        c.sql(DB, &format!("CREATE DATABASE {db}"));
        c.sql(
            db,
            "CREATE EXTENSION activity_log; CREATE TABLE t (id int PRIMARY KEY, v int);",
        );
    }
    for db in ["x1", "x2", "x3"] {
        let _ = c.run(db, "SELECT 1/0;");
        let _ = c.run(db, "INSERT INTO t VALUES (1, 1), (1, 2);");
    }
    for db in ["x1", "x2", "x3"] {
        assert_eq!(c.one(db, "SELECT activity_log.flush('120 s')"), "t", "{db}");
        let stored: i64 = c
            .one(
                db,
                "SELECT count(*) FROM activity_log.events WHERE status = 'error'",
            )
            .parse()
            .unwrap();
        let reported: i64 = c
            .one(
                db,
                "SELECT coalesce(sum((details->>'dropped_records')::int), 0) FROM activity_log.events WHERE status = 'gap'",
            )
            .parse()
            .unwrap();
        assert_eq!(
            stored + reported,
            2,
            "{db}: {stored} stored, {reported} reported lost"
        );
    }
}
