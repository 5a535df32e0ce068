#!/usr/bin/env bash
# identity.resolve_many for 10,000 wallet ids against the plain query an application would send,
# WHERE provider = 'wallet' AND external_id = ANY(...), side by side on the same cluster and data
# (100,000 wallet bindings), under pgbench over the Unix socket, 1 client. Both get the same array
# of canonical addresses; resolve_many also canonicalizes and checks each one (EIP-55) and returns
# one row per input in input order. Timings on this machine drift between runs, so the two take
# turns: ROUNDS rounds (default 5) of SECONDS_PER_RUN seconds (default 6) each, medians reported.
# Run after `make install`; prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-6}
rounds=${ROUNDS:-5}
bindings=${BINDINGS:-100000}

. scripts/throwaway.sh
. benches/lib.sh
. benches/resolve_many_contestants.sh
throwaway_cluster identity_resolve_bench "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)

resolve_many_contestants

tps() {  # tps <script>
    /usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres \
        -f "$work/$1.sql" -c 1 -T "$seconds" postgres 2>/dev/null | awk '/^tps = / {print $3}'
}
plain_runs=() ext_runs=()
for round in $(seq "$rounds"); do
    plain_runs+=("$(tps plain)")
    ext_runs+=("$(tps ext)")
done
plain=$(median 3 "${plain_runs[@]}")
ext=$(median 3 "${ext_runs[@]}")
ms() { python3 -c "print(f'{1000 / $1:.2f}')"; }
cat <<EOF2
| 10,000 wallet ids among $bindings bindings, 1 client (median of $rounds × ${seconds} s) | calls/s | ms per call | vs the plain query |
|---|---:|---:|---:|
| plain \`WHERE provider = 'wallet' AND external_id = ANY(...)\` | $(printf '%.1f' "$plain") | $(ms "$plain") | 1.00× |
| \`identity.resolve_many('wallet', ...)\` | $(printf '%.1f' "$ext") | $(ms "$ext") | $(ratio "$plain" "$ext") the time |
EOF2
