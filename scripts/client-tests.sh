#!/usr/bin/env bash
# Runs the client-side tests (pgrx-tests/) against a throwaway cluster, with the extension
# already installed (make install).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/identity_client.XXXXXX)
chmod 0755 "$work"  # the cluster inside runs as postgres
cluster="$work/cluster"
trap 'scripts/cluster.sh stop "$cluster"; rm -rf "$work"' EXIT

scripts/cluster.sh start "$cluster" "max_connections=100"
# --test '*': only the integration tests, so the run closes on their real count.
IDENTITY_BINDINGS_TEST_HOST="$cluster" cargo test --locked -p identity_bindings_client_tests --test '*' "$@"

# Interop with real wallet tooling (viem + node-postgres), pinned by package-lock.json.
if [ ! -d tests/interop/node_modules ] || [ tests/interop/package-lock.json -nt tests/interop/node_modules ]; then
    (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd tests/interop && IDENTITY_BINDINGS_TEST_HOST="$cluster" node --test)
