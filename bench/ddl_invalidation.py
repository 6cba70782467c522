#!/usr/bin/env python3
"""What one database's DDL costs the backends of another (issue 24, item 5).

Database `churn` runs a temporary-table-heavy workload (each transaction: CREATE TEMP TABLE …
ON COMMIT DROP, an INSERT into it, an UPDATE of a tracked table) while database `bench` runs
pgbench tpcb-like on its four tracked tables. Each backend keeps a copy of tracked_tables and
reloads it (one SPI query of activity_log._tracked()) when it may be stale. The reloads are
counted as calls of _tracked() (track_functions = 'all', pg_stat_user_functions), which every
build has, so builds compare on the same counter.

Modes, interleaved, each round: bench alone; bench beside churn. Medians.

    bench/ddl_invalidation.py [--seconds S] [--rounds R] [--build DIR] [--no-install]
                              [--label L] [--append] [--smoke]

--build DIR installs the release build of another checkout (a `git worktree` of an older
commit, say) instead of this one; --no-install measures whatever is installed. --append adds
the run's section to results/ddl_invalidation.md instead of replacing the file.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time

from benchlib import BIN, HERE, ROOT, Cluster, machine, publish

DIR = "/tmp/al-bench-ddl-invalidation"
PORT = 54491
SETTINGS = [
    "shared_preload_libraries = 'activity_log'",
    "activity_log.capture_statements = 'none'",
    "shared_buffers = '512MB'",
    "max_wal_size = '4GB'",
    "synchronous_commit = off",
    "track_functions = 'all'",
]
BENCH_CLIENTS, CHURN_CLIENTS = 2, 1
CHURN_SCRIPT = """\\set id random(1, 1000)
BEGIN;
CREATE TEMP TABLE scratch (id int, v int) ON COMMIT DROP;
INSERT INTO scratch SELECT g, g FROM generate_series(1, 10) g;
UPDATE hot SET v = v + (SELECT count(*) FROM scratch) WHERE id = :id;
COMMIT;
"""
MODES = ["bench alone", "bench beside churn"]


def pgbench(cluster, db, seconds, clients, script=None):
    """Runs pgbench in `db`; returns its TPS."""
    cmd = [f"{BIN}/pgbench", *cluster.conninfo(), "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-n"]
    if script:
        cmd += ["-f", script]
    out = subprocess.run(cmd + [db], check=True, capture_output=True, text=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("tps = "))
    return float(line.split()[2])


def reloads(cluster, db):
    """Calls of activity_log._tracked() in `db` since its statistics were reset."""
    return int(cluster.psql("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
                            "WHERE schemaname = 'activity_log' AND funcname = '_tracked'", db=db))


def run(cluster, mode, seconds, script):
    for db in ("bench", "churn"):
        cluster.psql("SELECT pg_stat_reset()", db=db)
    churn = {}
    if mode == "bench beside churn":
        def go():
            churn["tps"] = pgbench(cluster, "churn", seconds, CHURN_CLIENTS, script)
        thread = threading.Thread(target=go)
        thread.start()
    tps = pgbench(cluster, "bench", seconds, BENCH_CLIENTS)
    if mode == "bench beside churn":
        thread.join()
    time.sleep(1.5)  # exiting backends flush their function statistics
    return {"tps": tps, "reloads": reloads(cluster, "bench"), "churn_tps": churn.get("tps", 0.0),
            "churn_reloads": reloads(cluster, "churn") if churn else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build", default=ROOT, help="checkout whose release build is installed and measured")
    ap.add_argument("--no-install", action="store_true", help="measure the build installed already")
    ap.add_argument("--label", default="", help="names the build in the report")
    ap.add_argument("--append", action="store_true", help="add to results/ddl_invalidation.md")
    ap.add_argument("--smoke", action="store_true", help="2-second runs, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 2, 1
    commit = subprocess.run(["git", "-C", args.build, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    if not args.no_install:
        subprocess.run([f"{args.build}/dev", "install", "--release"], check=True, stdout=subprocess.DEVNULL)
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        for db in ("bench", "churn"):
            cluster.psql(f"CREATE DATABASE {db}", db="postgres")
            cluster.psql("CREATE EXTENSION activity_log", db=db)
        subprocess.run([f"{BIN}/pgbench", *cluster.conninfo(), "-i", "-q", "-s", "10", "bench"],
                       check=True, capture_output=True)
        for t in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
            cluster.psql(f"SELECT activity_log.track('{t}')")
        cluster.psql("CREATE TABLE hot (id int PRIMARY KEY, v bigint); "
                     "INSERT INTO hot SELECT g, 0 FROM generate_series(1, 1000) g; "
                     "SELECT activity_log.track('hot')", db="churn")
        results = {m: [] for m in MODES}
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(CHURN_SCRIPT)
            script.flush()
            os.chmod(script.name, 0o644)
            for _ in range(args.rounds):
                for m in MODES:
                    results[m].append(run(cluster, m, args.seconds, script.name))
        med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in MODES}
        label = f"{args.label}: " if args.label else ""
        lines = [
            f"## {label}build {commit} ({args.rounds} round(s) of {args.seconds} s, medians)",
            "",
            f"Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}.",
            f"bench: pgbench tpcb-like, scale 10, {BENCH_CLIENTS} clients, the four tables tracked.",
            f"churn: {CHURN_CLIENTS} client, each transaction CREATE TEMP TABLE … ON COMMIT DROP, an INSERT "
            "into it and an UPDATE of a tracked table.",
            "Reloads: calls of activity_log._tracked() (one per reload of a backend's copy of tracked_tables).",
            "",
            "| mode | bench TPS | bench reloads | bench reloads / 1000 txn | churn TPS | churn reloads |",
            "|---|---|---|---|---|---|",
        ]
        for m in MODES:
            r = med[m]
            per = 1000 * r["reloads"] / max(r["tps"] * args.seconds, 1)
            churn_tps = f"{r['churn_tps']:.0f}" if r["churn_tps"] else "—"
            churn_reloads = f"{r['churn_reloads']:.0f}" if r["churn_tps"] else "—"
            lines.append(f"| {m} | {r['tps']:.0f} | {r['reloads']:.0f} | {per:.1f} | {churn_tps} | {churn_reloads} |")
        alone, beside = med["bench alone"]["tps"], med["bench beside churn"]["tps"]
        lines += ["", f"bench beside churn / bench alone: {beside / alone:.2f}x (churn takes CPU of its own on "
                      f"{os.cpu_count()} cores; the reload counts are what this change is about).", ""]
        report = "\n".join(lines)
        path = f"{HERE}/results/ddl_invalidation.md"
        header = "# One database's DDL and the tracked-table copies of another's backends\n\n"
        if args.append and not args.smoke and os.path.exists(path):
            with open(path) as f:
                report = f.read().rstrip("\n") + "\n\n" + report
        else:
            report = header + report
        publish("ddl_invalidation.md", report, args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
