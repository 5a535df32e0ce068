#!/usr/bin/env bash
# Plain Rust #[test]s and the #[pg_test]s of PostgreSQL MAJOR (cargo pgrx test, with the pgrx
# configuration in effect), on pgrx's own test cluster under PGDATA, run as the postgres user.
#   scripts/unit-tests.sh MAJOR PGDATA      # make unit: 15; scripts/other-versions.sh: 16-18
#
# pgrx initdb's PGDATA/MAJOR-<test process id> and removes it when the tests end. One left by
# an interrupted run (a stopped machine) made initdb fail, and every test with it, for a later
# run whose process got the same id: ids wrap at 32768. Such directories are removed first.
set -euo pipefail
cd "$(dirname "$0")/.."

major=$1 pgdata=$2
install -d -o postgres -g postgres "$pgdata"
for dir in "$pgdata/$major"-*; do
    [ ! -d "$dir" ] || kill -0 "${dir##*-}" 2>/dev/null || rm -rf "$dir"
done
cargo pgrx test "pg$major" --runas postgres --pgdata "$pgdata"
