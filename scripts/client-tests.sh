#!/usr/bin/env bash
# Runs the client-side tests (pgrx-tests/) against a throwaway cluster, with the extension
# already installed (make install).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/throwaway.sh
throwaway_cluster identity_client "max_connections=100"
# --test '*': only the integration tests, so the run closes on their real count.
IDENTITY_BINDINGS_TEST_HOST="$cluster" cargo test --locked -p identity_bindings_client_tests --test '*' "$@"

# Interop with real wallet tooling (viem + node-postgres), pinned by package-lock.json.
interop_packages
(cd tests/interop && IDENTITY_BINDINGS_TEST_HOST="$cluster" node --test)
