#!/usr/bin/env bash
# SIWE verification throughput, side by side in one run on the same 64 viem-signed messages:
#   - SELECT identity.verify_siwe(...) under pgbench over the Unix socket, at 1 and 2 clients;
#   - the same query shape without verification (the round-trip floor);
#   - viem verifying the same messages in process in Node (single-threaded).
# Run with `make bench-siwe` after `make install`; prints a Markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-10}

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_bench
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)

interop_packages
node tests/interop/bench_messages.mjs 64 > "$work/messages.jsonl"

"${psql[@]}" <<SQL
CREATE EXTENSION identity_bindings;
CREATE TABLE bench_raw (line jsonb);
\copy bench_raw FROM '$work/messages.jsonl' (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')
CREATE TABLE bench_messages AS
    SELECT row_number() OVER () AS id, line->>'message' AS message, line->>'signature' AS signature
      FROM bench_raw;
SELECT count(*) = 64 AS loaded, bool_and((identity.verify_siwe(message, signature, 'bench.example')).nonce IS NOT NULL) AS all_verify
  FROM bench_messages \gset
\if :all_verify
\else
  \warn 'not every benchmark message verifies'
  SELECT 1/0;
\endif
SQL

cat > "$work/verify.sql" <<'SQL'
\set id random(1, 64)
SELECT (identity.verify_siwe(message, signature, 'bench.example')).address FROM bench_messages WHERE id = :id;
SQL
cat > "$work/floor.sql" <<'SQL'
\set id random(1, 64)
SELECT length(message) FROM bench_messages WHERE id = :id;
SQL

tps() {  # tps <script> <clients>
    /usr/lib/postgresql/15/bin/pgbench -n -M prepared -h "$cluster" -p 5432 -U postgres -f "$1" \
        -c "$2" -j "$2" -T "$seconds" postgres 2>/dev/null | awk '/^tps = / {printf "%.0f", $3}'
}

floor1=$(tps "$work/floor.sql" 1)
verify1=$(tps "$work/verify.sql" 1)
verify2=$(tps "$work/verify.sql" 2)
viem=$(cd tests/interop && node bench_viem_verify.mjs "$work/messages.jsonl" "$seconds" \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["per_second"]))')

cat <<EOF2
| what (same 64 messages, ${seconds} s each) | verifications/s | vs viem |
|---|---:|---:|
| viem in Node, in process, 1 thread | $viem | 1.0× |
| \`SELECT identity.verify_siwe(...)\`, pgbench, 1 client | $verify1 | $(ratio "$verify1" "$viem" 1) |
| \`SELECT identity.verify_siwe(...)\`, pgbench, 2 clients | $verify2 | $(ratio "$verify2" "$viem" 1) |
| round-trip floor: same query without verification, 1 client | $floor1 | — |
EOF2
