#!/usr/bin/env python3
"""50 audited databases on a stock cluster (activity_log.max_databases = 4 rings, the stock
max_worker_processes = 8): one pgbench client per database, all at once, against the same
50 databases without the extension, in one cluster, interleaved. Reports throughput as a ratio,
how long after the load the last database's records are stored, and checks that every
transaction's change is in its database's trail (exact counts, nothing dropped).

With 4 rings for 50 databases, most databases publish through their durable_queue and take
turns on the rings (README, "Limits"): this measures what that costs.

    bench/many_databases.py [--databases N] [--seconds S] [--rounds R] [--smoke]
"""
import argparse
import re
import statistics
import subprocess
import sys
import time

from benchlib import BIN, Cluster, install_release, machine, publish

DIR = "/tmp/al-bench-dbs"
PORT = 54500
SETTINGS = ["activity_log.capture_statements = 'none'", "synchronous_commit = off", "max_connections = 200"]
SCRIPT = "/tmp/al-bench-dbs-script.sql"
ROWS = 1000


def setup(cluster, db, audited):
    cluster.psql(f"CREATE DATABASE {db}", db="postgres")
    sql = f"CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
    if audited:
        sql = "CREATE EXTENSION activity_log; " + sql + " SELECT activity_log.track('t');"
    cluster.psql(sql, db=db)


def run_load(cluster, dbs, seconds):
    """One pgbench client per database, all at once; returns {db: transactions}."""
    procs = {
        db: subprocess.Popen([f"{BIN}/pgbench", *cluster.conninfo(), "-n", "-c", "1", "-T", str(seconds),
                              "-f", SCRIPT, db], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for db in dbs
    }
    done = {}
    for db, p in procs.items():
        out = p.communicate()[0]
        assert p.returncode == 0, out
        done[db] = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--databases", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="6 databases, 5 s, one round")
    args = ap.parse_args()
    if args.smoke:
        args.databases, args.seconds, args.rounds = 6, 5, 1
    with open(SCRIPT, "w") as f:
        f.write(f"\\set id random(1, {ROWS})\nUPDATE t SET v = v + 1 WHERE id = :id;\n")
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        audited = [f"a{i}" for i in range(args.databases)]
        plain = [f"n{i}" for i in range(args.databases)]
        for db in audited:
            setup(cluster, db, True)
        for db in plain:
            setup(cluster, db, False)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        tps = {"none": [], "activity_log": []}
        drain = []
        total = {db: 0 for db in audited}
        for _ in range(args.rounds):
            done = run_load(cluster, plain, args.seconds)
            tps["none"].append(sum(done.values()) / args.seconds)
            done = run_load(cluster, audited, args.seconds)
            tps["activity_log"].append(sum(done.values()) / args.seconds)
            started = time.perf_counter()
            for db in audited:
                total[db] += done[db]
                assert cluster.psql("SELECT activity_log.flush('10 min')", db=db) == "t", db
            drain.append(time.perf_counter() - started)
        for db in audited:
            got = cluster.psql("SELECT (SELECT count(*) FROM activity_log.changes WHERE table_name = 't') || ',' || "
                               "(SELECT count(*) FROM activity_log.events WHERE status = 'gap') || ',' || "
                               "(SELECT count(*) FROM activity_log.durable_queue)", db=db)
            assert got == f"{total[db]},0,0", f"{db}: expected {total[db]} changes, no gap, empty queue; got {got}"
        workers = cluster.psql("SHOW max_worker_processes", db="postgres")
        rings = cluster.psql("SHOW activity_log.max_databases", db="postgres")
        none, al = statistics.median(tps["none"]), statistics.median(tps["activity_log"])
        lines = [
            f"# {args.databases} audited databases, one pgbench client each, {args.seconds} s, {args.rounds} round(s), medians",
            "",
            f"Commit {commit}. Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}; "
            f"activity_log.max_databases = {rings} (its default), max_worker_processes = {workers} (PostgreSQL's default).",
            "",
            "| mode | TPS (all databases) | ratio |",
            "|---|---|---|",
            f"| none ({args.databases} databases without the extension) | {none:,.0f} | 1.00x |",
            f"| activity_log, rows of one tracked table per database | {al:,.0f} | {al / none:.2f}x |",
            "",
            f"After the load, every database's records were stored within {statistics.median(drain):.1f} s "
            f"(median of the rounds; `flush()` in each database in turn). "
            f"Trail rows checked: {sum(total.values()):,}, exactly one per transaction in every database; "
            "no gap record, no dropped record, every durable_queue empty.",
        ]
        publish("many_databases.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
