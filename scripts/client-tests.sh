#!/usr/bin/env bash
# Runs the client-side tests (pgrx-tests/) against a throwaway cluster, with the extension
# already installed (make install). Arguments go to cargo test (a filter, -- --nocapture).
#
# Another PostgreSQL build than Debian's 15: PG_BINDIR names its programs (as for cluster.sh),
# and CLIENT_TESTS_LEAVE_OUT the test files (pgrx-tests/tests/NAME.rs) it cannot run (pg_cron.rs);
# scripts/other-versions.sh gives the reasons.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/throwaway.sh
throwaway_cluster identity_client "max_connections=100"
echo "client tests on PostgreSQL $(psql -X -h "$cluster" -p 5432 -U postgres -Atc 'SHOW server_version')" >&2

# Each test file by name (not the library's own tests), so the run closes on their real count.
tests=()
for file in pgrx-tests/tests/*.rs; do
    name=$(basename "$file" .rs)
    [[ " ${CLIENT_TESTS_LEAVE_OUT:-} " == *" $name "* ]] || tests+=(--test "$name")
done
IDENTITY_BINDINGS_TEST_HOST="$cluster" cargo test --locked -p identity_bindings_client_tests "${tests[@]}" "$@"

# Interop with real wallet tooling (viem + node-postgres), pinned by package-lock.json.
interop_packages
(cd tests/interop && IDENTITY_BINDINGS_TEST_HOST="$cluster" node --test)
