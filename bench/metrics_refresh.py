#!/usr/bin/env python3
"""metrics_daily on a big trail, and what keeping it costs the writer's drain.

The trail of bench/big_trail.py (10 million rows over 30 days, inserted by SQL), then:

  - before: the materialized view metrics_daily was until issue 24 (its definition, made here
    as public.old_metrics_daily), refreshed as the writer refreshed it every hour — the whole
    trail, the writer storing nothing meanwhile;
  - now: the writer adds each batch's rows to activity_log.activity_daily in the batch's
    transaction (worker/rollup.rs), so there is no refresh in its loop; refresh_metrics()
    recomputes it from the trail on demand, while the writer goes on;
  - the drain: two pgbench clients commit 20 log_event() records a transaction for 30 s, four
    times, after a CHECKPOINT: alone, and with a session running refresh_metrics() over and
    over, alternately. Today's partition grows by over a million rows a run, to several
    million (a day of that size stalled the writer for 11.6 s with the day-by-day refresh).
    A session samples the ring's counters every 0.2 s: records stored per second, and the
    longest time the writer stored nothing while records were queued.

    bench/metrics_refresh.py [--rows N] [--seconds S] [--smoke] [--installed]
"""
import argparse
import subprocess
import time

from benchlib import BIN, Cluster, install_release, machine, publish
from big_trail import FILL as BIG_TRAIL_FILL, day_partitions, index_day_partitions

# big_trail.py's rows, each with a chain value: the writer continues its hash chain from the
# newest row that has one (chain::link_before, each batch), and without any it would read every
# partition back to front — seconds a batch on this trail, whatever the maintenance does.
FILL = (BIG_TRAIL_FILL.replace("duration_ms, details)", "duration_ms, details, chain)", 1)
        .replace("THEN jsonb_build_object('action', 'login') END\n", "THEN jsonb_build_object('action', 'login') END, '\\x00'::bytea\n", 1))
assert FILL.count("chain") == 1 and FILL.count("x00") == 1

DIR = "/tmp/al-bench-metrics"
PORT = 54461
SETTINGS = ["activity_log.capture_statements = 'none'", "shared_buffers = '2GB'", "max_wal_size = '8GB'",
            "synchronous_commit = off", "maintenance_work_mem = '1GB'"]

OLD_VIEW = """
CREATE MATERIALIZED VIEW old_metrics_daily AS
SELECT date_trunc('day', ts) AS day, kind, category, status,
       count(*) AS events,
       round(count(*) FILTER (WHERE status = 'error')::numeric / count(*), 4) AS error_rate,
       round(avg(duration_ms)::numeric, 3) AS avg_duration_ms,
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms))::numeric, 3) AS p95_duration_ms
  FROM activity_log.events
 GROUP BY 1, 2, 3, 4
WITH NO DATA;
CREATE UNIQUE INDEX old_metrics_daily_key ON old_metrics_daily (day, kind, category, status);
"""

SAMPLER = """
CREATE TEMP TABLE samples (at timestamptz, written bigint, queued bigint);
DO $$ BEGIN
  FOR i IN 1..{n} LOOP
    INSERT INTO samples SELECT clock_timestamp(), records_out, queued_records FROM activity_log.metrics();
    PERFORM pg_sleep(0.2);
  END LOOP;
END $$;
SELECT extract(epoch FROM at) || ' ' || written || ' ' || queued FROM samples ORDER BY at;
"""


def drain(cluster, seconds):
    """Runs the log_event load for `seconds` while sampling the counters; returns (records
    stored per second, longest stall in s, records committed per second)."""
    with open(f"{DIR}/load.sql", "w") as f:
        f.write("SELECT activity_log.log_event('bench', '{\"n\": 1}') FROM generate_series(1, 20);\n")
    load = subprocess.Popen([f"{BIN}/pgbench", "-n", "-c", "2", "-j", "2", "-T", str(seconds), "-f", f"{DIR}/load.sql",
                             *cluster.conninfo(), "bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *cluster.conninfo(), "-d", "bench"]
    out = subprocess.run(cmd, input=SAMPLER.format(n=int(seconds * 5)), check=True, capture_output=True,
                         text=True).stdout
    pgbench = load.communicate()[0]
    tps = float(next(line.split()[2] for line in pgbench.splitlines() if line.startswith("tps = ")))
    samples = [tuple(float(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    # Skip the first second (the load starting).
    samples = [s for s in samples if s[0] >= samples[0][0] + 1]
    rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
    stall, since = 0.0, None
    for at, written, queued in samples:
        if since is not None and written == since[1] and queued > 0:
            stall = max(stall, at - since[0])
        else:
            since = (at, written)
    return rate, stall, tps * 20


def refresher(cluster):
    """A session that runs refresh_metrics() until it is killed."""
    cmd = [f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *cluster.conninfo(), "-d", "bench", "-c",
           "DO $$ BEGIN LOOP PERFORM activity_log.refresh_metrics(); COMMIT; END LOOP; END $$"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="100 000 rows, 5 s of load")
    ap.add_argument("--installed", action="store_true", help="use the installed build (no ./dev install --release)")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.seconds = 100_000, 5
    if not args.installed:
        install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    try:
        psql("CREATE DATABASE bench", db="postgres")
        psql("CREATE EXTENSION activity_log")
        psql("; ".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, qty int, note text)" for i in range(20)))
        assert psql("SELECT activity_log.flush()") == "t"
        day_partitions(psql)
        started = time.perf_counter()
        chunk = 1_000_000
        for start in range(1, args.rows + 1, chunk):
            psql(FILL.format(rows=args.rows, start=start, end=min(start + chunk - 1, args.rows)))
        index_day_partitions(psql)
        psql("VACUUM ANALYZE activity_log.events")
        fill_s = time.perf_counter() - started
        today_rows = psql("SELECT count(*) FROM activity_log.events WHERE ts >= date_trunc('day', now(), 'UTC')")

        # Before: the materialized view, populated once, then refreshed concurrently as the
        # writer did every interval.
        psql(OLD_VIEW)
        old_first_ms = psql("REFRESH MATERIALIZED VIEW old_metrics_daily", timing=True) * 1000
        old_ms = [psql("REFRESH MATERIALIZED VIEW CONCURRENTLY old_metrics_daily", timing=True) * 1000 for _ in range(2)]

        # Now: the first refresh_metrics() counts the rows added by SQL (the writer did not
        # store them); the second finds nothing to change.
        full_ms = [psql("SELECT activity_log.refresh_metrics()", timing=True) * 1000 for _ in range(2)]

        # The drain, alone and beside refresh_metrics(), alternately, after a checkpoint (the
        # fill's own checkpoint would still be writing the trail out).
        psql("CHECKPOINT")
        runs = []
        for beside in [False, True, False, True]:
            rows = psql("SELECT count(*) FROM activity_log.events WHERE ts >= date_trunc('day', now(), 'UTC')")
            other = refresher(cluster) if beside else None
            runs.append((beside, drain(cluster, args.seconds), rows))
            if other:
                other.kill()
                other.wait()
        assert psql("SELECT activity_log.flush()") == "t"
        # What the writer kept batch by batch, against a recompute from the trail: the sums of
        # each key (the writer has not merged the rows of its last few seconds yet).
        per_key = """SELECT day, kind, category, status, sum(events), sum(durations), sum(duration_sum_ms),
                            activity_log._sum_buckets(duration_buckets) FROM {} GROUP BY 1, 2, 3, 4"""
        psql("CREATE TABLE kept AS SELECT * FROM activity_log.activity_daily")
        psql("SELECT activity_log.refresh_metrics()")
        kept, recomputed = per_key.format("kept"), per_key.format("activity_log.activity_daily")
        differing = psql(f"""SELECT count(*) FROM (({kept} EXCEPT ALL {recomputed})
                                                   UNION ALL ({recomputed} EXCEPT ALL {kept})) d""")
        p95 = psql("""SELECT round(max(abs(m.p95_duration_ms / e.p95::numeric - 1)) * 100, 2)
                        FROM activity_log.metrics_daily m
                        JOIN (SELECT date_trunc('day', ts, 'UTC') AS day, kind, category, status,
                                     percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95
                                FROM activity_log.events GROUP BY 1, 2, 3, 4) e USING (day, kind, category, status)
                       WHERE e.p95 > 0""")
        total_rows = psql("SELECT count(*) FROM activity_log.events")
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()

        lines = [f"# metrics_daily on a trail of {args.rows:,} rows", "",
                 f"Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}.",
                 f"Commit measured: {commit}{' plus uncommitted changes in the working tree' if dirty else ''}. "
                 f"Trail: 30 days, {today_rows} rows today (UTC), filled by SQL in {fill_s:.0f} s "
                 "(bench/big_trail.py's rows).", "",
                 "## Refresh", "",
                 "| refresh | ms |", "|---|---|",
                 f"| before: REFRESH MATERIALIZED VIEW (first, empty view) | {old_first_ms:.0f} |",
                 f"| before: REFRESH MATERIALIZED VIEW CONCURRENTLY (the writer's, every hour, in its loop) | {min(old_ms):.0f} / {max(old_ms):.0f} |",
                 f"| now, on demand: `refresh_metrics()` (whole trail; first: counts the rows added by SQL; second: changes nothing) | {full_ms[0]:.0f} / {full_ms[1]:.0f} |",
                 "",
                 "The writer itself runs no refresh: it adds each batch's rows to the rollup in the batch's "
                 f"transaction. At the end ({total_rows} rows in the trail), what it kept batch by batch "
                 f"differs from a recompute from the trail in {differing} keys (day, kind, category, status), "
                 "and every p95 lies within "
                 f"{p95} % of the trail's percentile_disc(0.95).", "",
                 f"## Drain: {args.seconds} s runs of 2 pgbench clients, 20 log_event() records a transaction", "",
                 "| beside it | today's rows at the start | records stored/s | records committed/s | longest stall with records queued (s) |",
                 "|---|---|---|---|---|",
                 *[f"| {'refresh_metrics() over and over' if beside else 'nothing'} "
                   f"| {rows} | {r[0]:.0f} | {r[2]:.0f} | {r[1]:.1f} |" for beside, r, rows in runs],
                 "",
                 "Before, the writer ran the whole-trail REFRESH in its loop: it stored nothing for its "
                 f"{min(old_ms) / 1000:.1f} s (the row above) every hour, and under overflow = wait "
                 "commits blocked once the ring filled. Stalls are sampled every 0.2 s."]
        publish("metrics_refresh.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
