#!/usr/bin/env python3
"""Write latency below saturation: pgbench tpcb-like at fixed rates (-R), the way production
databases mostly run, side by side with the alternatives.

pgbench_compare.py measures saturation, where the writer's CPU comes straight out of the
workload's. Here the rate is fixed at about 30 % and 70 % of what no auditing reaches at
saturation (measured first, in the same run, over at least a minute per round), so the machine has
room and what a user feels is latency. A rate counts only if no auditing keeps up with it: pgbench
with -R on 2 cores needs CPU of its own, and a rate that none cannot sustain measures queueing, not
auditing (the first run, at 70 %, had none's schedule lag at p99 717 ms). So each rate is
calibrated first: none runs at it, and while none falls short (TPS below 98 % of the rate, or
schedule lag p99 above 5 ms) the rate is lowered by a tenth, at most five times; the report says
which rate was used and why. Modes, interleaved for several rounds: none; the reference PL/pgSQL jsonb trigger;
pgaudit (pgaudit.log = 'write'); activity_log with statements only (capture_statements = 'mod',
nothing tracked); activity_log rows (the four tables tracked, async); the same with
durability => 'sync'. Per mode and rate: p50, p99 and p99.9 of each transaction's latency from
pgbench --log (measured from its scheduled start, so waiting behind a slow transaction counts,
as it does for a user), medians over rounds, and what each mode adds over none as a share of what
the reference trigger adds (issue 30's bar: <= 10 % at p50 and p99). After each activity_log
run the trail is checked: exactly the committed changes (or statements), nothing dropped.

    bench/latency.py [--seconds S] [--rounds R] [--clients C] [--rates 0.3,0.7] [--smoke]
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile

from benchlib import BIN, ROOT, Cluster, install_release, machine, publish
from pgbench_compare import SETTINGS, check_trail, prepare, set_mode

DIR = "/tmp/al-bench-latency"
PORT = 54497
STATEMENTS = "activity_log statements"
MODES = ["none", "trigger", "pgaudit", STATEMENTS, "activity_log", "activity_log sync"]
QUANTILES = [0.50, 0.99, 0.999]
# A rate none keeps up with: pgbench reaches this share of it, and transactions start this late
# at p99 at most (ms). Lowered by CALIBRATION_STEP at most CALIBRATION_TRIES times.
KEEPS_UP_TPS = 0.98
KEEPS_UP_LAG_MS = 5.0
CALIBRATION_STEP = 0.9
CALIBRATION_TRIES = 5


def pgbench(cluster, seconds, clients, rate=None):
    """pgbench tpcb-like, synchronous_commit off; returns (tps, sorted latencies in ms, sorted
    schedule lags in ms). With `rate`, pgbench -R: a latency counts from the transaction's
    scheduled start (pgbench's own definition), so a transaction queued behind a slow one
    carries that wait."""
    with tempfile.TemporaryDirectory() as logs:
        cmd = [f"{BIN}/pgbench", *cluster.conninfo(), "-c", str(clients), "-j", str(clients), "-T", str(seconds),
               "-n", "--log", f"--log-prefix={logs}/tx", "bench"]
        if rate:
            cmd[-1:-1] = ["-R", str(rate)]
        env = dict(os.environ, PGOPTIONS="-c synchronous_commit=off")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        latencies, lags = [], []
        for path in glob.glob(f"{logs}/tx*"):
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    # client, transaction, latency µs, script, epoch s, epoch µs[, schedule lag µs]
                    latencies.append(int(fields[2]) / 1000.0)
                    if len(fields) > 6:
                        lags.append(int(fields[6]) / 1000.0)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1)), sorted(latencies), sorted(lags)


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def use_mode(cluster, mode):
    """pgbench_compare's modes, plus statements only (nothing tracked)."""
    # set_mode's own statements are not audited, and it empties the trail after storing what was
    # (statements run while 'mod' was still on: this ALTER SYSTEM, a caller's).
    cluster.psql("ALTER SYSTEM SET activity_log.capture_statements = 'none'")
    set_mode(cluster, "none" if mode == STATEMENTS else mode)
    if mode == STATEMENTS:
        cluster.psql("ALTER SYSTEM SET activity_log.capture_statements = 'mod'")
        cluster.psql("SELECT pg_reload_conf()")


def check_statements(cluster, transactions):
    """Statements only: exactly the three UPDATEs and one INSERT of each committed transaction,
    each naming the tables it read and wrote."""
    psql = cluster.psql
    assert psql("SELECT activity_log.flush('10 min')") == "t"
    stored = int(psql("SELECT count(*) FROM activity_log.events WHERE kind = 'statement'"))
    unnamed = int(psql("SELECT count(*) FROM activity_log.events WHERE kind = 'statement' AND relations IS NULL"))
    assert unnamed == 0, f"{unnamed} statements name no table"
    dropped = int(psql("SELECT dropped_records FROM activity_log.queue"))
    assert stored == 4 * transactions, f"{stored} statements in the trail for {transactions} transactions"
    assert dropped == 0, f"{dropped} records dropped"


def keeps_up(tps, lags, rate):
    return tps >= KEEPS_UP_TPS * rate and quantile(lags, 0.99) <= KEEPS_UP_LAG_MS


def calibrate(cluster, rate, seconds, clients, tries):
    """The highest rate, from `rate` down by tenths, that no auditing sustains; with what none
    did at each try (rate, TPS, schedule lag p99), and whether it kept up at the last."""
    use_mode(cluster, "none")
    tried = []
    for _ in range(tries):
        tps, _, lags = pgbench(cluster, seconds, clients, rate)
        tried.append((rate, tps, quantile(lags, 0.99)))
        if keeps_up(tps, lags, rate):
            return rate, tried, True
        rate = max(1, round(rate * CALIBRATION_STEP))
    return tried[-1][0], tried, False


def commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rates", default="0.3,0.7", help="fractions of no-audit saturation")
    ap.add_argument("--smoke", action="store_true", help="3-second runs, one round: keeps the script working")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 3, 1
    fractions = [float(x) for x in args.rates.split(",")]
    install_release()
    cluster = Cluster(DIR, PORT, SETTINGS)
    psql = cluster.psql
    try:
        prepare(cluster)
        facts = machine(cluster)
        use_mode(cluster, "none")
        # Saturation over at least a minute per round: a short run's TPS is its warm-up's.
        saturation_seconds = args.seconds if args.smoke else max(60, args.seconds)
        saturation = statistics.median(
            pgbench(cluster, saturation_seconds, args.clients)[0] for _ in range(args.rounds))
        calibrated = [calibrate(cluster, max(1, round(saturation * f)), args.seconds, args.clients,
                                1 if args.smoke else CALIBRATION_TRIES) for f in fractions]
        rates = [rate for rate, _, _ in calibrated]

        runs = {}  # (rate, mode) -> [[p50, p99, p99.9, lag p99, tps]]
        for _ in range(args.rounds):
            for rate in rates:
                for mode in MODES:
                    use_mode(cluster, mode)
                    before = int(psql("SELECT count(*) FROM pgbench_history"))
                    tps, latencies, lags = pgbench(cluster, args.seconds, args.clients, rate)
                    committed = int(psql("SELECT count(*) FROM pgbench_history")) - before
                    if mode == STATEMENTS:
                        check_statements(cluster, committed)
                    elif mode.startswith("activity_log"):
                        check_trail(cluster, committed)
                    runs.setdefault((rate, mode), []).append(
                        [quantile(latencies, q) for q in QUANTILES] + [quantile(lags, 0.99), tps])

        med = {k: [statistics.median(r[i] for r in v) for i in range(5)] for k, v in runs.items()}
        lines = [
            f"# Latency at fixed rates: pgbench tpcb-like, scale 10, {args.clients} clients, "
            f"{args.seconds} s x {args.rounds} rounds, medians",
            "",
            f"Machine: {facts}. Commit: {commit()}. Settings: {', '.join(SETTINGS)}; synchronous_commit = off.",
            f"No auditing at saturation: {saturation:.0f} TPS (median of {args.rounds} runs of "
            f"{saturation_seconds} s); fixed rates "
            + ", ".join(f"{r} TPS ({r / saturation:.0%}, aimed at {f:.0%})" for r, f in zip(rates, fractions))
            + ".",
            "Each rate was calibrated first (no auditing must reach "
            f"{KEEPS_UP_TPS:.0%} of it with a schedule lag p99 of at most {KEEPS_UP_LAG_MS:g} ms; "
            "otherwise lowered by a tenth): "
            + "; ".join(", ".join(f"{r} TPS -> {t:.0f} TPS, lag p99 {lag:.1f} ms" for r, t, lag in tried)
                        + ("" if ok else " (NOT kept up: this rate measures queueing)")
                        for _, tried, ok in calibrated) + ".",
            "Latency per transaction from pgbench --log, counted from its scheduled start (queueing "
            "included). Added: the mode's latency minus none's; vs trigger: that as a share of what the "
            "reference trigger adds (the bar: <= 10 % at p50 and p99). Every activity_log run: the trail "
            "holds exactly the committed changes (statements), 0 dropped (asserted).",
            "",
        ]
        for rate, fraction in zip(rates, fractions):
            base, trig = med[(rate, "none")], med[(rate, "trigger")]
            lines += [f"## {rate} TPS ({rate / saturation:.0%} of saturation, aimed at {fraction:.0%})", "",
                      "| mode | TPS | p50 ms | p99 ms | p99.9 ms | sched. lag p99 ms | added p50 / p99 / p99.9 ms "
                      "| vs trigger p50 / p99 |",
                      "|---|---|---|---|---|---|---|---|"]
            for mode in MODES:
                p50, p99, p999, lag, tps = med[(rate, mode)]
                added = [p50 - base[0], p99 - base[1], p999 - base[2]]
                share = ["%.0f %%" % (100 * a / t) if t > 0 else "-"
                         for a, t in zip(added[:2], [trig[0] - base[0], trig[1] - base[1]])]
                lines.append(f"| {mode} | {tps:.0f} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {lag:.2f} | "
                             + " / ".join(f"{a:+.2f}" for a in added) + " | " + " / ".join(share) + " |")
            lines.append("")
        publish("latency.md", "\n".join(lines) + "\n", args.smoke)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
