#!/usr/bin/env python3
"""pgbench tpcb-like side by side: no auditing, activity_log (the four pgbench tables tracked),
the reference PL/pgSQL audit trigger on the same tables, and pgaudit (pgaudit.log = 'write':
statement text only, no row images).

One throwaway cluster preloads both activity_log and pgaudit, so every mode runs with the same
settings; modes are interleaved for several rounds and medians reported as ratios to none.
After each activity_log run the trail must hold exactly the committed changes (3 updates and
1 insert per transaction) and nothing may have been dropped.

    bench/pgbench_compare.py [--seconds S] [--rounds R] [--clients C] [--smoke]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = "/usr/lib/postgresql/15/bin"
DIR = "/tmp/al-bench-pgbench"
PORT = 54490
TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
SETTINGS = [
    "shared_preload_libraries = 'activity_log, pgaudit'",
    "activity_log.capture_statements = 'none'",
    "pgaudit.log = 'none'",
    "shared_buffers = '512MB'",
    "max_wal_size = '4GB'",
    "synchronous_commit = off",
]


def psql(sql, db="bench"):
    cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", DIR, "-p", str(PORT),
           "-U", "postgres", "-d", db, "-c", sql]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def pgbench(seconds, clients):
    cmd = [f"{BIN}/pgbench", "-h", DIR, "-p", str(PORT), "-U", "postgres", "-c", str(clients), "-j", str(clients),
           "-T", str(seconds), "-n", "bench"]  # -n: no vacuum (it would truncate pgbench_history)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    lat = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))
    return tps, lat


def set_mode(mode):
    for t in TABLES:
        psql(f"DROP TRIGGER IF EXISTS audit ON {t}")
    psql("DELETE FROM activity_log.tracked_tables; SELECT activity_log._tracking_changed();")
    psql("ALTER SYSTEM SET pgaudit.log = 'none'")
    if mode == "activity_log":
        for t in TABLES:
            psql(f"SELECT activity_log.track('{t}')")
    elif mode == "trigger":
        for t in TABLES:
            psql(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION ref_audit()")
    elif mode == "pgaudit":
        psql("ALTER SYSTEM SET pgaudit.log = 'write'")
    psql("SELECT pg_reload_conf()")
    psql("TRUNCATE activity_log.events, ref_audit; CHECKPOINT")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 2, 1
    subprocess.run([f"{ROOT}/dev", "install", "--release"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([f"{ROOT}/dev", "start-cluster", DIR, str(PORT)] + SETTINGS, check=True)
    try:
        psql("CREATE DATABASE bench", db="postgres")
        subprocess.run([f"{BIN}/pgbench", "-i", "-q", "-s", "10", "-h", DIR, "-p", str(PORT), "-U", "postgres", "bench"],
                       check=True, capture_output=True)
        psql("CREATE EXTENSION activity_log")
        psql("""CREATE TABLE ref_audit (id bigserial, ts timestamptz DEFAULT now(), db_user text DEFAULT current_user,
                    txid bigint DEFAULT txid_current(), tbl text, op text, old jsonb, new jsonb);
                CREATE INDEX ON ref_audit USING brin (ts);
                CREATE FUNCTION ref_audit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO ref_audit (tbl, op, old, new) VALUES (TG_TABLE_NAME, TG_OP,
                        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
                    RETURN NULL;
                END $$;""")
        modes = ["none", "activity_log", "trigger", "pgaudit"]
        runs = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                set_mode(m)
                before = int(psql("SELECT count(*) FROM pgbench_history"))
                tps, lat = pgbench(args.seconds, args.clients)
                if m == "activity_log":
                    assert psql("SELECT activity_log.flush('10 min')") == "t"
                    txns = int(psql("SELECT count(*) FROM pgbench_history")) - before
                    changes = int(psql("SELECT count(*) FROM activity_log.changes"))
                    dropped = int(psql("SELECT dropped_records FROM activity_log.queue"))
                    assert changes == 4 * txns, f"{changes} changes for {txns} transactions"
                    assert dropped == 0, f"{dropped} records dropped"
                runs[m].append((tps, lat))
        med = {m: (statistics.median(r[0] for r in runs[m]), statistics.median(r[1] for r in runs[m])) for m in modes}
        lines = [
            f"# pgbench tpcb-like, scale 10, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, medians",
            "",
            f"Machine: {os.cpu_count()} cores; PostgreSQL {psql('SHOW server_version')}; settings: {', '.join(SETTINGS)}.",
            "pgaudit logs statement text only (no row images).",
            "",
            "| mode | TPS | ratio to none | latency avg (ms) |",
            "|---|---|---|---|",
        ]
        for m in modes:
            lines.append(f"| {m} | {med[m][0]:.0f} | {med[m][0] / med['none'][0]:.2f}x | {med[m][1]:.2f} |")
        report = "\n".join(lines) + "\n"
        print(report)
        if not args.smoke:
            os.makedirs(f"{HERE}/results", exist_ok=True)
            with open(f"{HERE}/results/pgbench.md", "w") as f:
                f.write(report)
    finally:
        subprocess.run(["sudo", "-u", "postgres", f"{BIN}/pg_ctl", "-D", f"{DIR}/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
