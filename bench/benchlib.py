"""Shared by the benchmark scripts: a throwaway cluster of the system PostgreSQL with the
release build of activity_log installed, and machine facts for the reports."""
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")  # as in ./dev (bench/run --pg N sets it)
# The server's major version: reports of another than 15 go to results/pg<major>/, beside 15's.
MAJOR = int(subprocess.run([f"{BIN}/pg_config", "--version"], check=True, capture_output=True,
                           text=True).stdout.split()[1].split(".")[0])
# pgaudit is Debian's package for 15 only: the comparison with it runs where it is installed.
PKGLIBDIR = subprocess.run([f"{BIN}/pg_config", "--pkglibdir"], check=True, capture_output=True,
                           text=True).stdout.strip()
HAS_PGAUDIT = os.path.exists(f"{PKGLIBDIR}/pgaudit.so")


def install_release():
    subprocess.run([f"{ROOT}/dev", "install", "--release"], check=True, stdout=subprocess.DEVNULL)


class Cluster:
    """A cluster in `directory`, owned by postgres, reached over its Unix socket."""

    def __init__(self, directory, port, settings):
        self.dir, self.port, self.settings = directory, port, settings
        subprocess.run([f"{ROOT}/dev", "start-cluster", directory, str(port)] + settings, check=True)

    def conninfo(self):
        return ["-h", self.dir, "-p", str(self.port), "-U", "postgres"]

    def psql(self, sql, db="bench", timing=False):
        cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *self.conninfo(), "-d", db, "-c", sql]
        started = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return (time.perf_counter() - started) if timing else out.strip()

    def timed_session(self, statements, db="bench"):
        """Runs `statements` one after another in one session, each in autocommit, and returns
        psql's \\timing of each in seconds (the round trip of statement and commit; the session's
        start is not in it)."""
        script = "\\timing on\n" + "".join(f"{s};\n" for s in statements)
        cmd = [f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *self.conninfo(), "-d", db]
        out = subprocess.run(cmd, input=script, check=True, capture_output=True, text=True).stdout
        times = [float(line.split()[1]) / 1000 for line in out.splitlines() if line.startswith("Time: ")]
        assert len(times) == len(statements), out
        return times

    def pg_ctl(self, *args):
        subprocess.run(["sudo", "-u", "postgres", f"{BIN}/pg_ctl", "-D", f"{self.dir}/data", "-l",
                        f"{self.dir}/server.log", "-w", *args], check=True, stdout=subprocess.DEVNULL)

    def restart(self):
        self.pg_ctl("restart", "-m", "fast")

    def stop(self):
        """Stops the server and removes the cluster (a full run leaves gigabytes), unless an
        exception is on its way out: then the directory stays, for its server.log."""
        subprocess.run(["sudo", "-u", "postgres", f"{BIN}/pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL)
        if sys.exc_info()[0] is None:
            subprocess.run(["sudo", "rm", "-rf", self.dir], check=True)
        else:
            print(f"bench: the cluster is kept for its server log: {self.dir}", file=sys.stderr)


def machine(cluster):
    """One line of machine facts for a report."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB; "
            f"PostgreSQL {cluster.psql('SHOW server_version', db='postgres')}")


def publish(name, report, smoke):
    """Prints a report and, unless this is a smoke run, writes it to results/`name`."""
    print(report)
    if smoke:
        return
    results = f"{HERE}/results" if MAJOR == 15 else f"{HERE}/results/pg{MAJOR}"
    os.makedirs(results, exist_ok=True)
    with open(f"{results}/{name}", "w") as f:
        f.write(report)


# The four tables of pgbench's tpcb-like workload, as activity_log tracks them.
TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]


def fresh_pgbench_tables(cluster, tracked):
    """pgbench -i at scale 1 in database bench (the tables made anew), tracked or not."""
    subprocess.run([f"{BIN}/pgbench", *cluster.conninfo(), "-i", "-q", "-s", "1", "bench"],
                   check=True, capture_output=True)
    if tracked:
        for t in TABLES:
            cluster.psql(f"SELECT activity_log.track('{t}')")


# The reference row trigger the bulk benchmarks compare with (bulk_dml.py, big_transaction.py):
# a PL/pgSQL AFTER ROW trigger writing jsonb images, as trigger-based audits do.
REFERENCE_TRIGGER = """
CREATE TABLE IF NOT EXISTS ref_audit (id bigserial, ts timestamptz DEFAULT now(), db_user text DEFAULT current_user,
                                      txid bigint DEFAULT txid_current(), tbl text, op text, old jsonb, new jsonb);
CREATE INDEX IF NOT EXISTS ref_audit_ts ON ref_audit USING brin (ts);
CREATE OR REPLACE FUNCTION ref_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ref_audit (tbl, op, old, new) VALUES (TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
"""


# The bulk statements' table (bulk_dml.py, capture_cost.py).
ITEMS = "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, price numeric(10,2), updated_at timestamptz)"


def bulk_statements(rows):
    return {
        "insert": f"INSERT INTO items SELECT g, 'item ' || g, g % 100, g / 7.0, now() FROM generate_series(1, {rows}) g",
        "update": "UPDATE items SET qty = qty + 1, updated_at = now()",
        "delete": "DELETE FROM items",
    }


def fresh_items(cluster, mode):
    """The items table made anew: untracked ("none"), tracked ("activity_log") or with the
    transition-table floor ("floor")."""
    cluster.psql(f"DROP TABLE IF EXISTS items; {ITEMS}")
    if mode == "activity_log":
        cluster.psql("SELECT activity_log.track('items')")
    elif mode == "floor":
        create_floor_triggers(cluster, "items")


# The transition-table floor: empty AFTER STATEMENT triggers that only ask for OLD/NEW TABLE,
# the core's own cost of the mechanism activity_log's capture builds on.
FLOOR_TRIGGERS = [("insert", "NEW TABLE AS n"), ("update", "OLD TABLE AS o NEW TABLE AS n"), ("delete", "OLD TABLE AS o")]


def create_floor_triggers(cluster, table, transition_tables=True):
    """Without transition_tables: the same triggers asking for nothing, whose cost (a PL/pgSQL
    call per statement) is no part of the floor but is in its measurement."""
    cluster.psql("CREATE OR REPLACE FUNCTION noop_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
    for op, ref in FLOOR_TRIGGERS:
        referencing = f"REFERENCING {ref} " if transition_tables else ""
        cluster.psql(f"CREATE TRIGGER floor_{op} AFTER {op.upper()} ON {table} {referencing}"
                     "FOR EACH STATEMENT EXECUTE FUNCTION noop_statement()")


def transactions(n):
    """pgbench's tpcb-like script at scale 1, with fixed random choices."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        aid, tid, delta = rng.randint(1, 100_000), rng.randint(1, 10), rng.randint(-5000, 5000)
        out.append(
            "BEGIN;\n"
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};\n"
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};\n"
            f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};\n"
            f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1;\n"
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            f"VALUES ({tid}, 1, {aid}, {delta}, CURRENT_TIMESTAMP);\n"
            "END;\n")
    return "".join(out)
