#!/bin/sh
# The newcomer's first command, timed: `make migrate` on a fresh clone (creates .venv, installs the
# runtime, starts the local database, applies the migrations), then a second `make migrate` (a no-op).
# Usage: bench/first_run.sh [REPO]   (default: this checkout). Prints both wall times in seconds.
set -eu
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'make -s -C "$work/clone" db-stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
unset PYTHON VIRTUAL_ENV DATABASE_URL DB_HOST DB_NAME DB_USER DB_PASSWORD DB_SECRET_NAME MONGO_URL HCM_DEVDB_DIR
cd "$work/clone"
t0=$(date +%s.%N); make -s migrate >/dev/null 2>&1; t1=$(date +%s.%N)
make -s migrate >/dev/null 2>&1; t2=$(date +%s.%N)
echo "first make migrate: $(echo "$t1 - $t0" | bc) s"
echo "second make migrate: $(echo "$t2 - $t1" | bc) s"
