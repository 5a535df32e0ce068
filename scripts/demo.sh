#!/usr/bin/env bash
# The demo: a throwaway cluster with the installed extension, and a walk through what it does.
# Run it with `make demo`, which installs what is missing and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/identity_demo.XXXXXX)
chmod 0755 "$work"  # the cluster inside runs as postgres
cluster="$work/cluster"
trap 'scripts/cluster.sh stop "$cluster"; rm -rf "$work"' EXIT

echo "Starting a throwaway PostgreSQL 15 cluster in $cluster ..."
scripts/cluster.sh start "$cluster"
psql=(psql -X -q -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -c "CREATE EXTENSION identity_bindings"
echo "CREATE EXTENSION identity_bindings: done."
"${psql[@]}" -f scripts/demo.sql 2>&1  # errors in their place in the story
echo
echo "Demo finished; the cluster is removed."
