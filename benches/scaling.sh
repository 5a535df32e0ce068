#!/usr/bin/env bash
# Scaling of identity.create_binding (new bindings, pgbench over the Unix socket):
#   - throughput at 1, 2 and 4 clients;
#   - cost per call at 10k, 1M and 10M existing bindings (SIZES to change them), side by side
#     with the PL/pgSQL alternative (create_binding_contestants.sh) at the same sizes: random keys
#     cost more in any B-tree once its pages stop being cached, and the alternative shows how
#     much of the growth is that rather than the extension's design.
# Existing bindings are filler rows (benches/filler.sql; the alternative's tables get the same
# ids): they give the tables and indexes their size, they are not valid chains. The two take
# turns for ROUNDS rounds (default 3) of SECONDS_PER_RUN seconds (default 10) per size, and each
# cell is the median. New users' ids are random (md5), as many applications' are; with
# USER_IDS=time-ordered they begin with the microsecond they were made, as UUIDv7 ids do, so
# the keys by user land next to each other. Run after `make install`; prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-3}
sizes=(${SIZES:-10000 1000000 10000000})
repeat_pool=0  # only new bindings here

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_scaling_bench "shared_buffers=2GB" "max_wal_size=16GB" "checkpoint_timeout=30min"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql

fill_to() {  # fill_to <n>: filler users up to n in total, in the extension's and the alternative's tables
    local from=$(( filled + 1 ))
    "${psql[@]}" -v from="$from" -v to="$1" -f benches/filler.sql
    "${psql[@]}" -v from="$from" -v to="$1" <<'SQL'
INSERT INTO app_bindings (id, user_id, provider, external_id)
SELECT gen_random_uuid(), md5(i::text)::uuid, 'github', i::text FROM generate_series(:from, :to) i;
INSERT INTO app_events (id, user_id, event_type, payload)
SELECT gen_random_uuid(), md5(i::text)::uuid, 'bind',
       jsonb_build_object('binding_id', gen_random_uuid(), 'provider', 'github', 'external_id', i::text,
                          'evidence', jsonb_build_object('method', 'filler'))
  FROM generate_series(:from, :to) i;
VACUUM ANALYZE app_bindings, app_events;
CHECKPOINT;
SQL
    filled=$1
}

# The contestants' new-binding scripts: their random ids (from 10^9) lie far above the filler ids.
. benches/create_binding_contestants.sh
contestant_scripts "$work"
if [ "${USER_IDS:-random}" = time-ordered ]; then
    time_ordered="(lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1e6)::bigint), 16, '0') || left(md5(:n::text), 16))::uuid"
    sed -i "s/md5(:n::text)::uuid/$time_ordered/" "$work/ext_new.sql" "$work/plpgsql_new.sql"
fi
tps() {  # tps <contestant> <clients>
    "${psql[@]}" -c CHECKPOINT
    /usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres \
        -f "$work/$1_new.sql" -c "$2" -j "$2" -T "$seconds" postgres 2>/dev/null \
        | awk '/^tps = / {printf "%.0f", $3}'
}

filled=0
declare -A runs=() at_size=()
for size in "${sizes[@]}"; do
    fill_to "$size"
    for round in $(seq "$rounds"); do
        for contestant in ext plpgsql; do
            runs[$contestant$size]+=" $(tps $contestant 1)"
        done
        if [ "$size" = "${sizes[0]}" ]; then
            for clients in 2 4; do runs[clients$clients]+=" $(tps ext "$clients")"; done
        fi
    done
done
for cell in "${!runs[@]}"; do at_size[$cell]=$(median 0 ${runs[$cell]}); done

us() { python3 -c "print(f'{1e6 / $1:.0f}')"; }
smallest=${sizes[0]}
cat <<EOF2
| create_binding, new bindings, $smallest existing (median of $rounds × ${seconds} s) | tps | vs 1 client |
|---|---:|---:|
| 1 client | ${at_size[ext$smallest]} | 1.00× |
| 2 clients | ${at_size[clients2]} | $(ratio "${at_size[clients2]}" "${at_size[ext$smallest]}") |
| 4 clients | ${at_size[clients4]} | $(ratio "${at_size[clients4]}" "${at_size[ext$smallest]}") |

| existing bindings (1 client, median of $rounds × ${seconds} s) | ext µs per call | vs the smallest | PL/pgSQL µs per call | vs the smallest |
|---:|---:|---:|---:|---:|
EOF2
for size in "${sizes[@]}"; do
    printf '| %s | %s | %s | %s | %s |\n' "$size" \
        "$(us "${at_size[ext$size]}")" "$(ratio "${at_size[ext$smallest]}" "${at_size[ext$size]}")" \
        "$(us "${at_size[plpgsql$size]}")" "$(ratio "${at_size[plpgsql$smallest]}" "${at_size[plpgsql$size]}")"
done
echo
echo "Per round (tps): $(for cell in $(printf '%s\n' "${!runs[@]}" | sort); do printf '%s:%s; ' "$cell" "${runs[$cell]# }"; done)"
