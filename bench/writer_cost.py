#!/usr/bin/env python3
"""The writer's cost in instructions per stored row: the whole cluster runs under callgrind
(valgrind follows every forked process), N pgbench tpcb-like transactions are queued while a
session holds the trail locked, and the writer's own profile is read once it has stored them.

Timings of the writer move by ±10 % on this VM; its instruction count for the same rows moves
by well under 1 %, so this compares builds. One caveat: valgrind hides the CPU's SHA
extensions, so SHA-256 runs the `sha2` crate's portable code here and is shown apart (on the
real CPU it is a few per cent of the writer).

With --row-key-index the trail's index for one row's history (`row_key_idx`, a btree on
`(table_oid, jsonb_hash_extended(row_key, 0))`) is replaced, on every partition, before the
rows are queued: by a hash index on the key's hash, by a BRIN bloom index on it, or by nothing;
what each would cost the writer per row (issue 30, item 4). Neither stand-in has the btree's
table_oid column, and health() reads them as other kinds of trail index (_trail_index_kind);
BRIN summarizes a block range later (autovacuum), not as rows come, so that work is not the
writer's (the first range, which BRIN summarizes when it builds an index, is desummarized). Its report is writer_cost_row_key_<variant>.md.

With --statements the tables are not tracked and the writer stores statement records instead
(`capture_statements = 'mod'`: the four writes of each transaction), what statement auditing
costs the writer (issue 30, item 3); its report is writer_cost_statements.md.

    bench/writer_cost.py [--transactions N] [--statements] [--row-key-index VARIANT] [--smoke]
"""
import argparse
import os
import re
import subprocess
import time

from benchlib import BIN, Cluster, fresh_pgbench_tables, install_release, machine, transactions, publish
from pgbench_compare import drop_trail_indexes

DIR = "/tmp/al-bench-writer-cost"
PORT = 54486
SETTINGS = [
    "activity_log.max_databases = 1",
    "activity_log.buffer_size = '64MB'",
]
# Inclusive instructions of these functions in the writer's profile.
PARTS = {
    "drain": "activity_log::worker::drain::drain",
    "Trail::flush (heap, indexes, WAL)": "activity_log::worker::store::Trail::flush",
    # Every SHA-256 block the writer compresses: each column's digest and the chain's link.
    "SHA-256 (portable code under valgrind)": "sha2::sha256::compress256",
    # Rows::from_batch is inlined in a release build; push is its work per record.
    "Rows::push (decode, jsonb)": "activity_log::worker::map::Rows::push",
    "Rollups::store (activity_hourly, activity_daily)": "activity_log::worker::rollup::Rollups::store",
}

# What --row-key-index puts in row_key_idx's place on each partition (sql/bootstrap.sql has the
# btree); "none" leaves nothing.
ROW_KEY_INDEXES = {
    "btree": None,
    "hash": "USING hash (jsonb_hash_extended(row_key, 0)) WHERE kind = 'change'",
    "bloom": "USING brin (jsonb_hash_extended(row_key, 0) int8_bloom_ops) WHERE kind = 'change'",
    "none": "",
}


def replace_row_key_index(cluster, variant):
    """Puts `variant` in place of row_key_idx on every partition of the trail."""
    definition = ROW_KEY_INDEXES[variant]
    if definition is None:
        return
    drop_trail_indexes(cluster, ["row_key_idx"])
    if definition:
        for n, part in enumerate(
                cluster.psql("SELECT relid FROM pg_partition_tree('activity_log.events') WHERE isleaf").split()):
            schema = part.split(".")[0]
            cluster.psql(f"CREATE INDEX row_key_stand_in_{n} ON {part} {definition}")
            if variant == "bloom":
                # Built on an empty (or nearly empty) partition, BRIN summarizes its first block
                # range, and every insert there rewrites that range's bloom filter. Left
                # unsummarized, a range costs inserts nothing until VACUUM summarizes it (not the
                # writer's work), which is what a trail would do.
                cluster.psql(f"SELECT brin_desummarize_range('{schema}.row_key_stand_in_{n}', 0)")


def inclusive(profile):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", profile],
                         check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(.*?\)\s+\?\?\?:(\S+)", line)
        if m and m.group(2) in PARTS.values():
            found.setdefault(m.group(2), int(m.group(1).replace(",", "")))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transactions", type=int, default=2000)
    ap.add_argument("--statements", action="store_true",
                    help="statement records of untracked tables instead of row changes")
    ap.add_argument("--row-key-index", choices=list(ROW_KEY_INDEXES), default="btree",
                    help="what stands in for row_key_idx, the btree one row's history uses")
    ap.add_argument("--smoke", action="store_true", help="a few transactions: keeps the script working")
    args = ap.parse_args()
    if args.statements and args.row_key_index != "btree":
        ap.error("--row-key-index: statement records have no row key")
    if args.smoke:
        args.transactions = 20
    n = args.transactions
    install_release()
    settings = [f"activity_log.capture_statements = '{'mod' if args.statements else 'none'}'", *SETTINGS]
    # What each transaction leaves in the trail: its four row changes, or its four writes
    # (three UPDATEs and an INSERT) as statement records.
    stored = ("kind = 'statement' AND command IN ('UPDATE', 'INSERT') AND relations IS NOT NULL" if args.statements
              else "kind = 'change'")
    what = "statement records" if args.statements else "rows"
    cluster = Cluster(DIR, PORT, settings)
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE EXTENSION activity_log")
        fresh_pgbench_tables(cluster, tracked=not args.statements)
        facts = machine(cluster)
        # Stored before the stop: records left in the ring would be kept across it and put back
        # at the next start, and the writer that stores them hands the ring to another database.
        # (Having stored track()'s records, the writer has made the day partitions too.)
        assert cluster.psql("SELECT activity_log.flush('10 min')") == "t"
        replace_row_key_index(cluster, args.row_key_index)
        # The setup's own statements (pgbench -i's) are in the trail already.
        before = cluster.psql("SELECT coalesce(max(id), 0) FROM activity_log.events")
    finally:
        cluster.pg_ctl("stop", "-m", "fast")

    postmaster = subprocess.Popen(
        ["sudo", "-u", "postgres", "valgrind", "--tool=callgrind", f"--callgrind-out-file={DIR}/callgrind.%p",
         f"{BIN}/postgres", "-D", f"{DIR}/data"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locker = None
    try:
        for _ in range(300):
            if subprocess.run([f"{BIN}/pg_isready", "-q", *cluster.conninfo()]).returncode == 0:
                break
            time.sleep(1)
        assert cluster.psql("SELECT activity_log.flush('10 min')") == "t"
        # The launcher gives the database its ring (and writer) at start; under valgrind that
        # takes a while, and flush() has nothing to wait for before it.
        writer = ""
        for _ in range(600):
            writer = cluster.psql("SELECT coalesce(max(writer_pid), 0) FROM activity_log.queue")
            if writer not in ("", "0"):
                break
            time.sleep(1)
        assert writer not in ("", "0"), "no writer started"
        locker = subprocess.Popen(
            [f"{BIN}/psql", "-X", "-q", *cluster.conninfo(), "-d", "bench", "-c",
             "BEGIN; LOCK activity_log.events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3600)"],
            env={**os.environ, "PGAPPNAME": "locker"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *cluster.conninfo(), "-d", "bench"],
                       input=transactions(n), text=True, check=True, stdout=subprocess.DEVNULL)
        cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'")
        assert cluster.psql("SELECT activity_log.flush('60 min')") == "t"
        rows = int(cluster.psql(f"SELECT count(*) FROM activity_log.events WHERE id > {before} AND {stored}"))
        assert rows == 4 * n, f"expected {4 * n} {what}, found {rows}"
        if ROW_KEY_INDEXES[args.row_key_index] is not None:
            # A partition the writer made after the swap (past midnight) has the btree again.
            btrees = cluster.psql(f"""SELECT count(*) FROM pg_partition_tree('activity_log.events') p
                                       JOIN pg_index i ON i.indrelid = p.relid
                                      WHERE p.isleaf AND activity_log._trail_index_kind(i.indexrelid) = 'events_row_key_idx'
                                        AND EXISTS (SELECT FROM activity_log.events e
                                                     WHERE e.tableoid = p.relid AND e.id > {before})""")
            assert btrees == "0", "the rows went to a partition with row_key_idx"
    finally:
        if locker:
            locker.kill()
        cluster.pg_ctl("stop", "-m", "fast")
        postmaster.wait(timeout=600)
    parts = inclusive(f"{DIR}/callgrind.{writer}")
    # A part the profile does not name (inlined or renamed) would read as 0 instructions.
    missing = [symbol for symbol in PARTS.values() if symbol not in parts]
    if missing:
        raise SystemExit(f"writer_cost.py: not in the writer's profile: {', '.join(missing)}")
    drain = parts[PARTS["drain"]]
    sha = parts.get(PARTS["SHA-256 (portable code under valgrind)"], 0)
    lines = [
        f"# The writer's instructions per stored row ({n} pgbench transactions, {4 * n} {what}, callgrind)",
        "",
        f"Machine: {facts}. Settings: {', '.join(settings)}.",
        *([] if args.row_key_index == "btree" else [
            f"In place of row_key_idx on each partition: {ROW_KEY_INDEXES[args.row_key_index] or 'nothing'}."]),
        f"The cluster runs under valgrind; the writer stores the {what} of pgbench tpcb-like",
        "transactions (scale 1) queued while the trail was locked. Inclusive instructions in the",
        "writer's profile:",
        "",
        "| part | instructions | per row |",
        "|---|---|---|",
    ]
    for label, symbol in PARTS.items():
        count = parts.get(symbol, 0)
        lines.append(f"| {label} | {count:,} | {count / (4 * n):,.0f} |")
    lines += [
        "",
        f"The writer spends **{(drain - sha) / (4 * n):,.0f} instructions per row** without SHA-256 "
        f"({drain / (4 * n):,.0f} with its portable code).",
        "",
        f"Where they go: `callgrind_annotate --inclusive=yes {DIR}/callgrind.{writer}` (kept until the next run).",
    ]
    name = ("writer_cost_statements" if args.statements else "writer_cost") + (
        "" if args.row_key_index == "btree" else f"_row_key_{args.row_key_index}")
    publish(f"{name}.md", "\n".join(lines) + "\n", args.smoke)


if __name__ == "__main__":
    main()
