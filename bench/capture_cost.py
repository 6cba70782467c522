#!/usr/bin/env python3
"""Capture's own cost in instructions: the same pgbench tpcb-like transactions run by one backend
in single-user mode under callgrind, with the four tables untracked and then tracked.

Single-user mode starts no writer, so this is the backends' share alone: setting up the
transition tables, copying the rows out of them and into the ring at commit. Instruction counts
do not move with this VM's timing noise (two runs of one build differ by well under 0.1 %), so
the figure compares builds where a pgbench run cannot. Each run starts from a fresh
`pgbench -i`, so all run the same transactions on the same data; each mode runs N and 2N
transactions, and the difference is what N transactions cost, without the backend's start,
stop and first-use work (loading the tracked tables, say).

    bench/capture_cost.py [--transactions N] [--smoke]
"""
import argparse
import os
import re
import subprocess

from benchlib import BIN, Cluster, fresh_pgbench_tables, install_release, machine, transactions, write_report

DIR = "/tmp/al-bench-capture"
PORT = 54485
SETTINGS = [
    "activity_log.capture_statements = 'none'",
    "activity_log.max_databases = 1",
]
def instructions(cluster, mode, n):
    """Fresh pgbench tables (tracked or not), then n transactions in single-user mode under
    callgrind; returns the instructions executed and the callgrind file."""
    cluster.pg_ctl("start")
    fresh_pgbench_tables(cluster, tracked=mode == "tracked")
    cluster.psql("CHECKPOINT")
    cluster.pg_ctl("stop", "-m", "fast")
    out = f"{DIR}/callgrind.{mode}.{n}"
    run = subprocess.run(
        ["sudo", "-u", "postgres", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         f"{BIN}/postgres", "--single", "-D", f"{DIR}/data", "bench"],
        input=transactions(n), capture_output=True, text=True, check=True)
    if re.search(r"\bERROR:", run.stdout + run.stderr):
        raise RuntimeError(f"a transaction failed in single-user mode:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return int(re.search(r"Collected : (\d+)", run.stderr).group(1)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transactions", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="a few transactions: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.transactions = 20
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE EXTENSION activity_log")
        facts = machine(cluster)
        cluster.pg_ctl("stop", "-m", "fast")
        n = args.transactions
        runs = {(mode, k): instructions(cluster, mode, k * n)
                for mode in ["untracked", "tracked"] for k in [1, 2]}
    finally:
        if os.path.exists(f"{DIR}/data/postmaster.pid"):
            cluster.stop()
    untracked = runs[("untracked", 2)][0] - runs[("untracked", 1)][0]
    tracked = runs[("tracked", 2)][0] - runs[("tracked", 1)][0]
    profile = runs[("tracked", 2)][1]
    per_txn = (tracked - untracked) / n
    lines = [
        f"# Capture's instructions per pgbench transaction ({n} transactions, callgrind)",
        "",
        f"Machine: {facts}. Settings: {', '.join(SETTINGS)}.",
        "One backend in single-user mode (no writer), pgbench tpcb-like at scale 1: three UPDATEs,",
        f"one SELECT and one INSERT per transaction. Each figure is the run of {2 * n} transactions",
        f"minus the run of {n}: what {n} transactions cost, without the backend's start and stop.",
        "",
        f"| tables | instructions for {n} transactions | per transaction |",
        "|---|---|---|",
        f"| untracked | {untracked:,} | {untracked / n:,.0f} |",
        f"| tracked (activity_log.track) | {tracked:,} | {tracked / n:,.0f} |",
        "",
        f"Capture adds **{per_txn:,.0f} instructions per transaction** "
        f"({100 * (tracked - untracked) / untracked:.1f} % on top of an untracked transaction).",
        "",
        f"Where they go: `callgrind_annotate --inclusive=yes {profile}` (kept until the next run).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.smoke:
        write_report("capture_cost.md", report)


if __name__ == "__main__":
    main()
