#!/usr/bin/env bash
# The CPU side of benches/create_binding.sh, counted: instructions per transaction that the
# server backend spends on identity.create_binding and on each alternative (create_binding_
# contestants.sh), for new bindings and idempotent repeats. Wall time on this shared machine moves
# by ±40% from run to run; instruction counts do not. The backend runs under callgrind and is
# driven by pgbench -M prepared over the Unix socket, exactly as in create_binding.sh: the counts
# are the extended-protocol path a driver takes (Bind, Execute, Sync per statement), commit
# included (WAL records and all; synchronous_commit is off, and the flush's wait is not CPU).
# The client's own CPU and the round trips' latency are not counted.
# Per transaction = (count for LARGE transactions − count for SMALL) ÷ (LARGE − SMALL), each run a
# fresh backend on a fresh copy of the same database, so connection start-up, preparation and the
# first calls' catalog loading cancel out. pgbench's random ids are seeded, so runs repeat.
# Set CLUSTER_LOCALE (e.g. en_US.UTF-8) to count under another database locale.
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
. benches/create_binding_contestants.sh
throwaway_cluster identity_create_instructions "shared_buffers=512MB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -v repeat_pool="$repeat_pool" -f benches/alternatives.sql >/dev/null
"${psql[@]}" -c CHECKPOINT
locale=$("${psql[@]}" -At -c "SHOW lc_collate")
# Stopped cleanly, kept: each count starts from a copy of its data directory.
runuser -u postgres -- "$bin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null
contestant_scripts "$work"

count() {  # count <script> <transactions>: instructions of the backend that served pgbench
    local run=$work/run counts=$work/counts pid
    rm -rf "$run" "$counts"
    cp -a "$cluster/data" "$run"
    install -d -o postgres "$counts"
    # Backends are forked, not executed, so callgrind follows each into a file of its own.
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$counts/callgrind.%p" \
        "$bin/postgres" -D "$run" -c listen_addresses= -c unix_socket_directories="$counts" \
        -c autovacuum=off -c synchronous_commit=off -c log_connections=on \
        -c log_line_prefix='%p ' > "$counts/server.log" 2>&1 &
    local postmaster=$!
    until "$bin/pg_isready" -q -h "$counts" -U postgres; do sleep 1; done
    if ! "$bin/pgbench" -n -M prepared -h "$counts" -U postgres --random-seed=1 -f "$work/$1.sql" \
        -t "$2" postgres > "$counts/pgbench.log" 2>&1; then
        echo "pgbench $1 failed:" >&2; cat "$counts/pgbench.log" >&2; exit 1
    fi
    runuser -u postgres -- "$bin/pg_ctl" -D "$run" -m fast -w stop >/dev/null
    wait "$postmaster" || true
    # pgbench connects twice: a first look at the server, then the run's connection.
    pid=$(awk '/connection authorized:.*application_name=pgbench/ {pid = $1} END {print pid}' \
        "$counts/server.log")
    [ -n "$pid" ] && [ -f "$counts/callgrind.$pid" ] || {
        echo "no callgrind count for pgbench's backend ($1):" >&2; cat "$counts/server.log" >&2; exit 1
    }
    awk '/^summary:/ {print $2}' "$counts/callgrind.$pid"
}

declare -A per_call=()
for kind in new repeat; do
    for contestant in ext app plpgsql floor; do
        many=$(count "${contestant}_$kind" "$large")
        few=$(count "${contestant}_$kind" "$small")
        per_call[$contestant$kind]=$(((many - few) / (large - small)))
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
