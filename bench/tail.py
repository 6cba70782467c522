#!/usr/bin/env python3
"""Where the latency tail comes from below saturation (issue 30, item 2): pgbench tpcb-like at a
fixed rate (-R, 4 clients, scale 10, synchronous_commit = off, pgbench_compare.py's settings),
interleaved rounds, while perf samples the whole machine with time stamps (cpu-clock). Modes:
no auditing; activity_log (the four tables tracked); its writer paused (SIGSTOP between its
transactions: capture alone, nothing stored meanwhile); the trail with only its primary key,
and without each secondary index in turn (dropped from every partition of the trail for the
run, and made again after it).

Each transaction's window, from its scheduled start to its end (pgbench --log), is matched with
the samples taken in it. For the slowest 1 % of a run's transactions and for the other 99 %:
how much CPU each process used during a window (pgbench's backends, the writer, the walwriter,
other server processes, pgbench, the idle loop, the rest), in ms per transaction. What a slow
transaction waited for shows there: when its window holds far more of the writer's CPU than an
ordinary one, the writer's work is what it queued behind; when it holds idle time, it waited on
something other than a CPU (a lock, I/O). Equal shares of the writer's CPU in slow and ordinary
windows are what a steady load gives, and do not tell it from no effect. The windows of one
slow episode overlap (under -R, a stall delays every transaction scheduled during it), so the
slowest 1 % may be a few episodes. The writer's CPU per transaction (/proc, until it has stored
the run's records) says what each index costs it. latency.py measures the tail against the
alternatives; this looks for whose it is.

    bench/tail.py [--rate TPS] [--seconds S] [--rounds R] [--smoke]
"""
import argparse
import bisect
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import pgbench_compare as pc
from benchlib import BIN, Cluster, install_release, machine, publish
from latency import commit, quantile
from profile import ROLES, perf_usable, role, server_pids

DIR = "/tmp/al-bench-tail"
PORT = 54490
FREQUENCY = 999  # samples per second and CPU
CLIENTS = 4
PAUSED = "activity_log, writer paused"
PKEY_ONLY = "activity_log, trail with only its primary key"
MODES = ["none", "activity_log", PAUSED, PKEY_ONLY] + [f"activity_log, trail without {i}" for i in pc.TRAIL_INDEXES]
SLOWEST = 0.01
# A ring that holds the paused run's records (20 s at 2000 TPS is about 32 MB of them).
SETTINGS = pc.SETTINGS + ["activity_log.buffer_size = '1GB'"]


def dropped_indexes(mode):
    """The trail's indexes `mode` runs without."""
    if mode == PKEY_ONLY:
        return pc.TRAIL_INDEXES
    if mode.startswith("activity_log, trail without "):
        return [mode.rsplit(" ", 1)[1]]
    return []


def run(cluster, mode, rate, seconds):
    """One pgbench run at `rate` under perf: (latencies in ms, {role: CPU ms per transaction in
    the slowest windows}, the same for the others, the slowest's and the others' mean latency,
    the writer's CPU µs per transaction until it stored the run's records)."""
    psql = cluster.psql
    pc.set_mode(cluster, "none" if mode == "none" else "activity_log")
    kinds = dropped_indexes(mode)
    remake = pc.drop_trail_indexes(cluster, kinds) if kinds else None
    if mode == PAUSED:
        pc.pause_writer(cluster)
    known = server_pids(cluster)
    writer = int(psql("SELECT writer_pid FROM activity_log.queue") or 0)
    before = int(psql("SELECT count(*) FROM pgbench_history"))
    writer_ticks = pc.ticks([writer])
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/perf.data"
        recorder = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", str(FREQUENCY),
                                     "-k", "CLOCK_MONOTONIC", "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # perf's time stamps are CLOCK_MONOTONIC, pgbench's log is wall-clock time.
        monotonic_to_wall = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
        time.sleep(0.5)  # perf is sampling
        env = dict(os.environ, PGOPTIONS="-c synchronous_commit=off")
        bench = subprocess.Popen([f"{BIN}/pgbench", *cluster.conninfo(), "-c", str(CLIENTS), "-j", str(CLIENTS),
                                  "-T", str(seconds), "-R", str(rate), "-n", "--log", f"--log-prefix={tmp}/tx",
                                  "bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        backends = set()  # pgbench's connections; any other postgres process is no backend of it
        while bench.poll() is None:
            backends.update(int(pid) for pid in pc.backend_pids())
            time.sleep(0.1)
        if bench.returncode != 0:
            raise RuntimeError(f"pgbench failed in mode {mode}: {bench.stdout.read()}")
        if recorder.poll() is not None:  # it samples until told to stop
            raise RuntimeError(f"perf record stopped by itself in mode {mode}: {recorder.returncode}")
        recorder.send_signal(2)
        recorder.wait()
        windows = []  # (start, end) in wall-clock seconds, latency in ms
        for name in os.listdir(tmp):
            if name.startswith("tx"):
                with open(f"{tmp}/{name}") as f:
                    for line in f:
                        # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                        p = line.split()
                        end, ms = int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000
                        windows.append((end - ms / 1000, end, ms))
        script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,time"],
                                capture_output=True, text=True, check=True).stdout
    if mode == PAUSED:
        pc.writer(cluster, "CONT")
    committed = int(psql("SELECT count(*) FROM pgbench_history")) - before
    if mode != "none":
        pc.check_trail(cluster, committed)  # waits until the writer has stored them
        # Its CPU from /proc: the same process all along.
        assert int(psql("SELECT writer_pid FROM activity_log.queue")) == writer, "the writer restarted"
    writer_us = (pc.ticks([writer]) - writer_ticks) * 1e6 / os.sysconf("SC_CLK_TCK") / committed
    if remake:
        psql(remake)
    samples = []  # (wall-clock time, role)
    for line in script.splitlines():
        # "postgres 12345 52416.531190:"
        m = re.match(r"\s*(.*?)\s+(\d+)\s+([\d.]+):", line)
        if m:
            samples.append((float(m.group(3)) + monotonic_to_wall,
                            role(m.group(1), int(m.group(2)), known, writer, backends)))
    samples.sort()
    times = [t for t, _ in samples]
    # Only transactions perf watched from start to end.
    windows = [w for w in windows if times and times[0] <= w[0] and w[1] <= times[-1]]
    cut = quantile(sorted(w[2] for w in windows), 1 - SLOWEST)

    def cpu_per_window(selected):
        ms = dict.fromkeys(ROLES, 0.0)
        for start, end, _ in selected:
            for _, r in samples[bisect.bisect_left(times, start):bisect.bisect_right(times, end)]:
                ms[r] += 1000 / FREQUENCY
        return {r: v / max(1, len(selected)) for r, v in ms.items()}

    slow = [w for w in windows if w[2] >= cut]
    rest = [w for w in windows if w[2] < cut] or slow
    return (sorted(w[2] for w in windows), cpu_per_window(slow), cpu_per_window(rest),
            statistics.mean(w[2] for w in slow), statistics.mean(w[2] for w in rest), writer_us)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000,
                    help="TPS; issue 30's 2000 is 35-40 %% of no auditing's saturation here")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="3-second runs, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.rate = 3, 1, 200
    if not perf_usable("tail.py", args.smoke):
        return
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    try:
        pc.prepare(cluster)
        facts = machine(cluster)
        runs = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for m in MODES:
                runs[m].append(run(cluster, m, args.rate, args.seconds))
    finally:
        cluster.stop()

    def med(values):
        return statistics.median(values)

    lines = [
        f"# Whose is the tail: pgbench tpcb-like at {args.rate} TPS, {CLIENTS} clients, "
        f"{args.seconds} s x {args.rounds} rounds, medians",
        "",
        f"Machine: {facts}. Commit: {commit()}. Settings: {', '.join(SETTINGS)}; synchronous_commit = off.",
        f"`perf record -a -e cpu-clock -F {FREQUENCY}` during each run. A transaction's window runs from "
        "its scheduled start to its end (pgbench --log, so waiting behind a slow transaction counts). "
        "The writer is paused with SIGSTOP between its transactions; an index left out is dropped "
        "from every partition for the run. The writer's CPU per transaction is from /proc, from the "
        "run's start until it has stored the run's records (paused: the backlog stored alone, after "
        "the run). Backends are pgbench's connections (seen during the run); autovacuum and the rest "
        "are other postgres. Every activity_log run: the trail holds exactly the committed changes, "
        "0 dropped (asserted).",
        "",
        "| mode | p50 ms | p99 ms (each round) | p99.9 ms | writer CPU µs per transaction |",
        "|---|---|---|---|---|",
    ]
    for m in MODES:
        q = [med(quantile(r[0], x) for r in runs[m]) for x in (0.5, 0.99, 0.999)]
        rounds = ", ".join(f"{quantile(r[0], 0.99):.2f}" for r in runs[m])
        lines.append(f"| {m} | {q[0]:.2f} | {q[1]:.2f} ({rounds}) | {q[2]:.2f} | {med(r[5] for r in runs[m]):.1f} |")
    lines += ["", f"What ran while a transaction waited: each process's CPU in a transaction's window, ms "
              f"per transaction, for the slowest {SLOWEST:.0%} / the rest (both cores: a window's length "
              "times 2 is all there is; idle is CPU nobody wanted).", "",
              "| mode | mean latency ms | " + " | ".join(ROLES) + " |",
              "|---|---|" + "---|" * len(ROLES)]
    for m in MODES:
        slow_ms, rest_ms = med(r[3] for r in runs[m]), med(r[4] for r in runs[m])
        cells = [f"{med(r[1][x] for r in runs[m]):.2f} / {med(r[2][x] for r in runs[m]):.2f}" for x in ROLES]
        lines.append(f"| {m} | {slow_ms:.2f} / {rest_ms:.2f} | " + " | ".join(cells) + " |")
    publish("tail.md", "\n".join(lines) + "\n", args.smoke)


if __name__ == "__main__":
    sys.exit(main())
