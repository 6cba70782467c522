#!/usr/bin/env python3
"""Where pgbench's throughput goes beyond the CPU that auditing adds: the time of each of
pgbench's statements (pg_stat_statements, lock waits included) and how busy the machine is,
with no auditing, with activity_log, and with three variants that each take one suspect away:

  - the writer paused (SIGSTOP outside a transaction): capture alone, nothing stored meanwhile;
  - a trail with only its primary key (the secondary indexes dropped for the run): the writer
    stores with half the work;
  - the writer at SCHED_IDLE: it only runs on a CPU nothing else wants;
  - no auditing, but a session that stores trail rows the way PostgreSQL would with none of
    activity_log's code: every 50 ms, four rows (of a trail recorded beforehand) per
    transaction committed meanwhile, with INSERT ... SELECT into a table with the trail's
    columns, constraints and indexes. It runs in another database, so that it counts as the
    writer, not as one of pgbench's backends;
  - the same into a table with only the trail's primary key: what the trail's indexes cost;
  - no auditing, but a session that only burns CPU, every 50 ms and in proportion to the
    transactions committed meanwhile, about as much as the storing session uses: whether what
    storing costs pgbench is its CPU or something else it does (WAL, I/O, locks).

pgbench tpcb-like updates one of only ten pgbench_branches rows per transaction (scale 10), so
four clients queue on those rows' locks: a transaction that holds its branch longer makes the
others wait, and the machine idles. The statements' times show where that happens.

One throwaway cluster with pgbench_compare.py's settings, a 1 GB ring (the paused writer's
backlog fits) and pg_stat_statements preloaded for every mode; modes interleaved, medians.
After each activity_log run the trail is checked complete (4 changes per transaction, 0
dropped).

    bench/contention.py [--seconds S] [--rounds R] [--smoke]
"""
import argparse
import os
import statistics
import subprocess
import time

from benchlib import BIN, Cluster, install_release, machine, publish
import pgbench_compare as pc

DIR = "/tmp/al-bench-contention"
PORT = 54486
# pgaudit stays loaded (and off) as in pgbench_compare.py, whose set_mode() sets pgaudit.log.
SETTINGS = [s.replace("'activity_log, pgaudit'", "'activity_log, pgaudit, pg_stat_statements'") for s in pc.SETTINGS] + [
    "activity_log.buffer_size = '1GB'",
]
PAUSED = "activity_log, writer paused"
PK_ONLY = "activity_log, trail with only its primary key"
IDLE = "activity_log, writer at SCHED_IDLE"
STORING = "none, PostgreSQL storing the same rows"
STORING_PK = "none, PostgreSQL storing them with only the primary key"
BURNING = "none, a session burning CPU"
MODES = ["none", "activity_log", PAUSED, PK_ONLY, IDLE, STORING, STORING_PK, BURNING]
# The sessions beside pgbench in the last three modes (in database storing): the table each
# stores into, None for the one that only burns CPU.
BESIDE = {STORING: "storing_floor", STORING_PK: "storing_floor_bare", BURNING: None}
STATEMENTS = [
    ("UPDATE pgbench_accounts", "UPDATE accounts"),
    ("SELECT abalance", "SELECT accounts"),
    ("UPDATE pgbench_tellers", "UPDATE tellers"),
    ("UPDATE pgbench_branches", "UPDATE branches"),
    ("INSERT INTO pgbench_history", "INSERT history"),
]


def statement_times(cluster):
    """Mean execution time of each pgbench statement since the last reset, µs."""
    rows = cluster.psql("SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 40), mean_exec_time * 1000 FROM pg_stat_statements "
                        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')")
    times = {}
    for line in rows.splitlines():
        query, mean = line.rsplit("|", 1)
        for prefix, name in STATEMENTS:
            if query.lstrip().startswith(prefix):
                times[name] = float(mean)
    return times


# The storing session: each round, the transactions committed since the last (the next xid to
# be assigned moves by one per pgbench transaction, and by one for this session's own commit)
# times four rows, taken in order from the recorded trail and wrapped around with new ids.
STORE_LIKE_THE_WRITER = """
DO $$
DECLARE
    total bigint;
    taken bigint := 0;
    owed bigint := 0;
    seen bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    now_xid bigint;
    n bigint;
BEGIN
    SELECT count(*) INTO total FROM storing_source;
    LOOP
        PERFORM pg_sleep(0.05);
        now_xid := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
        owed := owed + 4 * greatest(now_xid - seen - 1, 0);
        seen := now_xid;
        n := least(owed, total - taken % total);
        INSERT INTO {table} ({columns})
            SELECT {select_list} FROM storing_source
             WHERE rn > taken % total AND rn <= taken % total + n;
        taken := taken + n;
        owed := owed - n;
        COMMIT;
    END LOOP;
END $$
"""


# The burning session: generate_series elements counted per transaction committed since the
# last round; about 0.09 µs each on the machine of results/contention.md, so about what the
# storing session uses (its CPU is reported, whatever the machine).
BURN_PER_TRANSACTION = 300
BURN = """
DO $$
DECLARE
    seen bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    now_xid bigint;
BEGIN
    LOOP
        PERFORM pg_sleep(0.05);
        now_xid := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
        PERFORM count(*) FROM generate_series(1, greatest(now_xid - seen - 1, 0) * {per_transaction});
        seen := now_xid;
        COMMIT;
    END LOOP;
END $$
"""


def session_beside(cluster, table):
    """Starts the storing session (into `table`), or the burning one (table None); returns it
    and its backend's pid."""
    psql = cluster.psql
    if table:
        psql(f"TRUNCATE {table}", db="storing")
        columns = psql("SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
                       f"WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped", db="storing")
        select_list = columns.replace("id,", "id + (taken / total + 1) * 1000000000,", 1)
        sql = STORE_LIKE_THE_WRITER.format(table=table, columns=columns, select_list=select_list)
    else:
        sql = BURN.format(per_transaction=BURN_PER_TRANSACTION)
    session = subprocess.Popen([f"{BIN}/psql", "-X", "-q", *cluster.conninfo(), "-d", "storing", "-c", sql],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        pids = psql("SELECT pid FROM pg_stat_activity WHERE datname = 'storing' AND state = 'active' AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()", db="postgres").split()
        assert len(pids) <= 1, f"storing sessions left from an earlier run: {pids}"
        if pids:
            return session, pids[0]
        time.sleep(0.05)
    raise RuntimeError(f"the session beside pgbench did not start: {session.stderr.read()}")


def stop_session_beside(cluster, session, pid):
    """Ends a session started by session_beside. Its backend must be terminated: the DO loop
    never writes to its client, so it would not notice psql gone and would go on through later
    runs."""
    session.kill()
    session.wait()
    cluster.psql(f"SELECT pg_terminate_backend({pid}, 10000)", db="postgres")


def record_a_trail(cluster, seconds):
    """Database storing: the trail of a pgbench run with activity_log (storing_source, numbered
    in commit order) and empty copies of the trail's table (storing_floor, and storing_floor_bare
    with only its primary key)."""
    psql = cluster.psql
    pc.set_mode(cluster, "activity_log")
    pc.pgbench(cluster, seconds, 4, "off")
    psql("SELECT activity_log.flush('10 min')")
    psql("CREATE TABLE storing_source AS SELECT row_number() OVER (ORDER BY id) AS rn, * FROM activity_log.events; "
         "CREATE INDEX ON storing_source (rn)")
    psql("CREATE DATABASE storing", db="postgres")
    # Its id default names the extension's sequence; the writer gives every row its id anyway.
    psql("ALTER TABLE storing_floor ALTER COLUMN id DROP DEFAULT; ALTER TABLE storing_floor_bare ALTER COLUMN id DROP DEFAULT")
    dump = subprocess.run([f"{BIN}/pg_dump", *cluster.conninfo(), "-t", "storing_source", "-t", "storing_floor",
                           "-t", "storing_floor_bare", "bench"],
                          check=True, capture_output=True, text=True).stdout
    subprocess.run([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *cluster.conninfo(), "-d", "storing"],
                   input=dump, check=True, text=True, stdout=subprocess.DEVNULL)
    psql("VACUUM ANALYZE storing_source", db="storing")
    psql("DROP TABLE storing_source")


def run(cluster, mode, seconds):
    psql = cluster.psql
    pc.set_mode(cluster, "activity_log" if mode.startswith("activity_log") else "none")
    if mode == PK_ONLY:
        remake = pc.drop_trail_indexes(cluster, pc.TRAIL_INDEXES)
    writer_pid = psql("SELECT writer_pid FROM activity_log.queue")
    if mode == IDLE:
        subprocess.run(["chrt", "--idle", "-p", "0", writer_pid], check=True)
    if mode == PAUSED:
        pc.pause_writer(cluster)
    beside = None
    if mode in BESIDE:
        beside, beside_pid = session_beside(cluster, BESIDE[mode])
        before = pc.ticks([beside_pid])
    psql("SELECT pg_stat_statements_reset()")
    cpu = {}
    try:
        tps, _, _ = pc.pgbench(cluster, seconds, 4, "off", cpu=cpu)
        times = statement_times(cluster)
        if beside:
            us = 1e6 / os.sysconf("SC_CLK_TCK") / cpu["transactions"]
            cpu["writer"] = (pc.ticks([beside_pid]) - before) * us
            cpu["rest"] -= cpu["writer"]
        if BESIDE.get(mode):
            stored = int(psql(f"SELECT count(*) FROM {BESIDE[mode]}", db="storing"))
            # The last round's rows may still be on their way: within one round of 4 per transaction.
            assert stored > 3 * cpu["transactions"], f"stored {stored} rows for {cpu['transactions']} transactions"
    finally:
        if beside:
            stop_session_beside(cluster, beside, beside_pid)
        if mode == PAUSED:
            pc.writer(cluster, "CONT")
        if mode == IDLE:
            subprocess.run(["chrt", "--other", "-p", "0", writer_pid], check=True)
    lag = (0.0, 0.0, 0.0)
    if mode.startswith("activity_log"):
        lag = pc.check_trail(cluster, cpu["transactions"])
    if mode == PK_ONLY:
        psql(remake)
    return {"tps": tps, "lag99": lag[1], **cpu, **times}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="2-second runs, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 2, 1
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        pc.prepare(cluster)
        cluster.psql("CREATE EXTENSION pg_stat_statements")
        record_a_trail(cluster, max(args.seconds // 2, 2))
        results = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for m in MODES:
                results[m].append(run(cluster, m, args.seconds))
        cores = os.cpu_count()
        med = {m: {k: statistics.median(r.get(k, 0.0) for r in results[m]) for k in results[m][0]} for m in MODES}
        none = med["none"]
        lines = [
            f"# Where pgbench's throughput goes: statements, locks and the writer ({args.rounds} round(s) of {args.seconds} s, medians)",
            "",
            f"Machine: {machine(cluster)}. Settings: {', '.join(SETTINGS)}.",
            "pgbench tpcb-like, scale 10, 4 clients, synchronous_commit = off.",
            "",
            "CPU per transaction from /proc (as in pgbench_compare.py); machine busy = its CPU time over",
            "the run's wall time and cores.",
            "",
            "| mode | TPS | vs none | machine busy | all µs/txn | backends µs/txn | writer µs/txn | pgbench µs/txn | lag p99 (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in MODES:
            r = med[m]
            busy = r["all"] * r["tps"] / 1e6 / cores
            lag = f"{r['lag99']:.2f}" if m.startswith("activity_log") and m != PAUSED else "—"
            lines.append(f"| {m} | {r['tps']:.0f} | {r['tps'] / none['tps']:.2f}x | {100 * busy:.0f} % | "
                         f"{r['all']:.0f} | {r['backends']:.0f} | {r['writer']:.0f} | {r['pgbench']:.0f} | {lag} |")
        lines += [
            "",
            "Mean time of each statement in µs (pg_stat_statements: execution, lock waits included;",
            "not the commit, which runs after END's execution):",
            "",
            "| mode | " + " | ".join(name for _, name in STATEMENTS) + " |",
            "|---|" + "---|" * len(STATEMENTS),
        ]
        for m in MODES:
            lines.append(f"| {m} | " + " | ".join(f"{med[m].get(name, 0.0):.1f}" for _, name in STATEMENTS) + " |")
        lines += [
            "",
            "Read it row against row: what capture costs a statement shows in the writer-paused row",
            "(every UPDATE pays about the same); what grows beyond that on pgbench_branches and",
            "pgbench_tellers only, the hot rows, is time spent waiting for another transaction's",
            "row lock. The primary-key-only and SCHED_IDLE rows show whether the writer's storing",
            "work or its claim on a CPU is what lengthens those waits. The last three rows have no",
            "auditing but a session beside pgbench (its CPU in the writer column): one storing the",
            "same rows within the lag bar the way PostgreSQL would with none of our code, into a",
            "table with the trail's indexes or with only its primary key, and one that only burns",
            "about as much CPU: what storing the trail must cost pgbench on this machine, and",
            "whether that cost is the CPU it takes.",
        ]
        publish("contention.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
