#!/usr/bin/env bash
# Fuzzes the SIWE parser and verifier with cargo-fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh              # a short run of each target (what make test does)
#   scripts/fuzz.sh 3600         # an hour per target; crashes land in fuzz/artifacts/
# The seed corpus is built from the public vectors in ../shared/siwe-vectors.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}

# cargo-fuzz drives rustc's unstable sanitizer flags; RUSTC_BOOTSTRAP lets the stable toolchain
# (the only one on these machines) accept them.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/cache/identity_bindings/fuzz-target}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked --quiet

vectors=${IDENTITY_SIWE_VECTORS:-../shared/siwe-vectors}
for target in siwe_parse siwe_verify; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    python3 - "$vectors" "$corpus" "$target" <<'PY'
import json, pathlib, sys, hashlib
vectors, corpus, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
seeds = []
for case in json.loads((vectors / "verification_messages.derived.json").read_text())["cases"]:
    seeds.append(case["message"] + ("\0" + case["signature"] if target == "siwe_verify" else ""))
for name in ("parsing_positive.json",):
    for case in json.loads((vectors / "signinwithethereum-siwe" / name).read_text()).values():
        seeds.append(case["message"])
for seed in seeds:
    data = seed.encode()
    (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
PY
    echo "fuzzing $target for ${seconds}s"
    log="$CARGO_TARGET_DIR/$target.log"
    mkdir -p "$CARGO_TARGET_DIR"
    status=0
    cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" -- -max_total_time="$seconds" -max_len=8192 \
        >"$log" 2>&1 || status=$?
    grep -E "DONE|^Done" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz: $target failed (exit $status); a crashing input is kept in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
