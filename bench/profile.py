#!/usr/bin/env python3
"""Where the CPU time of a saturated pgbench run goes, natively: `perf record` samples the whole
machine (cpu-clock, the software event: this VM exposes no hardware counters) while pgbench
tpcb-like runs with 4 clients at synchronous_commit = off, with no auditing and with
activity_log, on pgbench_compare.py's cluster and settings. Each sample is charged to the
process it hit (pgbench's backends, activity_log's writer, the walwriter, pgbench itself, the
idle loop, the rest) and to the code it was in (kernel, postgres, activity_log.so, libc, the
rest); the report gives µs per transaction of each, and the functions activity_log adds time to.

callgrind (capture_cost.py, writer_cost.py) counts instructions exactly but sees neither the
kernel nor cache misses; this sees both, with the VM's timing noise.

    bench/profile.py [--seconds S] [--smoke]
"""
import argparse
import collections
import os
import re
import subprocess
import time

import pgbench_compare as pc
from benchlib import Cluster, install_release, machine, publish

DIR = "/tmp/al-bench-profile"
PORT = 54491
FREQUENCY = 999  # samples per second and CPU
MODES = ["none", "activity_log"]
ROLES = ["backends", "writer", "walwriter", "other postgres", "pgbench", "idle", "rest"]
LAYERS = ["kernel", "postgres", "activity_log.so", "libc", "rest"]


def perf_works():
    """None when perf can sample this machine, else why not."""
    try:
        # As profile.py and tail.py sample: the whole machine, tail.py with CLOCK_MONOTONIC.
        run = subprocess.run(["perf", "record", "-a", "-e", "cpu-clock", "-k", "CLOCK_MONOTONIC",
                              "-o", "/dev/null", "--", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        return "perf is not installed (Debian: linux-perf)"
    return None if run.returncode == 0 else run.stderr.strip().splitlines()[-1]


def perf_usable(script, smoke):
    """Whether `script` can sample with perf; a smoke run where it cannot says so and is
    skipped (a container without perf events), a real run stops."""
    why_not = perf_works()
    if why_not and smoke:
        print(f"bench/{script}: skipped, perf cannot sample here: {why_not}")
        return False
    if why_not:
        raise SystemExit(f"perf cannot sample here: {why_not}")
    return True


def layer(dso):
    if dso == "[kernel.kallsyms]":
        return "kernel"
    name = os.path.basename(dso)
    return {"postgres": "postgres", "activity_log.so": "activity_log.so", "libc.so.6": "libc"}.get(name, "rest")


def server_pids(cluster):
    """The postmaster's and its auxiliary processes' pids (every one that is no client backend)."""
    rows = cluster.psql("SELECT pid, backend_type FROM pg_stat_activity WHERE backend_type <> 'client backend'")
    pids = {int(pid): kind for pid, kind in (r.split("|") for r in rows.splitlines())}
    with open(f"{cluster.dir}/data/postmaster.pid") as f:
        pids[int(f.readline())] = "postmaster"
    return pids


def role(comm, pid, known, writer, backends=None):
    """What a sampled process is, among ROLES. `backends`: the pids of pgbench's connections,
    seen during the run; without it every other postgres process is taken for one of them
    (an autovacuum worker started during the run included)."""
    if pid == 0:
        return "idle"
    if pid == writer:
        return "writer"
    if known.get(pid) == "walwriter":
        return "walwriter"
    if pid in known or comm == "postgres" and backends is not None and pid not in backends:
        return "other postgres"
    return {"postgres": "backends", "pgbench": "pgbench"}.get(comm, "rest")


def profile(cluster, mode, seconds):
    """One pgbench run under perf: samples by (role, layer, function), and the transactions."""
    pc.set_mode(cluster, mode)
    pc.pgbench(cluster, 2, 4, "off")  # warm-up: connections, caches, the writer awake
    known = server_pids(cluster)
    writer = int(cluster.psql("SELECT writer_pid FROM activity_log.queue") or 0)
    data = f"{DIR}/perf.{mode}.data"
    recorder = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", str(FREQUENCY), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf is sampling
    usage, backends = {}, set()
    pc.pgbench(cluster, seconds, 4, "off", usage, backends)
    recorder.send_signal(2)
    recorder.wait()
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    samples = collections.Counter()
    for line in script.splitlines():
        # "postgres 12345 55dd7a4b55c1 heap_insert (/usr/lib/postgresql/15/bin/postgres)"
        m = re.match(r"\s*(.*?)\s+(\d+)\s+[0-9a-f]+\s+(.*?)\s*\((.*)\)\s*$", line)
        if not m:
            continue
        comm, pid, sym, dso = m.group(1), int(m.group(2)), m.group(3) or "[unknown]", m.group(4)
        samples[(role(comm, pid, known, writer, backends), layer(dso), sym, os.path.basename(dso))] += 1
    return samples, usage["transactions"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="2-second runs: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds = 2
    if not perf_usable("profile.py", args.smoke):
        return
    install_release()
    cluster = Cluster(DIR, PORT, pc.SETTINGS)
    try:
        pc.prepare(cluster)
        facts = machine(cluster)
        runs = {m: profile(cluster, m, args.seconds) for m in MODES}
    finally:
        cluster.stop()

    # µs per transaction of every (role, layer, function, file).
    per_txn = {m: {k: n * 1e6 / FREQUENCY / tx for k, n in s.items()} for m, (s, tx) in runs.items()}

    def total(m, pick):
        return sum(v for k, v in per_txn[m].items() if pick(k))

    def table(title, names, index):
        rows = [f"| {title} | none | activity_log | added |", "|---|---|---|---|"]
        for name in names + ["all"]:
            pick = (lambda k: True) if name == "all" else (lambda k, n=name: k[index] == n)
            a, b = total("none", pick), total("activity_log", pick)
            rows.append(f"| {name} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
        return rows

    def functions(mode, pick, n):
        by = collections.Counter()
        for k, v in per_txn[mode].items():
            if pick(k):
                by[(k[2], k[3])] += v
        return by.most_common(n)

    added = collections.Counter()
    for k in set(per_txn["none"]) | set(per_txn["activity_log"]):
        added[(k[2], k[3])] += per_txn["activity_log"].get(k, 0) - per_txn["none"].get(k, 0)

    tps = {m: tx / args.seconds for m, (_, tx) in runs.items()}
    lines = [
        f"# Where the time goes, natively: perf, pgbench tpcb-like, 4 clients, {args.seconds} s per mode",
        "",
        f"Machine: {facts}. Settings: {', '.join(pc.SETTINGS)}, synchronous_commit = off for pgbench.",
        f"`perf record -a -e cpu-clock -F {FREQUENCY}` over the whole machine during each run; "
        f"transactions: none {runs['none'][1]} ({tps['none']:.0f}/s), activity_log "
        f"{runs['activity_log'][1]} ({tps['activity_log']:.0f}/s, {tps['activity_log'] / tps['none']:.2f}x). "
        "Figures are CPU µs per transaction; the machine is saturated, so the idle loop is what "
        "waiting left unused. Sampling costs a little in every mode.",
        "",
        "## By process", "",
        *table("process", ROLES, 0),
        "", "## By code", "",
        *table("code", LAYERS, 1),
        "", "## Functions activity_log adds the most time to (all processes)", "",
        "| function | file | µs per transaction |", "|---|---|---|",
        *[f"| `{f}` | {d} | {v:+.2f} |" for (f, d), v in added.most_common(20)],
        "", "## The writer's own functions", "",
        "| function | file | µs per transaction |", "|---|---|---|",
        *[f"| `{f}` | {d} | {v:.2f} |" for (f, d), v in functions("activity_log", lambda k: k[0] == "writer", 15)],
    ]
    publish("profile.md", "\n".join(lines) + "\n", args.smoke)


if __name__ == "__main__":
    main()
