#!/usr/bin/env bash
# Sign-In with Ethereum logins end to end from a Node application over the Unix socket:
# identity.siwe_login (one round trip: verify, consume the nonce, find or create the binding)
# against what the application does without the extension (viem verifies in Node, then the nonce,
# owner look-up and, on a first login, binding and event statements in one transaction).
# tests/interop/bench_login.mjs does the logins; ROUNDS rounds (default 5) of LOGINS logins
# (default 500) per cell, the contestants taking turns; each figure is the median.
# Run after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
logins=${LOGINS:-500}
rounds=${ROUNDS:-5}

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_login_bench
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
interop_packages
# The app's tables are those of the create_binding contestants, plus its nonces.
"${psql[@]}" -v repeat_pool=0 -f benches/alternatives.sql >/dev/null
"${psql[@]}" -c "CREATE TABLE app_nonces (nonce text PRIMARY KEY, expires_at timestamptz NOT NULL)"

ROUNDS=$rounds node tests/interop/bench_login.mjs "$cluster" "$logins" > "$work/cells.jsonl"

# median_per_second <contestant> <workload>: median logins/s over the rounds
median_per_second() {
    median 0 $(python3 -c "import json, sys
for line in open(sys.argv[1]):
    cell = json.loads(line)
    if cell['contestant'] == sys.argv[2] and cell['workload'] == sys.argv[3]:
        print(cell['logins'] / cell['seconds'])" "$work/cells.jsonl" "$1" "$2")
}
ms() { python3 -c "print(f'{1000 / $1:.2f}')"; }
echo "| SIWE logins from Node, 1 connection (median of $rounds × $logins logins) | first logins/s | ms per login | ext ÷ this | returning logins/s | ms per login | ext ÷ this |"
echo "|---|---:|---:|---:|---:|---:|---:|"
declare -A per_second=()
for contestant in ext app; do
    for workload in first returning; do
        per_second[$contestant$workload]=$(median_per_second $contestant $workload)
    done
done
row() {  # row <contestant> <label>
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$2" \
        "${per_second[${1}first]}" "$(ms "${per_second[${1}first]}")" "$(ratio "${per_second[extfirst]}" "${per_second[${1}first]}")" \
        "${per_second[${1}returning]}" "$(ms "${per_second[${1}returning]}")" "$(ratio "${per_second[extreturning]}" "${per_second[${1}returning]}")"
}
row ext "\`identity.siwe_login(...)\`: one round trip"
row app "app: viem verifies in Node; BEGIN; nonce; owner; binding + event; COMMIT"
echo
echo "Per round (logins/s):"
python3 -c "import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    print(f\"- round {c['round']}, {c['workload']}, {c['contestant']}: {c['logins'] / c['seconds']:.0f}\")" "$work/cells.jsonl"
