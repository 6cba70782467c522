#!/usr/bin/env python3
"""The activity monitor (monitor/) on big_trail.py's trail: 10 million rows over 30 days.

Times, as a browser would see them (HTTP round trip to the monitor, release build, on this
machine), the median of 5 after one warm-up: the Activity page's first page (200 rows), each
filter's first page, the next keyset page, one record, the Change log, Health, Analytics and
/metrics; then the CSV export of 1 000 000 rows (records/s, read as fast as the client can). The
goals of issue 31: every first page under 200 ms, the export at 100 000 rows/s or more.

    bench/monitor.py [--rows N] [--export-rows N] [--smoke]
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

from benchlib import ROOT, Cluster, install_release, machine, publish
from big_trail import FILL, day_partitions, index_day_partitions

DIR = "/tmp/al-bench-monitor"
PORT = 54470
HTTP_PORT = 54471
SETTINGS = ["activity_log.capture_statements = 'none'", "shared_buffers = '2GB'", "max_wal_size = '8GB'",
            "synchronous_commit = off", "maintenance_work_mem = '1GB'"]

# (what, query string) of the Activity page's filters; the values match big_trail.py's rows.
FILTERS = [
    ("first page, no filter", ""),
    ("kind = change", "kind=change"),
    ("kind = event", "kind=event"),
    ("category = authentication", "category=authentication"),
    ("status = error", "status=error"),
    ("severity = error", "severity=error"),
    ("user = user7 (1 row in 50)", "user=user7"),
    ("actor = web:42 (1 row in 1 500)", "actor=web:42"),
    ("table = t7", "table=t7"),
    ("table = public.t7", "table=public.t7"),
    ("query contains 'qty'", "q=qty"),
    ("kind = change, table = t7, user = user7", "kind=change&table=t7&user=user7"),
    ("from: the last hour", "from=HOUR_AGO"),
    ("from / to: one day, 15 days ago", "from=DAY15&to=DAY14"),
]


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (path, r.status, body[:300])
    return body


def timed(conn, path, runs=5):
    get(conn, path)  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        get(conn, path)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--export-rows", type=int, default=1_000_000)
    ap.add_argument("--smoke", action="store_true", help="100 000 rows, 20 000 exported: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.export_rows = 100_000, 20_000
    install_release()
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "activity_log_monitor"], check=True, cwd=ROOT)
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    monitor = None
    try:
        psql("CREATE DATABASE bench", db="postgres")
        psql("CREATE EXTENSION activity_log")
        psql("CREATE ROLE monitor LOGIN; GRANT activity_log_reader TO monitor")
        psql("; ".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, qty int, note text)" for i in range(20)))
        assert psql("SELECT activity_log.flush()") == "t"
        day_partitions(psql)
        started = time.perf_counter()
        chunk = 1_000_000
        for start in range(1, args.rows + 1, chunk):
            psql(FILL.format(rows=args.rows, start=start, end=min(start + chunk - 1, args.rows)))
        index_day_partitions(psql)
        psql("VACUUM ANALYZE activity_log.events")
        psql("SELECT activity_log.rebuild_rollup()")
        fill_s = time.perf_counter() - started

        monitor = subprocess.Popen([os.path.join(ROOT, "target", "release", "activity_log_monitor"),
                                    "--url", f"postgresql:///bench?host={DIR}&port={PORT}&user=monitor",
                                    "--listen", f"127.0.0.1:{HTTP_PORT}"], stdout=subprocess.DEVNULL)
        conn = None
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=600)
                get(conn, "/healthz")
                break
            except OSError:
                conn = None
                time.sleep(0.1)
        assert conn, "the monitor did not start"
        stamps = dict(zip(["HOUR_AGO", "DAY15", "DAY14"], psql(
            "SET TimeZone = 'UTC'; SELECT (now() - interval '1 hour')::text, (now() - interval '15 days')::text, "
            "(now() - interval '14 days')::text").split("|")))

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        lines = [f"# The activity monitor on a trail of {args.rows:,} rows", "",
                 f"Commit {commit}. Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}. The monitor's release build, "
                 f"as a role with only activity_log_reader.",
                 f"Trail: big_trail.py's rows (30 days), filled in {fill_s:.0f} s. HTTP round trip, median of 5 "
                 f"after one warm-up; goal: under 200 ms.", "",
                 "| Activity page (`/api/activity`, 200 rows) | rows | ms |", "|---|---|---|"]
        for name, q in FILTERS:
            for k, v in stamps.items():
                q = q.replace(k, urllib.parse.quote(v))
            path = "/api/activity?" + q
            rows = len(json.loads(get(conn, path))["rows"])
            lines.append(f"| {name} | {rows} | {timed(conn, path):.1f} |")
        before = str(json.loads(get(conn, "/api/activity"))["next_before"])
        lines.append(f"| next page (`before={before}`) | 200 | {timed(conn, '/api/activity?before=' + before):.1f} |")
        some_id = psql("SELECT id FROM activity_log.events WHERE kind = 'change' ORDER BY id DESC OFFSET 1000 LIMIT 1")
        lines += ["", "| page | ms |", "|---|---|"]
        for name, path in [
            ("one record (`/api/activity/ID`)", f"/api/activity/{some_id}"),
            ("Change log: tables", "/changes"),
            ("Change log: latest changes of public.t7", "/changes?table=public.t7"),
            ("Change log: a row's history", "/changes?table=public.t7&key=%7B%22id%22%3A4242%7D"),
            ("Health & pipeline", "/health"),
            ("Analytics (24 hours by hour)", "/analytics"),
            ("Trigger migration", "/migration"),
            ("/metrics", "/metrics"),
        ]:
            lines.append(f"| {name} | {timed(conn, path):.1f} |")

        # The export: newest first, read until export_rows lines (the trail's fields hold no newline).
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=600)
        t = time.perf_counter()
        conn.request("GET", "/export.csv")
        r = conn.getresponse()
        assert r.status == 200
        seen = -1  # the header
        nbytes = 0
        while seen < args.export_rows:
            block = r.read1(1 << 20)
            if not block:
                break
            seen += block.count(b"\n")
            nbytes += len(block)
        took = time.perf_counter() - t
        conn.close()
        rss = 0
        with open(f"/proc/{monitor.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) // 1024
        lines += ["", f"CSV export (`/export.csv`, every column, newest first): {seen:,} rows, "
                      f"{nbytes / 2**20:.0f} MiB in {took:.2f} s = **{seen / took:,.0f} rows/s** "
                      f"(goal: 100 000). The monitor's peak resident memory: {rss} MiB."]
        publish("monitor.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        if monitor:
            monitor.terminate()
            monitor.wait()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
