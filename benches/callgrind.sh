# Sourced by the scripts that count instructions (after scripts/throwaway.sh, with the cluster's
# data prepared and the cluster stopped cleanly): the server backend that serves one pgbench run,
# counted by callgrind. Wall time on this shared machine moves by ±40% from run to run;
# instruction counts do not. pgbench -M prepared over the Unix socket drives the backend exactly as
# the wall-clock benchmarks do: the extended-protocol path a driver takes (Bind, Execute, Sync),
# commit included (WAL records and all; synchronous_commit is off, and the flush's wait is not
# CPU). The client's own CPU and the round trips' latency are not counted.
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }

# backend_instructions <script> <transactions>: instructions of the backend that ran pgbench's
# <script> (a file) <transactions> times, on a fresh copy of $cluster/data. pgbench's random
# numbers are seeded, so runs repeat.
backend_instructions() {
    local bin=/usr/lib/postgresql/15/bin run=$work/run counts=$work/counts pid
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
    if ! "$bin/pgbench" -n -M prepared -h "$counts" -U postgres --random-seed=1 -f "$1" \
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

# instructions_per_call <script> <few> <many>: (count for <many> − count for <few>) ÷ (many − few),
# each a fresh backend on a fresh copy of the data, so connection start-up, preparation and the
# first calls' catalog loading cancel out.
instructions_per_call() {
    local many few
    many=$(backend_instructions "$1" "$3")
    few=$(backend_instructions "$1" "$2")
    echo $(((many - few) / ($3 - $2)))
}
