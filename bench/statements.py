#!/usr/bin/env python3
"""Statement auditing at saturation, against pgaudit (issue 30, item 3): pgbench tpcb-like with
no auditing; pgaudit (pgaudit.log = 'write': a log line per write statement); activity_log with
statements only (capture_statements = 'mod', nothing tracked: a trail row per write statement).
Both audit the same four statements of each transaction (three UPDATEs and an INSERT).

One throwaway cluster preloads both (pgbench_compare.py's settings), the modes are interleaved
for several rounds, and the medians of TPS and of each transaction's latency (pgbench --log) are
reported with TPS as a ratio to none, and for activity_log its writer's CPU per transaction
(/proc, until the run's records are stored; a writer that changes during a run is an error).
pgaudit's backends write their log lines themselves (to the server's stderr: no logging
collector, as in Debian's default configuration), so its whole cost is in them and in TPS. After
each activity_log run the trail is checked: exactly the four write statements of each committed
transaction, each naming its tables, nothing dropped.

With --slices, activity_log runs once per round at each activity_log.writer_slice given (how
long its writer works before a 1 ms pause while it keeps up; 0 never pauses), to choose it.

    bench/statements.py [--seconds S] [--rounds R] [--clients C] [--slices MS,...] [--smoke]
"""
import argparse
import os
import statistics
import sys

from benchlib import HAS_PGAUDIT, Cluster, install_release, machine, publish
from latency import STATEMENTS, check_statements, commit, pgbench, quantile, use_mode
from pgbench_compare import SETTINGS, prepare, ticks

DIR = "/tmp/al-bench-statements"
PORT = 54498


def writers(cluster):
    """The pids of activity_log's writers (none without a ring in use)."""
    return sorted(int(p) for p in cluster.psql(
        "SELECT writer_pid FROM activity_log.queue WHERE writer_pid IS NOT NULL").split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--slices", help="activity_log.writer_slice values in ms, comma-separated "
                                     "(default: the setting's default, whatever it is)")
    ap.add_argument("--smoke", action="store_true", help="3-second runs, one round: keeps the script working")
    args = ap.parse_args()
    # mode -> the writer_slice it runs with (None: activity_log is not used; "": its default)
    modes = {"none": None, "pgaudit": None}
    if not args.slices:
        modes[STATEMENTS] = ""
    for s in [str(float(s)) for s in args.slices.split(",")] if args.slices else []:
        modes[f"{STATEMENTS}, writer_slice {s} ms"] = s
    if args.smoke:
        args.seconds, args.rounds = 3, 1
    if not HAS_PGAUDIT:
        raise SystemExit("bench/statements.py compares with pgaudit: install postgresql-15-pgaudit")
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    try:
        prepare(cluster)
        facts = machine(cluster)
        runs = {}  # mode -> [[tps, p50, p99, writer CPU µs per transaction]]
        for _ in range(args.rounds):
            for mode, writer_slice in modes.items():
                if writer_slice:
                    psql(f"ALTER SYSTEM SET activity_log.writer_slice = '{writer_slice}ms'")
                elif writer_slice == "":
                    psql("ALTER SYSTEM RESET activity_log.writer_slice")
                use_mode(cluster, STATEMENTS if writer_slice is not None else mode)
                pids = writers(cluster)
                before_ticks = ticks(pids)
                before = int(psql("SELECT count(*) FROM pgbench_history"))
                tps, latencies, _ = pgbench(cluster, args.seconds, args.clients)
                committed = int(psql("SELECT count(*) FROM pgbench_history")) - before
                if writer_slice is not None:
                    check_statements(cluster, committed)
                if writers(cluster) != pids:
                    raise RuntimeError(f"the writer changed during a run of {mode}: {pids} -> {writers(cluster)}")
                writer_us = (ticks(pids) - before_ticks) * 1e6 / os.sysconf("SC_CLK_TCK") / max(1, committed)
                runs.setdefault(mode, []).append(
                    [tps, quantile(latencies, 0.50), quantile(latencies, 0.99), writer_us])
        slices = " / ".join(f"{s} ms" for s in modes.values() if s) or (
            psql("SHOW activity_log.writer_slice") + ", its default")
        med = {m: [statistics.median(r[i] for r in v) for i in range(4)] for m, v in runs.items()}
        none_tps = med["none"][0]
        lines = [
            f"# Statement auditing at saturation: pgbench tpcb-like, scale 10, {args.clients} clients, "
            f"{args.seconds} s x {args.rounds} rounds, medians",
            "",
            f"Machine: {facts}. Commit: {commit()}. Settings: {', '.join(SETTINGS)}; synchronous_commit = off.",
            "pgaudit: pgaudit.log = 'write' (a log line per write statement, written by the backend to the server's stderr). "
            "activity_log statements: capture_statements = 'mod', nothing tracked (a trail row per write "
            f"statement; activity_log.writer_slice = {slices}). Writer CPU: activity_log's writer's CPU (/proc) while the run lasted, per committed "
            "transaction (the records of a run are stored before the next starts). Every activity_log run: the trail holds exactly the four "
            "write statements of each committed transaction, 0 dropped (asserted).",
            "",
            "| mode | TPS | vs none | p50 ms | p99 ms | writer CPU µs per transaction | TPS of each round |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in modes:
            tps, p50, p99, writer_us = med[mode]
            each = " / ".join(f"{r[0]:.0f}" for r in runs[mode])
            lines.append(f"| {mode} | {tps:.0f} | {tps / none_tps:.2f}x | {p50:.2f} | {p99:.2f} | {writer_us:.1f} | {each} |")
        publish("statements.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
