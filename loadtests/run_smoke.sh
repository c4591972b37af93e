#!/usr/bin/env bash
# Locust smoke run: a fresh service on loopback, a small seeded data set (with partner grants), a
# short headless Locust run that must show zero failures and partner traffic on every partner
# endpoint, then every consent chain verified. Exits non-zero on any failure.
#
#   bash loadtests/run_smoke.sh            # embedded PostgreSQL in a temporary data dir
#   PREFS_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres bash loadtests/run_smoke.sh
#                                          # a throwaway database on that server, dropped afterwards
#   SMOKE_POOLER=pgbouncer PREFS_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
#       bash loadtests/run_smoke.sh        # the same, the service reaching it through PgBouncer in
#                                          # transaction mode (PREFS_DATABASE_POOLER=transaction)
#
# Knobs: SMOKE_CUSTOMERS (2000), SMOKE_USERS (12; 8 or more, or no partner user is spawned),
# SMOKE_SECONDS (15). About 25 s in all. Latency limits are loose on purpose (the machine is
# shared): speed is measured by bench.py, not here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CUSTOMERS="${SMOKE_CUSTOMERS:-2000}"
USERS="${SMOKE_USERS:-12}"
SECONDS_TO_RUN="${SMOKE_SECONDS:-15}"
RESULTS="loadtests/results"
PY="$(uv run --locked python -c 'import sys; print(sys.executable)')"
BIN="$(dirname "$PY")"
WORK="$(mktemp -d -t prefs-smoke.XXXXXX)"
SERVER_PID=""
BOUNCER_PID=""
SMOKE_DB=""
ADMIN_URL="${PREFS_DATABASE_URL:-}"
mkdir -p "$RESULTS"

admin_sql() {  # admin_sql URL SQL: one statement on the server (no psql needed)
    "$PY" -c 'import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    try:
        await conn.execute(sys.argv[2])
    finally:
        await conn.close()
asyncio.run(main())' "$1" "$2"
}

cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n $BOUNCER_PID ]] && kill -0 "$BOUNCER_PID" 2>/dev/null; then
        kill -TERM "$BOUNCER_PID"
        wait "$BOUNCER_PID" 2>/dev/null || true
    fi
    if [[ -n $SMOKE_DB ]]; then
        admin_sql "$ADMIN_URL" "DROP DATABASE IF EXISTS $SMOKE_DB WITH (FORCE)" || true
    fi
    if [[ $rc -ne 0 && -f $WORK/serve.log ]]; then
        echo "---- server log (last 40 lines)"
        tail -n 40 "$WORK/serve.log"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

export PREFS_DATA_DIR="$WORK/data"
export PREFS_LOG_LEVEL=WARNING
if [[ -n $ADMIN_URL ]]; then
    SMOKE_DB="prefs_smoke_$$"
    admin_sql "$ADMIN_URL" "CREATE DATABASE $SMOKE_DB"
    PREFS_DATABASE_URL="$("$PY" -c 'import sys; base, _, q = sys.argv[1].partition("?"); print(base.rsplit("/", 1)[0] + "/" + sys.argv[2] + ("?" + q if q else ""))' "$ADMIN_URL" "$SMOKE_DB")"
    export PREFS_DATABASE_URL
    echo "database: $SMOKE_DB on the configured server"
else
    echo "database: embedded PostgreSQL under $PREFS_DATA_DIR"
fi
DIRECT_URL="${PREFS_DATABASE_URL:-}"  # the seed writes straight to the database

case "${SMOKE_POOLER:-none}" in
    none) ;;
    pgbouncer)
        if [[ -z $ADMIN_URL ]]; then
            echo "SMOKE_POOLER=pgbouncer needs PREFS_DATABASE_URL: a server to put PgBouncer in front of"
            exit 1
        fi
        "$PY" -m tests.support.pgbouncer "$ADMIN_URL" "$PREFS_DATABASE_URL" 4 >"$WORK/pgbouncer.url" &
        BOUNCER_PID=$!
        for _ in $(seq 1 100); do
            [[ -s $WORK/pgbouncer.url ]] && break
            kill -0 "$BOUNCER_PID" 2>/dev/null || { echo "pgbouncer did not start"; exit 1; }
            sleep 0.1
        done
        PREFS_DATABASE_URL="$(head -n 1 "$WORK/pgbouncer.url")"
        export PREFS_DATABASE_URL PREFS_DATABASE_POOLER=transaction
        echo "through PgBouncer in transaction mode (4 server connections): $PREFS_DATABASE_URL"
        ;;
    *) echo "SMOKE_POOLER must be none or pgbouncer"; exit 1 ;;
esac

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BIN/prefs" serve --host 127.0.0.1 --port "$PORT" --workers 1 >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "prefs serve exited"; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/health/ready"
echo

PREFS_DATABASE_URL="$DIRECT_URL" "$PY" loadtests/seed.py --customers "$CUSTOMERS" --preferences 5 --tills 8 --stores 2 \
    --output "$WORK/seed.json"

"$BIN/locust" -f loadtests/locustfile.py --headless --only-summary --loglevel WARNING \
    --host "http://127.0.0.1:$PORT" --seed-file "$WORK/seed.json" \
    -u "$USERS" -r "$USERS" -t "${SECONDS_TO_RUN}s" --stop-timeout 5 \
    --csv "$RESULTS/smoke" --max-fail-ratio 0 --p95-ms 2000 --p99-ms 5000

# The partner and store sides must have run, not just been spawned: each of their requests once.
"$PY" - "$RESULTS/smoke_stats.csv" <<'CHECK'
import csv, sys
with open(sys.argv[1], newline="") as handle:
    counts = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(handle)}
required = [
    "customer: reorder through partner",
    "partner: poll feed",
    "partner: set reorder status",
    "partner: read customer preferences",
    "partner: place reorder",
    "customer: reorder from a store",
    "store: poll queue",
    "store: set reorder status",
]
for name in required:
    print(f"traffic {name:<40} {counts.get(name, 0):>6}")
missing = [name for name in required if not counts.get(name)]
if missing:
    sys.exit(f"no traffic for: {', '.join(missing)}")
CHECK

"$BIN/prefs" consent verify
echo "smoke passed: zero failures, thresholds held, partner and store traffic seen, every consent chain verifies"
