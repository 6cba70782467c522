#!/usr/bin/env python3
"""A 1 000 000-row UPDATE and DELETE at activity_log's default settings (a 16 MB ring, far
smaller than the transaction's ~200 MB of records): no auditing vs activity_log vs a PL/pgSQL
audit trigger, with the backend's peak private memory.

activity_log stages such a transaction's records in durable_queue in 1 MB pieces as they come
(src/capture/mod.rs), so the backend's memory stays bounded. One throwaway cluster (release
build), modes interleaved for each round. Timings are psql's \\timing of each statement in
autocommit; the writer's drain after each statement is timed separately (the script waits for
it, so that no statement is timed against the writer's work on the previous one). Peak memory is
the highest RssAnon (private, anonymous: not shared_buffers) of the backend, sampled every
10 ms from /proc while the statements run.

    bench/big_transaction.py [--rows N] [--rounds R] [--smoke]
"""
import argparse
import statistics
import subprocess
import sys
import threading
import time

from benchlib import BIN, REFERENCE_TRIGGER, Cluster, fresh_items, install_release, machine, publish

DIR = "/tmp/al-bench-bigtx"
PORT = 54490
# activity_log at its defaults; the server sized for a million-row statement.
SETTINGS = [
    "activity_log.capture_statements = 'none'",
    "shared_buffers = '512MB'",
    "max_wal_size = '8GB'",
    "synchronous_commit = off",
]


CLUSTER = None
APP = "al_bigtx"


def psql(sql):
    return CLUSTER.psql(sql)


def rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed_with_peak_memory(statements):
    """Runs `statements` in one session (autocommit each); returns (\\timing of each in s, the
    backend's peak RssAnon in MB while they ran)."""
    script = "SELECT pg_sleep(0.3);\n\\timing on\n" + "".join(f"{s};\n" for s in statements)
    cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *CLUSTER.conninfo(), "-d", "bench"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={"PGAPPNAME": APP, "PATH": "/usr/bin:/bin"})
    proc.stdin.write(script)
    proc.stdin.close()
    pid = None
    while pid is None and proc.poll() is None:
        out = psql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APP}'")
        pid = int(out) if out else None
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], rss_anon_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = proc.stdout.read()
    proc.wait()
    sampler.join()
    assert proc.returncode == 0, out
    times = [float(line.split()[1]) / 1000 for line in out.splitlines() if line.startswith("Time: ")]
    assert len(times) == len(statements), out
    return times, peak[0] / 1024


def run_mode(mode, rows):
    psql("TRUNCATE ref_audit")
    fresh_items(CLUSTER, "activity_log" if mode == "activity_log" else "none")
    psql(f"INSERT INTO items SELECT g, 'item ' || g, g % 100, g / 7.0, now() FROM generate_series(1, {rows}) g")
    if mode == "activity_log":
        psql("SELECT activity_log.flush('10 min')")
    if mode == "trigger":
        psql("CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION ref_audit()")
    psql("VACUUM ANALYZE items")
    psql("CHECKPOINT")
    flush = "SELECT activity_log.flush('10 min')"
    ops = {"update": "UPDATE items SET qty = qty + 1, updated_at = now()", "delete": "DELETE FROM items"}
    statements = []
    for sql in ops.values():
        statements.append(sql)
        if mode == "activity_log":
            statements.append(flush)
    times, peak_mb = timed_with_peak_memory(statements)
    it = iter(times)
    t = {"drain": 0.0, "peak_mb": peak_mb}
    for op in ops:
        t[op] = next(it)
        if mode == "activity_log":
            t["drain"] += next(it)
    if mode == "activity_log":
        counts = psql("SELECT count(*) FILTER (WHERE op = 'UPDATE') || ',' || count(*) FILTER (WHERE op = 'DELETE') "
                      "FROM activity_log.changes WHERE table_name = 'items'")
        assert counts == f"{rows},{rows}", f"expected {rows},{rows} captured rows, found {counts}"
        assert psql("SELECT count(*) FROM activity_log.durable_queue") == "0"
        psql("TRUNCATE activity_log.events")
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="20 000 rows, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.rounds = 20_000, 1
    global CLUSTER
    install_release()
    CLUSTER = Cluster(DIR, PORT, SETTINGS)
    try:
        CLUSTER.psql("CREATE DATABASE bench", db="postgres")
        psql("CREATE EXTENSION activity_log")
        psql(REFERENCE_TRIGGER)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        modes = ["none", "activity_log", "trigger"]
        results = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                results[m].append(run_mode(m, args.rows))
        med = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in modes}
        peak = {m: max(r["peak_mb"] for r in results[m]) for m in modes}
        lines = [
            f"# One transaction of {args.rows:,} rows at default settings, {args.rounds} round(s), medians",
            "",
            f"Commit {commit}. Machine: {machine(CLUSTER)}. Settings: {', '.join(SETTINGS)}; "
            "activity_log.buffer_size at its default (16 MB).",
            "",
            "| statement | none (s) | activity_log (s) | ratio | trigger (s) | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for op in ["update", "delete"]:
            n, a, tr = med["none"][op], med["activity_log"][op], med["trigger"][op]
            lines.append(f"| {op} | {n:.2f} | {a:.2f} | {a / n:.2f}x | {tr:.2f} | {tr / n:.2f}x |")
        drain = med["activity_log"]["drain"]
        lines += [
            "",
            f"activity_log writer drain of the two statements' {2 * args.rows:,} rows: {drain:.1f} s "
            f"({2 * args.rows / max(drain, 1e-9):,.0f} records/s).",
            "",
            "Backend peak private memory (RssAnon, highest of the rounds): "
            + ", ".join(f"{m} {peak[m]:.0f} MB" for m in modes) + ".",
        ]
        publish("big_transaction.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        CLUSTER.stop()


if __name__ == "__main__":
    sys.exit(main())
