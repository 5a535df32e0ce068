#!/usr/bin/env bash
# identity.create_binding against what an application or a DBA would do instead, side by side in
# one run on one cluster, with pgbench over the Unix socket (-M prepared, as drivers do); the
# contestants (ext, app, plpgsql, floor) are described in create_binding_contestants.sh.
# Two workloads: new bindings (a new user's first binding, random ids) and idempotent repeats
# (ids bound before the run, bound again to the same user). 1 and 4 clients. Commits wait for
# fsync, whose latency drifts on a shared machine, so the contestants take turns: ROUNDS rounds
# (default 3) of SECONDS_PER_RUN seconds (default 10) per cell, and each cell reports its median.
# Run after `make install`; prints Markdown tables for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-3}
repeat_pool=100000

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_create_bench "shared_buffers=512MB" "max_wal_size=4GB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)

"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql

. benches/create_binding_contestants.sh
contestant_scripts "$work"

tps() {  # tps <script> <clients>: transactions per second; any client error fails the run
    local out
    # Every cell starts after a checkpoint, so none pays for another's full-page writes.
    "${psql[@]}" -c CHECKPOINT
    if ! out=$(/usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres \
        -f "$work/$1.sql" -c "$2" -j "$2" -T "$seconds" postgres 2>&1); then
        printf 'pgbench %s (%s clients) failed:\n%s\n' "$1" "$2" "$out" >&2
        exit 1
    fi
    awk '/^tps = / {printf "%.0f", $3}' <<<"$out"
}

for kind in new repeat; do
    declare -A runs=() result=()
    for round in $(seq "$rounds"); do
        for contestant in ext app plpgsql floor; do
            for clients in 1 4; do
                runs[$contestant$clients]+=" $(tps "${contestant}_$kind" "$clients")"
            done
        done
    done
    for cell in "${!runs[@]}"; do
        result[$cell]=$(median 0 ${runs[$cell]})
    done
    if [ "$kind" = new ]; then title="new bindings"; else title="idempotent repeats"; fi
    cat <<EOF2

| create_binding, $title (median of $rounds × ${seconds} s) | 1 client tps | ext ÷ this | 4 clients tps | ext ÷ this |
|---|---:|---:|---:|---:|
| \`identity.create_binding\` (ext) | ${result[ext1]} | 1.00× | ${result[ext4]} | 1.00× |
| (a) app: BEGIN; INSERT; INSERT; COMMIT from the client | ${result[app1]} | $(ratio "${result[ext1]}" "${result[app1]}") | ${result[app4]} | $(ratio "${result[ext4]}" "${result[app4]}") |
| (b) the same inserts in a PL/pgSQL function | ${result[plpgsql1]} | $(ratio "${result[ext1]}" "${result[plpgsql1]}") | ${result[plpgsql4]} | $(ratio "${result[ext4]}" "${result[plpgsql4]}") |
| (c) floor: one bare INSERT | ${result[floor1]} | $(ratio "${result[ext1]}" "${result[floor1]}") | ${result[floor4]} | $(ratio "${result[ext4]}" "${result[floor4]}") |
EOF2
    unset runs result
done
