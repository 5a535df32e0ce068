#!/usr/bin/env bash
# Scaling of identity.create_binding (new bindings, pgbench over the Unix socket):
#   - throughput at 1, 2 and 4 clients;
#   - cost per call at 10k, 1M and 10M existing bindings (SIZES to change them).
# Existing bindings are filler rows (benches/filler.sql): they give the tables and indexes their
# size, they are not valid chains. Run after `make install`; prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-15}
sizes=(${SIZES:-10000 1000000 10000000})

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_scaling_bench "shared_buffers=2GB" "max_wal_size=16GB" "checkpoint_timeout=30min"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -c "CREATE EXTENSION identity_bindings"

fill_to() {  # fill_to <n>: filler users up to n in total
    "${psql[@]}" -v from=$(( filled + 1 )) -v to="$1" -f benches/filler.sql
    filled=$1
}

# New ids are random far above the filler ids.
cat > "$work/new.sql" <<'SQL'
\set n random(100000000000, 90000000000000000)
SELECT created FROM identity.create_binding(md5(:n::text)::uuid, 'github', :n::text, '{"method": "bench"}');
SQL
tps() {  # tps <clients>
    "${psql[@]}" -c CHECKPOINT
    /usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres \
        -f "$work/new.sql" -c "$1" -j "$1" -T "$seconds" postgres 2>/dev/null \
        | awk '/^tps = / {printf "%.0f", $3}'
}

filled=0
declare -A at_size=()
for size in "${sizes[@]}"; do
    fill_to "$size"
    at_size[$size]=$(tps 1)
    if [ "$size" = "${sizes[0]}" ]; then
        clients1=${at_size[$size]}
        clients2=$(tps 2)
        clients4=$(tps 4)
    fi
done

us() { python3 -c "print(f'{1e6 / $1:.0f}')"; }
cat <<EOF2
| create_binding, new bindings, ${sizes[0]} existing (${seconds} s each) | tps | vs 1 client |
|---|---:|---:|
| 1 client | $clients1 | 1.00× |
| 2 clients | $clients2 | $(ratio "$clients2" "$clients1") |
| 4 clients | $clients4 | $(ratio "$clients4" "$clients1") |

| existing bindings | tps, 1 client | µs per call | vs the smallest |
|---:|---:|---:|---:|
EOF2
for size in "${sizes[@]}"; do
    printf '| %s | %s | %s | %s |\n' "$size" "${at_size[$size]}" "$(us "${at_size[$size]}")" \
        "$(ratio "${at_size[${sizes[0]}]}" "${at_size[$size]}")"
done
