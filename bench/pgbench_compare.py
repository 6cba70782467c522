#!/usr/bin/env python3
"""pgbench tpcb-like side by side: no auditing, activity_log (the four pgbench tables tracked,
default settings), activity_log with the tables tracked durability => 'sync' (records staged
inside each transaction), the reference PL/pgSQL audit trigger on the same tables, and pgaudit
(pgaudit.log = 'write': statement text only, no row images).

One throwaway cluster preloads both activity_log and pgaudit, so every mode runs with the same
settings. For synchronous_commit off and on, the modes are interleaved for several rounds;
medians of TPS and of per-transaction latency p50/p99 (pgbench --log) are reported as ratios to
none. The same with one client (synchronous_commit off), where a core is left for the writer.
After each activity_log run:
  - completeness: the trail holds exactly the committed changes (3 updates and 1 insert per
    transaction, counted from pgbench_history) and nothing was dropped;
  - lag: for every change row, its writer's commit time (track_commit_timestamp) minus the
    audited transaction's commit time, p50/p99/max.
A second phase restarts the cluster with a 1 GB ring and, interleaved with none, runs
activity_log with its writer paused (SIGSTOP): the capture cost alone, i.e. what the backends
pay. The writer is then resumed and the time to store the backlog gives its drain rate. The
same phase runs the transition-table floor: empty AFTER STATEMENT triggers with OLD/NEW TABLE
on the four tables, the core's own cost of the mechanism activity_log's capture builds on.

    bench/pgbench_compare.py [--seconds S] [--rounds R] [--clients C] [--smoke]
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import BIN, FLOOR_TRIGGERS, TABLES, Cluster, create_floor_triggers, install_release, machine, publish

DIR = "/tmp/al-bench-pgbench"
PORT = 54490
SETTINGS = [
    "shared_preload_libraries = 'activity_log, pgaudit'",
    "activity_log.capture_statements = 'none'",
    "pgaudit.log = 'none'",
    "shared_buffers = '512MB'",
    "max_wal_size = '4GB'",
    "synchronous_commit = off",
    "track_commit_timestamp = on",
]
REFERENCE_TRIGGER = """
CREATE TABLE ref_audit (id bigserial, ts timestamptz DEFAULT now(), db_user text DEFAULT current_user,
    txid bigint DEFAULT txid_current(), tbl text, op text, old jsonb, new jsonb);
CREATE INDEX ON ref_audit USING brin (ts);
CREATE FUNCTION ref_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ref_audit (tbl, op, old, new) VALUES (TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
"""
FLOOR = "transition-table floor"
MODES = ["none", "activity_log", "activity_log sync", "trigger", "pgaudit"]
SPARE_CORE_MODES = ["none", "activity_log", "trigger", "pgaudit"]


def pgbench(cluster, seconds, clients, sync_commit):
    """Runs pgbench; returns TPS and per-transaction latency p50 and p99 in ms."""
    with tempfile.TemporaryDirectory() as logs:
        cmd = [f"{BIN}/pgbench", *cluster.conninfo(), "-c", str(clients), "-j", str(clients), "-T", str(seconds),
               "-n", "--log", f"--log-prefix={logs}/tx", "bench"]  # -n: no vacuum (it would truncate history)
        env = dict(os.environ, PGOPTIONS=f"-c synchronous_commit={sync_commit}")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        latencies = []
        for path in glob.glob(f"{logs}/tx*"):
            with open(path) as f:
                latencies += [int(line.split()[2]) for line in f]
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000.0
    return float(re.search(r"tps = ([0-9.]+)", out).group(1)), pick(0.50), pick(0.99)


def set_mode(cluster, mode):
    psql = cluster.psql
    for t in TABLES:
        psql(f"DROP TRIGGER IF EXISTS audit ON {t}")
        for op, _ in FLOOR_TRIGGERS:
            psql(f"DROP TRIGGER IF EXISTS floor_{op} ON {t}")
    psql("DELETE FROM activity_log.tracked_tables; SELECT activity_log._tracking_changed();")
    psql("ALTER SYSTEM SET pgaudit.log = 'none'")
    if mode.startswith("activity_log"):
        durability = "sync" if mode == "activity_log sync" else "async"
        for t in TABLES:
            psql(f"SELECT activity_log.track('{t}', durability => '{durability}')")
    elif mode == "trigger":
        for t in TABLES:
            psql(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION ref_audit()")
    elif mode == "pgaudit":
        psql("ALTER SYSTEM SET pgaudit.log = 'write'")
    elif mode == FLOOR:
        for t in TABLES:
            create_floor_triggers(cluster, t)
    psql("SELECT pg_reload_conf()")
    psql("VACUUM activity_log.durable_queue")  # its own statement: VACUUM cannot run in a transaction block
    psql("TRUNCATE activity_log.events, ref_audit; CHECKPOINT")


def check_trail(cluster, transactions):
    """Completeness (asserted) and lag (returned, seconds: p50, p99, max) of one activity_log run."""
    psql = cluster.psql
    assert psql("SELECT activity_log.flush('10 min')") == "t"
    changes = int(psql("SELECT count(*) FROM activity_log.changes"))
    dropped = int(psql("SELECT dropped_records FROM activity_log.queue"))
    assert changes == 4 * transactions, f"{changes} changes in the trail for {transactions} transactions"
    assert dropped == 0, f"{dropped} records dropped"
    lag = psql("""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) || ' ' ||
                         percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) || ' ' || max(lag)
                    FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - committed_at) AS lag
                            FROM activity_log.events WHERE kind = 'change') s""")
    return tuple(float(x) for x in lag.split())


def writer(cluster, signal):
    pid = cluster.psql("SELECT writer_pid FROM activity_log.queue")
    subprocess.run(["sudo", "kill", f"-{signal}", pid], check=True)
    return pid


def pause_writer(cluster):
    """Stops the writer between transactions: stopped inside one, it would hold back the xmin
    horizon, and the backends would walk ever longer HOT chains (a cost that is not capture's)."""
    for _ in range(50):
        pid = writer(cluster, "STOP")
        busy = cluster.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} "
                            "AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)")
        if busy == "0":
            return
        writer(cluster, "CONT")
        time.sleep(0.1)
    raise RuntimeError("the writer never paused outside a transaction")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="2-second runs, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 2, 1
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    try:
        psql("CREATE DATABASE bench", db="postgres")
        subprocess.run([f"{BIN}/pgbench", "-i", "-q", "-s", "10", *cluster.conninfo(), "bench"],
                       check=True, capture_output=True)
        psql("CREATE EXTENSION activity_log")
        psql(REFERENCE_TRIGGER)
        facts = machine(cluster)
        shmem = int(psql("SELECT size FROM pg_shmem_allocations WHERE name = 'activity_log rings'"))

        runs = {}  # (sync_commit, mode) -> [(tps, p50, p99)]
        lags = []
        for sync_commit in ["off", "on"]:
            for _ in range(args.rounds):
                for m in MODES:
                    set_mode(cluster, m)
                    before = int(psql("SELECT count(*) FROM pgbench_history"))
                    result = pgbench(cluster, args.seconds, args.clients, sync_commit)
                    if m.startswith("activity_log"):
                        lag = check_trail(cluster, int(psql("SELECT count(*) FROM pgbench_history")) - before)
                        lags.append((sync_commit, m) + lag)
                    runs.setdefault((sync_commit, m), []).append(result)

        # Phase 1b: one client, so that the machine has a core to spare (with 4 clients on 2
        # cores every mode is CPU-bound, and the writer's work comes out of the backends' time).
        for _ in range(args.rounds):
            for m in SPARE_CORE_MODES:
                set_mode(cluster, m)
                before = int(psql("SELECT count(*) FROM pgbench_history"))
                runs.setdefault(("one client", m), []).append(pgbench(cluster, args.seconds, 1, "off"))
                if m == "activity_log":
                    check_trail(cluster, int(psql("SELECT count(*) FROM pgbench_history")) - before)

        # Phase 2: the backends' share alone (writer paused), then the writer's drain rate.
        psql("ALTER SYSTEM SET activity_log.buffer_size = '1GB'")
        psql("ALTER SYSTEM SET activity_log.max_databases = 1")
        cluster.restart()
        drains = []
        for _ in range(args.rounds):
            for m in ["none", "activity_log, writer paused", FLOOR]:
                set_mode(cluster, m)
                if m != "activity_log, writer paused":
                    runs.setdefault(("paused", m), []).append(pgbench(cluster, args.seconds, args.clients, "off"))
                    continue
                psql("SELECT activity_log.flush()")
                pause_writer(cluster)
                try:
                    runs.setdefault(("paused", m), []).append(pgbench(cluster, args.seconds, args.clients, "off"))
                    backlog = int(psql("SELECT published_records - written_records FROM activity_log.queue"))
                finally:
                    writer(cluster, "CONT")
                started = time.perf_counter()
                assert psql("SELECT activity_log.flush('10 min')") == "t"
                drains.append((backlog, time.perf_counter() - started))

        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in runs.items()}
        lines = [
            f"# pgbench tpcb-like, scale 10, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, medians",
            "",
            f"Machine: {facts}. Settings: {', '.join(SETTINGS)}.",
            "activity_log at default settings (16 MB ring per database, 4 databases); activity_log sync: the "
            "same with durability => 'sync' (each transaction stages its records in activity_log.durable_queue "
            "before it commits); pgaudit logs statement text only (no row images).",
            "",
        ]
        for sync_commit in ["off", "on"]:
            base = med[(sync_commit, "none")]
            lines += [f"## synchronous_commit = {sync_commit}", "",
                      "| mode | TPS | ratio to none | latency p50 (ms) | latency p99 (ms) |", "|---|---|---|---|---|"]
            for m in MODES:
                tps, p50, p99 = med[(sync_commit, m)]
                lines.append(f"| {m} | {tps:.0f} | {tps / base[0]:.2f}x | {p50:.2f} | {p99:.2f} |")
            lines.append("")
        base = med[("one client", "none")]
        lines += ["## One client, synchronous_commit = off (a core to spare)", "",
                  "| mode | TPS | ratio to none | latency p50 (ms) | latency p99 (ms) |", "|---|---|---|---|---|"]
        for m in SPARE_CORE_MODES:
            tps, p50, p99 = med[("one client", m)]
            lines.append(f"| {m} | {tps:.0f} | {tps / base[0]:.2f}x | {p50:.2f} | {p99:.2f} |")
        lines.append("")
        lines += ["## activity_log: completeness and lag", "",
                  "Every activity_log run: trail rows == 4 x committed transactions, 0 dropped (asserted).",
                  "Lag = the writer's commit time of a change row minus the audited transaction's commit time.", "",
                  "| synchronous_commit | mode | lag p50 (ms) | lag p99 (ms) | lag max (ms) |", "|---|---|---|---|---|"]
        for sync_commit, m, p50, p99, mx in lags:
            lines.append(f"| {sync_commit} | {m} | {p50 * 1000:.1f} | {p99 * 1000:.1f} | {mx * 1000:.1f} |")
        base = med[("paused", "none")][0]
        paused = med[("paused", "activity_log, writer paused")][0]
        floor = med[("paused", FLOOR)][0]
        backlog, seconds = max(drains)
        lines += ["", "## Where the cost is (1 GB ring, synchronous_commit = off)", "",
                  "| mode | TPS | ratio to none |", "|---|---|---|",
                  f"| none | {base:.0f} | 1.00x |",
                  f"| activity_log, writer paused (capture only) | {paused:.0f} | {paused / base:.2f}x |",
                  f"| {FLOOR}: empty statement triggers with OLD/NEW TABLE, no auditing | {floor:.0f} | {floor / base:.2f}x |", "",
                  f"Writer drain of the paused run's backlog: {backlog} records in {seconds:.2f} s = "
                  f"**{backlog / seconds:,.0f} records/s** (median over rounds: "
                  f"{statistics.median(b / s for b, s in drains):,.0f} records/s).",
                  "",
                  f"Shared memory of activity_log at default settings: {shmem / 2**20:.1f} MB "
                  "(pg_shmem_allocations, 'activity_log rings')."]
        publish("pgbench.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
