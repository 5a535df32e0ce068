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
# the keys by user land next to each other. Per call it also counts the blocks read from outside
# shared_buffers, the time spent reading them and the WAL full-page images, and at the largest
# size which relations those blocks came from and how large the tables and indexes are: where
# the growth comes from. OS_CACHE=dropped empties the OS page cache before every run (as root),
# so that both contestants read what shared_buffers lacks from the disk alike; INDEXES=prewarmed
# loads each contestant's random-key indexes into shared_buffers before its runs. Run after
# `make install`; prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-10}
rounds=${ROUNDS:-3}
sizes=(${SIZES:-10000 1000000 10000000})
repeat_pool=0  # only new bindings here

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_scaling_bench "shared_buffers=2GB" "max_wal_size=16GB" "checkpoint_timeout=30min" \
    "track_io_timing=on"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql

# fill_to <n>: filler users up to n in total, in the extension's and the alternative's tables.
# They take turns by the million, so neither's pages are the more recently written (caches below
# PostgreSQL, down to the virtual disk's, favour those); then the cluster restarts, so neither
# starts its runs with shared_buffers full of its own pages from the filling.
fill_to() {
    local from to
    for ((from = filled + 1; from <= $1; from = to + 1)); do
        to=$(( from + 999999 < $1 ? from + 999999 : $1 ))
        "${psql[@]}" -v from="$from" -v to="$to" -f benches/filler.sql
        "${psql[@]}" -v from="$from" -v to="$to" <<'SQL'
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
    done
    scripts/cluster.sh halt "$cluster"
    scripts/cluster.sh restart "$cluster"
    filled=$1
}

# The contestants' new-binding scripts: their random ids (from 10^9) lie far above the filler ids.
. benches/create_binding_contestants.sh
contestant_scripts "$work"
if [ "${USER_IDS:-random}" = time-ordered ]; then
    time_ordered="(lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1e6)::bigint), 16, '0') || left(md5(:n::text), 16))::uuid"
    sed -i "s/md5(:n::text)::uuid/$time_ordered/" "$work/ext_new.sql" "$work/plpgsql_new.sql"
fi
# Blocks read into shared buffers (from the OS: its page cache or the disk) and the ms spent
# reading them, cluster-wide; WAL full-page images written; blocks read by each relation.
io_totals() {
    "${psql[@]}" -At -c "
        SELECT json_build_object(
                 'reads', (SELECT sum(blks_read) FROM pg_stat_database),
                 'read_ms', (SELECT sum(blk_read_time) FROM pg_stat_database),
                 'fpis', (SELECT wal_fpi FROM pg_stat_wal),
                 'by_relation', (SELECT json_object_agg(name, blocks) FROM (
                     SELECT relname AS name, heap_blks_read + coalesce(toast_blks_read, 0) AS blocks
                       FROM pg_statio_user_tables
                     UNION ALL
                     SELECT indexrelname, idx_blks_read FROM pg_statio_user_indexes) r))"
}
# The indexes each contestant writes at a random key per new binding (with random user ids);
# INDEXES=prewarmed loads them into shared buffers (pg_prewarm) before each of its runs: the
# cost once a server keeps them cached, where the default measures it with them mostly not.
declare -A random_key_indexes=(
    [ext]="'{identity.user_bindings_provider_external_id_key, identity.user_bindings_user_id_idx,
            identity.event_chain_heads_pkey, identity.identity_events_user_seq_key}'"
    [plpgsql]="'{app_bindings_provider_external_id_key, app_bindings_user_id_idx, app_bindings_pkey,
                app_events_pkey}'"
)
[ "${INDEXES:-as_left}" = prewarmed ] && "${psql[@]}" -c "CREATE EXTENSION pg_prewarm"
# run <contestant> <clients>: one run, right after a CHECKPOINT (and, with OS_CACHE=dropped, with
# the OS page cache emptied, so that every block shared_buffers lacks comes from the disk). Prints
# its tps, then per call the blocks read, the ms spent reading them and the full-page images; it
# appends the blocks read per call by relation to $work/by_relation. Each run is the only load,
# so the cluster's totals are its own (a backend's counts reach them when it exits).
run() {
    local before output
    "${psql[@]}" -c CHECKPOINT
    if [ "${OS_CACHE:-kept}" = dropped ]; then sync; echo 1 > /proc/sys/vm/drop_caches; fi
    if [ "${INDEXES:-as_left}" = prewarmed ]; then
        # Its reads reach the totals before they are taken: flushed as this session goes idle.
        "${psql[@]}" -c "SELECT pg_prewarm(i) FROM unnest(${random_key_indexes[$1]}::regclass[]) i;
                         SELECT pg_stat_force_next_flush()" >/dev/null
    fi
    before=$(io_totals)
    output=$(/usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres \
        -f "$work/$1_new.sql" -c "$2" -j "$2" -T "$seconds" postgres 2>/dev/null)
    until [ "$("${psql[@]}" -At -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")" = 0 ]; do
        sleep 0.1
    done
    python3 - "$output" "$before" "$(io_totals)" "$1$size" "$work/by_relation" <<'PY'
import json, re, sys
output, before, after = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tps = float(re.search(r"^tps = ([0-9.]+)", output, re.M).group(1))
calls = int(re.search(r"^number of transactions actually processed: (\d+)", output, re.M).group(1))
per_call = {k: (float(after[k]) - float(before[k])) / calls for k in ("reads", "read_ms", "fpis")}
by_relation = {name: (blocks - before["by_relation"].get(name, 0)) / calls
               for name, blocks in after["by_relation"].items()}
with open(sys.argv[5], "a") as log:
    print(json.dumps({"cell": sys.argv[4], "reads": by_relation}), file=log)
print(f"{tps:.0f} {per_call['reads']:.2f} {per_call['read_ms']:.3f} {per_call['fpis']:.2f}")
PY
}

filled=0
declare -A runs=() at_size=() io=() io_median=()
for size in "${sizes[@]}"; do
    fill_to "$size"
    for round in $(seq "$rounds"); do
        for contestant in ext plpgsql; do
            read -r tps reads read_ms fpis <<<"$(run $contestant 1)"
            runs[$contestant$size]+=" $tps"
            io[reads$contestant$size]+=" $reads" io[ms$contestant$size]+=" $read_ms"
            io[fpis$contestant$size]+=" $fpis"
        done
        if [ "$size" = "${sizes[0]}" ]; then
            for clients in 2 4; do
                read -r tps _ <<<"$(run ext "$clients")"
                runs[clients$clients]+=" $tps"
            done
        fi
    done
done
for cell in "${!runs[@]}"; do at_size[$cell]=$(median 0 ${runs[$cell]}); done
for cell in "${!io[@]}"; do io_median[$cell]=$(median 3 ${io[$cell]}); done

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
cat <<EOF2

| existing bindings (per call, medians) | ext blocks read | ext ms reading | ext WAL full-page images | PL/pgSQL blocks read | PL/pgSQL ms reading | PL/pgSQL WAL full-page images |
|---:|---:|---:|---:|---:|---:|---:|
EOF2
for size in "${sizes[@]}"; do
    printf '| %s |' "$size"
    for contestant in ext plpgsql; do
        printf ' %s | %s | %s |' "${io_median[reads$contestant$size]}" "${io_median[ms$contestant$size]}" \
            "${io_median[fpis$contestant$size]}"
    done
    echo
done
echo
echo "Sizes at ${sizes[-1]} existing bindings (MB; shared_buffers is 2048):"
echo
"${psql[@]}" -A -F' | ' -c "
    SELECT t.relname AS \"table\", pg_relation_size(t.oid) >> 20 AS heap,
           string_agg(i.relname || ' ' || (pg_relation_size(i.oid) >> 20), ', ' ORDER BY i.relname) AS indexes
      FROM pg_class t JOIN pg_index x ON x.indrelid = t.oid JOIN pg_class i ON i.oid = x.indexrelid
     WHERE t.oid IN ('identity.user_bindings'::regclass, 'identity.event_chain_heads'::regclass,
                     'identity.identity_events'::regclass, 'app_bindings'::regclass, 'app_events'::regclass)
     GROUP BY t.oid, t.relname ORDER BY t.oid" | sed '$d; s/^/| /; s/$/ |/; 2i |---|---:|---|'
echo
echo "Blocks read per call by relation at ${sizes[-1]} existing bindings (median of $rounds rounds; 0.01 and up):"
echo
python3 - "$work/by_relation" "${sizes[-1]}" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def medians(cell):
    cell_runs = [r["reads"] for r in runs if r["cell"] == cell]
    names = {name for reads in cell_runs for name in reads}
    return {n: statistics.median(reads.get(n, 0) for reads in cell_runs) for n in names}
ext, plpgsql = medians("ext" + sys.argv[2]), medians("plpgsql" + sys.argv[2])
print("| relation | ext | PL/pgSQL |\n|---|---:|---:|")
for name in sorted(set(ext) | set(plpgsql), key=lambda n: -max(ext.get(n, 0), plpgsql.get(n, 0))):
    if max(ext.get(name, 0), plpgsql.get(name, 0)) >= 0.01:
        print(f"| {name} | {ext.get(name, 0):.2f} | {plpgsql.get(name, 0):.2f} |")
PY
echo
echo "Per round (tps): $(for cell in $(printf '%s\n' "${!runs[@]}" | sort); do printf '%s:%s; ' "$cell" "${runs[$cell]# }"; done)"
