#!/usr/bin/env python3
"""Capture's own cost in instructions: the same pgbench tpcb-like transactions run by one backend
in single-user mode under callgrind, with the four tables untracked, with the transition-table
floor (and with its triggers asking for no transition tables, to take their PL/pgSQL calls out),
and tracked; and one bulk INSERT, UPDATE and DELETE with no auditing, with the transition-table
floor and tracked.

Single-user mode starts no writer, so this is the backends' share alone: setting up the
transition tables, copying the rows out of them and into the ring at commit. Instruction
counts do not move with this VM's timing noise (two runs of one build differ by well under
0.1 %), so the figure compares builds where a pgbench run cannot. Each run starts from fresh
tables, so all run the same statements on the same data.
  - pgbench: each mode runs N and 2N transactions, and the difference is what N transactions
    cost, without the backend's start, stop and first-use work (loading the tracked tables).
  - bulk: each statement's run minus a run of `SELECT 1` in the same mode. The floor's
    transition tables spill to a temporary file beyond work_mem; activity_log keeps them in
    memory. What instructions cannot show is the page faults of that memory (bench/README.md).

    bench/capture_cost.py [--transactions N] [--rows N] [--smoke]
"""
import argparse
import os
import re
import subprocess

from benchlib import (BIN, TABLES, Cluster, bulk_statements, create_floor_triggers, fresh_items, fresh_pgbench_tables,
                      install_release, machine, transactions, publish)

DIR = "/tmp/al-bench-capture"
PORT = 54485
SETTINGS = [
    "activity_log.capture_statements = 'none'",
    "activity_log.max_databases = 1",
    "activity_log.buffer_size = '64MB'",  # a bulk UPDATE's records
]
BULK_MODES = ["none", "floor", "activity_log"]


def single_user(name, sql):
    """Runs `sql` in a single-user backend under callgrind; returns the instructions executed,
    without the rings' exit callback, and the callgrind file. A single-user backend has no
    writer, so at its exit the rings' callback writes every record captured to a spill file
    (with its SHA-256): work the records cost only here, which a server's writer never does
    (it was 40 000 instructions of a pgbench transaction with statements captured)."""
    out = f"{DIR}/callgrind.{name}"
    run = subprocess.run(
        ["sudo", "-u", "postgres", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         f"{BIN}/postgres", "--single", "-D", f"{DIR}/data", "bench"],
        input=sql, capture_output=True, text=True, check=True)
    if re.search(r"\bERROR:", run.stdout + run.stderr):
        raise RuntimeError(f"a statement failed in single-user mode:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    collected = int(re.search(r"Collected : (\d+)", run.stderr).group(1))
    inclusive = subprocess.run(["sudo", "callgrind_annotate", "--inclusive=yes", out],
                               capture_output=True, text=True, check=True).stdout
    exit_spill = re.search(r"^\s*([\d,]+) \([ \d.]+%\)\s+\S*layout::al_rings_exit \[", inclusive, re.M)
    return collected - (int(exit_spill.group(1).replace(",", "")) if exit_spill else 0), out


def prepared(cluster, set_up):
    """Runs `set_up` on the running cluster, then stops it for a single-user run."""
    cluster.pg_ctl("start")
    set_up()
    cluster.psql("CHECKPOINT")
    cluster.pg_ctl("stop", "-m", "fast")


PGBENCH_MODES = ["untracked", "floor", "noop triggers", "tracked"]


def pgbench_instructions(cluster, mode, n):
    """n pgbench transactions on fresh pgbench tables: untracked, with the transition-table floor,
    with the floor's triggers asking for no transition tables, or tracked."""
    def set_up():
        fresh_pgbench_tables(cluster, tracked=mode == "tracked")
        if mode in ("floor", "noop triggers"):
            for t in TABLES:
                create_floor_triggers(cluster, t, transition_tables=mode == "floor")
    prepared(cluster, set_up)
    return single_user(f"{mode.replace(' ', '_')}.{n}", transactions(n))


def bulk_instructions(cluster, mode, op, rows):
    """One bulk statement on a fresh items table (filled first for UPDATE and DELETE)."""
    statements = bulk_statements(rows)

    def set_up():
        fresh_items(cluster, mode)
        if op != "insert":
            cluster.psql(statements["insert"])
            if mode == "activity_log":
                # The writer's transaction storing those rows would keep VACUUM from marking
                # the pages all-visible, and the statement would pay for visibility checks.
                cluster.psql("SELECT activity_log.flush('10 min')")
            cluster.psql("VACUUM ANALYZE items")
    prepared(cluster, set_up)
    return single_user(f"{mode}.{op}", statements[op] + ";\n")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transactions", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--smoke", action="store_true", help="a few transactions and rows: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.transactions, args.rows = 20, 1000
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE EXTENSION activity_log")
        facts = machine(cluster)
        cluster.pg_ctl("stop", "-m", "fast")
        n = args.transactions
        runs = {(mode, k): pgbench_instructions(cluster, mode, k * n)
                for mode in PGBENCH_MODES for k in [1, 2]}
        bulk = {}
        for mode in BULK_MODES:
            prepared(cluster, lambda: fresh_items(cluster, mode))
            idle = single_user(f"{mode}.idle", "SELECT 1;\n")[0]
            for op in ["insert", "update", "delete"]:
                bulk[(mode, op)] = bulk_instructions(cluster, mode, op, args.rows) - idle
    finally:
        if os.path.exists(f"{DIR}/data/postmaster.pid"):
            cluster.stop()
    cost = {mode: runs[(mode, 2)][0] - runs[(mode, 1)][0] for mode in PGBENCH_MODES}
    untracked, tracked = cost["untracked"], cost["tracked"]
    transition_tables = (cost["floor"] - cost["noop triggers"]) / n
    profile = runs[("tracked", 2)][1]
    per_txn = (tracked - untracked) / n
    lines = [
        f"# Capture's instructions per pgbench transaction ({n} transactions, callgrind)",
        "",
        f"Machine: {facts}. Settings: {', '.join(SETTINGS)}.",
        "One backend in single-user mode (no writer), pgbench tpcb-like at scale 1: three UPDATEs,",
        f"one SELECT and one INSERT per transaction. Each figure is the run of {2 * n} transactions",
        f"minus the run of {n}: what {n} transactions cost, without the backend's start and stop,",
        "and without the spill file the rings' exit callback writes at the end of a single-user",
        "session (no writer ran to store the records; a server's writer never spills them).",
        "",
        f"| tables | instructions for {n} transactions | per transaction |",
        "|---|---|---|",
        f"| untracked | {untracked:,} | {untracked / n:,.0f} |",
        f"| tracked (activity_log.track) | {tracked:,} | {tracked / n:,.0f} |",
        "",
        f"Capture adds **{per_txn:,.0f} instructions per transaction** "
        f"({100 * (tracked - untracked) / untracked:.1f} % on top of an untracked transaction).",
        "",
        "The transition-table floor, the core's own cost of the mechanism capture builds on: the",
        "untracked tables with empty AFTER STATEMENT triggers that ask for OLD/NEW TABLE, minus the",
        "same triggers asking for none (their PL/pgSQL calls are no part of the floor):",
        "",
        "| tables | per transaction |",
        "|---|---|",
        f"| untracked, floor triggers | {cost['floor'] / n:,.0f} |",
        f"| untracked, the same triggers without transition tables | {cost['noop triggers'] / n:,.0f} |",
        "",
        f"Transition tables cost **{transition_tables:,.0f} instructions per transaction**; capture "
        f"adds {per_txn - transition_tables:+,.0f} over them.",
        "",
        f"Where they go: `callgrind_annotate --inclusive=yes {profile}` (kept until the next run).",
        "",
        f"## One bulk statement of {args.rows:,} rows (bulk_dml.py's), instructions per row",
        "",
        "Each statement in its own single-user session, minus a session that runs `SELECT 1`. The",
        "floor: empty AFTER STATEMENT triggers with OLD/NEW TABLE (the core filling transition",
        "tables, as activity_log's capture needs).",
        "",
        "| statement | none | transition-table floor | activity_log | activity_log over the floor |",
        "|---|---|---|---|---|",
    ]
    for op in ["insert", "update", "delete"]:
        none, floor, tracked = (bulk[(m, op)] / args.rows for m in BULK_MODES)
        lines.append(f"| {op.upper()} | {none:,.0f} | {floor:,.0f} ({floor / none:.2f}x) | "
                     f"{tracked:,.0f} ({tracked / none:.2f}x) | {tracked - floor:+,.0f} |")
    publish("capture_cost.md", "\n".join(lines) + "\n", args.smoke)


if __name__ == "__main__":
    main()
