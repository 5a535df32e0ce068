#!/usr/bin/env bash
# Instructions the server backend spends on identity.revoke_binding and identity.merge_users,
# against what a DBA would write instead (app_revoke and app_merge in benches/alternatives.sql:
# the binding deleted or moved, and the events that record it), counted by callgrind under
# pgbench as in create_binding_instructions.sh (benches/callgrind.sh says what is counted).
# A revoke is counted as the transaction "bind a new id, revoke it" less the transaction "bind
# a new id"; a merge as "bind two new users, merge one into the other" less "bind two new users".
# Per transaction = (count for LARGE transactions − count for SMALL) ÷ (LARGE − SMALL).
# Run after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${SMALL:-200}
large=${LARGE:-800}
existing=100000

. scripts/throwaway.sh
. benches/lib.sh
. benches/callgrind.sh
throwaway_cluster identity_revoke_merge_instructions "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$existing" -f benches/alternatives.sql >/dev/null
"${psql[@]}" -c CHECKPOINT
scripts/cluster.sh halt "$cluster"

# transaction_script <file> <statement>...: one transaction of the statements, for new ids :n
# and :m (a new user each, far above the ids bound beforehand).
transaction_script() {
    local file=$1
    shift
    {
        echo '\set n random(1000000000, 90000000000000000)'
        echo '\set m :n + 1'
        echo 'BEGIN;'
        printf '%s\n' "$@"
        echo 'COMMIT;'
    } > "$file"
    chmod 0644 "$file"
}
bind_n="SELECT created FROM identity.create_binding(md5(:n::text)::uuid, 'github', :n::text, '{\"method\": \"bench\"}');"
bind_m="SELECT created FROM identity.create_binding(md5(:m::text)::uuid, 'github', :m::text, '{\"method\": \"bench\"}');"
app_bind_n="SELECT created FROM app_bind(md5(:n::text)::uuid, 'github', :n::text, '{\"method\": \"bench\"}');"
app_bind_m="SELECT created FROM app_bind(md5(:m::text)::uuid, 'github', :m::text, '{\"method\": \"bench\"}');"
transaction_script "$work/ext_one.sql" "$bind_n"
transaction_script "$work/ext_revoke.sql" "$bind_n" \
    "SELECT user_id FROM identity.revoke_binding('github', :n::text, '{\"ticket\": \"bench\"}');"
transaction_script "$work/ext_two.sql" "$bind_n" "$bind_m"
transaction_script "$work/ext_merge.sql" "$bind_n" "$bind_m" \
    "SELECT identity.merge_users(md5(:n::text)::uuid, md5(:m::text)::uuid, '{\"ticket\": \"bench\"}');"
transaction_script "$work/plpgsql_one.sql" "$app_bind_n"
transaction_script "$work/plpgsql_revoke.sql" "$app_bind_n" \
    "SELECT user_id FROM app_revoke('github', :n::text, '{\"ticket\": \"bench\"}');"
transaction_script "$work/plpgsql_two.sql" "$app_bind_n" "$app_bind_m"
transaction_script "$work/plpgsql_merge.sql" "$app_bind_n" "$app_bind_m" \
    "SELECT app_merge(md5(:n::text)::uuid, md5(:m::text)::uuid, '{\"ticket\": \"bench\"}');"

declare -A per_call=()
for contestant in ext plpgsql; do
    for script in one revoke two merge; do
        per_call[$contestant$script]=$(instructions_per_call "$work/${contestant}_$script.sql" "$small" "$large")
    done
    per_call[${contestant}revoke_alone]=$((per_call[${contestant}revoke] - per_call[${contestant}one]))
    per_call[${contestant}merge_alone]=$((per_call[${contestant}merge] - per_call[${contestant}two]))
done
echo "| instructions per call (callgrind; $existing bindings) | revoke | ext ÷ this | merge (one binding moved) | ext ÷ this |"
echo "|---|---:|---:|---:|---:|"
for contestant in ext plpgsql; do
    case $contestant in
        ext) label="\`identity.revoke_binding\`, \`identity.merge_users\` (ext)" ;;
        plpgsql) label="the same changes and events in PL/pgSQL functions" ;;
    esac
    printf '| %s | %s | %s | %s | %s |\n' "$label" \
        "${per_call[${contestant}revoke_alone]}" "$(ratio "${per_call[${contestant}revoke_alone]}" "${per_call[extrevoke_alone]}")" \
        "${per_call[${contestant}merge_alone]}" "$(ratio "${per_call[${contestant}merge_alone]}" "${per_call[extmerge_alone]}")"
done
