#!/usr/bin/env bash
# Writer throughput: how many records/s one writer stores when its ring is full of work.
# Method: block the writer (a session holds ACCESS EXCLUSIVE on activity_log.events), publish
# N application events in transactions of 10 000, release the lock, and time until
# activity_log.flush() returns, i.e. until all N rows are in the table.
#   bench/writer_throughput.sh [N]     (default 200000; builds and installs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
DIR=/tmp/al-bench-writer
PORT=54470
./dev install --release >/dev/null
./dev start-cluster "$DIR" "$PORT" "activity_log.capture_statements = 'none'" "activity_log.buffer_size = '256MB'" "activity_log.max_databases = 1"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}  # as in ./dev (bench/run --pg N sets it)
# The cluster goes when the script succeeds; after a failure it stays, for its server.log.
trap 'rc=$?; sudo -u postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null; [ $rc -ne 0 ] || sudo rm -rf "$DIR"' EXIT
psql=("$PG_BIN/psql" -X -q -A -t -h "$DIR" -p "$PORT" -U postgres)
"${psql[@]}" -c "CREATE EXTENSION activity_log"
"${psql[@]}" -c "SELECT activity_log.flush()" >/dev/null
PGAPPNAME=locker "${psql[@]}" -c "BEGIN; LOCK activity_log.events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600)" >/dev/null 2>&1 &
sleep 1
for _ in $(seq 1 $((N / 10000))); do
  "${psql[@]}" -c "SELECT count(activity_log.log_event('bench', jsonb_build_object('i', g), entity_id => g::text)) FROM generate_series(1, 10000) g" >/dev/null
done
start=$(date +%s.%N)
"${psql[@]}" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'" >/dev/null
"${psql[@]}" -c "SELECT activity_log.flush('10 min')" >/dev/null
end=$(date +%s.%N)
rows=$("${psql[@]}" -c "SELECT count(*) FROM activity_log.events WHERE command = 'bench'")
python3 - "$N" "$rows" "$start" "$end" <<'PY'
import sys
n, rows, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
assert rows == n, f"expected {n} rows, found {rows}"
print(f"writer stored {rows} records in {end - start:.2f} s: {rows / (end - start):,.0f} records/s")
PY
