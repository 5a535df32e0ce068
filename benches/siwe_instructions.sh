#!/usr/bin/env bash
# Instructions per call of each SIWE contestant, counted by callgrind (repeatable on a noisy
# machine, unlike wall time). Prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo bench --locked --bench siwe_instructions --no-run 2>/dev/null
binary=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/siwe_instructions-* | grep -v '\.d$' | head -1)
calls=256  # ROUNDS × MESSAGES in siwe_instructions.rs

count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$1" 2>&1 \
        | awk '/Collected :/ {print $4}'
}
setup=$(count setup)
per_call() { echo $(( ($(count "$1") - setup) / calls )); }
libsecp=$(per_call libsecp256k1)
echo "| contestant | instructions per call | vs libsecp256k1 bare recovery |"
echo "|---|---:|---:|"
for contestant in libsecp256k1 k256 full parse; do
    n=$(per_call "$contestant")
    echo "| $contestant | $n | $(python3 -c "print(f'{$n / $libsecp:.2f}×')") |"
done
