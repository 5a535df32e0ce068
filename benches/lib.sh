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
