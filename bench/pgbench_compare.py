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
A second phase shows where the time goes. It restarts the cluster with a 1 GB ring and runs,
interleaved: none; activity_log; activity_log with its writer paused (SIGSTOP), the capture
cost alone; and the transition-table floor, empty AFTER STATEMENT triggers with OLD/NEW TABLE
on the four tables (the core's own cost of the mechanism activity_log's capture builds on).
Each run counts the CPU time per transaction of pgbench's backends, the writer, pgbench itself
and the rest of the machine (/proc). After the paused run the writer is resumed: the time to
store the backlog gives its drain rate, and its CPU time its cost with the machine to itself.

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

from benchlib import (BIN, FLOOR_TRIGGERS, HAS_PGAUDIT, TABLES, Cluster, create_floor_triggers, install_release,
                      machine, publish)

DIR = "/tmp/al-bench-pgbench"
PORT = 54490
# Without pgaudit (PostgreSQL 16-18 here: Debian has it for 15 only) its mode is left out.
SETTINGS = [
    "shared_preload_libraries = 'activity_log, pgaudit'" if HAS_PGAUDIT else "shared_preload_libraries = 'activity_log'",
    "activity_log.capture_statements = 'none'",
    *(["pgaudit.log = 'none'"] if HAS_PGAUDIT else []),
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
NOOP = "floor triggers without transition tables"
MODES = ["none", "activity_log", "activity_log sync", "trigger"] + (["pgaudit"] if HAS_PGAUDIT else [])
PAUSED = "activity_log, writer paused"
PHASE2_MODES = ["none", "activity_log", PAUSED, FLOOR, NOOP]
SPARE_CORE_MODES = ["none", "activity_log", "trigger"] + (["pgaudit"] if HAS_PGAUDIT else [])


def pgbench(cluster, seconds, clients, sync_commit, cpu=None, backends_seen=None):
    """Runs pgbench; returns TPS and per-transaction latency p50 and p99 in ms. With `cpu` (a
    dict), also fills in the CPU time per transaction, in µs, of each part of the machine, and
    adds the pids of pgbench's backends to `backends_seen` (a set) if given."""
    with tempfile.TemporaryDirectory() as logs:
        cmd = [f"{BIN}/pgbench", *cluster.conninfo(), "-c", str(clients), "-j", str(clients), "-T", str(seconds),
               "-n", "--log", f"--log-prefix={logs}/tx", "bench"]  # -n: no vacuum (it would truncate history)
        env = dict(os.environ, PGOPTIONS=f"-c synchronous_commit={sync_commit}")
        writer_pid = int(cluster.psql("SELECT writer_pid FROM activity_log.queue") or 0) if cpu is not None else 0
        with open(f"{logs}/out", "w+") as out_file:
            machine_before, writer_before = busy_ticks(), ticks([writer_pid])
            proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.PIPE, env=env, text=True)
            backends = {}
            while True:
                # wait4, not poll: it also gives pgbench's own CPU time.
                done, status, usage = os.wait4(proc.pid, 0 if cpu is None else os.WNOHANG)
                if done:
                    break
                # A backend's ticks so far: it exits with pgbench, so the last sample counts.
                for pid in backend_pids():
                    backends[pid] = ticks([pid])
                time.sleep(0.1)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if backends_seen is not None:
                backends_seen.update(int(pid) for pid in backends)
            machine_ticks, writer_ticks = busy_ticks() - machine_before, ticks([writer_pid]) - writer_before
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench failed: {proc.stderr.read()}")
            out_file.seek(0)
            out = out_file.read()
        latencies = []
        for path in glob.glob(f"{logs}/tx*"):
            with open(path) as f:
                latencies += [int(line.split()[2]) for line in f]
    if cpu is not None:
        us = 1e6 / os.sysconf("SC_CLK_TCK") / len(latencies)
        cpu["backends"] = sum(backends.values()) * us
        cpu["writer"] = writer_ticks * us
        cpu["pgbench"] = (usage.ru_utime + usage.ru_stime) * 1e6 / len(latencies)
        cpu["all"] = machine_ticks * us
        cpu["rest"] = cpu["all"] - cpu["backends"] - cpu["writer"] - cpu["pgbench"]
        cpu["transactions"] = len(latencies)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000.0
    return float(re.search(r"tps = ([0-9.]+)", out).group(1)), pick(0.50), pick(0.99)


def ticks(pids):
    """CPU time (user + system, clock ticks) the processes used so far; 0 for one that is gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def busy_ticks():
    """CPU time the whole machine spent busy (user, nice, system, irq, softirq), clock ticks."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return user + nice + system + irq + softirq


def backend_pids():
    """The backends of database bench (pgbench's connections while it runs)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"postgres: postgres bench "):
                    pids.append(pid)
        except OSError:
            pass
    return pids


def set_mode(cluster, mode):
    psql = cluster.psql
    for t in TABLES:
        psql(f"DROP TRIGGER IF EXISTS audit ON {t}")
        for op, _ in FLOOR_TRIGGERS:
            psql(f"DROP TRIGGER IF EXISTS floor_{op} ON {t}")
    psql("DELETE FROM activity_log.tracked_tables; SELECT activity_log._tracking_changed();")
    if HAS_PGAUDIT:
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
    elif mode in (FLOOR, NOOP):
        for t in TABLES:
            create_floor_triggers(cluster, t, transition_tables=mode == FLOOR)
    psql("SELECT pg_reload_conf()")
    psql("VACUUM activity_log.durable_queue")  # its own statement: VACUUM cannot run in a transaction block
    # Whatever the writer has not stored yet would land after the TRUNCATE.
    assert psql("SELECT activity_log.flush('10 min')") == "t"
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


STORING_FLOOR = """
CREATE TABLE storing_floor (LIKE activity_log.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
CREATE TABLE storing_floor_bare (LIKE activity_log.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (id, committed_at));
"""


# The trail's secondary indexes, as _trail_index_kind names them without their events_ (each
# partition has its own: sql/bootstrap.sql, _index_trail_partition); the primary key is the rest.
TRAIL_INDEXES = ["ts_brin", "row_key_idx", "table_idx", "new_key_idx", "gap_idx"]


def drop_trail_indexes(cluster, kinds):
    """Drops the trail's indexes of `kinds` (from TRAIL_INDEXES) from every partition; returns
    the statement that makes them again."""
    psql = cluster.psql
    # By what each index is, not by its name: PostgreSQL names one when the usual name is taken.
    wanted = ",".join(f"events_{k}" for k in kinds)
    # Each partition has its own indexes: keep their definitions to build them again.
    rows = psql(f"""SELECT i.indexrelid::regclass || ' ' || pg_get_indexdef(i.indexrelid)
                      FROM pg_partition_tree('activity_log.events') p JOIN pg_index i ON i.indrelid = p.relid
                     WHERE p.isleaf AND activity_log._trail_index_kind(i.indexrelid) = ANY ('{{{wanted}}}')""").splitlines()
    assert rows, f"the trail has no index of {kinds}"
    psql("DROP INDEX " + ", ".join(line.split(" ", 1)[0] for line in rows))
    return "; ".join(line.split(" ", 1)[1] for line in rows)


def wal_lsn(cluster):
    return int(cluster.psql("SELECT pg_current_wal_lsn() - '0/0'"))


def storing_floor(cluster, first_id, table="storing_floor"):
    """PostgreSQL's own cost of storing rows like the trail's, with none of activity_log's code:
    one backend copies the trail rows from id `first_id` on into `table` (storing_floor: the
    trail's columns, constraints and indexes, not partitioned; storing_floor_bare: only the
    primary key) with INSERT ... SELECT. Returns that backend's CPU time in µs and the WAL it
    wrote, in bytes. Reading the rows back is in the time too (a sequential scan: a small part)."""
    psql = cluster.psql
    psql(f"TRUNCATE {table}; CHECKPOINT")
    cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *cluster.conninfo(), "-d", "bench"]
    session = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        session.stdin.write("SELECT pg_backend_pid();\n")
        session.stdin.flush()
        pid = session.stdout.readline().strip()
        before, lsn = ticks([pid]), wal_lsn(cluster)
        session.stdin.write(f"INSERT INTO {table} SELECT * FROM activity_log.events WHERE id >= {first_id};\n"
                            "SELECT 'stored';\n")
        session.stdin.flush()
        assert session.stdout.readline().strip() == "stored"
        return (ticks([pid]) - before) * 1e6 / os.sysconf("SC_CLK_TCK"), wal_lsn(cluster) - lsn
    finally:
        session.stdin.close()
        session.wait()


def prepare(cluster):
    """Database bench with pgbench's tables at scale 10, the extension, the reference trigger's
    audit table and the storing floor's tables (set_mode empties the first two)."""
    cluster.psql("CREATE DATABASE bench", db="postgres")
    subprocess.run([f"{BIN}/pgbench", "-i", "-q", "-s", "10", *cluster.conninfo(), "bench"],
                   check=True, capture_output=True)
    cluster.psql("CREATE EXTENSION activity_log")
    cluster.psql(REFERENCE_TRIGGER)
    cluster.psql(STORING_FLOOR)


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
        prepare(cluster)
        facts = machine(cluster)
        shmem = int(psql("SELECT size FROM pg_shmem_allocations WHERE name = 'activity_log rings'"))

        runs = {}  # (sync_commit, mode) -> [(tps, p50, p99)]
        lags = []
        for sync_commit in ["off", "on"]:
            for _ in range(args.rounds):
                for m in MODES:
                    set_mode(cluster, m)
                    before = int(psql("SELECT count(*) FROM pgbench_history"))
                    waits = int(psql("SELECT overflow_waits FROM activity_log.queue"))
                    result = pgbench(cluster, args.seconds, args.clients, sync_commit)
                    if m.startswith("activity_log"):
                        lag = check_trail(cluster, int(psql("SELECT count(*) FROM pgbench_history")) - before)
                        waits = int(psql("SELECT overflow_waits FROM activity_log.queue")) - waits
                        lags.append((sync_commit, m) + lag + (waits,))
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
        cpu = {}  # mode -> [{part: µs per transaction}]
        for _ in range(args.rounds):
            for m in PHASE2_MODES:
                set_mode(cluster, "activity_log" if m == PAUSED else m)
                usage = {}
                if m != PAUSED:
                    lsn = wal_lsn(cluster)
                    runs.setdefault(("paused", m), []).append(pgbench(cluster, args.seconds, args.clients, "off", usage))
                    usage["wal"] = (wal_lsn(cluster) - lsn) / usage["transactions"]
                    if m == "activity_log":
                        check_trail(cluster, int(usage["transactions"]))
                    cpu.setdefault(m, []).append(usage)
                    continue
                psql("SELECT activity_log.flush()")
                pause_writer(cluster)
                try:
                    lsn = wal_lsn(cluster)
                    runs.setdefault(("paused", m), []).append(pgbench(cluster, args.seconds, args.clients, "off", usage))
                    usage["wal"] = (wal_lsn(cluster) - lsn) / usage["transactions"]
                    backlog = int(psql("SELECT published_records - written_records FROM activity_log.queue"))
                    first_id = int(psql("SELECT coalesce(max(id), 0) + 1 FROM activity_log.events"))
                finally:
                    pid = writer(cluster, "CONT")
                before, lsn = ticks([pid]), wal_lsn(cluster)
                started = time.perf_counter()
                assert psql("SELECT activity_log.flush('10 min')") == "t"
                drains.append((backlog, time.perf_counter() - started))
                # The writer's CPU and WAL per transaction when it has the machine to itself, and
                # PostgreSQL's for storing the same rows again without activity_log's code.
                transactions = max(backlog / 4, 1)
                usage["writer alone"] = (ticks([pid]) - before) * 1e6 / os.sysconf("SC_CLK_TCK") / transactions
                usage["writer wal"] = (wal_lsn(cluster) - lsn) / transactions
                floor_us, floor_wal = storing_floor(cluster, first_id)
                usage["storing floor"], usage["storing floor wal"] = floor_us / transactions, floor_wal / transactions
                usage["bare storing floor"] = storing_floor(cluster, first_id, "storing_floor_bare")[0] / transactions
                cpu.setdefault(m, []).append(usage)

        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in runs.items()}
        lines = [
            f"# pgbench tpcb-like, scale 10, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, medians",
            "",
            f"Machine: {facts}. Settings: {', '.join(SETTINGS)}.",
            "activity_log at default settings (16 MB ring per database, 4 databases); activity_log sync: the "
            "same with durability => 'sync' (each transaction stages its records in activity_log.durable_queue "
            "before it commits); "
            + ("pgaudit logs statement text only (no row images)." if HAS_PGAUDIT
               else "no pgaudit (Debian packages it for PostgreSQL 15 only)."),
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
                  "Lag = the writer's commit time of a change row minus the audited transaction's commit time. "
                  "Waits: commits that found the 16 MB ring full and waited for the writer (`overflow = wait`, "
                  "activity_log.queue.overflow_waits).", "",
                  "| synchronous_commit | mode | lag p50 (ms) | lag p99 (ms) | lag max (ms) | waits |",
                  "|---|---|---|---|---|---|"]
        for sync_commit, m, p50, p99, mx, waits in lags:
            lines.append(f"| {sync_commit} | {m} | {p50 * 1000:.1f} | {p99 * 1000:.1f} | {mx * 1000:.1f} | {waits} |")
        base = med[("paused", "none")][0]
        parts = ["backends", "writer", "pgbench", "rest", "all", "wal"]
        use = {m: {k: statistics.median(u[k] for u in cpu[m]) for k in cpu[m][0]} for m in PHASE2_MODES}
        backlog, seconds = max(drains)
        budget = use["none"]["all"] / 0.9 - use["none"]["all"]
        extra = lambda m, k: use[m][k] - use["none"][k]
        lines += ["", "## Where the time goes (1 GB ring, synchronous_commit = off)", "",
                  f"CPU time per transaction in µs (/proc), medians over the rounds; {args.clients} clients keep "
                  "both cores busy, so every µs any process spends is a µs the transactions do not get. "
                  "backends: pgbench's connections; rest: the other processes of the machine (walwriter, "
                  "checkpointer, autovacuum, the kernel's interrupts); wal: bytes of WAL per transaction "
                  "(pg_current_wal_lsn, all processes; the writer's share of the paused run is written later, "
                  "below).", "",
                  "| mode | TPS | ratio to none | " + " | ".join(parts) + " |", "|---|---|---|" + "---|" * len(parts)]
        for m in PHASE2_MODES:
            label = {PAUSED: f"{PAUSED} (capture only)",
                     FLOOR: f"{FLOOR}: empty statement triggers with OLD/NEW TABLE, no auditing",
                     NOOP: f"{NOOP}: the same triggers asking for no OLD/NEW TABLE"}.get(m, m)
            tps = med[("paused", m)][0]
            lines.append(f"| {label} | {tps:.0f} | {tps / base:.2f}x | " + " | ".join(f"{use[m][k]:.0f}" for k in parts) + " |")
        lines += ["",
                  f"- At 0.90x a transaction may take {budget:.0f} µs more than with no auditing "
                  f"({use['none']['all']:.0f} µs / 0.9 - {use['none']['all']:.0f} µs).",
                  f"- activity_log took {extra('activity_log', 'all'):.0f} µs more: backends "
                  f"{extra('activity_log', 'backends'):+.0f}, writer {use['activity_log']['writer']:.0f}, pgbench "
                  f"{extra('activity_log', 'pgbench'):+.0f}, rest {extra('activity_log', 'rest'):+.0f}.",
                  f"- Capture alone (writer paused): backends {extra(PAUSED, 'backends'):+.0f} µs; the "
                  f"transition-table floor: backends {extra(FLOOR, 'backends'):+.0f} µs, of which its triggers' "
                  f"PL/pgSQL calls (the same triggers without transition tables) {extra(NOOP, 'backends'):+.0f} µs.",
                  f"- The writer alone, storing the paused run's backlog with the machine to itself: "
                  f"{use[PAUSED]['writer alone']:.0f} µs and {use[PAUSED]['writer wal']:.0f} bytes of WAL per "
                  "transaction.",
                  f"- PostgreSQL storing the same rows again, with none of activity_log's code (INSERT ... SELECT "
                  f"into a table with the trail's columns and indexes, one backend): "
                  f"{use[PAUSED]['storing floor']:.0f} µs and {use[PAUSED]['storing floor wal']:.0f} bytes of WAL "
                  "per transaction; with only the primary key (none of the trail's other indexes): "
                  f"{use[PAUSED]['bare storing floor']:.0f} µs.",
                  f"- Against the {budget:.0f} µs that 0.90x allows: PostgreSQL storing the rows alone takes "
                  f"{use[PAUSED]['storing floor']:.0f} µs; the core's transition tables come on top "
                  "(capture_cost.py counts them exactly; natively, the whole machine with the floor's triggers "
                  f"minus without, noise-bound: {use[FLOOR]['all'] - use[NOOP]['all']:+.0f} µs).",
                  "",
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
