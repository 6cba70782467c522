//! Real-cluster tests of what the extension reports about itself: the health score, the daily
//! metrics and retention of the trail's partitions. The harness is in tests/common.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

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
    // The oldest row left, alone (as redact() checks it): it links to the anchor below it.
    assert_eq!(
        c.one(
            "postgres",
            "SELECT rows_checked || ',' || intact FROM activity_log.verify((SELECT min(id) FROM activity_log.events), (SELECT min(id) FROM activity_log.events))"
        ),
        "1,true"
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
