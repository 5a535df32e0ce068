#!/usr/bin/env bash
# Runs the pg_regress contract (tests/pg_regress) against a throwaway cluster, with the
# extension already installed (make install). Prints the diff of any failing test.
#   scripts/regress.sh            # compare with tests/pg_regress/expected
#   scripts/regress.sh --accept   # write the actual output over expected/ (review the diff!)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's PostgreSQL 15 unless PG_CONFIG names another build, and its pg_regress unless
# PG_REGRESS names another (scripts/other-versions.sh).
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_REGRESS=${PG_REGRESS:-$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress}
export PG_BINDIR=$("$PG_CONFIG" --bindir)
. scripts/throwaway.sh

if [ "${1:-}" = "--accept" ]; then
    for test in $(awk '/^test:/ {print $2}' tests/pg_regress/schedule); do
        touch "tests/pg_regress/expected/$test.out"
    done
fi

throwaway_cluster identity_regress
status=0
"$PG_REGRESS" --bindir="$PG_BINDIR" --host="$cluster" --port=5432 --user=postgres \
    --dbname=identity_regress --inputdir=tests/pg_regress --outputdir="$work" \
    --schedule=tests/pg_regress/schedule || status=$?

if [ "${1:-}" = "--accept" ]; then
    cp "$work"/results/*.out tests/pg_regress/expected/
    echo "expected/ updated from this run: review it with git diff"
    exit 0
fi
if [ "$status" -ne 0 ] && [ -f "$work/regression.diffs" ]; then
    cat "$work/regression.diffs"
fi
exit "$status"
