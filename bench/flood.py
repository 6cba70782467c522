#!/usr/bin/env python3
"""One role floods log_event(); does another role's audited work still get through?

The repro of the December review's D9, side by side in one cluster (16 MB ring, the default):
three sessions commit 1 MB application events as fast as they can while a victim updates one
row of a tracked table every 0.2 s. Each mode for the same time, at overflow = wait and at
overflow = drop:

  - no flood: the victim alone;
  - flood by a superuser: events of superusers may fill the whole ring (as every event could
    before the fair share);
  - flood by an ordinary role: its events may fill only half the ring (ring::Share::Half), and
    are at most activity_log.max_event_size (1 MB) each.

Reported: the victim's UPDATE latency (median, worst), its changes committed and recorded, and
the flood's events stored and dropped.

    bench/flood.py [--seconds S] [--smoke]
"""
import argparse
import statistics
import subprocess
import time

from benchlib import BIN, Cluster, install_release, machine, publish

DIR = "/tmp/al-bench-flood"
PORT = 54487
FLOODERS = 3
EVENT_BYTES = 1000 * 1000  # within the default max_event_size of 1 MB


def flood(cluster, role, seconds):
    """Starts the flooding sessions; each stops by itself after `seconds`."""
    body = (
        "DO $$ DECLARE v jsonb := jsonb_build_object('x', repeat('x', %d)); t0 timestamptz := clock_timestamp();\n"
        "BEGIN LOOP\n"
        "  BEGIN PERFORM activity_log.log_event('flood', v); EXCEPTION WHEN others THEN NULL; END;\n"
        "  COMMIT; EXIT WHEN clock_timestamp() - t0 > interval '%d s'; END LOOP; END $$;\n" % (EVENT_BYTES, seconds)
    )
    cmd = [f"{BIN}/psql", "-X", "-q", "-h", cluster.dir, "-p", str(cluster.port), "-U", role, "-d", "bench"]
    return [subprocess.Popen(cmd + ["-c", body], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(FLOODERS)]


def run(cluster, overflow, flooder, seconds):
    cluster.psql(f"ALTER SYSTEM SET activity_log.overflow = '{overflow}'", db="postgres")
    cluster.psql("SELECT pg_reload_conf()", db="postgres")
    time.sleep(0.5)
    cluster.psql("SELECT activity_log.flush('60 s')")
    before = cluster.psql("SELECT coalesce(max(id), 0) FROM activity_log.events")
    dropped_before = int(cluster.psql("SELECT dropped_records FROM activity_log.metrics()"))
    sessions = flood(cluster, flooder, seconds) if flooder else []
    time.sleep(0.5 if flooder else 0)
    n = max(3, int(seconds / 0.25))
    statements = []
    for i in range(n):
        statements += [f"UPDATE victim SET v = {i} WHERE id = 1", "SELECT pg_sleep(0.2)"]
    script = "SET activity_log.actor = 'victim';\n\\timing on\n" + "".join(f"{s};\n" for s in statements)
    cmd = [f"{BIN}/psql", "-X", "-A", "-t", "-h", cluster.dir, "-p", str(cluster.port), "-U", "bob", "-d", "bench"]
    out = subprocess.run(cmd, input=script, capture_output=True, text=True).stdout
    # psql prints "UPDATE 1" before the Time of an UPDATE that committed, nothing for a failed one.
    lines = out.splitlines()
    updates = [float(lines[i + 1].split()[1]) / 1000 for i, line in enumerate(lines[:-1])
               if line == "UPDATE 1" and lines[i + 1].startswith("Time: ")]
    committed = len(updates)
    for s in sessions:
        s.wait()
    cluster.psql("SELECT activity_log.flush('120 s')")
    recorded = int(cluster.psql(f"SELECT count(*) FROM activity_log.changes WHERE id > {before} AND actor = 'victim'"))
    events = int(cluster.psql(f"SELECT count(*) FROM activity_log.events WHERE id > {before} AND command = 'flood'"))
    dropped = int(cluster.psql("SELECT dropped_records FROM activity_log.metrics()")) - dropped_before
    return {
        "p50_ms": statistics.median(updates) * 1000 if updates else float("nan"),
        "max_ms": max(updates) * 1000 if updates else float("nan"),
        "committed": committed,
        "asked": n,
        "recorded": recorded,
        "events": events,
        "dropped": dropped,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    seconds = 3 if args.smoke else args.seconds
    install_release()
    cluster = Cluster(DIR, PORT, ["activity_log.capture_statements = 'none'", "activity_log.overflow_timeout = '10s'"])
    try:
        cluster.psql("CREATE DATABASE bench", db="postgres")
        cluster.psql("CREATE EXTENSION activity_log;"
                     "CREATE ROLE mallory LOGIN; CREATE ROLE bob LOGIN;"
                     "CREATE TABLE victim (id int PRIMARY KEY, v int); INSERT INTO victim VALUES (1, 0);"
                     "GRANT UPDATE, SELECT ON victim TO bob; SELECT activity_log.track('victim')")
        rows = []
        for overflow in ["wait", "drop"]:
            for label, flooder in [("no flood", None), ("flood by a superuser", "postgres"),
                                   ("flood by an ordinary role", "mallory")]:
                r = run(cluster, overflow, flooder, seconds)
                rows.append(f"| {overflow} | {label} | {r['p50_ms']:.0f} | {r['max_ms']:.0f} | "
                            f"{r['committed']} of {r['asked']} | {r['recorded']} | {r['events']} | {r['dropped']} |")
        report = (
            "# One role floods log_event(): the victim's single-row UPDATEs\n\n"
            f"{machine(cluster)}; 16 MB ring, {FLOODERS} sessions of 1 MB events, {seconds} s per mode.\n\n"
            "| overflow | mode | victim p50 ms | victim max ms | victim UPDATEs committed | victim changes recorded | flood events stored | records dropped |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        )
        publish("flood.md", report, args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
