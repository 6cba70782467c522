#!/usr/bin/env python3
"""Bulk DML on a 200 000-row table: no auditing vs activity_log vs a PL/pgSQL audit trigger,
plus the floor of activity_log's mechanism (empty statement triggers with transition tables).
INSERT … SELECT, UPDATE, DELETE, then COPY FROM a server file of the same rows into a fresh
table like it and into a hash-partitioned one (4 partitions): a COPY into a partitioned table
whose root has a transition table inserts row by row, not in batches.

One throwaway cluster (release build), the same settings for every mode, modes interleaved
(none, activity_log, trigger, none, ...) for several rounds; medians and ratios to `none`.
Each timing is psql's \\timing of one statement in autocommit (statement and commit, as the
client sees them); a mode's three statements run in one session, so no backend start is timed.
activity_log's writer stores the rows after the commit, in its own process: the script waits for
it between statements and reports that drain time separately, so that on a small
machine no statement is timed against the writer's work on the previous one.

    bench/bulk_dml.py [--rows N] [--rounds R] [--smoke]
"""
import argparse
import statistics
import sys

from benchlib import (REFERENCE_TRIGGER, Cluster, bulk_statements, create_floor_triggers, fresh_items, install_release,
                      machine, publish)

DIR = "/tmp/al-bench-bulk"
PORT = 54480
SETTINGS = [
    "activity_log.capture_statements = 'none'",
    "activity_log.buffer_size = '512MB'",
    "activity_log.max_databases = 1",
    "shared_buffers = '512MB'",
    "max_wal_size = '4GB'",
    "synchronous_commit = off",
]


CLUSTER = None
DATA = f"{DIR}/items.copy"  # written by the server (COPY … TO) once the cluster is up
# COPY's targets: fresh, so that no dead rows of the DELETE are in the way (a unique index
# checks them). items_c like items, items_p hash-partitioned.
COPY_TABLES = """DROP TABLE IF EXISTS items_c, items_p;
CREATE TABLE items_c (id int PRIMARY KEY, name text, qty int, price numeric(10,2), updated_at timestamptz);
CREATE TABLE items_p (id int PRIMARY KEY, name text, qty int, price numeric(10,2), updated_at timestamptz)
    PARTITION BY HASH (id);
""" + "".join(f"CREATE TABLE items_p{k} PARTITION OF items_p FOR VALUES WITH (MODULUS 4, REMAINDER {k});\n"
              for k in range(4))
OPERATIONS = ["insert", "update", "delete", "copy", "copy_partitioned"]


def statements(rows):
    """The timed statements, in order: bulk_statements, then the COPYs."""
    return {**bulk_statements(rows), "copy": f"COPY items_c FROM '{DATA}'", "copy_partitioned": f"COPY items_p FROM '{DATA}'"}


def psql(sql):
    return CLUSTER.psql(sql)


def setup_mode(mode):
    psql("TRUNCATE ref_audit")
    fresh_items(CLUSTER, mode)  # tracked, or with the floor's triggers
    psql(COPY_TABLES)
    for table in ["items_c", "items_p"]:
        if mode == "activity_log":
            psql(f"SELECT activity_log.track('{table}')")
        elif mode == "floor":
            create_floor_triggers(CLUSTER, table)
    if mode == "trigger":
        for table in ["items", "items_c", "items_p"]:
            psql(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION ref_audit()")
    psql("CHECKPOINT")


def run_mode(mode, rows):
    setup_mode(mode)
    flush = "SELECT activity_log.flush('10 min')"
    timed = []
    for sql in statements(rows).values():
        timed.append(sql)
        if mode == "activity_log":
            # The writer stores the statement's rows after its commit, in its own process; wait
            # for it so that the next statement is not timed against the writer's work.
            timed.append(flush)
    times = iter(CLUSTER.timed_session(timed))
    t = {"drain": 0.0}
    for op in statements(rows):
        t[op] = next(times)
        if mode == "activity_log":
            t["drain"] += next(times)
    if mode == "activity_log":
        captured = int(psql("SELECT count(*) FROM activity_log.changes WHERE table_name IN ('items', 'items_c', 'items_p')"))
        assert captured == 5 * rows, f"expected {5 * rows} captured rows, found {captured}"
        psql("TRUNCATE activity_log.events")
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)  # this VM moves single timings by ±15 %
    ap.add_argument("--smoke", action="store_true", help="a few thousand rows, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.rounds = 5000, 1
    global CLUSTER
    install_release()
    CLUSTER = Cluster(DIR, PORT, SETTINGS)
    try:
        CLUSTER.psql("CREATE DATABASE bench", db="postgres")
        psql("CREATE EXTENSION activity_log")
        psql(REFERENCE_TRIGGER)
        psql(f"COPY (SELECT g, 'item ' || g, g % 100, g / 7.0, now() FROM generate_series(1, {args.rows}) g) TO '{DATA}'")
        modes = ["none", "activity_log", "trigger", "floor"]
        results = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                results[m].append(run_mode(m, args.rows))
        med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in modes}
        lines = [
            f"# Bulk DML, {args.rows} rows, {args.rounds} round(s), medians",
            "",
            f"Machine: {machine(CLUSTER)}. Settings: {', '.join(SETTINGS)}.",
            "",
            "| operation | none (s) | activity_log (s) | ratio | trigger (s) | ratio | transition-table floor (s) | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for op in OPERATIONS:
            n, a, tr, fl = med["none"][op], med["activity_log"][op], med["trigger"][op], med["floor"][op]
            lines.append(f"| {op} | {n:.3f} | {a:.3f} | {a / n:.2f}x | {tr:.3f} | {tr / n:.2f}x | {fl:.3f} | {fl / n:.2f}x |")
        drain = med["activity_log"]["drain"]
        lines += ["", f"activity_log writer drain of the five statements' rows: {drain:.2f} s "
                      f"({5 * args.rows / max(drain, 1e-9):,.0f} records/s)."]
        publish("bulk_dml.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        CLUSTER.stop()


if __name__ == "__main__":
    sys.exit(main())
