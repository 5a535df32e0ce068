#!/usr/bin/env bash
# The CPU side of benches/create_binding.sh, counted: instructions per transaction that the
# server backend spends on identity.create_binding and on each alternative (create_binding_
# contestants.sh), for new bindings and idempotent repeats, by callgrind under pgbench exactly as
# in create_binding.sh (benches/callgrind.sh says what is counted and what is not).
# Per transaction = (count for LARGE transactions − count for SMALL) ÷ (LARGE − SMALL).
# Set CLUSTER_LOCALE (e.g. en_US.UTF-8) to count under another database locale.
# Run after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${SMALL:-300}
large=${LARGE:-1200}
repeat_pool=100000

. scripts/throwaway.sh
. benches/lib.sh
. benches/create_binding_contestants.sh
. benches/callgrind.sh
throwaway_cluster identity_create_instructions "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql >/dev/null
"${psql[@]}" -c CHECKPOINT
locale=$("${psql[@]}" -At -c "SHOW lc_collate")
# Stopped cleanly, kept: each count starts from a copy of its data directory.
scripts/cluster.sh halt "$cluster"
contestant_scripts "$work"

declare -A per_call=()
for kind in new repeat; do
    for contestant in ext app plpgsql floor; do
        per_call[$contestant$kind]=$(instructions_per_call "$work/${contestant}_$kind.sql" "$small" "$large")
    done
done
echo "| instructions per transaction (callgrind; lc_collate $locale) | new bindings | ext ÷ this | idempotent repeats | ext ÷ this |"
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
