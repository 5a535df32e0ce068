#!/usr/bin/env bash
# Scaling of identity.create_binding (new bindings, pgbench over the Unix socket):
#   - throughput at 1, 2 and 4 clients;
#   - cost per call at 10k, 1M and 10M existing bindings (SIZES to change them).
# Existing bindings are filler rows written straight into the tables (a binding, its bind event
# and its chain head per user, hashes random): they give the tables and indexes their size, they
# are not valid chains. Run after `make install`; prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-15}
sizes=(${SIZES:-10000 1000000 10000000})

. scripts/throwaway.sh
throwaway_cluster identity_scaling_bench "shared_buffers=2GB" "max_wal_size=16GB" "checkpoint_timeout=30min"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -c "CREATE EXTENSION identity_bindings"

fill_to() {  # fill_to <n>: filler users up to n in total
    local from=$(( filled + 1 )) to=$1
    "${psql[@]}" <<SQL
ALTER TABLE identity.identity_events DISABLE TRIGGER USER;
INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
SELECT gen_random_uuid(), md5(i::text)::uuid, 'github', i::text FROM generate_series($from, $to) i;
INSERT INTO identity.event_chain_heads (user_id, last_seq, last_hash, last_event_id)
SELECT md5(i::text)::uuid, 1, sha256(int8send(i)), gen_random_uuid() FROM generate_series($from, $to) i;
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, hash)
SELECT gen_random_uuid(), md5(i::text)::uuid, 1, 'bind',
       jsonb_build_object('binding_id', gen_random_uuid(), 'provider', 'github', 'external_id', i::text,
                          'evidence', jsonb_build_object('method', 'filler')),
       now(), sha256(int8send(i))
  FROM generate_series($from, $to) i;
ALTER TABLE identity.identity_events ENABLE TRIGGER USER;
VACUUM ANALYZE identity.user_bindings, identity.event_chain_heads, identity.identity_events;
CHECKPOINT;
SQL
    filled=$to
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
ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
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
