#!/usr/bin/env bash
# The CPU side of benches/resolve_many.sh, counted: instructions per call that the server backend
# spends on identity.resolve_many for 10,000 wallet ids and on the plain = ANY query for the same
# array (resolve_many_contestants.sh), by callgrind under pgbench (benches/callgrind.sh says what
# is counted and what is not). Per call = (count for LARGE calls − count for SMALL) ÷ (LARGE −
# SMALL). Run after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${SMALL:-5}
large=${LARGE:-20}
bindings=${BINDINGS:-100000}

. scripts/throwaway.sh
. benches/lib.sh
. benches/resolve_many_contestants.sh
. benches/callgrind.sh
throwaway_cluster identity_resolve_instructions "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
resolve_many_contestants >/dev/null
"${psql[@]}" -c CHECKPOINT
# Stopped cleanly, kept: each count starts from a copy of its data directory.
scripts/cluster.sh halt "$cluster"

plain=$(instructions_per_call "$work/plain.sql" "$small" "$large")
ext=$(instructions_per_call "$work/ext.sql" "$small" "$large")
cat <<EOF2
| 10,000 wallet ids among $bindings bindings (callgrind, per call) | instructions | vs the plain query |
|---|---:|---:|
| plain \`WHERE provider = 'wallet' AND external_id = ANY(...)\` | $plain | 1.00× |
| \`identity.resolve_many('wallet', ...)\` | $ext | $(ratio "$ext" "$plain") the instructions |
EOF2
