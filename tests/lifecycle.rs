//! Real-cluster tests of the extension's lifecycle: one trail per database, CREATE and DROP
//! EXTENSION, DROP DATABASE, preloading and settings. The harness is in tests/common.

mod common;

use common::*;
use std::time::Duration;

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
    // PostgreSQL 17 names the unit in the range.
    let (kb, ms) = if c.major() >= 17 {
        (" kB", " ms")
    } else {
        ("", "")
    };
    let buffer_size = format!(
        "is outside the valid range for parameter \"activity_log.buffer_size\" (64{kb} .. 1048576{kb})"
    );
    let flush_interval = format!(
        "is outside the valid range for parameter \"activity_log.flush_interval\" (10{ms} .. 60000{ms})"
    );
    let writer_slice = format!(
        "is outside the valid range for parameter \"activity_log.writer_slice\" (0{ms} .. 1000{ms})"
    );
    for (setting, value, message) in [
        ("activity_log.buffer_size", "'1kB'", buffer_size.as_str()),
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
            flush_interval.as_str(),
        ),
        ("activity_log.writer_slice", "'-1ms'", writer_slice.as_str()),
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
