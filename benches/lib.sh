# Sourced by the benchmark scripts (after scripts/throwaway.sh): the arithmetic of their tables.

# ratio <a> <b> [decimals]: a ÷ b, as "1.23×" (2 decimals unless told).
ratio() { python3 -c "print(f'{$1 / $2:.${3:-2}f}×')"; }

# median <decimals> <value>...: the median, rounded to that many decimals.
median() {
    local decimals=$1
    shift
    python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[2:])):.{sys.argv[1]}f}')" \
        "$decimals" "$@"
}

# seconds_of <command...>: runs it, prints its wall-clock time in seconds (0.1 s).
seconds_of() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}

# seconds_and_peak <database> <settings> <statement>: runs the statement in a fresh session of
# "${psql[@]}" on that database, after the settings; prints its wall time in seconds (0.01 s) and
# the peak private memory of its backend in KiB (RssAnon, sampled five times a second: VmHWM
# would count the shared buffers it touched). Needs $work (throwaway_cluster) and the psql array.
seconds_and_peak() {
    local ms rss="$work/peak_rss.$RANDOM"
    ms=$("${psql[@]}" -d "$1" -At <<SQL | awk '/^Time:/ {t = $2} END {print t}'
SET client_min_messages = warning;
$2
SELECT pg_backend_pid() AS pid \gset
\setenv BACKEND_PID :pid
\! scripts/peak_rss.sh \$BACKEND_PID > $rss &
\o /dev/null
\timing on
$3
SQL
)
    while [ ! -s "$rss" ]; do sleep 0.2; done  # the sampler ends with the backend
    printf '%s %s\n' "$(python3 -c "print(f'{$ms / 1000:.2f}')")" "$(cat "$rss")"
    rm -f "$rss"
}

# take_turns <rounds> <log prefix> <run> <contestant...>: runs `<run> <contestant>`, which prints
# "seconds peak_kib", for each contestant in turn, <rounds> times, logging each run to stderr.
# Adds each contestant's seconds to the caller's associative array `times` (space-separated) and
# keeps its highest peak in `peaks`.
take_turns() {
    local rounds=$1 prefix=$2 run=$3 round name seconds kib
    shift 3
    for round in $(seq "$rounds"); do
        for name in "$@"; do
            read -r seconds kib < <("$run" "$name")
            echo "${prefix}round $round: $name ${seconds}s, RssAnon $((kib / 1024)) MiB" >&2
            times[$name]="${times[$name]:-} $seconds"
            # An if, not `test && set`: a false test as the function's last command would fail
            # the caller's `set -e` when the last run of a round sets no new peak.
            if [ "$kib" -gt "${peaks[$name]:-0}" ]; then peaks[$name]=$kib; fi
        done
    done
}
