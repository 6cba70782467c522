#!/usr/bin/env python3
"""Query timings on a big trail: activity_log.events filled with 10 million rows spread over 30
days (row changes of 20 tables, statements, application events; 2 % errors; 50 users), then
the queries a dashboard or an investigation runs, each timed 5 times (median, warm cache):
health, metrics, one row's history, the last 100 changes of one table, and the analytics.

Rows are generated with SQL straight into the trail (as the writer would have stored them), and
the hourly rollup the writer keeps is then rebuilt once; the script measures reading, not writing.

    bench/big_trail.py [--rows N] [--smoke]
"""
import argparse
import re
import statistics
import subprocess
import sys
import time

from benchlib import BIN, Cluster, install_release, machine, publish

DIR = "/tmp/al-bench-big"
PORT = 54460
SETTINGS = ["activity_log.capture_statements = 'none'", "shared_buffers = '2GB'", "max_wal_size = '8GB'",
            "synchronous_commit = off", "maintenance_work_mem = '1GB'"]

FILL = """
INSERT INTO activity_log.events (ts, committed_at, kind, category, severity, status, sqlstate, db_user, actor,
    application_name, backend_pid, command, schema_name, table_name, table_oid, row_key, old_row, new_row,
    changed_columns, query, duration_ms, details)
SELECT ts, ts, kind, category, CASE WHEN err THEN 'error' ELSE 'info' END, CASE WHEN err THEN 'error' ELSE 'success' END,
       CASE WHEN err THEN '23505' END, 'user' || (g % 50), CASE WHEN g % 3 = 0 THEN 'web:' || (g % 500) END,
       'app', 1000 + g % 100, op, sch, tbl, toid, rk,
       CASE WHEN op IN ('UPDATE', 'DELETE') THEN jsonb_build_object('id', g / 20 % 100000, 'qty', g % 7, 'note', 'old ' || g) END,
       CASE WHEN op IN ('UPDATE', 'INSERT') THEN jsonb_build_object('id', g / 20 % 100000, 'qty', g % 11, 'note', 'new ' || g) END,
       CASE WHEN op = 'UPDATE' THEN '{{qty,note}}'::text[] END,
       CASE WHEN kind <> 'change' THEN 'UPDATE t SET qty = qty + 1 WHERE id = $1' END,
       CASE WHEN kind = 'statement' THEN (g % 97) / 10.0 END,
       CASE WHEN kind = 'event' THEN jsonb_build_object('action', 'login') END
  FROM (SELECT g, now() - interval '30 days' * (1 - g::float8 / {rows}) AS ts, (g % 50 = 7) AS err,
               CASE WHEN g % 10 < 8 THEN 'change' WHEN g % 10 = 8 THEN 'statement' ELSE 'event' END AS kind,
               CASE WHEN g % 10 < 8 THEN 'data_change' WHEN g % 10 = 8 THEN 'data_access' ELSE 'authentication' END AS category,
               CASE WHEN g % 10 < 8 THEN (ARRAY['INSERT', 'UPDATE', 'UPDATE', 'DELETE'])[g % 4 + 1] ELSE 'SELECT' END AS op,
               CASE WHEN g % 10 < 8 THEN 'public' END AS sch,
               CASE WHEN g % 10 < 8 THEN 't' || (g % 20) END AS tbl,
               CASE WHEN g % 10 < 8 THEN (SELECT oid FROM pg_class WHERE relname = 't' || (g % 20)) END AS toid,
               CASE WHEN g % 10 < 8 THEN jsonb_build_object('id', g / 20 % 100000) END AS rk
          FROM generate_series({start}, {end}) g) s
"""

QUERIES = [
    ("health: SELECT activity_health()", "SELECT activity_health()"),
    ("metrics: SELECT * FROM activity_log.metrics()", "SELECT * FROM activity_log.metrics()"),
    ("one row's history: activity_log.history('t7', '{\"id\": 4242}')",
     "SELECT * FROM activity_log.history('t7', '{\"id\": 4242}')"),
    ("last 100 changes of one table",
     "SELECT * FROM activity_log.changes WHERE table_oid = 't7'::regclass ORDER BY id DESC LIMIT 100"),
    ("last 100 events: activity_log.recent()", "SELECT * FROM activity_log.recent()"),
    ("trend, last 24 hours by hour", "SELECT * FROM activity_log.trend()"),
    ("anomalies, last 24 hours against 7 days", "SELECT * FROM activity_log.anomalies()"),
    ("user_summary, last day", "SELECT * FROM activity_log.user_summary('1 day')"),
    ("metrics_daily, last 30 days", "SELECT * FROM activity_log.metrics_daily WHERE day > now() - interval '30 days'"),
    # What redact() checks first. No RETENTION record is read for a range without a retention
    # anchor: the next query is what it cost every redact() before (no index finds them).
    # The writer's row stored before the fill (the filled rows have no chain values).
    ("one row's link: activity_log.verify(id, id) (redact() runs it first)",
     "SELECT * FROM activity_log.verify({chained}, {chained})"),
    ("the trail's RETENTION records (read only by a verify() over a retention anchor)",
     "SELECT count(*) FROM activity_log.events WHERE kind = 'system' AND command = 'RETENTION'"),
]


def day_partitions(psql):
    """A trail that grew over 30 days has a partition per day, as the writer made them (their
    indexes come after the fill: index_day_partitions)."""
    psql("""SET TimeZone = 'UTC'; DO $$ BEGIN FOR d IN 1..31 LOOP
             EXECUTE format('CREATE TABLE activity_log.%I PARTITION OF activity_log.events FOR VALUES FROM (%L) TO (%L)',
                            'events_' || to_char(date_trunc('day', now()) - d * interval '1 day', 'YYYYMMDD'),
                            date_trunc('day', now()) - d * interval '1 day', date_trunc('day', now()) - (d - 1) * interval '1 day');
             END LOOP; END $$""")


def index_day_partitions(psql):
    """The writer indexes each day partition it makes (_index_trail_partition); these were made
    by hand, and without those indexes every query would read the whole trail. Built after the
    fill: one bulk build each instead of index inserts row by row."""
    psql("SELECT count(activity_log._index_trail_partition(inhrelid::regclass)) FROM pg_inherits "
         "WHERE inhparent = 'activity_log.events'::regclass "
         "AND NOT EXISTS (SELECT FROM pg_index WHERE indrelid = inhrelid)")


def timed(cluster, sql, runs=5):
    """Median server round trip of `sql` in ms, from psql's \\timing, after one warm-up run."""
    script = "\\timing on\n" + "\n".join([sql + ";"] * (runs + 1))
    out = subprocess.run([f"{BIN}/psql", "-X", "-q", "-o", "/dev/null", *cluster.conninfo(), "-d", "bench"],
                         input=script, check=True, capture_output=True, text=True).stdout
    times = [float(t) for t in re.findall(r"Time: ([0-9.]+) ms", out)]
    return statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--smoke", action="store_true", help="100 000 rows: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.rows = 100_000
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    try:
        psql("CREATE DATABASE bench", db="postgres")
        psql("CREATE EXTENSION activity_log")
        psql("; ".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, qty int, note text)" for i in range(20)))
        # A row the writer stores (and links into the chain), and today's partitions it makes.
        psql("SELECT activity_log.log_event('bench', '{}')")
        assert psql("SELECT activity_log.flush()") == "t"
        chained = psql("SELECT max(id) FROM activity_log.events WHERE chain IS NOT NULL")
        assert psql(f"SELECT intact FROM activity_log.verify({chained}, {chained})") == "t"
        day_partitions(psql)
        started = time.perf_counter()
        chunk = 1_000_000
        for start in range(1, args.rows + 1, chunk):
            psql(FILL.format(rows=args.rows, start=start, end=min(start + chunk - 1, args.rows)))
        index_day_partitions(psql)
        psql("VACUUM ANALYZE activity_log.events")
        fill_s = time.perf_counter() - started
        # The writer keeps the hourly rollup for the rows it stores; these rows bypassed it.
        rollup_ms = psql("SELECT activity_log.rebuild_rollup()", timing=True) * 1000
        refresh_ms = psql("SELECT activity_log.refresh_metrics()", timing=True) * 1000
        size = psql("SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM pg_partition_tree('activity_log.events')")
        history_rows = psql("SELECT count(*) FROM activity_log.history('t7', '{\"id\": 4242}')")
        lines = [f"# Queries on a trail of {args.rows:,} rows", "",
                 f"Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}.",
                 f"Trail: {size} with indexes, 30 days, filled in {fill_s:.0f} s. "
                 f"Median of 5 runs after one warm-up, client round trip (psql \\timing).", "",
                 "| query | ms |", "|---|---|"]
        for name, sql in QUERIES:
            lines.append(f"| {name} | {timed(cluster, sql.replace('{chained}', chained)):.1f} |")
        lines += ["", f"One row's history returned {history_rows} changes. "
                      f"`refresh_metrics()` (on demand; the writer keeps metrics_daily batch by batch): {refresh_ms:.0f} ms. "
                      f"`rebuild_rollup()` of the whole trail (the rows were inserted by SQL, not by the writer, "
                      f"which keeps the rollup as it stores): {rollup_ms:.0f} ms."]
        plans = psql("EXPLAIN (COSTS OFF) SELECT * FROM activity_log.changes WHERE table_oid = 't7'::regclass "
                     "ORDER BY id DESC LIMIT 100")
        lines += ["", "Plan of the last-100 query:", "", "```", plans, "```"]
        publish("big_trail.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
