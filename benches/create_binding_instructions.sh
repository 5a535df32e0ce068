#!/usr/bin/env bash
# The CPU side of benches/create_binding.sh, counted: instructions per call of identity.create_binding
# and of the same alternatives ((a) the app's statements, (b) PL/pgSQL, (c) one bare INSERT), for
# new bindings and idempotent repeats, by callgrind on a single-user backend. Wall time on this
# shared machine moves by ±40% from run to run; instruction counts do not. What they leave out is
# the commit's WAL flush and the client round trips, which the pgbench figures include.
# Every statement is PREPAREd first, as pgbench -M prepared does. Per call = (count for LARGE calls
# − count for SMALL calls) ÷ (LARGE − SMALL), each from a fresh copy of the same database, so
# start-up, preparation and the first calls' catalog loading cancel out.
# Run after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
bin=/usr/lib/postgresql/15/bin
small=${SMALL:-300}
large=${LARGE:-1200}
repeat_pool=100000

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_create_instructions "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql >/dev/null
"${psql[@]}" -c CHECKPOINT
# Stopped cleanly, kept: each count starts from a copy of its data directory.
runuser -u postgres -- "$bin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null

prepared='PREPARE ext (uuid, text, text, jsonb) AS SELECT created FROM identity.create_binding($1, $2, $3, $4);
PREPARE plpgsql (uuid, text, text, jsonb) AS SELECT created FROM app_bind($1, $2, $3, $4);
PREPARE floor (uuid, text) AS INSERT INTO floor_bindings (id, user_id, provider, external_id) VALUES (gen_random_uuid(), $1, '"'github'"', $2) ON CONFLICT (provider, external_id) DO NOTHING;
PREPARE app_binding (uuid, uuid, text) AS INSERT INTO app_bindings (id, user_id, provider, external_id) VALUES ($1, $2, '"'github'"', $3) ON CONFLICT (provider, external_id) DO NOTHING RETURNING id;
PREPARE app_event (uuid, uuid, text) AS INSERT INTO app_events (id, user_id, event_type, payload) VALUES (gen_random_uuid(), $2, '"'bind'"', jsonb_build_object('"'binding_id'"', $1, '"'provider'"', '"'github'"', '"'external_id'"', $3, '"'evidence'"', '"'{\"method\": \"bench\"}'"'::jsonb));
PREPARE app_owner (text) AS SELECT id, user_id FROM app_bindings WHERE provider = '"'github'"' AND external_id = $1;'

calls() {  # calls <contestant> <kind> <count>: the statements, one per line
    local n id user
    for n in $(seq 1 "$3"); do
        if [ "$2" = new ]; then id=$((1000000000 + n)); else id=$(((n * 7919) % repeat_pool + 1)); fi
        user="md5('$id')::uuid"
        case $1 in
            ext | plpgsql) echo "EXECUTE $1($user, 'github', '$id', '{\"method\": \"bench\"}');" ;;
            floor) echo "EXECUTE floor($user, '$id');" ;;
            app)
                echo "BEGIN;"
                echo "EXECUTE app_binding(gen_random_uuid(), $user, '$id');"
                if [ "$2" = new ]; then
                    echo "EXECUTE app_event(gen_random_uuid(), $user, '$id');"
                else
                    echo "EXECUTE app_owner('$id');"
                fi
                echo "COMMIT;"
                ;;
        esac
    done
}

count() {  # count <contestant> <kind> <calls>: instructions of a single-user backend running them
    rm -rf "$work/run"
    cp -a "$cluster/data" "$work/run"
    { echo "$prepared"; calls "$@"; } > "$work/calls.sql"
    chmod 0644 "$work/calls.sql"
    install -d -o postgres "$work/counts"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$work/counts/callgrind.out" \
        "$bin/postgres" --single -D "$work/run" -c synchronous_commit=off postgres \
        < "$work/calls.sql" > "$work/output" 2> "$work/valgrind.log"
    if grep -q ERROR "$work/output" "$work/valgrind.log"; then
        echo "$1 $2 raised an error:" >&2; grep -h ERROR "$work/output" "$work/valgrind.log" | head -3 >&2
        exit 1
    fi
    awk '/^summary:/ {print $2}' "$work/counts/callgrind.out"
}

declare -A per_call=()
for kind in new repeat; do
    for contestant in ext app plpgsql floor; do
        many=$(count $contestant $kind "$large")
        few=$(count $contestant $kind "$small")
        per_call[$contestant$kind]=$(((many - few) / (large - small)))
    done
done
echo "| instructions per call (callgrind) | new bindings | ext ÷ this | idempotent repeats | ext ÷ this |"
echo "|---|---:|---:|---:|---:|"
label() {
    case $1 in
        ext) echo "\`identity.create_binding\` (ext)" ;;
        app) echo "(a) app: BEGIN; INSERT; INSERT; COMMIT" ;;
        plpgsql) echo "(b) the same inserts in a PL/pgSQL function" ;;
        floor) echo "(c) floor: one bare INSERT" ;;
    esac
}
for contestant in ext app plpgsql floor; do
    printf '| %s | %s | %s | %s | %s |\n' "$(label $contestant)" \
        "${per_call[${contestant}new]}" "$(ratio "${per_call[${contestant}new]}" "${per_call[extnew]}")" \
        "${per_call[${contestant}repeat]}" "$(ratio "${per_call[${contestant}repeat]}" "${per_call[extrepeat]}")"
done
