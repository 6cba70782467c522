#!/usr/bin/env python3
"""Soak: pgbench tpcb-like at full speed against a 1 MB ring in `wait` mode, the writer
terminated (pg_terminate_backend) every minute, and one fast restart half-way. Afterwards the
trail must hold exactly 4 changes per committed transaction (3 updates, 1 insert; counted from
pgbench_history), with nothing dropped and no gap record.

    bench/soak.py [--minutes M] [--kill-every S] [--clients C] [--smoke]

The full run (10 minutes) writes bench/results/soak.md; --smoke (40 s, a kill every 10 s)
only prints the report.
"""
import argparse
import re
import subprocess
import threading
import time

from benchlib import BIN, Cluster, install_release, machine, publish

DIR = "/tmp/al-bench-soak"
PORT = 54493
TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
SETTINGS = [
    "shared_preload_libraries = 'activity_log'",
    "activity_log.capture_statements = 'none'",
    "activity_log.buffer_size = '1MB'",
    "activity_log.overflow = 'wait'",
    "activity_log.overflow_timeout = '10min'",  # commits wait out a writer restart; none fails
    "synchronous_commit = off",
    "shared_buffers = '512MB'",
    "max_wal_size = '4GB'",
]


def writer_pid(cluster):
    return cluster.psql("SELECT coalesce(writer_pid, 0) FROM activity_log.queue")


def kill_writer_every(cluster, seconds, stop, kills):
    """Terminates the writer every `seconds` until `stop` is set; notes each pid killed."""
    while not stop.wait(seconds):
        pid = writer_pid(cluster)
        if pid != "0" and cluster.psql(f"SELECT pg_terminate_backend({pid})") == "t":
            kills.append(pid)


def sample_fill(cluster, stop, samples):
    while not stop.wait(0.5):
        try:
            samples.append(float(cluster.psql(
                "SELECT round(100.0 * used_bytes / capacity_bytes, 1) FROM activity_log.queue")))
        except subprocess.CalledProcessError:
            pass  # the restart


def run_segment(cluster, seconds, clients, kill_every):
    """pgbench for `seconds` while the writer is killed every `kill_every` seconds."""
    stop, kills, fills = threading.Event(), [], []
    threads = [threading.Thread(target=kill_writer_every, args=(cluster, kill_every, stop, kills)),
               threading.Thread(target=sample_fill, args=(cluster, stop, fills))]
    for t in threads:
        t.start()
    cmd = [f"{BIN}/pgbench", *cluster.conninfo(), "-n", "-c", str(clients), "-j", str(clients),
           "-T", str(seconds), "bench"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    stop.set()
    for t in threads:
        t.join()
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    tps = float(re.search(r"tps = ([0-9.]+)", out.stdout).group(1))
    waits = int(cluster.psql("SELECT overflow_waits FROM activity_log.queue"))
    return transactions, tps, kills, max(fills, default=0.0), waits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--kill-every", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.kill_every = 40 / 60, 10

    install_release()
    subprocess.run(["sudo", "rm", "-rf", DIR])
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        psql = cluster.psql
        psql("CREATE DATABASE bench", db="postgres")
        subprocess.run([f"{BIN}/pgbench", *cluster.conninfo(), "-i", "-q", "-s", "10", "bench"],
                       check=True, capture_output=True)
        psql("TRUNCATE pgbench_history")  # before tracking: its TRUNCATE record is not a transaction
        psql("CREATE EXTENSION activity_log")
        for t in TABLES:
            psql(f"SELECT activity_log.track('{t}')")

        half = args.minutes * 30
        started = time.monotonic()
        first = run_segment(cluster, int(half), args.clients, args.kill_every)
        restart_started = time.monotonic()
        cluster.restart()  # fast shutdown: the writer stores the queue before the server stops
        restart_s = time.monotonic() - restart_started
        second = run_segment(cluster, int(half), args.clients, args.kill_every)
        drain_started = time.monotonic()
        assert psql("SELECT activity_log.flush('10 min')") == "t"
        drain_s = time.monotonic() - drain_started
        wall_min = (time.monotonic() - started) / 60

        committed = first[0] + second[0]
        history = int(psql("SELECT count(*) FROM pgbench_history"))
        changes = int(psql("SELECT count(*) FROM activity_log.changes"))
        by_op = psql("SELECT string_agg(op || ' ' || n, ', ' ORDER BY op) FROM "
                     "(SELECT op, count(*) AS n FROM activity_log.changes GROUP BY op) x")
        gaps = int(psql("SELECT count(*) FROM activity_log.events WHERE status = 'gap'"))
        dropped = int(psql("SELECT dropped_records FROM activity_log.queue"))
        kills = len(first[2]) + len(second[2])
        ok = history == committed and changes == 4 * history and dropped == 0 and gaps == 0

        report = f"""# Soak: pgbench with a 1 MB ring, the writer killed every {args.kill_every:.0f} s, one fast restart

Machine: {machine(cluster)}. Release build; settings: {'; '.join(SETTINGS[1:])}.
`bench/soak.py` — pgbench tpcb-like, scale 10, {args.clients} clients, {args.minutes * 60:.0f} s in two halves with
a fast restart between them; `pg_terminate_backend(writer_pid)` every {args.kill_every:.0f} s.

| | first half | second half |
|---|---|---|
| TPS | {first[1]:.0f} | {second[1]:.0f} |
| transactions committed (pgbench) | {first[0]} | {second[0]} |
| writer terminated (times) | {len(first[2])} | {len(second[2])} |
| highest ring fill seen | {first[3]:.1f} % | {second[3]:.1f} % |
| commits that waited for room (overflow_waits) | {first[4]} | {second[4]} |

| check | value | expected |
|---|---|---|
| transactions committed | {committed} | = rows in pgbench_history: {history} |
| row changes in the trail | {changes} ({by_op}) | 4 × {history} = {4 * history} |
| dropped records | {dropped} | 0 |
| gap records | {gaps} | 0 |
| **result** | **{'exact' if ok else 'MISMATCH'}** | |

Writer terminated {kills} times in all; the fast restart took {restart_s:.1f} s; after pgbench stopped,
the last records were stored {drain_s:.1f} s later. Wall time {wall_min:.1f} min.
"""
        publish("soak.md", report, args.smoke)
        if not ok:
            raise SystemExit("soak: the trail does not match the committed transactions")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
